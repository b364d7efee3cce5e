# Shared by the guest checks (tests/vm/checks/*.sh), sourced by each. The lab: this VM is the LB
# host (the root network namespace); a client namespace reaches it over a veth pair:
#
#   client netns: lbv1 10.77.0.1/24  <-- veth -->  root netns: lbv0 10.77.0.2/24 (servers, lbtrace)
#
# Every helper that creates something registers its removal in `cleanup`, which runs on exit and
# on SIGTERM (the runner's timeout).

# busybox's sh runs its own applets (a reduced ip, tc, nc) before anything on PATH: the checks
# need iproute2's and netcat-openbsd's, so call them by path. Anything that runs a program for
# us (timeout, ip netns exec) gets the full path too.
ip() { /usr/sbin/ip "$@"; }
tc() { /usr/sbin/tc "$@"; }
NC=/usr/bin/nc

LB_IF=lbv0
CLIENT_IF=lbv1
LB_IP=10.77.0.2
CLIENT_IP=10.77.0.1
# Loading and attaching lbtrace's programs is slow under QEMU's emulation.
READY_TIMEOUT=120

CLEANUP=""
SERVER_PIDS=""
LBT_PID=""

# The one-line detail of the result (the last call wins), also in the log.
detail() {
    echo "$*" >>"$LBT_DETAIL"
    echo "detail: $*"
}
fail() {
    detail "$*"
    exit 1
}
skip() {
    detail "$*"
    exit 77
}

cleanup() {
    [ -n "$LBT_PID" ] && kill -9 "$LBT_PID" 2>/dev/null
    for pid in $SERVER_PIDS; do kill "$pid" 2>/dev/null; done
    eval "$CLEANUP"
}
trap cleanup EXIT
trap 'exit 143' TERM

on_exit() { CLEANUP="$*; $CLEANUP"; }

lab_up() {
    ip netns add client || fail "cannot create the client namespace"
    on_exit "ip netns del client 2>/dev/null"
    ip link add "$LB_IF" type veth peer name "$CLIENT_IF" || fail "cannot create the veth pair"
    on_exit "ip link del $LB_IF 2>/dev/null"
    ip link set "$CLIENT_IF" netns client &&
        ip addr add "$LB_IP/24" dev "$LB_IF" &&
        ip link set "$LB_IF" up &&
        ip -n client addr add "$CLIENT_IP/24" dev "$CLIENT_IF" &&
        ip -n client link set "$CLIENT_IF" up &&
        ip -n client link set lo up || fail "cannot set up the veth pair"
}

# A TCP echo server on PORT (every address of the LB), for as many connections as come.
server() {
    busybox nc -ll -p "$1" -e /bin/cat &
    SERVER_PIDS="$SERVER_PIDS $!"
    sleep 0.2
}

# One connection from the client namespace, source port SPORT, to the LB's DPORT: sends a line,
# half-closes, reads the echo. Returns nc's status.
connect() {
    echo "hello from $1" | ip netns exec client /bin/busybox timeout 20 "$NC" -N -w 5 -p "$1" "$LB_IP" "$2"
}

# lbtrace_start NAME COMMAND ARGS...: starts `lbtrace COMMAND ARGS --format json` (trace, watch,
# check) in the background (stdout in /tmp/NAME.out, stderr in /tmp/NAME.err) and waits until it
# has attached (its --ready-file exists).
lbtrace_start() {
    name=$1
    command=$2
    shift 2
    rm -f "/tmp/$name.ready"
    lbtrace "$command" "$@" --format json --ready-file "/tmp/$name.ready" \
        >"/tmp/$name.out" 2>"/tmp/$name.err" &
    LBT_PID=$!
    waited=0
    while [ ! -e "/tmp/$name.ready" ]; do
        if ! kill -0 "$LBT_PID" 2>/dev/null; then
            wait "$LBT_PID"
            rc=$?
            LBT_PID=""
            cat "/tmp/$name.err"
            fail "lbtrace $command exited ($rc) before attaching: $(grep -v '^$' "/tmp/$name.err" | tail -n 1)"
        fi
        [ "$waited" -lt $((READY_TIMEOUT * 10)) ] || fail "lbtrace $command not attached after ${READY_TIMEOUT}s"
        sleep 0.1
        waited=$((waited + 1))
    done
    echo "lbtrace ($name) attached after $((waited / 10)).$((waited % 10))s"
}

