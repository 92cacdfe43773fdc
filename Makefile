# virtcloud.compute: the two commands are `make demo` and `make test` (as root, on Debian 12).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYTHONPATH := $(CURDIR)/.collections
export ANSIBLE_NOCOLOR := 1

# The lab to bring up, use and remove: `make demo LAB=demo2 LAB_NETWORK=10.250.0.0/24`.
# Its folders and inventory follow its name (the lab module's rule, in module_utils/_lab.py);
# LAB_NETWORK is optional (left out: the range the lab has, else one derived from the name).
LAB ?= vclab
LAB_NETWORK ?=
LAB_VARS = -e lab_name=$(LAB) $(if $(LAB_NETWORK),-e lab_network=$(LAB_NETWORK))
LAB_INVENTORY = $(shell PYTHONPATH=$(CURDIR)/.collections $(BIN)/python -c 'import sys; from ansible_collections.virtcloud.compute.plugins.module_utils._lab import plan; print(plan(sys.argv[1]).inventory)' $(LAB) 2>/dev/null)

.PHONY: demo test deps image lab-up lab-down lab-inventory units style format sanity lint integration molecule bench clean constraints

demo: deps image
	$(BIN)/ansible-playbook playbooks/lab_up.yml $(LAB_VARS)
	$(BIN)/ansible-playbook -i $(LAB_INVENTORY) playbooks/demo.yml

test: deps image
	tools/run-suite units style sanity lint integration molecule

deps:
	tools/install-deps $(PYTHON)

image:
	tools/build-test-image

lab-up: deps
	$(BIN)/ansible-playbook playbooks/lab_up.yml $(LAB_VARS)

lab-down:
	$(BIN)/ansible-playbook playbooks/lab_down.yml -e lab_name=$(LAB)

# the inventory path of lab $(LAB): INV=$$(make -s lab-inventory LAB=demo2)
lab-inventory:
	@echo $(LAB_INVENTORY)

units:
	$(BIN)/python -m pytest -q tests/unit

style:
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

sanity:
	tools/ansible-test/run sanity --color no

lint:
	$(BIN)/ansible-lint --offline -q

integration:
	cd tests/integration && ../../$(BIN)/python -m pytest -v --tb=short .

molecule:
	cd roles/lab && ../../$(BIN)/molecule test

bench: deps image
	$(BIN)/python bench/lab.py
	$(BIN)/python bench/scheduler.py
	$(BIN)/python bench/launch.py
	$(BIN)/python bench/noop.py

constraints:
	$(BIN)/pip freeze --all | grep -v '^-e' > constraints.txt

clean:
	rm -rf .build tests/output
