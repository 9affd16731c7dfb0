//! `/dev/microvisor`: the kernel module's control ioctl, event reads and foreign-window
//! mappings.
//!
//! The ioctl argument is `shared_abi::control::ioctl::IoctlControl` (`struct mv_control` in
//! `dom0/kmod/microvisor.h`; the two are kept in sync by hand and both assert their size
//! and the ioctl number). The module copies `buf_len` bytes from `buf` into a zeroed kernel
//! page, issues the control hypercall, and on success copies the page back into `buf`.
//!
//! `read` returns the 8-byte event mask of this open file (blocking until there is one,
//! `EAGAIN` with `O_NONBLOCK`); `poll` reports it; `mmap` (shared only, offset = slot ×
//! 4096) maps foreign-window slots. See `dom0/kmod/README.md`.
#![allow(
    unsafe_code,
    reason = "the ioctl, poll, mmap and munmap system calls; each block argues its case"
)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use shared_abi::control::CONTROL_VERSION;
use shared_abi::control::ioctl::{IOCTL_CONTROL, IOCTL_TYPE, IoctlControl};

use pv_drivers::{MappedMem, MemError, SharedMem};

use crate::microvisor::{Microvisor, PageMap, WindowMap};

/// Default path of the device node.
pub const DEVICE_PATH: &str = "/dev/microvisor";

/// `EINVAL`, for a buffer too long to describe in `buf_len`.
const EINVAL: i32 = 22;
/// Bytes per foreign-window slot (`MV_SLOT_SIZE`), the unit of `mmap` offsets.
pub const SLOT_SIZE: usize = 4096;
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

    /// Opens the device node at `path` read-write with `O_NONBLOCK`: reads without a
    /// pending event fail with `EAGAIN` instead of waiting (the ioctl is unaffected).
    ///
    /// # Errors
    /// As [`Device::open`].
    pub fn open_nonblocking(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        Ok(Self { file })
    }

    /// A device on an already open file (tests stand in files and sockets for it).
    #[must_use]
    pub fn from_file(file: File) -> Self {
        Self { file }
    }

    /// The open file, e.g. for dom0d's event task.
    #[must_use]
    pub fn into_file(self) -> File {
        self.file
    }

    /// One `read` into `buf`: the module writes the 8-byte event mask (and fails with
    /// `EINVAL` if `buf` is shorter). Returns the byte count or the errno.
    ///
    /// # Errors
    /// The errno of the failed read: `EAGAIN` (opened with `O_NONBLOCK` and no event
    /// pending), `EINVAL` (`buf` shorter than 8 bytes), `EINTR`.
    pub fn read_raw(&self, buf: &mut [u8]) -> Result<usize, i32> {
        (&self.file)
            .read(buf)
            .map_err(|e| e.raw_os_error().unwrap_or(EIO))
    }

    /// Waits up to `timeout` for the device to become readable (an event is pending).
    /// Returns whether it did; an interrupted wait counts as not readable.
    ///
    /// # Errors
    /// The errno of a failed `poll`.
    pub fn poll_readable(&self, timeout: Duration) -> Result<bool, i32> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `poll` reads and writes exactly one `pollfd` (nfds = 1) at the pointer,
        // which is `pfd`, live and exclusively borrowed for the call. The descriptor
        // belongs to `self.file`, which outlives the call.
        let ret = unsafe { libc::poll(core::ptr::from_mut(&mut pfd), 1, ms) };
        match ret {
            0 => Ok(false),
            n if n > 0 => Ok(pfd.revents & libc::POLLIN != 0),
            _ => match io::Error::last_os_error().raw_os_error().unwrap_or(EIO) {
                libc::EINTR => Ok(false),
                errno => Err(errno),
            },
        }
    }

    /// Maps `pages` foreign-window slots starting at `first_slot` into this process
    /// (`mmap` at offset `first_slot` × 4096), shared or private, read-only or read-write.
    ///
    /// Mapping a slot does not touch it. Accessing a slot that holds no frame faults (the
    /// microvisor injects #GP, the kernel sends SIGSEGV), so only access slots that
    /// `ForeignMap` filled.
    ///
    /// # Errors
    /// The errno of the failed `mmap` (`EINVAL` for ranges outside the window or private
    /// mappings); `EINVAL` without a system call if `pages` is 0 or the offset does not fit
    /// an `off_t`.
    pub fn map_slots(
        &self,
        first_slot: u64,
        pages: usize,
        access: Access,
        sharing: Sharing,
    ) -> Result<Mapping, i32> {
        let len = pages
            .checked_mul(SLOT_SIZE)
            .filter(|&l| l > 0)
            .ok_or(EINVAL)?;
        let offset = first_slot
            .checked_mul(SLOT_SIZE as u64)
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or(EINVAL)?;
        let prot = match access {
            Access::ReadOnly => libc::PROT_READ,
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        };
        let flags = match sharing {
            Sharing::Shared => libc::MAP_SHARED,
            Sharing::Private => libc::MAP_PRIVATE,
        };
        // SAFETY: a NULL address lets the kernel choose where to map, so no existing
        // mapping of this process is replaced. The descriptor belongs to `self.file`, which
        // outlives the call (the mapping itself keeps the file open after that).
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                prot,
                flags,
                self.file.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(EIO));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
            writable: access == Access::ReadWrite,
        })
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

