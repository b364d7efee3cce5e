//! The scenarios `lbtrace check` is tested on (tests/src/tests/check.rs) and demonstrated with
//! (`cargo xtask demo`): a load balancer kind, a fault and an address family, plus what a client
//! does during the check and how `lbtrace check` is started in the lb namespace.

use std::{
    path::Path,
    process::ExitStatus,
    thread,
    time::{Duration, Instant},
};

use super::{
    Answer, BACKEND_PORT, BACKENDS, Family, Fault, HaProxy, HaProxyMode, Lab, NftDnat, Nginx, Proc,
    RoutedVip, TLS_NAME, VIP, fault::FirewallHook, process::Finished,
};

/// A load balancer on the lab's lb (HAProxy with `retries 1`, see [`HaProxy::start_mode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbKind {
    /// HAProxy `mode http` on VIP:80.
    HaproxyHttp,
    /// HAProxy `mode tcp` on VIP:80.
    HaproxyTcp,
    /// HAProxy terminating TLS on VIP:443 (`mode http`), plain HTTP to the backends.
    HaproxyTls,
    /// nftables DNAT (Layer 4), no SNAT: the backends answer through the lb, their gateway.
    NftDnat,
    /// nftables DNAT with SNAT (masquerade towards the backends).
    NftDnatSnat,
    /// nginx on VIP:80, `proxy_pass` to an upstream of the backends.
    Nginx,
    /// No NAT: the lb routes the VIP to the backends, which hold it themselves
    /// ([`super::RoutedVip`]), like an ECMP tier or IPVS direct routing. IPv4.
    Routed,
}

impl LbKind {
    /// The VIP's port.
    pub fn port(self) -> u16 {
        match self {
            LbKind::HaproxyTls => super::TLS_PORT,
            _ => super::VIP_PORT,
        }
    }

    pub fn tls(self) -> bool {
        self == LbKind::HaproxyTls
    }

    /// Whether it forwards the client's packets (NAT) instead of proxying.
    pub fn layer4(self) -> bool {
        matches!(self, LbKind::NftDnat | LbKind::NftDnatSnat | LbKind::Routed)
    }

    pub fn describe(self) -> &'static str {
        match self {
            LbKind::HaproxyHttp => "HAProxy, mode http",
            LbKind::HaproxyTcp => "HAProxy, mode tcp",
            LbKind::HaproxyTls => "HAProxy terminating TLS (mode http), plain HTTP to the backends",
            LbKind::NftDnat => "nftables DNAT (Layer 4), no SNAT",
            LbKind::NftDnatSnat => "nftables DNAT (Layer 4) with SNAT (masquerade)",
            LbKind::Nginx => "nginx, proxy_pass to an upstream of the backends",
            LbKind::Routed => {
                "the VIP routed to the backends without NAT (ECMP; each backend holds the VIP)"
            }
        }
    }
}

/// A fault of the lab ([`super::fault`]); backends by index (0-based, [`BACKENDS`] order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    None,
    UpstreamDrop,
    /// The lb's own firewall: the input chain for a proxy, prerouting (before DNAT) for Layer 4.
    LbFirewall,
    BackendRefused(usize),
    BackendFiltered(usize),
    BackendHostDown(usize),
    NoRoute,
    AllBackendsDown,
    BackendsBypassLb,
    RepliesDropped,
    /// HAProxy with `maxconn 1` and `backlog 1`, held by three idle clients.
    AcceptQueueFull,
    /// The backend's HTTP server answers 500.
    BackendErrors(usize),
    /// The backend's HTTP server answers after [`SLOW_BACKEND_DELAY`], past the LB's
    /// [`SLOW_SERVER_TIMEOUT`] (HAProxy's `timeout server`): clients get a 504.
    BackendSlow(usize),
    /// The backend's HTTP server answers after [`SLOW_BACKEND_DELAY`], within the LB's
    /// `timeout server` (HAProxy's default in the lab, 10 s): clients sent there wait for it.
    BackendSlowWaited(usize),
    /// The backend's HTTP server accepts and answers only after [`HANGING_BACKEND_DELAY`],
    /// longer than the check's probe timeout and HAProxy's `timeout server` (10 s).
    BackendHangs(usize),
    /// The backend's HTTP server reads each request and closes the connection without an answer.
    BackendDrops(usize),
    /// A path-MTU black hole between the lb and the client; the client fetches `/big` (a
    /// 200 KB answer) when `large`, `/` otherwise.
    PathMtuBlackHole {
        large: bool,
    },
}

