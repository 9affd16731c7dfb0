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
//! ## `vcpu_op(VCPUOP_register_runstate_memory_area, vcpu, &VcpuRegisterRunstateMemoryArea)`
//! - **Arguments:** `RSI` = vCPU (0); `RDX` = linear address of the structure, whose `addr`
//!   is the guest *linear* address of a [`VcpuRunstateInfo`] (48 bytes), or 0 to unregister.
//! - **Returns:** `0`, also when `addr` is not (or no longer) mapped to the caller's
//!   writable RAM: as in Xen the registration is only a claim. The area is translated
//!   afresh (guest page tables, then the nested page table) every time it is written, so
//!   the guest may change its mapping; the first time the translation fails (not present,
//!   read-only, not the domain's own RAM) the registration is dropped silently and nothing
//!   is written. The area may cross a page; each page is checked. An 8-byte-aligned area
//!   gets each `u64` field as one store (Linux aligns it); an unaligned one gets byte
//!   stores, so a reader may see a torn field until `state_entry_time` settles.
//! - **When it is written:** at registration, and whenever the vCPU's runstate changes at a
//!   scheduling point: when it is scheduled in (`RUNSTATE_running`) and out
//!   (`RUNSTATE_runnable` at the end of its slice or a yield, `RUNSTATE_blocked` when it
//!   blocks, `RUNSTATE_offline` when Dom0 pauses it). A vCPU woken while blocked becomes
//!   runnable at the wake-up; the guest sees that (blocked, then runnable, then running)
//!   when it next runs, as in Xen.
//! - **Update protocol:** `state_entry_time | XEN_RUNSTATE_UPDATE` is stored first, then
//!   `state` and `time[]`, then `state_entry_time` without the flag. A reader retries while
//!   the flag is set or `state_entry_time` changed under it.
//! - **Accounting:** system-time ns (the pvclock clock). `time[s]` holds the completed
//!   periods in state `s`; the current period started at `state_entry_time`, so
//!   `sum(time) + (now - state_entry_time)` is the time since the vCPU was created.
//! - **Errors:** `EFAULT` the argument structure cannot be read; `EINVAL` vCPU is not 0.
//!
//! ## `vcpu_op(VCPUOP_register_vcpu_info, vcpu, &VcpuRegisterVcpuInfo)`
//! - **Arguments:** `RSI` = vCPU (0); `RDX` = linear address of the structure: `mfn` is a
//!   frame of the caller's RAM (a guest frame number here), `offset` the byte offset in it
//!   of a 64-byte `vcpu_info`, `rsvd` 0.
//! - **Effect:** the vCPU's `vcpu_info` moves from slot 0 of `shared_info` to that area. The
//!   current contents (upcall pending, `evtchn_pending_sel`, the pvclock record) are copied
//!   there, the selector bit of every word with a pending unmasked port is set (and the
//!   upcall with it), so no event is lost in the move. From then on event delivery, the
//!   upcall and the pvclock record use the new area only; slot 0 of `shared_info` is no
//!   longer written (placing `shared_info` later does not bring it back).
//! - **Returns:** `0`.
//! - **Errors:** `EFAULT` the argument structure cannot be read; `EINVAL` vCPU is not 0,
//!   `rsvd` is not 0, `offset` is not a multiple of 8 or the area would cross the page
//!   (`offset > 4096 - 64`), `mfn` is not writable RAM of the caller, or the vCPU already
//!   registered one (once per vCPU, as in Xen).
//!
//! Other sub-operations return `ENOSYS` (`set_periodic_timer` 6,
//! `register_vcpu_time_memory_area` 13, ...).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Sub-operation: register the vCPU's runstate area.
pub const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u64 = 5;
/// Sub-operation: start a periodic timer (not implemented).
pub const VCPUOP_SET_PERIODIC_TIMER: u64 = 6;
/// Sub-operation: stop the periodic timer.
pub const VCPUOP_STOP_PERIODIC_TIMER: u64 = 7;
/// Sub-operation: set the single-shot timer.
pub const VCPUOP_SET_SINGLESHOT_TIMER: u64 = 8;
/// Sub-operation: cancel the single-shot timer.
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u64 = 9;

/// Sub-operation: move the vCPU's `vcpu_info` into a frame of the guest's RAM.
pub const VCPUOP_REGISTER_VCPU_INFO: u64 = 10;

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

/// Runstate: running on a pCPU.
pub const RUNSTATE_RUNNING: u32 = 0;
/// Runstate: ready to run, waiting for a pCPU (also preempted).
pub const RUNSTATE_RUNNABLE: u32 = 1;
/// Runstate: blocked (halted, `SCHEDOP_block` or poll) waiting for an event.
pub const RUNSTATE_BLOCKED: u32 = 2;
/// Runstate: not runnable (paused by Dom0, or not started).
pub const RUNSTATE_OFFLINE: u32 = 3;

/// Bit 63 of `state_entry_time`: the microvisor is updating the area.
pub const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;

/// `struct vcpu_runstate_info` (48 bytes), written by the microvisor into the area
/// registered with `VCPUOP_register_runstate_memory_area`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VcpuRunstateInfo {
    /// `RUNSTATE_*` (a C `int`).
    pub state: u32,
    /// Padding.
    pub pad: u32,
    /// System time (ns) at which `state` was entered; bit 63 is [`XEN_RUNSTATE_UPDATE`].
    pub state_entry_time: u64,
    /// ns spent in each state, completed periods only.
    pub time: [u64; 4],
}
const _: () = assert!(core::mem::size_of::<VcpuRunstateInfo>() == 48);

/// Argument of `VCPUOP_register_runstate_memory_area`
/// (`struct vcpu_register_runstate_memory_area` of an HVM guest: a linear address).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VcpuRegisterRunstateMemoryArea {
    /// Linear address of a [`VcpuRunstateInfo`]; 0 unregisters.
    pub addr: u64,
}
const _: () = assert!(core::mem::size_of::<VcpuRegisterRunstateMemoryArea>() == 8);

/// Argument of `VCPUOP_register_vcpu_info` (`struct vcpu_register_vcpu_info`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VcpuRegisterVcpuInfo {
    /// Frame of the caller's RAM (a guest frame number for an auto-translated guest).
    pub mfn: u64,
    /// Byte offset of the 64-byte `vcpu_info` in that frame.
    pub offset: u32,
    /// Must be 0.
    pub rsvd: u32,
}
const _: () = assert!(core::mem::size_of::<VcpuRegisterVcpuInfo>() == 16);
