//! `dom0-probe`: hostile checks of `/dev/microvisor`, run inside Dom0 by the scenario tests.
//!
//! Every check prints one line, `ok: ...` or `FAIL: ...`, and the command exits 0 only if
//! every check passed.
//!
//! - `open-as-nobody`: a child switched to uid/gid 65534 (no supplementary groups, hence no
//!   capabilities) opens the device; passes only if the open fails with `EACCES` (the node
//!   is 0600 root) or `EPERM` (the module wants `CAP_SYS_ADMIN`).
//! - `bad-ioctl` (as root): an unknown ioctl number (`ENOTTY`), `buf_len` of 1 MiB
//!   (`EINVAL`), a non-zero reserved field (`EINVAL`), a NULL buffer (`EFAULT`), an unknown
//!   operation (`ENOSYS`, from the microvisor), `DomainInfo` for domain 4000 (`ESRCH`), and
//!   finally a valid `HostInfo` that must succeed, so a device that refuses everything
//!   cannot pass.
//! - `release-domain DOMID` and `bad-foreign DOMID`: foreign mappings and events, see
//!   [`foreign`].
//! - `grant DOMID GREF`: grant mappings and copies against a `hello grant-demo` guest, see
//!   [`grant`].
//! - `net-selftest`: TAPs and a bridge for the PV network back-end, see [`net`].
#![forbid(unsafe_code)]

pub mod foreign;
pub mod grant;
pub mod net;

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command as Process;

use shared_abi::control::{CONTROL_VERSION, ControlOp, DomainInfo, HostInfo, MAX_BUFFER};

use crate::device::{Buffer, Command, Device, IOCTL_UNKNOWN, RawCall};
use crate::proto::{errno_name, errno_text, os_error_text};

/// The uid and gid of `nobody`.
pub const NOBODY: u32 = 65534;

/// The hidden subcommand the `open-as-nobody` child runs.
pub const CHILD_SUBCOMMAND: &str = "__open-as-self";

const EPERM: i32 = 1;
const ESRCH: i32 = 3;
const EACCES: i32 = 13;
const EFAULT: i32 = 14;
const EINVAL: i32 = 22;
const ENOTTY: i32 = 25;
const ENOSYS: i32 = 38;

/// Exit codes of the child: how its open went.
mod child_exit {
    pub(super) const OPENED: i32 = 0;
    pub(super) const EACCES: i32 = 10;
    pub(super) const EPERM: i32 = 11;
    pub(super) const OTHER: i32 = 12;
    pub(super) const STILL_PRIVILEGED: i32 = 13;
}

fn name(errno: i32) -> String {
    errno_name(errno).map_or_else(|| format!("errno {errno}"), str::to_owned)
}

/// Runs in the child: reports (by exit code) whether opening `device` worked.
#[must_use]
pub fn child_open(device: &Path) -> i32 {
    // Make sure the switch happened: a child still running as root would prove nothing.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let uid_line = status.lines().find(|l| l.starts_with("Uid:"));
        let nobody = NOBODY.to_string();
        if uid_line.is_some_and(|l| l.split_whitespace().skip(1).any(|id| id != nobody)) {
            eprintln!("child: not running as uid {NOBODY}: {uid_line:?}");
            return child_exit::STILL_PRIVILEGED;
        }
    }
    match Device::open(device) {
        Ok(_) => child_exit::OPENED,
        Err(e) => match e.raw_os_error() {
            Some(EACCES) => child_exit::EACCES,
            Some(EPERM) => child_exit::EPERM,
            _ => {
                eprintln!("child: open failed: {}", os_error_text(&e));
                child_exit::OTHER
            }
        },
    }
}

/// `open-as-nobody`: re-executes this binary as uid/gid 65534 to open `device`. Returns
/// whether the check passed.
pub fn open_as_nobody(device: &Path, out: &mut dyn Write) -> io::Result<bool> {
    let what = format!("open {} as uid {NOBODY}", device.display());
    let exe = std::env::current_exe().unwrap_or_else(|_| "dom0-probe".into());
    let status = Process::new(&exe)
        .arg(CHILD_SUBCOMMAND)
        .arg(device)
        .uid(NOBODY)
        .gid(NOBODY)
        .status();
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            writeln!(
                out,
                "FAIL: {what}: cannot start the child as uid {NOBODY}: {} (run dom0-probe as root, from a path uid {NOBODY} can execute)",
                os_error_text(&e)
            )?;
            return Ok(false);
        }
    };
    let (pass, outcome) = match status.code() {
        Some(child_exit::EACCES) => (true, "refused with EACCES".to_owned()),
        Some(child_exit::EPERM) => (true, "refused with EPERM".to_owned()),
        Some(child_exit::OPENED) => (false, "the open succeeded".to_owned()),
        Some(child_exit::STILL_PRIVILEGED) => {
            (false, "the child did not drop its privileges".to_owned())
        }
        Some(child_exit::OTHER) => (
            false,
            "refused with an unexpected error (see above)".to_owned(),
        ),
        _ => (false, format!("the child ended abnormally ({status})")),
    };
    if pass {
        writeln!(out, "ok: {what}: {outcome}")?;
    } else {
        writeln!(out, "FAIL: {what}: {outcome}, expected EACCES or EPERM")?;
    }
    Ok(pass)
}

