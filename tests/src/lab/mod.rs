//! The network-namespace lab: a client, a router, a load balancer and three HTTP backends, on
//! IPv4 and IPv6 (ULA) at once.
//!
//! ```text
//!  client ─────────── router ─────────── lb ══ br0 ─┬─ be1  10.10.3.11  fd00:10:3::11
//!  10.10.1.2   10.10.1.1  10.10.2.1   10.10.2.2     ├─ be2  10.10.3.12  fd00:10:3::12
//!  fd00:10:1::2 ::1       fd00:10:2::1 fd00:10:2::2 └─ be3  10.10.3.13  fd00:10:3::13
//!                                     VIP 10.10.2.10/32, fd00:10:2::10/128 on the external iface
//!                                     br0: 10.10.3.1/24, fd00:10:3::1/64 (one veth port per backend)
//! ```
//!
//! Every namespace, interface name and process carries a per-lab prefix (`lbt<pid>x<n>`), and
//! every piece is a guard: dropping the [`Lab`] (also while unwinding from a failed assertion)
//! kills its processes and deletes its namespaces, which takes their interfaces with them.
//! Load balancers ([`lb`]) and faults ([`fault`]) are added on top by the tests that need them;
//! [`scenario`] names the combinations `lbtrace check` is tested (and demonstrated) on.

pub mod fault;
pub mod lb;
pub mod netns;
pub mod process;
pub mod scenario;

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use tempfile::TempDir;

pub use self::{
    fault::Fault,
    lb::{HaProxy, HaProxyMode, IptablesNat, NftDnat, Nginx, RoutedVip},
    netns::Netns,
    process::{Finished, Proc},
};

/// Address family of a test's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// `addr` with `port` in the notation lbtrace and the tcpdump parser use.
    pub fn tuple(self, addr: &str, port: u16) -> String {
        match self {
            Family::V4 => format!("{addr}:{port}"),
            Family::V6 => format!("[{addr}]:{port}"),
        }
    }

    /// `addr` and `port` as a URL's authority.
    pub fn url(self, addr: &str, port: u16) -> String {
        format!("http://{}/", self.tuple(addr, port))
    }
}

/// A pair of IPv4 / IPv6 addresses.
#[derive(Clone, Copy, Debug)]
pub struct Addr {
    pub v4: &'static str,
    pub v6: &'static str,
}

impl Addr {
    pub fn get(&self, family: Family) -> &'static str {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }
}

pub const CLIENT: Addr = Addr {
    v4: "10.10.1.2",
    v6: "fd00:10:1::2",
};
pub const ROUTER_CLIENT_SIDE: Addr = Addr {
    v4: "10.10.1.1",
    v6: "fd00:10:1::1",
};
pub const ROUTER_LB_SIDE: Addr = Addr {
    v4: "10.10.2.1",
    v6: "fd00:10:2::1",
};
pub const LB_EXTERNAL: Addr = Addr {
    v4: "10.10.2.2",
    v6: "fd00:10:2::2",
};
pub const VIP: Addr = Addr {
    v4: "10.10.2.10",
    v6: "fd00:10:2::10",
};
pub const LB_INTERNAL: Addr = Addr {
    v4: "10.10.3.1",
    v6: "fd00:10:3::1",
};
/// The port the load balancers listen on at the VIP.
pub const VIP_PORT: u16 = 80;
/// The port HAProxy terminating TLS listens on at the VIP.
pub const TLS_PORT: u16 = 443;
/// The name in the TLS certificate of the VIP (CN and subjectAltName).
pub const TLS_NAME: &str = "lbtrace.test";
/// The port every backend's HTTP server listens on.
pub const BACKEND_PORT: u16 = 8080;
/// The bridge holding the lb's internal address, with one port per backend.
pub const BRIDGE: &str = "br0";

/// One backend: its short name (also the name its HTTP server answers with) and addresses.
#[derive(Clone, Copy, Debug)]
pub struct Backend {
    pub name: &'static str,
    pub addr: Addr,
}

pub const BACKENDS: [Backend; 3] = [
    Backend {
        name: "be1",
        addr: Addr {
            v4: "10.10.3.11",
            v6: "fd00:10:3::11",
        },
    },
    Backend {
        name: "be2",
        addr: Addr {
            v4: "10.10.3.12",
            v6: "fd00:10:3::12",
        },
    },
    Backend {
        name: "be3",
        addr: Addr {
            v4: "10.10.3.13",
            v6: "fd00:10:3::13",
        },
    },
];

