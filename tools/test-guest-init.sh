#!/bin/sh
# /init of the virtcloud.compute test guest (busybox sh, PID 1).
#
# Built into the initramfs by tools/build-test-image; the console protocol it
# speaks is documented in docs/test-guest.md.  Every protocol line starts with
# "VCGUEST " and is written with a single echo so that it stays atomic on the
# serial console.  PID 1 must never exit: every failure path ends in the tick
# loop, never in "exit".

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH
umask 022

say() {
    # one write per protocol line
    echo "VCGUEST $*"
}

# ---------------------------------------------------------------- basics
mkdir -p /proc /sys /dev /run /tmp /mnt/boot /mnt/cfg /mnt/other /etc /var/log
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o mode=0755 tmpfs /run
exec </dev/console >/dev/console 2>&1
# the firmware/boot loader may leave a partial line (escape sequences) on the
# serial console: start the protocol on a fresh line
echo
hostname vctest
ip link set lo up 2>/dev/null

# modules, in dependency order (written by the build script)
if [ -f /etc/modules.order ]; then
    while read -r mod; do
        [ -n "$mod" ] || continue
        insmod "/lib/modules/$mod" 2>/dev/null
    done </etc/modules.order
fi

KERNEL=$(uname -r)
WANT_VARIANT=
# shellcheck disable=SC2013  # words, not lines
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vcvariant=*) WANT_VARIANT=${arg#vcvariant=} ;;
    esac
done

# ---------------------------------------------------------------- ACPI power button
# busybox acpid reads /dev/input/event* (button.ko + evdev.ko) and runs
# /etc/acpi/PWRF/00000080 for KEY_POWER.
mkdir -p /etc/acpi/PWRF
cat >/etc/acpi/PWRF/00000080 <<'EOF'
#!/bin/sh
[ -e /run/shutdown ] && exit 0
: >/run/shutdown
echo "VCGUEST SHUTDOWN" >/dev/console
sync
umount /mnt/cfg /mnt/other 2>/dev/null
umount /mnt/boot 2>/dev/null || mount -o remount,ro /mnt/boot 2>/dev/null
sync
poweroff -f
EOF
chmod 0755 /etc/acpi/PWRF/00000080
i=0
while [ ! -e /dev/input/event0 ] && [ $i -lt 20 ]; do usleep 50000; i=$((i + 1)); done
acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid

# ---------------------------------------------------------------- disk helpers
# Filesystem label of a FAT (whole disk, no partition table) or ISO 9660
# block device, read straight from its superblock; empty when neither.
fs_label() {
    _dev=$1
    if [ "$(dd if="$_dev" bs=1 skip=510 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')" = "55aa" ]; then
        if [ "$(dd if="$_dev" bs=1 skip=82 count=5 2>/dev/null | tr -d '\0')" = "FAT32" ]; then
            _off=71
        elif [ "$(dd if="$_dev" bs=1 skip=54 count=3 2>/dev/null | tr -d '\0')" = "FAT" ]; then
            _off=43
        else
            return 0
        fi
        echo "vfat $(dd if="$_dev" bs=1 skip=$_off count=11 2>/dev/null | tr -d '\0' | sed 's/ *$//')"
    elif [ "$(dd if="$_dev" bs=1 skip=32769 count=5 2>/dev/null | tr -d '\0')" = "CD001" ]; then
        echo "iso9660 $(dd if="$_dev" bs=1 skip=32808 count=32 2>/dev/null | tr -d '\0' | sed 's/ *$//')"
    fi
}

block_devs() {
    for _d in /sys/block/*; do
        _n=${_d##*/}
        case "$_n" in loop*|ram*|'*') continue ;; esac
        echo "$_n"
    done
}

# DISKS_NOW="vda=<bytes> vdb=<bytes> ..." with shell builtins only, no fork
# (it runs every second in the tick loop)
disks_line() {
    _out=
    for _d in /sys/block/*; do
        _n=${_d##*/}
        case "$_n" in loop*|ram*|'*') continue ;; esac
        _s=0
        read -r _s <"$_d/size" 2>/dev/null
        _out="$_out $_n=$((_s * 512))"
    done
    DISKS_NOW=${_out# }
}

# label of every block device, "<dev> <fstype> <label>" per line
scan_labels() {
    for _n in $(block_devs); do
        _l=$(fs_label "/dev/$_n")
        [ -n "$_l" ] && echo "$_n $_l"
    done
}

