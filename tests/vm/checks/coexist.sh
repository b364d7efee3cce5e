# A tc filter that was there before lbtrace (clsact + matchall at pref 1, action continue) stays
# in place and keeps running while lbtrace traces and after it exits; lbtrace still sees the
# connection; the clsact qdisc lbtrace did not create stays.
. /lbtrace-vm/lib.sh

# Packets the pre-existing filter's action counted.
counted() {
    tc -s filter show dev "$LB_IF" ingress | sed -n 's/.*Sent [0-9]* bytes \([0-9]*\) pkt.*/\1/p' | head -n 1
}

lab_up
tc qdisc add dev "$LB_IF" clsact || fail "cannot add clsact"
on_exit "tc qdisc del dev $LB_IF clsact 2>/dev/null"
tc filter add dev "$LB_IF" ingress pref 1 handle 1 matchall action continue ||
    fail "cannot add the matchall filter"
filter_before=$(tc filter show dev "$LB_IF" ingress | grep matchall)
server 8080
n0=$(counted)

lbtrace_start coexist trace --vip "$LB_IP:8080" --iface "$LB_IF"
echo "while lbtrace runs:"
tc -s filter show dev "$LB_IF" ingress
connect 40021 8080 || fail "connection while lbtrace runs failed"
n1=$(counted)
lbtrace_stop coexist
has_event /tmp/coexist.out "\"dir\":\"in\",\"src\":\"$CLIENT_IP:40021\",\"dst\":\"$LB_IP:8080\",\"flags\":\"S\"" ||
    fail "lbtrace did not see the SYN of the connection while the other filter ran"
[ "${n1:-0}" -gt "${n0:-0}" ] || fail "the existing filter counted nothing while lbtrace ran ($n0 -> $n1 packets)"

tc qdisc show dev "$LB_IF" | grep -q clsact || fail "the clsact qdisc is gone after lbtrace exited"
filter_after=$(tc filter show dev "$LB_IF" ingress | grep matchall)
[ "$filter_after" = "$filter_before" ] ||
    fail "the existing filter changed: before [$filter_before] after [$filter_after]"
connect 40022 8080 || fail "connection after lbtrace exited failed"
n2=$(counted)
[ "${n2:-0}" -gt "$n1" ] || fail "the existing filter counted nothing after lbtrace exited ($n1 -> $n2 packets)"
left=$(bpf_filters "$LB_IF")
[ -z "$left" ] || fail "lbtrace filters left after it exited: $(echo "$left" | tr '\n' ' ')"
detail "the existing filter stayed and counted packets before, during and after lbtrace ($n0 -> $n1 -> $n2)"