/// The backends' HTTP server: dual-stack on port 8080, `GET /` answers 200 with
/// `hello from <name>` (`GET /big`: [`BIG_BODY`] bytes, for path-MTU faults), HTTP/1.0 (the
/// server closes every connection, so no connection outlives its request). Prints `ready` once it
/// listens. Arguments: name, port, and for a faulty backend ([`Answer`]) the status to answer (0:
/// close the connection without an answer) and the seconds to wait before answering.
const HTTP_SERVER: &str = r#"
import http.server, socket, socketserver, sys, time
name = sys.argv[1]
status = int(sys.argv[3]) if len(sys.argv) > 3 else 200
delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if delay > 0:
            time.sleep(delay)
        if status == 0:
            self.close_connection = True
            return
        if self.path.startswith("/big"):
            body = b"x" * 200000
        else:
            body = ("hello from %s\n" % name).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Not HTTPServer.server_bind: it resolves the host name (slow without DNS).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]
server = Server(("::", int(sys.argv[2])), Handler)
print("ready", flush=True)
server.serve_forever()
"#;

/// How a backend's HTTP server answers `GET /`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Answer {
    /// 0: the connection is closed without an answer.
    pub status: u16,
    /// How long it waits before answering.
    pub delay: Duration,
}

impl Answer {
    pub const OK: Answer = Answer {
        status: 200,
        delay: Duration::ZERO,
    };
}

/// Bytes of the backends' `GET /big` answer (what the server script writes).
pub const BIG_BODY: usize = 200_000;

/// The lab. Fields drop in declaration order: processes first, then namespaces, then the
/// temporary directory.
#[derive(Debug)]
pub struct Lab {
    /// The backends' HTTP servers, in [`BACKENDS`] order; `None` while one is stopped (a fault).
    servers: Mutex<Vec<Option<Proc>>>,
    pub client: Netns,
    pub router: Netns,
    pub lb: Netns,
    /// be1, be2, be3 (in [`BACKENDS`] order).
    pub backends: Vec<Netns>,
    /// The lb's external interface (towards the router), holding the VIPs.
    pub lb_ext: String,
    /// The bridge ports in the lb namespace, one per backend.
    pub bridge_ports: Vec<String>,
    /// The unique prefix of every name of this lab.
    pub prefix: String,
    dir: TempDir,
}

impl Lab {
    /// Builds the topology and starts the backends' HTTP servers (waits until they accept).
    pub fn new() -> Lab {
        let mut lab = Lab::topology();
        lab.start_backends();
        lab
    }

    /// Builds the namespaces, links, addresses and routes; no process runs yet.
    pub fn topology() -> Lab {
        let prefix = netns::unique_prefix();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .expect("creating the lab's temporary directory");
        let ns = |role: &str| Netns::create(&format!("{prefix}-{role}"));
        // Each namespace is owned as soon as it exists, so a failure below still deletes it.
        let mut lab = Lab {
            servers: Mutex::new(Vec::new()),
            client: ns("client"),
            router: ns("router"),
            lb: ns("lb"),
            backends: BACKENDS.iter().map(|b| ns(b.name)).collect(),
            lb_ext: format!("{prefix}l"),
            bridge_ports: (1..=BACKENDS.len())
                .map(|i| format!("{prefix}p{i}"))
                .collect(),
            prefix,
            dir,
        };
        lab.wire();
        lab
    }

