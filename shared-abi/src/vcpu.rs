//! `vcpu_op` (hypercall 24) and `set_timer_op` (hypercall 15): per-vCPU timers
//! (`xen/include/public/vcpu.h`).
//!
//! Deadlines are in nanoseconds of *system time*, the clock that
//! [`shared_info`](crate::shared_info) publishes as pvclock data in `vcpu_info.time`.
//! When a deadline passes, the microvisor sends [`VIRQ_TIMER`](crate::event_channel::VIRQ_TIMER)
//! to the vCPU if the guest bound it; that event is what wakes a vCPU blocked in
//! `SCHEDOP_block` or HLT. Without the binding the expiry has no effect (as in Xen). A
//! deadline never fires early by the guest's pvclock. A vCPU has one single-shot timer;
//! setting it replaces the previous deadline.
//!
//! ## `set_timer_op(deadline_ns)`
//! - **Arguments:** `RDI` = absolute deadline in ns; 0 cancels the timer.
//! - **Returns:** `0`. A deadline in the past fires at once.
//!
//! ## `vcpu_op(VCPUOP_set_singleshot_timer, vcpu, &VcpuSetSingleshotTimer)`
//! - **Arguments:** `RSI` = vCPU (0); `RDX` = linear address of the structure.
//! - **Returns:** `0`.
//! - **Errors:** `EFAULT`; `EINVAL` vCPU is not 0 or another vCPU's; `ETIME` the deadline has
//!   passed and [`VCPU_SSHOTTMR_FUTURE`] is set (the timer is then not armed).
//!
//! ## `vcpu_op(VCPUOP_stop_singleshot_timer, vcpu, 0)`, `vcpu_op(VCPUOP_stop_periodic_timer, vcpu, 0)`
//! - **Returns:** `0` (there is no periodic timer, so stopping it always succeeds).
//! - **Errors:** `EINVAL` bad vCPU.
//!
//! Other sub-operations return `ENOSYS` (`register_vcpu_info` 10,
//! `register_runstate_memory_area` 5, `set_periodic_timer` 6, ...).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Sub-operation: start a periodic timer (not implemented).
pub const VCPUOP_SET_PERIODIC_TIMER: u64 = 6;
/// Sub-operation: stop the periodic timer.
pub const VCPUOP_STOP_PERIODIC_TIMER: u64 = 7;
/// Sub-operation: set the single-shot timer.
pub const VCPUOP_SET_SINGLESHOT_TIMER: u64 = 8;
/// Sub-operation: cancel the single-shot timer.
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u64 = 9;

/// Flag: fail with `ETIME` instead of firing at once when the deadline has passed.
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1;

/// Argument of `VCPUOP_set_singleshot_timer` (`struct vcpu_set_singleshot_timer`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VcpuSetSingleshotTimer {
    /// Absolute deadline, ns of system time.
    pub timeout_abs_ns: u64,
    /// `VCPU_SSHOTTMR_*`.
    pub flags: u32,
    /// Padding.
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<VcpuSetSingleshotTimer>() == 16);
