# lbtrace doctor --format json: exits 0 and says "ok":true. The detail names the checks that
# failed or warned (docs/output.md#doctor).
. /lbtrace-vm/lib.sh

lbtrace doctor --format json >/tmp/doctor.out 2>/tmp/doctor.err
rc=$?
cat /tmp/doctor.out /tmp/doctor.err
# "name":"x","status":"fail|warn","detail":"..." per check, as "x (status): detail".
findings=$(grep -o '"name":"[^"]*","status":"\(fail\|warn\)","detail":"[^"]*"' /tmp/doctor.out |
    sed 's/"name":"\([^"]*\)","status":"\([^"]*\)","detail":"\([^"]*\)"/\1 (\2): \3/' |
    tr '\n' ';' | sed 's/;$//; s/;/; /g')
grep -q '"ok":true' /tmp/doctor.out || fail "doctor says not ok (exit $rc): ${findings:-no findings parsed}"
[ "$rc" -eq 0 ] || fail "doctor exited $rc although ok: $findings"
detail "ok${findings:+; $findings}"