/// Protection of a [`Mapping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `PROT_READ`.
    ReadOnly,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

/// `MAP_SHARED` or `MAP_PRIVATE` (which the module refuses; for `dom0-probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// `MAP_SHARED`.
    Shared,
    /// `MAP_PRIVATE`.
    Private,
}

/// Foreign-window slots mapped into this process; unmapped on drop.
///
/// Accesses are volatile: the other domain may read and write the same frames at any
/// time, so the memory is never handed out as a Rust reference.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    writable: bool,
}

impl Mapping {
    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: [`Device::map_slots`] refuses 0 pages).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of `size` bytes at `offset`, if they lie inside and are aligned.
    fn at(&self, offset: usize, size: usize) -> Option<*mut u8> {
        let end = offset.checked_add(size)?;
        (end <= self.len && offset.is_multiple_of(size)).then(|| self.ptr.wrapping_add(offset))
    }

    /// Reads the little-endian `u32` at `offset` (aligned, inside the mapping).
    #[must_use]
    pub fn read_u32(&self, offset: usize) -> Option<u32> {
        let p = self.at(offset, 4)?;
        // SAFETY: `p` is 4-byte aligned and its 4 bytes lie inside this mapping, which
        // stays mapped (readable) until `self` is dropped. The access is volatile and
        // creates no reference, so concurrent writes by the other domain are fine. If the
        // slot holds no frame the access faults and the kernel kills the process: that
        // ends the program, it does not let it continue with bad data.
        Some(u32::from_le(unsafe {
            core::ptr::read_volatile(p.cast::<u32>())
        }))
    }

    /// Reads the little-endian `u64` at `offset` (aligned, inside the mapping).
    #[must_use]
    pub fn read_u64(&self, offset: usize) -> Option<u64> {
        let p = self.at(offset, 8)?;
        // SAFETY: as in `read_u32`, for 8 aligned bytes.
        Some(u64::from_le(unsafe {
            core::ptr::read_volatile(p.cast::<u64>())
        }))
    }

    /// Writes `value` little-endian at `offset` (aligned, inside a writable mapping).
    /// Returns whether it was written.
    pub fn write_u64(&mut self, offset: usize, value: u64) -> bool {
        let Some(p) = self.at(offset, 8).filter(|_| self.writable) else {
            return false;
        };
        // SAFETY: `p` is 8-byte aligned, its bytes lie inside this mapping, which was
        // mapped with PROT_WRITE and stays mapped until `self` is dropped; the access is
        // volatile and creates no reference (see `read_u32` for empty slots).
        unsafe { core::ptr::write_volatile(p.cast::<u64>(), value.to_le()) };
        true
    }

    /// Copies `bytes` to `offset` (inside a writable mapping). Returns whether it was
    /// written.
    ///
    /// For the domain builder, which fills a domain that has never run: nothing else
    /// writes to those frames meanwhile.
    pub fn write_bytes(&mut self, offset: usize, bytes: &[u8]) -> bool {
        let inside = offset
            .checked_add(bytes.len())
            .is_some_and(|end| end <= self.len);
        if !self.writable || !inside {
            return false;
        }
        let dst = self.ptr.wrapping_add(offset);
        // SAFETY: `copy_nonoverlapping` needs `bytes.len()` readable bytes at the source,
        // as many writable bytes at the destination, and the two not to overlap.
        // - The source is a live shared slice of exactly that length.
        // - `dst..dst + len` lies inside this mapping (checked above), which was mapped
        //   with PROT_WRITE and stays mapped until `self` is dropped; no Rust reference into
        //   it exists (all accesses go through raw pointers).
        // - The mapping is foreign-window memory, never part of a Rust allocation, so it
        //   cannot overlap `bytes`.
        // Writing to a slot that holds no frame faults and the kernel kills the process;
        // it never continues with a partial write.
        // JUSTIFICATION: a plain copy, not volatile stores: the builder writes whole
        // segments into a paused domain that has never run, so no other agent touches the
        // frames, and per-byte volatile stores would slow large kernels down for nothing.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        true
    }

    /// Unmaps now, reporting the errno of a failed `munmap`.
    ///
    /// # Errors
    /// The errno of `munmap`.
    pub fn unmap(self) -> Result<(), i32> {
        let this = core::mem::ManuallyDrop::new(self);
        this.release()
    }

    fn release(&self) -> Result<(), i32> {
        // SAFETY: `ptr` and `len` are exactly what `mmap` returned and asked for, and this
        // is called once (from `unmap`, which suppresses the drop, or from `drop`). No
        // reference into the mapping exists (accesses are volatile raw-pointer ones).
        let ret = unsafe { libc::munmap(self.ptr.cast(), self.len) };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(EIO))
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// A non-blocking descriptor (the device opened with `O_NONBLOCK`, or in tests a socket)
/// registered with the tokio reactor, read when it becomes readable.
///
/// The file is owned and never handed out, so the descriptor the reactor watches stays
/// open and the same for the registration's whole life.
#[derive(Debug)]
pub struct EventFd {
    fd: AsyncFd<File>,
    reads: Arc<AtomicU64>,
}