# ---------------------------------------------------------------- boot disk
# Wait for the virtio disks (virtio_blk probes while insmod runs, but give
# slow hosts a moment), then pick the VCTEST disk whose "variant" matches the
# vcvariant= of the kernel command line (the first VCTEST disk otherwise).
BOOTDEV=
VARIANT=unknown
COUNT=0
i=0
while :; do
    LABELS=$(scan_labels)
    for dev in $(echo "$LABELS" | awk 'toupper($2) == "VFAT" && $3 == "VCTEST" {print $1}'); do
        mount -t vfat -o ro "/dev/$dev" /mnt/boot 2>/dev/null || continue
        if [ -f /mnt/boot/variant ]; then
            v=$(tr -d '\r\n ' </mnt/boot/variant)
            if [ -z "$WANT_VARIANT" ] || [ "$v" = "$WANT_VARIANT" ]; then
                BOOTDEV=$dev
                VARIANT=$v
                break
            fi
        fi
        umount /mnt/boot
    done
    [ -n "$BOOTDEV" ] && break
    i=$((i + 1))
    [ $i -ge 50 ] && break
    usleep 200000
done

if [ -n "$BOOTDEV" ]; then
    # bump the boot counter on the boot disk, then go back to read-only so
    # the FAT stays clean even when the VM is destroyed without a shutdown
    mount -o remount,rw /mnt/boot
    COUNT=0
    read -r COUNT </mnt/boot/bootcount 2>/dev/null
    case "$COUNT" in ''|*[!0-9]*) COUNT=0 ;; esac
    COUNT=$((COUNT + 1))
    echo "$COUNT" >/mnt/boot/bootcount
    sync
    mount -o remount,ro /mnt/boot
    sync
    # FAT's sync sends no cache flush to the disk: without one the new counter may
    # sit in the hypervisor's caches (qcow2 metadata) and be lost if the VM is
    # killed (a host crash, evacuate). fsync on the block device sends the flush.
    dd if=/dev/null of="/dev/$BOOTDEV" bs=512 count=0 conv=notrunc,fsync 2>/dev/null
else
    say "ERROR no boot disk (VCTEST vfat with a variant file) found"
fi
say "BOOT count=$COUNT variant=$VARIANT kernel=$KERNEL"

# ---------------------------------------------------------------- rescue
if [ "$VARIANT" = rescue ]; then
    RDEV=
    RCOUNT=
    for dev in $(echo "$LABELS" | awk 'toupper($2) == "VFAT" && $3 == "VCTEST" {print $1}'); do
        [ "$dev" = "$BOOTDEV" ] && continue
        mount -t vfat -o ro "/dev/$dev" /mnt/other 2>/dev/null || continue
        v=$(tr -d '\r\n ' </mnt/other/variant 2>/dev/null)
        if [ "$v" = normal ]; then
            RDEV=$dev
            read -r RCOUNT </mnt/other/bootcount 2>/dev/null
        fi
        umount /mnt/other
        [ -n "$RDEV" ] && break
    done
    if [ -n "$RDEV" ]; then
        say "RESCUE disk=$RDEV bootcount=${RCOUNT:-0}"
    else
        say "RESCUE none"
    fi
fi

# ---------------------------------------------------------------- disks
disks_line
DISKS=$DISKS_NOW
say "DISKS $DISKS"