/// How late a [`FaultKind::BackendHangs`] backend answers.
pub const HANGING_BACKEND_DELAY: Duration = Duration::from_secs(30);

/// How late a [`FaultKind::BackendSlow`] backend answers.
pub const SLOW_BACKEND_DELAY: Duration = Duration::from_millis(1500);
/// HAProxy's `timeout server` in front of a slow backend.
pub const SLOW_SERVER_TIMEOUT: Duration = Duration::from_secs(1);

/// One scenario: `name` is what `cargo xtask demo NAME` takes, and with `-` as `_` the suffix of
/// its test, `check_<name>`.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub lb: LbKind,
    pub fault: FaultKind,
    pub family: Family,
    /// What is wrong, in one line.
    pub about: &'static str,
    /// `check` runs with `--data` (the data-path mode): the scenario's finding needs it.
    pub data: bool,
}

impl Scenario {
    /// The scenario checked with `--data`.
    const fn with_data(self) -> Self {
        Self { data: true, ..self }
    }
}

const fn sc(
    name: &'static str,
    lb: LbKind,
    fault: FaultKind,
    family: Family,
    about: &'static str,
) -> Scenario {
    Scenario {
        name,
        lb,
        fault,
        family,
        about,
        data: false,
    }
}

use self::{FaultKind as F, LbKind as L};

