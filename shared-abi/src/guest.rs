//! Guest-side hypercall wrappers (feature `guest`): the only unsafe code in this crate.
//!
//! These issue `VMMCALL` directly and must run at CPL 0 in 64-bit mode inside a domain.
//! Pointer arguments are linear addresses in the caller's address space.

use crate::console::CONSOLEIO_WRITE;
use crate::sched::{SCHEDOP_SHUTDOWN, SCHEDOP_YIELD, SchedShutdown, ShutdownReason};
use crate::version::{XENVER_GET_FEATURES, XENVER_VERSION, XenFeatureInfo};
use crate::{Errno, Hypercall};

/// Issues hypercall `nr` with up to five raw arguments and returns raw `RAX`.
///
/// # Safety
///
/// The caller must run at CPL 0 under the microvisor (or Xen), and every pointer argument
/// that the call dereferences must be valid for the access the call makes.
#[inline(always)]
pub unsafe fn hypercall_raw(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: VMMCALL traps to the hypervisor, which reads RAX/RDI/RSI/RDX/R10/R8 and
    // writes RAX; the argument registers are declared clobbered as the ABI allows. Memory
    // validity of pointer arguments is the caller's obligation (see `# Safety`).
    unsafe {
        core::arch::asm!(
            "vmmcall",
            inlateout("rax") nr => ret,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            options(nostack),
        );
    }
    ret
}

/// Writes `bytes` to the hypervisor console.
pub fn console_write(bytes: &[u8]) -> Result<(), Errno> {
    // SAFETY: `bytes` is a valid readable slice for the duration of the call.
    let ret = unsafe {
        hypercall_raw(
            Hypercall::ConsoleIo as u64,
            CONSOLEIO_WRITE,
            bytes.len() as u64,
            bytes.as_ptr() as u64,
            0,
            0,
        )
    };
    Errno::from_ret(ret).map(|_| ())
}

/// Returns `(major, minor)` of the hypervisor's Xen interface level.
pub fn xen_version() -> (u16, u16) {
    // SAFETY: XENVER_version takes no pointer.
    let ret = unsafe { hypercall_raw(Hypercall::XenVersion as u64, XENVER_VERSION, 0, 0, 0, 0) };
    let v = ret as u64;
    ((v >> 16) as u16, v as u16)
}

/// Reads feature submap `idx`.
pub fn xen_features(idx: u32) -> Result<u32, Errno> {
    let mut info = XenFeatureInfo {
        submap_idx: idx,
        submap: 0,
    };
    // SAFETY: `info` is a valid, writable `XenFeatureInfo` for the duration of the call.
    let ret = unsafe {
        hypercall_raw(
            Hypercall::XenVersion as u64,
            XENVER_GET_FEATURES,
            core::ptr::from_mut(&mut info) as u64,
            0,
            0,
            0,
        )
    };
    Errno::from_ret(ret).map(|_| info.submap)
}

/// Gives other runnable vCPUs on this pCPU a turn.
pub fn sched_yield() {
    // SAFETY: SCHEDOP_yield takes no pointer.
    unsafe { hypercall_raw(Hypercall::SchedOp as u64, SCHEDOP_YIELD, 0, 0, 0, 0) };
}

/// Shuts the calling domain down. Returns only if the hypervisor refused the request.
pub fn sched_shutdown(reason: ShutdownReason) -> Errno {
    let arg = SchedShutdown {
        reason: reason as u32,
    };
    // SAFETY: `arg` is a valid `SchedShutdown` for the duration of the call.
    let ret = unsafe {
        hypercall_raw(
            Hypercall::SchedOp as u64,
            SCHEDOP_SHUTDOWN,
            core::ptr::from_ref(&arg) as u64,
            0,
            0,
            0,
        )
    };
    match Errno::from_ret(ret) {
        Ok(_) => Errno::EIO,
        Err(e) => e,
    }
}
