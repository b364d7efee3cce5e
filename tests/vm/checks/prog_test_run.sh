# The BPF_PROG_TEST_RUN suite of lbtrace-integration (tests/src/prog_test_run.rs) against this
# kernel's verifier and test-run implementation.
. /lbtrace-vm/lib.sh

[ -x /usr/bin/lbtrace-integration ] || skip "the integration test binary is not in the initramfs"
# Each test loads its own copy of the programs (the verifier's time dominates under emulation) and
# touches nothing shared: run them on every CPU.
lbtrace-integration --test-threads="$(nproc)" prog_test_run >/tmp/ptr.out 2>&1
rc=$?
cat /tmp/ptr.out
summary=$(grep '^test result:' /tmp/ptr.out | tail -n 1 | sed 's/^test result: //; s/; finished in.*//')
# The first failure's message: the line after its "panicked at".
first=$(grep -A1 -m1 'panicked at' /tmp/ptr.out | tail -n 1 | cut -c1-240)
[ "$rc" -eq 0 ] || fail "exit $rc: ${summary:-no summary}${first:+; first failure: $first}"
grep -q '^test result: ok\. [1-9]' /tmp/ptr.out || fail "no test ran: ${summary:-no summary}"
detail "$summary"