/// Every scenario, healthy ones first.
#[rustfmt::skip]
pub const SCENARIOS: &[Scenario] = &[
    sc("haproxy-http-healthy", L::HaproxyHttp, F::None, Family::V4,
        "HAProxy (http) in front of 3 healthy backends"),
    sc("haproxy-tcp-healthy", L::HaproxyTcp, F::None, Family::V4,
        "HAProxy (tcp) in front of 3 healthy backends"),
    sc("haproxy-tls-healthy", L::HaproxyTls, F::None, Family::V4,
        "HAProxy terminating TLS on :443 in front of 3 healthy backends"),
    sc("nft-dnat-healthy", L::NftDnat, F::None, Family::V4,
        "nftables DNAT (L4, no SNAT) in front of 3 healthy backends"),
    sc("nft-dnat-snat-healthy", L::NftDnatSnat, F::None, Family::V4,
        "nftables DNAT with SNAT in front of 3 healthy backends"),
    sc("haproxy-http-v6-healthy", L::HaproxyHttp, F::None, Family::V6,
        "HAProxy (http) on an IPv6 VIP in front of 3 healthy IPv6 backends"),
    sc("routed-healthy", L::Routed, F::None, Family::V4,
        "the VIP routed to 3 healthy backends without NAT (ECMP; each holds the VIP); replies back through the LB"),
    sc("routed-direct-return", L::Routed, F::BackendsBypassLb, Family::V4,
        "the VIP routed to the backends without NAT, replies straight to the client (direct server return)"),
    sc("haproxy-http-upstream-drop", L::HaproxyHttp, F::UpstreamDrop, Family::V4,
        "a router before the LB drops the clients' SYNs"),
    sc("haproxy-http-lb-firewall", L::HaproxyHttp, F::LbFirewall, Family::V4,
        "the LB host's own firewall (input chain) drops the VIP's traffic"),
    sc("nft-dnat-lb-firewall", L::NftDnat, F::LbFirewall, Family::V4,
        "the LB host's own firewall (prerouting, before DNAT) drops the VIP's traffic"),
    sc("haproxy-http-backend-refused", L::HaproxyHttp, F::BackendRefused(1), Family::V4,
        "be2's HTTP server is stopped: it refuses connections"),
    sc("haproxy-http-v6-backend-refused", L::HaproxyHttp, F::BackendRefused(1), Family::V6,
        "be2's HTTP server is stopped, IPv6"),
    sc("haproxy-tcp-backend-refused", L::HaproxyTcp, F::BackendRefused(1), Family::V4,
        "be2's HTTP server is stopped, behind HAProxy in tcp mode"),
    sc("nft-dnat-snat-backend-refused", L::NftDnatSnat, F::BackendRefused(1), Family::V4,
        "be2's HTTP server is stopped, behind nftables DNAT with SNAT"),
    sc("haproxy-http-backend-filtered", L::HaproxyHttp, F::BackendFiltered(1), Family::V4,
        "be2's firewall drops port 8080: connections time out"),
    sc("haproxy-http-backend-host-down", L::HaproxyHttp, F::BackendHostDown(1), Family::V4,
        "be2 is down: the LB's ARP requests go unanswered"),
    sc("nft-dnat-backend-host-down", L::NftDnat, F::BackendHostDown(1), Family::V4,
        "be2 is down behind nftables DNAT: forwarded SYNs die in the LB's ARP queue"),
    sc("haproxy-http-v6-backend-host-down", L::HaproxyHttp, F::BackendHostDown(1), Family::V6,
        "be2 is down, IPv6: the LB's neighbour solicitations go unanswered"),
    sc("haproxy-http-no-route", L::HaproxyHttp, F::NoRoute, Family::V4,
        "the LB has no route to the backends' subnet"),
    sc("haproxy-http-all-backends-down", L::HaproxyHttp, F::AllBackendsDown, Family::V4,
        "every backend's HTTP server is stopped: HAProxy answers 503"),
    sc("nft-dnat-all-backends-down", L::NftDnat, F::AllBackendsDown, Family::V4,
        "every backend's HTTP server is stopped, behind nftables DNAT"),
    sc("nft-dnat-asymmetric-return", L::NftDnat, F::BackendsBypassLb, Family::V4,
        "DNAT without SNAT, and the backends' default route skips the LB"),
    sc("haproxy-http-replies-dropped", L::HaproxyHttp, F::RepliesDropped, Family::V4,
        "a router drops the LB's replies (SYN-ACKs) to the client"),
    sc("haproxy-http-accept-queue-full", L::HaproxyHttp, F::AcceptQueueFull, Family::V4,
        "HAProxy (maxconn 1, backlog 1) is held by idle clients: its accept queue is full"),
    sc("nginx-healthy", L::Nginx, F::None, Family::V4,
        "nginx (proxy_pass) in front of 3 healthy backends"),
    sc("haproxy-http-backend-errors", L::HaproxyHttp, F::BackendErrors(1), Family::V4,
        "be2 answers every request with HTTP 500"),
    sc("nginx-backend-errors", L::Nginx, F::BackendErrors(1), Family::V4,
        "be2 answers every request with HTTP 500, behind nginx"),
    sc("haproxy-http-backend-slow", L::HaproxyHttp, F::BackendSlow(1), Family::V4,
        "be2 answers after 1.5 s, past HAProxy's timeout server (1 s): clients get 504"),
    sc("haproxy-http-backend-slow-waited", L::HaproxyHttp, F::BackendSlowWaited(1), Family::V4,
        "be2 answers after 1.5 s, within HAProxy's timeout server (10 s): step 3 names it slow from the traffic (check --data)").with_data(),
    sc("nginx-backend-slow", L::Nginx, F::BackendSlow(1), Family::V4,
        "be2 answers after 1.5 s behind nginx (proxy_read_timeout 10 s): clients sent there wait"),
    sc("haproxy-http-backend-hangs", L::HaproxyHttp, F::BackendHangs(1), Family::V4,
        "be2 accepts requests and answers none (for 30 s): clients sent there time out"),
    sc("haproxy-http-backend-drops", L::HaproxyHttp, F::BackendDrops(1), Family::V4,
        "be2 reads every request and closes the connection without an answer: clients get 502"),
    sc("haproxy-http-path-mtu-black-hole", L::HaproxyHttp, F::PathMtuBlackHole { large: true }, Family::V4,
        "the link to the client has a smaller MTU and ICMP fragmentation-needed is dropped: large replies never arrive"),
    sc("haproxy-http-path-mtu-small-replies", L::HaproxyHttp, F::PathMtuBlackHole { large: false }, Family::V4,
        "the same path-MTU black hole, with small replies only: they all arrive"),
    sc("nft-dnat-path-mtu-black-hole", L::NftDnat, F::PathMtuBlackHole { large: true }, Family::V4,
        "the path-MTU black hole in front of nftables DNAT (Layer 4): the backends' large replies never arrive (check --data)").with_data(),
];

