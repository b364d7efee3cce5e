# After lbtrace is killed with SIGKILL, the next lbtrace start (and `lbtrace cleanup` where it
# exists) leaves nothing of lbtrace behind: no tc filter, no clsact qdisc it created, no program
# loaded. While the second one runs, only its own filters are attached (the stale ones are gone).
. /lbtrace-vm/lib.sh

lab_up
qdiscs_before=$(tc qdisc show dev "$LB_IF")
lbtrace_start first trace --vip "$LB_IP:8080" --iface "$LB_IF"
echo "attached:"
bpf_filters "$LB_IF"
tc qdisc show dev "$LB_IF"
kill -9 "$LBT_PID"
wait "$LBT_PID"
LBT_PID=""
sleep 1
stale=$(bpf_filters "$LB_IF" | wc -l)
echo "after SIGKILL: $stale lbtrace tc filter(s), programs: $(lbtrace_progs | tr '\n' ' ')"
bpf_filters "$LB_IF"

lbtrace_start second trace --vip "$LB_IP:8080" --iface "$LB_IF"
# The leftover checks below look for these programs: make sure they see them while lbtrace runs.
[ -n "$(lbtrace_progs)" ] || fail "bpftool lists no lbtrace program while lbtrace runs: $(bpftool prog show 2>&1 | head -n 3)"
running=$(bpf_filters "$LB_IF")
echo "while the next lbtrace runs:"
echo "$running"
for hook in ingress egress; do
    n=$(echo "$running" | grep -c "^$hook:")
    [ "$n" -le 1 ] || fail "$n lbtrace filters on $hook while the next lbtrace runs: the stale ones were not removed"
done
lbtrace_stop second

cleanup_note="no lbtrace cleanup command"
if lbtrace --help 2>&1 | grep -q '^ *cleanup'; then
    lbtrace cleanup || fail "lbtrace cleanup exited $?"
    cleanup_note="lbtrace cleanup ran"
fi

# Programs are freed once their last reference goes; give the kernel a moment.
waited=0
while [ -n "$(lbtrace_progs)" ] && [ "$waited" -lt 10 ]; do
    sleep 1
    waited=$((waited + 1))
done
left_filters=$(bpf_filters "$LB_IF")
left_progs=$(lbtrace_progs | tr '\n' ' ')
qdiscs_after=$(tc qdisc show dev "$LB_IF")
[ -z "$left_filters" ] || fail "lbtrace tc filters left: $(echo "$left_filters" | tr '\n' ' ')"
[ "$qdiscs_after" = "$qdiscs_before" ] || fail "qdiscs changed: before [$qdiscs_before] after [$qdiscs_after]"
[ -z "$left_progs" ] || fail "lbtrace programs still loaded: $left_progs"
detail "nothing left ($stale stale filter(s) after SIGKILL; $cleanup_note)"