impl EventFd {
    /// Registers `file` for readability. Must run inside a tokio runtime; `file` must be
    /// non-blocking.
    ///
    /// # Errors
    /// The registration's error: `EPERM` for descriptors epoll cannot watch (regular
    /// files, a module without `poll`).
    pub fn register(file: File) -> io::Result<Self> {
        // SAFETY: `register_with_interest` needs the descriptor to stay valid, open and the
        // same while registered. `file` owns it and moves into the `AsyncFd`; `File`'s
        // `as_raw_fd` always returns its one descriptor, and this type never exposes the
        // `AsyncFd` or the file (no `get_mut` swap), so the descriptor is closed only when
        // the `AsyncFd` (deregistering first) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self {
            fd,
            reads: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Waits until the descriptor is readable, then reads once into `buf`. A read that
    /// would block clears the readiness and waits for the next wake-up, so a descriptor
    /// that is never readable is never read in a loop.
    ///
    /// # Errors
    /// The read's or the reactor's error.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let reads = &self.reads;
            match guard.try_io(|inner| {
                reads.fetch_add(1, Ordering::Relaxed);
                inner.get_mut().read(buf)
            }) {
                Ok(result) => return result,
                Err(_would_block) => {}
            }
        }
    }

    /// A counter of the `read` system calls made, for tests.
    #[must_use]
    pub fn read_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.reads)
    }
}

/// Readiness of another descriptor (a TAP, in tests a socket): a duplicate of it
/// registered with the tokio reactor for readability. The owner keeps reading through its
/// own descriptor; both refer to the same open file, so they share its readiness. Dropping
/// this deregisters and closes the duplicate.
#[derive(Debug)]
pub struct Readiness {
    fd: AsyncFd<OwnedFd>,
}