# lbtrace_stop NAME: stops the lbtrace started last with SIGINT and fails unless it exits 0
# within 60 s. lbtrace_stop NAME wait: waits up to 150 s for it to end by itself and leaves its
# exit status in LBT_RC for the caller to judge. Shows its output either way.
lbtrace_stop() {
    name=$1
    limit=600
    if [ "$2" = wait ]; then
        limit=1500
    else
        kill -INT "$LBT_PID"
    fi
    waited=0
    while kill -0 "$LBT_PID" 2>/dev/null; do
        if [ "$waited" -ge "$limit" ]; then
            cat "/tmp/$name.err"
            fail "lbtrace $name still running after $((limit / 10))s"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    wait "$LBT_PID"
    LBT_RC=$?
    LBT_PID=""
    echo "--- lbtrace ($name) stderr:"
    cat "/tmp/$name.err"
    echo "--- lbtrace ($name) stdout:"
    cat "/tmp/$name.out"
    echo "---"
    [ "$2" = wait ] || [ "$LBT_RC" -eq 0 ] ||
        fail "lbtrace ($name) exited $LBT_RC: $(grep -v '^$' "/tmp/$name.err" | tail -n 1)"
}

# Whether lbtrace's JSON output FILE has an event with exactly this text (keys in the documented
# order, docs/output.md), e.g. '"dir":"in","src":"10.77.0.1:40001","dst":"10.77.0.2:8080","flags":"S"'.
has_event() {
    grep -qF -- "$2" "$1"
}

# The lbtrace programs still loaded in the kernel (bpftool prog show), one name per line.
lbtrace_progs() {
    bpftool prog show 2>/dev/null | sed -n 's/^[0-9]*: [a-z_]*  *name \([a-z_0-9]*\) .*/\1/p' |
        grep -E '^(tc_ingress|tc_egress|xdp_ingress|tp_kfree_skb|tp_tcp_)' 
}

# lbtrace's tc filters (cls_bpf in direct-action mode) on DEV's ingress and egress hooks.
bpf_filters() {
    for hook in ingress egress; do
        tc filter show dev "$1" "$hook" 2>/dev/null | grep 'direct-action' | sed "s/^/$hook: /"
    done
}

# A second veth pair to a backend namespace (the LB side 10.78.0.1, the backend 10.78.0.2).
BACKEND_IF=lbb0
LB_BACKEND_IP=10.78.0.1
BACKEND_IP=10.78.0.2
backend_up() {
    ip netns add backend || fail "cannot create the backend namespace"
    on_exit "ip netns del backend 2>/dev/null"
    ip link add "$BACKEND_IF" type veth peer name lbb1 || fail "cannot create the backend veth pair"
    on_exit "ip link del $BACKEND_IF 2>/dev/null"
    ip link set lbb1 netns backend &&
        ip addr add "$LB_BACKEND_IP/24" dev "$BACKEND_IF" &&
        ip link set "$BACKEND_IF" up &&
        ip -n backend addr add "$BACKEND_IP/24" dev lbb1 &&
        ip -n backend link set lbb1 up &&
        ip -n backend link set lo up || fail "cannot set up the backend veth pair"
}

# http_server ADDR:PORT [NS]: busybox httpd on ADDR:PORT serving /tmp/www, in namespace NS ("" for the LB's own).
http_server() {
    mkdir -p /tmp/www
    echo "lbtrace vm test" >/tmp/www/index.html
    if [ -n "$2" ]; then
        ip netns exec "$2" /bin/busybox httpd -f -p "$1" -h /tmp/www &
    else
        busybox httpd -f -p "$1" -h /tmp/www &
    fi
    SERVER_PIDS="$SERVER_PIDS $!"
    sleep 0.2
}