    fn wire(&mut self) {
        let p = &self.prefix;
        for ns in [&self.router, &self.lb] {
            ns.sysctl("net.ipv4.ip_forward", "1");
            ns.sysctl("net.ipv6.conf.all.forwarding", "1");
        }

        // client <-> router
        let (client_if, router_client_if) = (format!("{p}c"), format!("{p}rc"));
        veth(&self.client, &client_if, &self.router, &router_client_if);
        addr(&self.client, &client_if, CLIENT, 24);
        addr(&self.router, &router_client_if, ROUTER_CLIENT_SIDE, 24);
        default_routes(&self.client, ROUTER_CLIENT_SIDE);

        // router <-> lb
        let router_lb_if = format!("{p}rl");
        veth(&self.router, &router_lb_if, &self.lb, &self.lb_ext);
        addr(&self.router, &router_lb_if, ROUTER_LB_SIDE, 24);
        addr(&self.lb, &self.lb_ext, LB_EXTERNAL, 24);
        addr_host(&self.lb, &self.lb_ext, VIP);
        default_routes(&self.lb, ROUTER_LB_SIDE);
        // The VIPs are in the router's connected subnet; the backends' subnet is routed to the
        // lb (not needed by the tests here, but a routed return path for later LB kinds).
        route(&self.router, "10.10.3.0/24", LB_EXTERNAL.v4);
        route(&self.router, "fd00:10:3::/64", LB_EXTERNAL.v6);

        // lb's bridge and the backends
        self.lb
            .exec(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
        self.lb.exec(&["ip", "link", "set", BRIDGE, "up"]);
        addr(&self.lb, BRIDGE, LB_INTERNAL, 24);
        for (i, (be, be_ns)) in BACKENDS.iter().zip(&self.backends).enumerate() {
            let be_if = format!("{p}b{}", i + 1);
            let port = &self.bridge_ports[i];
            veth(be_ns, &be_if, &self.lb, port);
            self.lb.exec(&["ip", "link", "set", port, "master", BRIDGE]);
            addr(be_ns, &be_if, be.addr, 24);
            default_routes(be_ns, LB_INTERNAL);
        }
    }

    fn start_backends(&mut self) {
        let servers = (0..BACKENDS.len()).map(|i| Some(self.spawn_server(i)));
        *self.servers() = servers.collect();
    }

    fn servers(&self) -> MutexGuard<'_, Vec<Option<Proc>>> {
        // A panic while holding the lock (a failed start) leaves the list usable.
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts backend `i`'s HTTP server and waits until it accepts.
    fn spawn_server(&self, i: usize) -> Proc {
        self.spawn_server_answering(i, Answer::OK)
    }

    /// Starts backend `i`'s HTTP server answering `answer` and waits until it accepts.
    fn spawn_server_answering(&self, i: usize, answer: Answer) -> Proc {
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let be = &BACKENDS[i];
        let port = BACKEND_PORT.to_string();
        let (status, delay) = (
            answer.status.to_string(),
            answer.delay.as_secs_f64().to_string(),
        );
        let argv = [python, "-c", HTTP_SERVER, be.name, &port, &status, &delay];
        let mut proc = self.backends[i].spawn(&format!("http-{}", be.name), self.dir.path(), &argv);
        proc.wait_until("listening", Duration::from_secs(10), |p| {
            p.stdout().contains("ready")
        });
        proc
    }

    /// Stops backend `i`'s HTTP server (SIGKILL): its port is closed, so SYNs to it get a RST.
    /// Waits until nothing listens there any more.
    pub fn stop_backend_server(&self, i: usize) {
        let proc = self.servers().get_mut(i).and_then(Option::take);
        if let Some(proc) = proc {
            proc.kill();
        }
        let closed = process::poll(Duration::from_secs(5), || {
            (!self.backends[i].listening(BACKEND_PORT)).then_some(())
        });
        assert!(
            closed.is_some(),
            "{}'s port {BACKEND_PORT} still open after its server was killed",
            BACKENDS[i].name
        );
    }

    /// Replaces backend `i`'s HTTP server with one answering `answer` (waits until it accepts).
    pub fn answer_backend_server(&self, i: usize, answer: Answer) {
        self.stop_backend_server(i);
        let proc = self.spawn_server_answering(i, answer);
        let mut servers = self.servers();
        if servers.len() <= i {
            servers.resize_with(i + 1, || None);
        }
        servers[i] = Some(proc);
    }

    /// Starts backend `i`'s HTTP server again if it is stopped.
    pub fn start_backend_server(&self, i: usize) {
        if self.servers().get(i).is_some_and(Option::is_some) {
            return;
        }
        let proc = self.spawn_server(i);
        let mut servers = self.servers();
        if servers.len() <= i {
            servers.resize_with(i + 1, || None);
        }
        servers[i] = Some(proc);
    }

    /// A directory for the lab's files (configs, captures, process output), removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The namespace of backend `i` (0-based, [`BACKENDS`] order).
    pub fn backend(&self, i: usize) -> &Netns {
        &self.backends[i]
    }

    /// Starts HAProxy (L7 HTTP) on the lb; see [`HaProxy`].
    pub fn haproxy(&self) -> HaProxy {
        HaProxy::start(&self.lb, self.dir(), &BACKENDS)
    }

    /// Starts HAProxy in `mode` on the lb, with `retries 1`; see [`HaProxy::start_mode`]. For
    /// [`HaProxyMode::Tls`], [`Lab::tls_pem`] makes the certificate.
    pub fn haproxy_mode(&self, mode: &HaProxyMode) -> HaProxy {
        HaProxy::start_mode(&self.lb, self.dir(), &BACKENDS, mode)
    }

    /// Starts nginx (`proxy_pass` to an upstream of the backends) on the lb; see [`Nginx`].
    pub fn nginx(&self) -> Nginx {
        Nginx::start(&self.lb, self.dir(), &BACKENDS)
    }

    /// Loads the nftables DNAT (L4) load balancer on the lb; see [`NftDnat`].
    pub fn nft_dnat(&self) -> NftDnat<'_> {
        NftDnat::load(&self.lb, &BACKENDS)
    }