/// One check: a call's result and the one expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was tried.
    pub what: String,
    /// The result or errno.
    pub result: Result<u64, i32>,
    /// The expected result or errno.
    pub expected: Result<u64, i32>,
}

fn report(check: &Check, out: &mut dyn Write) -> io::Result<bool> {
    let show = |r: &Result<u64, i32>| match *r {
        Ok(n) => format!("success ({n})"),
        Err(errno) => name(errno),
    };
    let pass = check.result == check.expected;
    if pass {
        writeln!(out, "ok: {}: {}", check.what, show(&check.result))?;
    } else {
        let got = match check.result {
            Ok(n) => format!("success ({n})"),
            Err(errno) => errno_text(errno),
        };
        writeln!(
            out,
            "FAIL: {}: got {got}, expected {}",
            check.what,
            show(&check.expected)
        )?;
    }
    Ok(pass)
}

fn issue(
    dev: &Device,
    command: Command,
    op: u64,
    arg: u64,
    buffer: Buffer<'_>,
    reserved: u32,
) -> Result<u64, i32> {
    dev.raw(RawCall {
        command,
        op,
        arg,
        version: CONTROL_VERSION,
        buffer,
        reserved,
    })
}

/// `bad-ioctl`: issues the malformed calls listed in the module docs on `device`. Returns
/// whether every check passed.
pub fn bad_ioctl(device: &Path, out: &mut dyn Write) -> io::Result<bool> {
    let dev = match Device::open(device) {
        Ok(d) => d,
        Err(e) => {
            writeln!(
                out,
                "FAIL: open {}: {} (is microvisor.ko loaded, and is dom0-probe root?)",
                device.display(),
                os_error_text(&e)
            )?;
            return Ok(false);
        }
    };
    let call = |command, op: ControlOp, arg, buffer: Buffer<'_>, reserved| {
        issue(&dev, command, op as u64, arg, buffer, reserved)
    };
    let mut host = [0u8; size_of::<HostInfo>()];
    let mut huge = vec![0u8; 1 << 20];
    let mut page = vec![0u8; MAX_BUFFER];
    let mut dom = [0u8; size_of::<DomainInfo>()];

    let checks = [
        Check {
            what: format!("unknown ioctl number {IOCTL_UNKNOWN:#010x}"),
            result: call(
                Command::Unknown,
                ControlOp::HostInfo,
                0,
                Buffer::Slice(&mut host),
                0,
            ),
            expected: Err(ENOTTY),
        },
        Check {
            what: "buf_len of 1 MiB".to_owned(),
            result: call(
                Command::Control,
                ControlOp::HostInfo,
                0,
                Buffer::Slice(&mut huge),
                0,
            ),
            expected: Err(EINVAL),
        },
        Check {
            what: "reserved field not zero".to_owned(),
            result: call(
                Command::Control,
                ControlOp::HostInfo,
                0,
                Buffer::Slice(&mut host),
                1,
            ),
            expected: Err(EINVAL),
        },
        Check {
            what: "NULL buffer pointer".to_owned(),
            result: call(
                Command::Control,
                ControlOp::HostInfo,
                0,
                Buffer::Null {
                    len: size_of::<HostInfo>() as u32,
                },
                0,
            ),
            expected: Err(EFAULT),
        },
        Check {
            what: "unknown control operation 0xdead".to_owned(),
            result: issue(
                &dev,
                Command::Control,
                0xdead,
                0,
                Buffer::Slice(&mut page),
                0,
            ),
            expected: Err(ENOSYS),
        },
        Check {
            what: "DomainInfo for domain 4000".to_owned(),
            result: call(
                Command::Control,
                ControlOp::DomainInfo,
                4000,
                Buffer::Slice(&mut dom),
                0,
            ),
            expected: Err(ESRCH),
        },
        Check {
            what: "valid HostInfo still works".to_owned(),
            result: call(
                Command::Control,
                ControlOp::HostInfo,
                0,
                Buffer::Slice(&mut host),
                0,
            ),
            expected: Ok(size_of::<HostInfo>() as u64),
        },
    ];
    let mut passed = 0;
    for check in &checks {
        passed += usize::from(report(check, out)?);
    }
    writeln!(out, "bad-ioctl: {passed} of {} checks ok", checks.len())?;
    Ok(passed == checks.len())
}
