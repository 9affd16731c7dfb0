//! `/dev/microvisor`: the kernel module's control ioctl. The only unsafe code in the crate.
//!
//! The ioctl argument is `shared_abi::control::ioctl::IoctlControl` (`struct mv_control` in
//! `dom0/kmod/microvisor.h`; the two are kept in sync by hand and both assert their size
//! and the ioctl number). The module copies `buf_len` bytes from `buf` into a zeroed kernel
//! page, issues the control hypercall, and on success copies the page back into `buf`.
#![allow(
    unsafe_code,
    reason = "the ioctl system call; each block argues its case"
)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use shared_abi::control::CONTROL_VERSION;
use shared_abi::control::ioctl::{IOCTL_CONTROL, IOCTL_TYPE, IoctlControl};

use crate::microvisor::Microvisor;

/// Default path of the device node.
pub const DEVICE_PATH: &str = "/dev/microvisor";

/// `EINVAL`, for a buffer too long to describe in `buf_len`.
const EINVAL: i32 = 22;
/// `EIO`, for a failure that left no errno (cannot happen with a conforming libc).
const EIO: i32 = 5;

/// Which ioctl command to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `IOCTL_CONTROL`.
    Control,
    /// A command the module does not know: `_IOWR('M', 0x7f, struct mv_control)`. It has
    /// the same direction and size as `IOCTL_CONTROL`, so a driver that honours the encoded
    /// size can touch nothing but the argument struct. For `dom0-probe`.
    Unknown,
}

/// The ioctl number of [`Command::Unknown`].
pub const IOCTL_UNKNOWN: u32 = (IOCTL_CONTROL & !0xff) | 0x7f;
const _: () = assert!(IOCTL_UNKNOWN >> 8 & 0xff == IOCTL_TYPE as u32);

impl Command {
    fn number(self) -> u32 {
        match self {
            Self::Control => IOCTL_CONTROL,
            Self::Unknown => IOCTL_UNKNOWN,
        }
    }
}

/// The buffer an ioctl hands the module.
#[derive(Debug)]
pub enum Buffer<'a> {
    /// A real buffer; `buf_len` is its length.
    Slice(&'a mut [u8]),
    /// A NULL pointer with the given `buf_len` (the module must fail with `EFAULT`). For
    /// `dom0-probe`.
    Null {
        /// The `buf_len` to claim.
        len: u32,
    },
}

/// Every field of one ioctl, including ones a well-behaved caller never sets (for the
/// hostile checks of `dom0-probe`).
#[derive(Debug)]
pub struct RawCall<'a> {
    /// The ioctl command.
    pub command: Command,
    /// `op` (`RDI`).
    pub op: u64,
    /// `arg` (`R10`).
    pub arg: u64,
    /// `version` (`R8`).
    pub version: u64,
    /// The buffer and its length.
    pub buffer: Buffer<'a>,
    /// `reserved`; must be zero for the module to accept the call.
    pub reserved: u32,
}

/// An open `/dev/microvisor`.
#[derive(Debug)]
pub struct Device {
    file: File,
}

impl Device {
    /// Opens the device node at `path` read-write (close-on-exec).
    ///
    /// # Errors
    /// The `open` error: `ENOENT` without the module, `EACCES`/`EPERM` without root.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Self { file })
    }

    /// Issues one ioctl exactly as described by `call`. Returns the non-negative ioctl
    /// result or the positive errno.
    ///
    /// # Errors
    /// The errno of a failed ioctl; `EINVAL` without a system call if a slice is longer
    /// than `u32::MAX` bytes.
    pub fn raw(&self, call: RawCall<'_>) -> Result<u64, i32> {
        let (buf, buf_len) = match call.buffer {
            Buffer::Slice(slice) => (
                slice.as_mut_ptr() as u64,
                u32::try_from(slice.len()).map_err(|_| EINVAL)?,
            ),
            Buffer::Null { len } => (0, len),
        };
        let mut ctl = IoctlControl {
            op: call.op,
            arg: call.arg,
            version: call.version,
            buf,
            buf_len,
            reserved: call.reserved,
        };
        // SAFETY: `ioctl` needs a valid descriptor and an argument the command may access.
        // - The descriptor belongs to `self.file`, which outlives the call.
        // - The argument is `ctl`, a live, exclusively borrowed `IoctlControl` (40 bytes,
        //   the size both commands encode), so the module may read and write it.
        // - The module reads and writes at most `buf_len` bytes at `buf`. `buf` is either
        //   the start of the slice in `call.buffer`, exclusively borrowed for the whole call
        //   and exactly `buf_len` bytes long, or 0, where nothing is mapped (Linux refuses
        //   mappings below `vm.mmap_min_addr` and this process never asks for one), so the
        //   module's `copy_from_user` fails with EFAULT without touching memory.
        // - The slice holds plain bytes, so any contents the module writes are valid.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                call.command.number() as libc::Ioctl,
                core::ptr::from_mut(&mut ctl),
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(EIO))
        } else {
            Ok(u64::from(ret.unsigned_abs()))
        }
    }
}

impl Microvisor for Device {
    fn control(&self, op: u64, arg: u64, buf: &mut [u8]) -> Result<u64, i32> {
        self.raw(RawCall {
            command: Command::Control,
            op,
            arg,
            version: CONTROL_VERSION,
            buffer: Buffer::Slice(buf),
            reserved: 0,
        })
    }
}