    /// The nftables DNAT load balancer with SNAT: connections to the backends are masqueraded to
    /// the lb's internal address, so the backends answer the lb whatever their routes.
    pub fn nft_dnat_snat(&self) -> NftDnat<'_> {
        NftDnat::load_snat(&self.lb, &BACKENDS)
    }

    /// A self-signed certificate and its key for [`TLS_NAME`] (valid 2 days) in one PEM file in
    /// the lab's directory, as HAProxy's `crt` wants it; made on first use.
    pub fn tls_pem(&self) -> PathBuf {
        let pem = self.dir().join("lbtrace-test.pem");
        if pem.exists() {
            return pem;
        }
        let (key, cert) = (self.dir().join("tls.key"), self.dir().join("tls.crt"));
        process::run(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={TLS_NAME}"),
            "-addext",
            &format!("subjectAltName=DNS:{TLS_NAME}"),
            "-days",
            "2",
            "-keyout",
            &key.to_string_lossy(),
            "-out",
            &cert.to_string_lossy(),
        ]);
        let read = |p: &Path| {
            std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        };
        std::fs::write(&pem, read(&cert) + &read(&key)).expect("writing the TLS PEM file");
        pem
    }

    /// `curl` from the client to `url`; returns the HTTP code curl reports (`000` when it got no
    /// answer) and curl's stderr.
    pub fn curl(&self, url: &str, timeout_s: u32) -> (String, String) {
        curl(&self.client, url, timeout_s)
    }

    /// `GET http://VIP/` from the client, asserting 200; returns the response body.
    pub fn get_vip(&self, family: Family) -> String {
        let url = family.url(VIP.get(family), VIP_PORT);
        let out = self
            .client
            .output(&["curl", "-sS", "-m", "5", "-w", "\n%{http_code}", &url]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        assert!(
            out.status.success() && code == "200",
            "GET {url} from the client: code {code}, exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        body.to_owned()
    }

    /// The lb's bridge port towards backend `i` (0-based).
    pub fn bridge_port(&self, i: usize) -> &str {
        &self.bridge_ports[i]
    }

    /// Backend `i`'s own interface (in its namespace), towards the lb's bridge.
    pub fn backend_if(&self, i: usize) -> String {
        format!("{}b{}", self.prefix, i + 1)
    }

    /// The tuples of the VIP (port 80) and every backend (port 8080) in `family`.
    pub fn endpoints(&self, family: Family) -> (String, Vec<String>) {
        let vip = family.tuple(VIP.get(family), VIP_PORT);
        let backends = BACKENDS
            .iter()
            .map(|b| family.tuple(b.addr.get(family), BACKEND_PORT))
            .collect();
        (vip, backends)
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

/// `curl` from `ns`: the HTTP code (`000` without an answer) and curl's stderr.
pub fn curl(ns: &Netns, url: &str, timeout_s: u32) -> (String, String) {
    let timeout = timeout_s.to_string();
    let out = ns.output(&[
        "curl",
        "-sS",
        "-m",
        &timeout,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    ]);
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// A veth pair with one end in each namespace, both up.
pub fn try_veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    // Created directly inside the namespaces: the names never appear in the host's namespace.
    let argv = [
        "ip",
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ];
    process::try_run(&argv)?;
    a.try_exec(&["ip", "link", "set", a_if, "up"])?;
    b.try_exec(&["ip", "link", "set", b_if, "up"])?;
    Ok(())
}

/// [`try_veth`] for tests: panics instead of failing.
pub(crate) fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    try_veth(a, a_if, b, b_if).unwrap_or_else(|e| panic!("{e:#}"));
}

pub(crate) fn addr(ns: &Netns, dev: &str, addr: Addr, v4_len: u8) {
    ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{}/{v4_len}", addr.v4),
        "dev",
        dev,
    ]);
    ns.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{}/64", addr.v6),
        "dev",
        dev,
        "nodad",
    ]);
}

fn addr_host(ns: &Netns, dev: &str, addr: Addr) {
    ns.exec(&["ip", "addr", "add", &format!("{}/32", addr.v4), "dev", dev]);
    ns.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{}/128", addr.v6),
        "dev",
        dev,
        "nodad",
    ]);
}

fn default_routes(ns: &Netns, via: Addr) {
    ns.exec(&["ip", "route", "add", "default", "via", via.v4]);
    ns.exec(&["ip", "-6", "route", "add", "default", "via", via.v6]);
}

fn route(ns: &Netns, prefix: &str, via: &str) {
    ns.exec(&["ip", "route", "add", prefix, "via", via]);
}