# ---------------------------------------------------------------- config drive
MDHOST=
MDPING=
CFGDEV=
CFGTYPE=
for line in $(echo "$LABELS" | awk 'tolower($3) == "config-2" {print $1 ":" $2}'); do
    CFGDEV=${line%%:*}
    CFGTYPE=${line#*:}
    break
done
if [ -n "$CFGDEV" ] && mount -t "$CFGTYPE" -o ro "/dev/$CFGDEV" /mnt/cfg 2>/dev/null; then
    md=/mnt/cfg/openstack/latest/meta_data.json
    if [ -f "$md" ]; then
        say "METADATA $(tr -d '\r\n' <"$md")"
        MDHOST=$(tr -d '\r\n' <"$md" | sed -n 's/.*"hostname"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
        # meta.ping: space-separated addresses to ping after READY
        MDPING=$(tr -d '\r\n' <"$md" | sed -n 's/.*"ping"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
    else
        say "METADATA none"
    fi
    ud=/mnt/cfg/openstack/latest/user_data
    if [ -f "$ud" ]; then
        say "USERDATA $(head -n 1 "$ud" | tr -d '\r' | cut -c 1-200)"
    fi
    umount /mnt/cfg
else
    say "METADATA none"
fi
if [ -n "$MDHOST" ]; then
    hostname "$MDHOST"
    : >/run/hostname-from-metadata
    say "HOSTNAME $MDHOST source=metadata"
fi

# ---------------------------------------------------------------- network
cat >/etc/udhcpc.script <<'EOF'
#!/bin/sh
# udhcpc event script: configure the address, default route and resolv.conf
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    rm -f "/run/ip.$interface"
    ;;
bound|renew)
    prefix=$(ipcalc -p "$ip" "$subnet" 2>/dev/null | sed 's/PREFIX=//')
    [ -n "$prefix" ] || prefix=24
    old=
    [ -f "/run/ip.$interface" ] && read -r old <"/run/ip.$interface"
    if [ "$old" != "$ip/$prefix" ]; then
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/$prefix" dev "$interface"
    fi
    if [ -n "$router" ]; then
        while ip route del default dev "$interface" 2>/dev/null; do :; done
        for r in $router; do
            ip route add default via "$r" dev "$interface" && break
        done
    fi
    : >/etc/resolv.conf.new
    [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf.new
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf.new; done
    mv /etc/resolv.conf.new /etc/resolv.conf
    if [ "$old" != "$ip/$prefix" ]; then
        echo "$ip/$prefix" >"/run/ip.$interface"
        mac=$(cat "/sys/class/net/$interface/address")
        echo "VCGUEST IP $interface $ip/$prefix mac=$mac" >/dev/console
        if [ -n "$hostname" ] && [ ! -e /run/hostname-from-metadata ] && [ ! -e /run/hostname-from-dhcp ]; then
            hostname "$hostname"
            : >/run/hostname-from-dhcp
            echo "VCGUEST HOSTNAME $hostname source=dhcp" >/dev/console
        fi
    fi
    ;;
esac
exit 0
EOF
chmod 0755 /etc/udhcpc.script

NIC=
for n in /sys/class/net/*; do
    n=${n##*/}
    [ "$n" = lo ] && continue
    [ -e "/sys/class/net/$n/device" ] || continue
    NIC=$n
    break
done
if [ -n "$NIC" ]; then
    ip link set "$NIC" up
    # runs for ever: retries until it gets a lease, then renews it
    udhcpc -f -i "$NIC" -s /etc/udhcpc.script -t 5 -T 2 -A 3 -x hostname:"$(hostname)" \
        >/dev/null 2>&1 &
    i=0
    while [ ! -f "/run/ip.$NIC" ] && [ $i -lt 100 ]; do
        usleep 200000
        i=$((i + 1))
    done
    [ -f "/run/ip.$NIC" ] || say "IP none"
else
    say "IP none"
fi

say "READY"

# ---------------------------------------------------------------- ping
# meta.ping of the config drive: ping each address (one background job each,
# so the ticks start at once) until it answers or 60 s have passed, then one
# PING line per address.
ping_until() {
    _ip=$1
    case "$_ip" in
        *[!0-9.]*|.*|*.|*..*) say "PING $_ip fail"; return ;;
    esac
    _end=$(($(date +%s) + 60))
    while :; do
        if ping -c 3 -W 2 "$_ip" >/dev/null 2>&1; then
            say "PING $_ip ok"
            return
        fi
        if [ "$(date +%s)" -ge "$_end" ]; then
            say "PING $_ip fail"
            return
        fi
        sleep 1
    done
}
set -f  # the words of meta.ping are never file name patterns
for ip in $MDPING; do
    ping_until "$ip" &
done
set +f

# ---------------------------------------------------------------- tick loop
# The counter lives only in this shell's memory: it proves memory continuity
# (pause, suspend, live migration).  A changed set of block devices (hot
# plug) prints a new DISKS line.
TICK=0
while :; do
    sleep 1
    TICK=$((TICK + 1))
    say "TICK $TICK"
    disks_line
    if [ "$DISKS_NOW" != "$DISKS" ]; then
        DISKS=$DISKS_NOW
        say "DISKS $DISKS"
    fi
done