impl Readiness {
    /// Registers a duplicate of `fd` (which should be non-blocking) for readability.
    ///
    /// # Errors
    /// `Other` outside a tokio runtime (instead of tokio's panic); the `dup`'s or the
    /// registration's error.
    pub fn register(fd: BorrowedFd<'_>) -> io::Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("no tokio runtime to register with"));
        }
        let owned = fd.try_clone_to_owned()?;
        // SAFETY: `register_with_interest` needs the descriptor to stay valid, open and the
        // same while registered. `owned` is a fresh duplicate that nothing else knows of; it
        // moves into the `AsyncFd`, which this type never hands out (no `get_mut`, no
        // `into_inner`), and `OwnedFd::as_raw_fd` always returns its one descriptor, so it
        // is closed only when the `AsyncFd` (deregistering first) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Polls for readability (registering `cx`'s waker). When readable, runs `drain`,
    /// which reads the descriptor and returns whether it read until it would block: then
    /// the readiness is cleared (the next poll waits for new data), otherwise it is kept
    /// (the next poll is ready at once).
    ///
    /// # Errors
    /// The reactor's error.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        drain: impl FnOnce() -> bool,
    ) -> Poll<io::Result<()>> {
        match self.fd.poll_read_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(mut guard)) => {
                if drain() {
                    guard.clear_ready();
                } else {
                    guard.retain_ready();
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl WindowMap for Mapping {
    fn write(&mut self, offset: usize, bytes: &[u8]) -> Result<(), i32> {
        if self.write_bytes(offset, bytes) {
            Ok(())
        } else {
            Err(EINVAL)
        }
    }

    fn unmap(self: Box<Self>) -> Result<(), i32> {
        Mapping::unmap(*self)
    }
}

/// One foreign-window slot mapped read-write and shared, reached only through
/// [`SharedMem`] ([`pv_drivers::MappedMem`]): for ring pages the other domain writes while
/// dom0d reads them. The process mapping is removed when this is dropped.
#[derive(Debug)]
pub struct SharedPage {
    /// Declared before `mapping`, so it is dropped first (it holds no resources, but it
    /// must never outlive the mapping it points into).
    mem: MappedMem,
    /// Owned only to keep the mapping alive (and unmap it on drop).
    _mapping: Mapping,
}

// SAFETY: `SharedPage` owns its mapping (a pointer and a length that no other value in
// the program uses) and reaches it only through `MappedMem`, whose accesses are volatile
// or atomic and whose contract already allows concurrent writers (the other domain), so
// moving it to another thread adds no hazard.
unsafe impl Send for SharedPage {}
// SAFETY: as for `Send`: `&SharedPage` only permits `MappedMem`'s volatile/atomic
// accesses, which may overlap with any other agent's.
unsafe impl Sync for SharedPage {}

impl SharedPage {
    /// Wraps a one-slot read-write shared `mapping`.
    fn new(mapping: Mapping) -> Result<Self, i32> {
        let base = core::ptr::NonNull::new(mapping.ptr).ok_or(EINVAL)?;
        if !mapping.writable {
            return Err(EINVAL);
        }
        // SAFETY: `MappedMem::new`'s contract, for as long as the `MappedMem` lives:
        // 1. `base..base + len` is exactly the range `mmap` returned (read-write, one
        //    mapping), mapped until `mapping` is dropped, which happens only after `mem`
        //    (field order) since both live in this struct and neither is handed out;
        // 2. nothing else in the program touches those bytes: the `Mapping`'s own
        //    accessors are not used once it is inside a `SharedPage`, and no reference
        //    into the mapping is ever formed;
        // 3. the mapping is unmapped only by `mapping`'s drop, after `mem` is gone.
        // A slot that holds no frame faults on access and the kernel kills the process;
        // callers map only slots that `ForeignMap` filled.
        let mem = unsafe { MappedMem::new(base, mapping.len) };
        Ok(Self {
            mem,
            _mapping: mapping,
        })
    }
}

impl SharedMem for SharedPage {
    fn len(&self) -> usize {
        self.mem.len()
    }
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        self.mem.read_bytes(offset, buf)
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        self.mem.write_bytes(offset, data)
    }
    fn load_acquire_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.mem.load_acquire_u32(offset)
    }
    fn store_release_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.mem.store_release_u32(offset, value)
    }
    fn full_fence(&self) {
        self.mem.full_fence();
    }
}

impl PageMap for SharedPage {}

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

    fn map_window(&self, first_slot: u64, pages: usize) -> Result<Box<dyn WindowMap + '_>, i32> {
        let mapping = self.map_slots(first_slot, pages, Access::ReadWrite, Sharing::Shared)?;
        Ok(Box::new(mapping))
    }

    fn map_page(&self, slot: u64) -> Result<Arc<dyn PageMap>, i32> {
        let mapping = self.map_slots(slot, 1, Access::ReadWrite, Sharing::Shared)?;
        Ok(Arc::new(SharedPage::new(mapping)?))
    }
}
