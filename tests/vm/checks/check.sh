# lbtrace check on a healthy service: the LB (this VM's root namespace) serves the VIP itself
# with an HTTP server (a proxy, Layer 7), one backend answers HTTP in a backend namespace, and a
# client fetches the VIP a few times while the check observes. Expected: exit 0, mode l7, all
# four steps pass, the backend probe connected with HTTP 200.
. /lbtrace-vm/lib.sh

lab_up
backend_up
http_server "$LB_IP:8080"
http_server "$BACKEND_IP:9090" backend

lbtrace_start check check --vip "$LB_IP:8080" --backend "$BACKEND_IP:9090" \
    --iface "$LB_IF" --iface "$BACKEND_IF" --observe 90s --probe-timeout 20s
for i in 1 2 3; do
    # HTTP by hand (the static busybox's wget crashes in glibc's resolver), like a browser:
    # no half-close after the request, the server closes after its response (HTTP/1.0).
    printf 'GET / HTTP/1.0\r\nHost: vip\r\n\r\n' |
        ip netns exec client /bin/busybox timeout 20 "$NC" -w 10 "$LB_IP" 8080 >/tmp/client.$i 2>&1
    head -n 1 /tmp/client.$i | grep -q ' 200 ' || fail "client request $i to the VIP: $(head -n 1 /tmp/client.$i)"
    sleep 0.5
done
# The check ends by itself once every step passed (or after --observe).
lbtrace_stop check wait

out=/tmp/check.out
grep -q '"mode":"l7"' "$out" || fail "mode is not l7: $(grep -o '"mode":"[^"]*"' "$out")"
for step in client-to-lb lb-handling lb-to-backend return-path; do
    grep -q "\"name\":\"$step\",\"status\":\"pass\"" "$out" ||
        fail "step $step: $(grep -o "\"name\":\"$step\",\"status\":\"[^\"]*\",\"summary\":\"[^\"]*\"" "$out")"
done
grep -q "\"addr\":\"$BACKEND_IP:9090\",\"tcp\":\"connected\",\"http_status\":200" "$out" ||
    fail "backend probe: $(grep -o '"backends":\[{[^}]*' "$out" | cut -c1-200)"
[ "$LBT_RC" -eq 0 ] || fail "lbtrace check exited $LBT_RC although every step passed"
detail "mode l7, 4 of 4 steps pass, backend connected with HTTP 200"
