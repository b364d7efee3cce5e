//! The baseline of the kernel figures: an empty program of the same type (`r0 = verdict; exit`),
//! loaded and test-run through bpf(2) directly (aya loads objects, not raw instructions).
//! Layouts from include/uapi/linux/bpf.h (`union bpf_attr`, the BPF_PROG_LOAD and
//! BPF_PROG_TEST_RUN members); the kernel zero-fills what a shorter attr leaves out.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`: BPF_XDP, BPF_TCX_INGRESS, BPF_TCX_EGRESS.
pub const BPF_XDP: u32 = 37;
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_TCX_EGRESS: u32 = 47;

pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_F_XDP_HAS_FRAGS`: the empty XDP program is frags-aware like lbtrace's `xdp_ingress`.
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;

/// `TC_ACT_UNSPEC` (TCX_NEXT), what lbtrace's TC programs return.
pub const TC_ACT_UNSPEC: i32 = -1;
pub const XDP_PASS: i32 = 2;

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let size = std::mem::size_of::<T>() as libc::c_long;
    // SAFETY: attr points to a live, properly laid out bpf_attr prefix of `size` bytes; the
    // pointers inside it stay valid for the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `mov64 r0, imm; exit`.
fn insns(verdict: i32) -> [u64; 2] {
    // struct bpf_insn { u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm; }, little endian.
    let mov = 0xb7u64 | (u64::from(verdict as u32) << 32); // BPF_ALU64 | BPF_MOV | BPF_K, r0
    let exit = 0x95u64; // BPF_JMP | BPF_EXIT
    [mov, exit]
}

/// An empty program of `prog_type` returning `verdict`.
pub struct EmptyProg {
    fd: OwnedFd,
}

impl EmptyProg {
    pub fn load(prog_type: u32, verdict: i32) -> Result<EmptyProg> {
        let code = insns(verdict);
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..9].copy_from_slice(b"lbt_empty");
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt: 2,
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: if prog_type == BPF_PROG_TYPE_XDP {
                BPF_F_XDP_HAS_FRAGS
            } else {
                0
            },
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: if prog_type == BPF_PROG_TYPE_XDP {
                BPF_XDP
            } else {
                0
            },
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr)
            .with_context(|| format!("BPF_PROG_LOAD of an empty program of type {prog_type}"))?;
        let fd = RawFd::try_from(fd).context("bpf(2) returned an fd out of range")?;
        // SAFETY: BPF_PROG_LOAD returned a new fd that nothing else owns.
        Ok(EmptyProg {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Attaches the program to `ifindex` of the calling thread's network namespace with a bpf_link
/// (`attach_type` BPF_XDP, or BPF_TCX_* at the end of the chain): it detaches when the returned
/// fd closes, also if this process dies.
pub fn link(prog_fd: RawFd, ifindex: u32, attach_type: u32) -> Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: u32::try_from(prog_fd).context("negative fd")?,
        target_ifindex: ifindex,
        attach_type,
        ..LinkCreateAttr::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr).with_context(|| {
        format!("attaching an empty program (attach type {attach_type}) to ifindex {ifindex}")
    })?;
    let fd = RawFd::try_from(fd).context("bpf(2) returned an fd out of range")?;
    // SAFETY: BPF_LINK_CREATE returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Pins the program (or map) `fd` at `path`, in a bpffs.
pub fn pin(fd: RawFd, path: &std::path::Path) -> Result<()> {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = ObjPinAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: u32::try_from(fd).context("negative fd")?,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr).with_context(|| format!("pinning at {}", path.display()))?;
    Ok(())
}

/// What one BPF_PROG_TEST_RUN reported.
#[derive(Clone, Copy, Debug)]
pub struct RunResult {
    pub retval: u32,
    /// The kernel's average per run, in ns (integer: the kernel divides and truncates).
    pub ns: u32,
}

/// BPF_PROG_TEST_RUN of `fd` on `frame`, `repeat` times.
pub fn test_run(fd: RawFd, frame: &[u8], repeat: u32) -> Result<RunResult> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(fd).context("negative fd")?,
        data_size_in: u32::try_from(frame.len())?,
        data_size_out: u32::try_from(out.len())?,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
    if attr.data_size_out as usize != frame.len() {
        bail!(
            "BPF_PROG_TEST_RUN gave back {} bytes for a {}-byte frame",
            attr.data_size_out,
            frame.len()
        );
    }
    Ok(RunResult {
        retval: attr.retval,
        ns: attr.duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_program_bytecode() {
        // mov64 r0, -1: b7 00 0000 ffffffff; exit: 95 00 0000 00000000.
        assert_eq!(insns(-1), [0xffff_ffff_0000_00b7, 0x95]);
        assert_eq!(insns(2), [0x0000_0002_0000_00b7, 0x95]);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::size_of::<TestRunAttr>(), 80);
    }
}
