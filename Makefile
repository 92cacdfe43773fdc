# virtcloud.compute: the two commands are `make demo` and `make test` (as root, on Debian 12).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYTHONPATH := $(CURDIR)/.collections
export ANSIBLE_NOCOLOR := 1

.PHONY: demo test deps image lab-up lab-down units style format sanity lint integration molecule bench clean constraints

demo: deps image
	$(BIN)/ansible-playbook playbooks/lab_up.yml
	$(BIN)/ansible-playbook -i /var/lib/virtcloud-lab/inventory.yml playbooks/demo.yml

test: deps image
	tools/run-suite units style sanity lint integration molecule

deps:
	tools/install-deps $(PYTHON)

image:
	tools/build-test-image

lab-up: deps
	$(BIN)/ansible-playbook playbooks/lab_up.yml

lab-down:
	$(BIN)/ansible-playbook playbooks/lab_down.yml

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