/// The scenario `cargo xtask demo` shows by default: everything looks up, one backend is not.
pub const DEFAULT_DEMO: &str = "haproxy-http-backend-refused";

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// A running load balancer.
#[derive(Debug)]
pub enum LbGuard<'a> {
    HaProxy(HaProxy),
    Nft(NftDnat<'a>),
    Nginx(Nginx),
    Routed(RoutedVip<'a>),
}

/// A scenario set up on a lab. Drops the fault first, then the load balancer.
#[derive(Debug)]
pub struct Setup<'a> {
    pub fault: Option<Fault<'a>>,
    pub lb: LbGuard<'a>,
}

/// One thing the client did, and what came of it.
#[derive(Clone, Debug)]
pub struct ClientResult {
    /// The command, shortened (`curl -m 2 http://10.10.2.10/`).
    pub what: String,
    /// For curl the HTTP code (`000`: no answer); for openssl `ok` or `failed`.
    pub code: String,
    /// curl's or openssl's complaint, if any.
    pub error: String,
    /// When it started, after the client traffic began.
    pub at: Duration,
}

impl Scenario {
    /// The VIP as lbtrace takes it.
    pub fn vip(&self) -> String {
        self.family.tuple(VIP.get(self.family), self.lb.port())
    }

    /// Every backend as lbtrace takes it.
    pub fn backends(&self) -> Vec<String> {
        BACKENDS
            .iter()
            .map(|b| self.family.tuple(b.addr.get(self.family), BACKEND_PORT))
            .collect()
    }

    /// `--vip ... --backend ...` (every backend), for TLS `--tls --sni lbtrace.test`, and
    /// `--data` for a scenario that needs the data-path mode.
    pub fn check_args(&self) -> Vec<String> {
        let mut args = vec!["--vip".to_owned(), self.vip()];
        for b in self.backends() {
            args.extend(["--backend".to_owned(), b]);
        }
        if self.lb.tls() {
            args.extend(["--tls", "--sni", TLS_NAME].map(str::to_owned));
        }
        if self.data {
            args.push("--data".to_owned());
        }
        args
    }

