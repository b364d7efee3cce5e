# lbtrace watch (the tripwire) records the client connections to the VIP, and lbtrace dump reads
# them back over its socket: one connection object per client port, each closed without a
# finding. watch exits 0 on SIGINT.
. /lbtrace-vm/lib.sh

lab_up
server 8080
lbtrace_start watch watch --vip "$LB_IP:8080" --iface "$LB_IF"
for port in 40031 40032 40033; do
    connect "$port" 8080 || fail "connection from port $port failed"
done
sleep 2
lbtrace dump --format json >/tmp/dump.out 2>/tmp/dump.err || {
    cat /tmp/dump.err
    fail "lbtrace dump exited $?: $(tail -n 1 /tmp/dump.err)"
}
cat /tmp/dump.out
lbtrace_stop watch

missing=""
for port in 40031 40032 40033; do
    grep -F "\"client\":\"$CLIENT_IP:$port\"" /tmp/dump.out | grep -q '"status":"ok"' ||
        missing="$missing $port($(grep -F "\"client\":\"$CLIENT_IP:$port\"" /tmp/dump.out |
            grep -o '"status":"[^"]*"' | head -n 1))"
done
[ -z "$missing" ] || fail "connections not recorded as ok, by client port:$missing"
detail "3 connections recorded and dumped, each ok"
