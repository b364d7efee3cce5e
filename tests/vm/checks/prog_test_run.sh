# The BPF_PROG_TEST_RUN suite of lbtrace-integration (tests/src/prog_test_run.rs) against this
# kernel's verifier and test-run implementation.
. /lbtrace-vm/lib.sh

[ -x /usr/bin/lbtrace-integration ] || skip "the integration test binary is not in the initramfs"
lbtrace-integration --test-threads=1 prog_test_run >/tmp/ptr.out 2>&1
rc=$?
cat /tmp/ptr.out
summary=$(grep '^test result:' /tmp/ptr.out | tail -n 1 | sed 's/^test result: //; s/; finished in.*//')
failed=$(grep -E '^test .* FAILED$' /tmp/ptr.out | sed 's/^test \(.*\) \.\.\. FAILED$/\1/' | tr '\n' ' ')
[ "$rc" -eq 0 ] || fail "exit $rc: ${summary:-no summary}${failed:+; failed: $failed}"
grep -q '^test result: ok\. [1-9]' /tmp/ptr.out || fail "no test ran: ${summary:-no summary}"
detail "$summary"
