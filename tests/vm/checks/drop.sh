# An nftables rule on the LB drops the client's SYNs to port 8081 (a server listens there, so
# only the rule can drop them): lbtrace reports the drop of that tuple with the reason
# NETFILTER_DROP, or on kernels without drop reasons (< 5.17) a netfilter location.
. /lbtrace-vm/lib.sh

lab_up
server 8081
nft add table inet lbtvm || fail "nft cannot create a table"
on_exit "nft delete table inet lbtvm 2>/dev/null"
nft add chain inet lbtvm input '{ type filter hook input priority 0; }'
nft add rule inet lbtvm input tcp dport 8081 drop || fail "nft cannot add the drop rule"

lbtrace_start drop trace --vip "$LB_IP" --iface "$LB_IF"
connect 40011 8081 && fail "the connection to the dropped port succeeded"
lbtrace_stop drop

tuple="\"src\":\"$CLIENT_IP:40011\",\"dst\":\"$LB_IP:8081\""
drops=$(grep '"type":"drop"' /tmp/drop.out | grep -F -- "$tuple")
[ -n "$drops" ] || fail "no drop event for $CLIENT_IP:40011 > $LB_IP:8081"
first=$(echo "$drops" | head -n 1)
count=$(echo "$drops" | wc -l)
reason=$(echo "$first" | sed -n 's/.*"reason":"\([^"]*\)".*/\1/p')
if [ "$reason" = NETFILTER_DROP ]; then
    detail "$count drop(s) of the SYN reported, reason NETFILTER_DROP"
elif echo "$first" | grep -qE '"(nf_hook_slow|nft_[a-z_]*|nf_[a-z_]*)'; then
    # Kernels without drop reasons (< 5.17): the drop's location, whatever its key, names netfilter.
    detail "$count drop(s) of the SYN reported at a netfilter location (reason: ${reason:-none}): $(echo "$first" | grep -oE '"(nf_hook_slow|nft_[a-z_]*|nf_[a-z_]*)[^"]*"' | head -n 1)"
else
    fail "drop of the SYN reported without NETFILTER_DROP or a netfilter location: $first"
fi