    /// Starts the load balancer, then applies the fault.
    pub fn setup<'a>(&self, lab: &'a Lab) -> Setup<'a> {
        let lb = match self.lb {
            LbKind::HaproxyHttp if self.fault == F::AcceptQueueFull => {
                LbGuard::HaProxy(HaProxy::start_tiny(&lab.lb, lab.dir(), &BACKENDS))
            }
            LbKind::HaproxyHttp if matches!(self.fault, F::BackendSlow(_)) => LbGuard::HaProxy(
                HaProxy::start_server_timeout(&lab.lb, lab.dir(), &BACKENDS, SLOW_SERVER_TIMEOUT),
            ),
            LbKind::HaproxyHttp => LbGuard::HaProxy(lab.haproxy_mode(&HaProxyMode::Http)),
            LbKind::HaproxyTcp => LbGuard::HaProxy(lab.haproxy_mode(&HaProxyMode::Tcp)),
            LbKind::HaproxyTls => {
                LbGuard::HaProxy(lab.haproxy_mode(&HaProxyMode::Tls { pem: lab.tls_pem() }))
            }
            LbKind::NftDnat => LbGuard::Nft(lab.nft_dnat()),
            LbKind::NftDnatSnat => LbGuard::Nft(lab.nft_dnat_snat()),
            LbKind::Nginx => LbGuard::Nginx(lab.nginx()),
            LbKind::Routed => LbGuard::Routed(RoutedVip::start(lab)),
        };
        let hook = if self.lb.layer4() {
            FirewallHook::Prerouting
        } else {
            FirewallHook::Input
        };
        let fault = match self.fault {
            F::None => None,
            F::UpstreamDrop => Some(lab.fault_upstream_drop()),
            F::LbFirewall => Some(lab.fault_lb_firewall(hook)),
            F::BackendRefused(i) => Some(lab.fault_backend_refused(i)),
            F::BackendFiltered(i) => Some(lab.fault_backend_filtered(i)),
            F::BackendHostDown(i) => Some(lab.fault_backend_host_down(i)),
            F::NoRoute => Some(lab.fault_no_route()),
            F::AllBackendsDown => Some(lab.fault_all_backends_down()),
            F::BackendsBypassLb => Some(lab.fault_backends_bypass_lb()),
            F::RepliesDropped => Some(lab.fault_replies_dropped()),
            F::AcceptQueueFull => Some(lab.fault_accept_queue_full()),
            F::BackendErrors(i) => {
                let errors = Answer {
                    status: 500,
                    ..Answer::OK
                };
                Some(lab.fault_backend_answers(i, errors))
            }
            F::BackendSlow(i) | F::BackendSlowWaited(i) => {
                let late = Answer {
                    delay: SLOW_BACKEND_DELAY,
                    ..Answer::OK
                };
                Some(lab.fault_backend_answers(i, late))
            }
            F::BackendDrops(i) => {
                let none = Answer {
                    status: 0,
                    ..Answer::OK
                };
                Some(lab.fault_backend_answers(i, none))
            }
            F::BackendHangs(i) => {
                let never = Answer {
                    delay: HANGING_BACKEND_DELAY,
                    ..Answer::OK
                };
                Some(lab.fault_backend_answers(i, never))
            }
            F::PathMtuBlackHole { .. } => Some(lab.fault_path_mtu_black_hole()),
        };
        Setup { fault, lb }
    }

    /// The client's requests: `curl -m 2` to the VIP (`-k https://lbtrace.test/` resolved to the
    /// VIP for TLS), the same commands the demo shows.
    fn curl_argv(&self) -> Vec<String> {
        let vip = VIP.get(self.family);
        let mut argv: Vec<String> = ["curl", "-sS", "-m", "2", "-o", "/dev/null", "-w"]
            .map(str::to_owned)
            .into();
        argv.push("%{http_code}".to_owned());
        if self.lb.tls() {
            let resolve_addr = match self.family {
                Family::V4 => vip.to_owned(),
                Family::V6 => format!("[{vip}]"),
            };
            argv.extend([
                "-k".to_owned(),
                "--resolve".to_owned(),
                format!("{TLS_NAME}:{}:{resolve_addr}", self.lb.port()),
                format!("https://{TLS_NAME}/"),
            ]);
        } else {
            let mut url = self.family.url(vip, self.lb.port());
            if self.fault == (F::PathMtuBlackHole { large: true }) {
                url.push_str("big");
            }
            argv.push(url);
        }
        argv
    }

    /// Drives client traffic from the client namespace: `requests` curls started 400 ms apart
    /// (each in its own thread, so a hanging one does not delay the next), and for TLS one
    /// `openssl s_client` as well. `report` sees each result as it comes. Returns them in start
    /// order. Takes at most 400 ms x requests + 2 s.
    pub fn drive(
        &self,
        lab: &Lab,
        requests: usize,
        report: &(dyn Fn(&ClientResult) + Sync),
    ) -> Vec<ClientResult> {
        let start = Instant::now();
        let curl = self.curl_argv();
        let shown = format!("curl -m 2 {}", curl.last().map_or("", String::as_str));
        let mut jobs: Vec<(String, Vec<String>)> = (0..requests)
            .map(|_| (shown.clone(), curl.clone()))
            .collect();
        if self.lb.tls() {
            let target = self.family.tuple(VIP.get(self.family), self.lb.port());
            jobs.insert(
                1,
                (
                    format!("openssl s_client -connect {target} -servername {TLS_NAME}"),
                    ["timeout", "3", "openssl", "s_client", "-connect", &target]
                        .into_iter()
                        .chain(["-servername", TLS_NAME])
                        .map(str::to_owned)
                        .collect(),
                ),
            );
        }
        thread::scope(|s| {
            let handles: Vec<_> = jobs
                .into_iter()
                .enumerate()
                .map(|(k, (what, argv))| {
                    let at = Duration::from_millis(400) * u32::try_from(k).unwrap_or(0);
                    let client = &lab.client;
                    s.spawn(move || {
                        let wait = at.saturating_sub(start.elapsed());
                        thread::sleep(wait);
                        let is_openssl = argv.iter().any(|a| a == "s_client");
                        let out = client.output(&argv);
                        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                        let stderr = String::from_utf8_lossy(&out.stderr);
                        let (code, error) = if is_openssl {
                            if out.status.success() && stdout.contains("BEGIN CERTIFICATE") {
                                ("ok".to_owned(), String::new())
                            } else {
                                let err = stderr.lines().next().unwrap_or("").trim().to_owned();
                                ("failed".to_owned(), err)
                            }
                        } else {
                            (stdout, stderr.trim().to_owned())
                        };
                        let r = ClientResult {
                            what,
                            code,
                            error,
                            at,
                        };
                        report(&r);
                        r
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a client thread panicked"))
                .collect()
        })
    }
}

/// A running `lbtrace check` in the lab's lb namespace.
#[derive(Debug)]
pub struct CheckRun {
    proc: Proc,
}

impl CheckRun {
    /// How long lbtrace may take to attach.
    pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

    /// Starts `<bin> check <args> --ready-file <dir>/<name>.ready` in the lb namespace (output in
    /// `<dir>/<name>.std{out,err}`) and waits until it has attached; panics with its output if it
    /// exits first.
    pub fn start<S: AsRef<str>>(lab: &Lab, bin: &Path, name: &str, args: &[S]) -> CheckRun {
        let ready = lab.dir().join(format!("{name}.ready"));
        let _ = std::fs::remove_file(&ready);
        let mut argv = vec![bin.to_string_lossy().into_owned(), "check".to_owned()];
        argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
        argv.push("--ready-file".to_owned());
        argv.push(ready.to_string_lossy().into_owned());
        let mut proc = lab.lb.spawn(name, lab.dir(), &argv);
        proc.wait_until("attached", Self::READY_TIMEOUT, |_| ready.exists());
        CheckRun { proc }
    }

    /// Its exit status once it has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.exited()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Sends `sig` to it.
    pub fn signal(&self, sig: libc::c_int) {
        self.proc.signal(sig);
    }

    /// Waits up to `timeout` for it to end; SIGKILLs it and panics if it does not.
    pub fn wait(self, timeout: Duration) -> Finished {
        self.proc.wait(timeout)
    }
}
