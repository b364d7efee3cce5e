#!/bin/busybox sh
# /init of the initramfs that `cargo xtask vmtest` boots (xtask/src/vm): mounts what lbtrace needs,
# loads the modules listed in /lib/modules/load.list, runs each check of /lbtrace-vm/checks.list
# ("name timeout-seconds" per line) in turn and prints its result on the console:
#
#   LBT-RESULT <name> <pass|fail|skip> <milliseconds> <detail>
#
# followed, for a check that did not pass (or every check with /lbtrace-vm/verbose), by its output
# as "LBT-LOG <name>: <line>". Then powers the VM off. The host parses these lines.

/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp TERM=dumb

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpffs /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
ip link set lo up

now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }

echo "LBT-BOOT $(uname -r) $(now_ms)"

# Modules, dependencies first (the host resolved them).
start=$(now_ms)
failed=""
loaded=0
while read -r module; do
    if insmod "/lib/modules/$module.ko" >/tmp/insmod.log 2>&1; then
        loaded=$((loaded + 1))
    else
        failed="$failed $module($(tail -n 1 /tmp/insmod.log))"
    fi
done </lib/modules/load.list
if [ -z "$failed" ]; then
    echo "LBT-RESULT boot pass $(($(now_ms) - start)) kernel $(uname -r), $loaded modules loaded"
else
    echo "LBT-RESULT boot fail $(($(now_ms) - start)) insmod failed:$failed"
fi

while read -r name timeout; do
    [ -n "$name" ] || continue
    export LBT_DETAIL="/tmp/$name.detail" LBT_NAME="$name"
    : >"$LBT_DETAIL"
    start=$(now_ms)
    # TERM first so that the check's trap cleans up, KILL 5 s later.
    (cd /tmp && timeout -s TERM -k 5 "$timeout" sh "/lbtrace-vm/checks/$name.sh") \
        >"/tmp/$name.log" 2>&1 </dev/null
    rc=$?
    ms=$(($(now_ms) - start))
    detail=$(tail -n 1 "$LBT_DETAIL")
    case $rc in
    0) status=pass ;;
    77) status=skip ;;
    124 | 137 | 143)
        status=fail
        detail="timed out after ${timeout}s${detail:+ (last: $detail)}"
        ;;
    *)
        status=fail
        [ -n "$detail" ] || detail="exit status $rc"
        ;;
    esac
    echo "LBT-RESULT $name $status $ms $detail"
    if [ "$status" != pass ] || [ -e /lbtrace-vm/verbose ]; then
        sed "s/^/LBT-LOG $name: /" "/tmp/$name.log"
    fi
done </lbtrace-vm/checks.list

echo "LBT-DONE $(now_ms)"
poweroff -f
