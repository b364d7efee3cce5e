//! The test list: which checks the guest runs, in order, and what the initramfs must carry for
//! them. Each check is a shell script `tests/vm/checks/<name>.sh` (sourcing `tests/vm/lib.sh`)
//! that exits 0 (pass), 77 (skip) or anything else (fail) and leaves a one-line detail; the
//! guest's /init (`tests/vm/init.sh`) runs it under a timeout and prints its `LBT-RESULT` line.
//!
//! To add a check: write the script, add a [`Check`] here, and add any module it needs to
//! [`MODULES`] and any program to [`TOOLS`].

/// One guest check.
pub struct Check {
    /// The script's name in tests/vm/checks, without `.sh`; the name in results.
    pub name: &'static str,
    /// The guest kills the check after this long (QEMU's emulation is slow: loading lbtrace's
    /// programs alone takes seconds).
    pub timeout_secs: u32,
}

/// The checks, in the order the guest runs them.
pub const CHECKS: &[Check] = &[
    Check {
        name: "doctor",
        timeout_secs: 90,
    },
    Check {
        name: "prog_test_run",
        // About 280 s on 5.10 on 2 shared cores (the ring-buffer variants, TC only), more when
        // other builds load the machine.
        timeout_secs: 600,
    },
    Check {
        name: "trace",
        timeout_secs: 120,
    },
    Check {
        name: "drop",
        timeout_secs: 120,
    },
    Check {
        name: "sigkill",
        timeout_secs: 150,
    },
    Check {
        name: "coexist",
        timeout_secs: 120,
    },
    Check {
        name: "check",
        timeout_secs: 240,
    },
    Check {
        name: "watch",
        timeout_secs: 120,
    },
];

/// The pseudo-check the guest reports first: modules loaded, filesystems mounted.
pub const BOOT: &str = "boot";

/// Kernel modules the checks need (the cloud kernels build them as modules), loaded at boot with
/// their dependencies: the veth pair, clsact and cls_bpf (legacy TC attachment), matchall and
/// gact (the coexistence check's own filter), nf_tables (the drop check's rule).
pub const MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "cls_bpf",
    "cls_matchall",
    "act_gact",
    "nf_tables",
];

/// Host programs copied into the guest with their shared libraries: (program, path in the
/// guest). busybox provides everything else.
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "/usr/sbin/ip"),
    ("tc", "/usr/sbin/tc"),
    ("nft", "/usr/sbin/nft"),
    ("bpftool", "/usr/sbin/bpftool"),
    // netcat-openbsd: busybox's nc cannot bind a source port, the checks need fixed tuples.
    ("nc", "/usr/bin/nc"),
];

/// The checks whose names are in `only` (all when it is empty); errors name an unknown one.
pub fn select(only: &[String]) -> anyhow::Result<Vec<&'static Check>> {
    if only.is_empty() {
        return Ok(CHECKS.iter().collect());
    }
    only.iter()
        .map(|name| {
            CHECKS.iter().find(|c| c.name == name).ok_or_else(|| {
                let names: Vec<&str> = CHECKS.iter().map(|c| c.name).collect();
                anyhow::anyhow!("no check {name}; the checks are {}", names.join(", "))
            })
        })
        .collect()
}
