# lbtrace trace --format json on the LB side of the veth catches, for each of 3 connections from
# the client namespace (fixed source ports), the client's SYN, the SYN-ACK and both FINs, each
# with the right tuple and direction; nothing is lost. A fourth connection, to a server on 8081
# that closes without reading what the client sent, is reset by the LB's socket: a `reset`
# object (tcp:tcp_send_reset, on every kernel: the socket is a full one).
. /lbtrace-vm/lib.sh

lab_up
server 8080
busybox nc -ll -p 8081 -e /bin/busybox sleep 1 &
SERVER_PIDS="$SERVER_PIDS $!"
sleep 0.2
lbtrace_start trace trace --vip "$LB_IP:8080" --vip "$LB_IP:8081" --iface "$LB_IF"
for port in 40001 40002 40003; do
    connect "$port" 8080 || fail "connection from port $port failed"
done
connect 40004 8081 || true
sleep 1
lbtrace_stop trace

out=/tmp/trace.out
vip="$LB_IP:8080"
missing=""
found=0
for port in 40001 40002 40003; do
    client="$CLIENT_IP:$port"
    for want in \
        "\"dir\":\"in\",\"src\":\"$client\",\"dst\":\"$vip\",\"flags\":\"S\"" \
        "\"dir\":\"out\",\"src\":\"$vip\",\"dst\":\"$client\",\"flags\":\"S.\"" \
        "\"dir\":\"in\",\"src\":\"$client\",\"dst\":\"$vip\",\"flags\":\"F" \
        "\"dir\":\"out\",\"src\":\"$vip\",\"dst\":\"$client\",\"flags\":\"F"; do
        if has_event "$out" "$want"; then
            found=$((found + 1))
        else
            missing="$missing [$want]"
        fi
    done
done
[ -z "$missing" ] || fail "$found of 12 control packets; missing:$missing"
grep -q '"type":"summary".*"lost":0,' "$out" || fail "12 of 12 control packets, but the summary reports losses or is missing"
# Retransmissions are fine; a SYN of another connection is not (the filter or a tuple is wrong).
others=$(grep '"flags":"S"' "$out" | grep -vE "\"src\":\"$CLIENT_IP:4000[1234]\"")
[ -z "$others" ] || fail "12 of 12 control packets, but also SYNs of other tuples: $others"
# The summary's capabilities are what this kernel gives: TCX from 6.6, per-CPU rings from 5.12,
# drop reasons from 5.17, the retransmission tracepoint on every kernel of the matrix, every
# reset sent from 6.10 (tcp:tcp_send_reset with its reason: the matrix's 6.12 BTF has it, 5.10
# and 6.1 have the two-argument tracepoint: full sockets only) (docs/output.md).
kv=$(($(uname -r | sed 's/^\([0-9]*\)\.\([0-9]*\).*/\1 * 100 + \2/')))
attach=legacy_tc rings=ringbuf drops=location
[ "$kv" -ge 606 ] && attach=tcx
[ "$kv" -ge 512 ] && rings=percpu
[ "$kv" -ge 517 ] && drops=reason
resets=sockets
[ "$kv" -ge 610 ] && resets=all
caps="\"capabilities\":{\"attach\":\"$attach\",\"xdp\":\"off\",\"packet_rings\":\"$rings\",\"drops\":\"$drops\",\"retransmissions\":\"tracepoint\",\"resets\":\"$resets\"}"
grep '"type":"summary"' "$out" | grep -qF "$caps" ||
    fail "12 of 12 control packets, but the summary does not say $caps: $(grep '"type":"summary"' "$out" | grep -o '"capabilities":{[^}]*}')"
seen="3 connections: 12 of 12 control packets (SYN, SYN-ACK, FIN both ways) with their tuples, 0 lost; $attach, $rings, drops by $drops, retransmissions by tracepoint, resets: $resets"
# The unread data's abort: this host's TCP stack reset its socket, with no segment to answer.
abort="\"hook\":\"tcp_send_reset\",\"dir\":\"out\",\"state\":\"CLOSE\",\"active\":true,"
grep '"type":"reset"' "$out" | grep -F "\"src\":\"$LB_IP:8081\"" | grep -qF "$abort" ||
    fail "no reset of the aborting socket on :8081 ($abort): $(grep '"type":"reset"' "$out")"
detail "$seen; the socket closed with unread data on :8081: a reset object (active, CLOSE)"
