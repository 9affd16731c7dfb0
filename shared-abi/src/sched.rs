//! `sched_op` (hypercall 29): scheduler operations (`xen/include/public/sched.h`).
//!
//! ## `sched_op(SCHEDOP_yield, 0)`
//!
//! - **Returns:** `0` after the vCPU has given other runnable vCPUs on its pCPU a turn.
//! - **Errors:** none.
//!
//! ## `sched_op(SCHEDOP_shutdown, &SchedShutdown)`
//!
//! - **Arguments:** `RSI` = linear address of a [`SchedShutdown`].
//! - **Returns:** does not return for [`ShutdownReason::Poweroff`], `Reboot`, `Crash` and
//!   `Watchdog`: the domain stops and the microvisor logs the reason.
//! - **Errors:** `EFAULT` if the structure cannot be read; `EINVAL` for an unknown reason;
//!   `ENOSYS` for `Suspend` and `SoftReset` (not implemented).
//!
//! ## `sched_op(SCHEDOP_block, 0)`
//!
//! - **Returns:** `0` once the vCPU has an event pending (`evtchn_upcall_pending` in its
//!   `vcpu_info`), at once if it already has one, whatever the guest's `RFLAGS.IF` (so a
//!   guest may block with interrupts off and enable them after the call, without a
//!   lost-wakeup window). The single-shot timer (see [`crate::vcpu`]) with `VIRQ_TIMER`
//!   bound is how a guest sleeps until a time.
//! - `HLT` with interrupts enabled blocks the same way; `HLT` with interrupts disabled
//!   never returns (only Dom0 can pause or destroy the domain).
//!
//! ## `sched_op(SCHEDOP_poll, &SchedPoll)`
//!
//! - **Arguments:** `RSI` = linear address of a [`SchedPoll`].
//! - **Returns:** `0` when one of the ports is pending, when `timeout` (absolute ns of
//!   system time; 0 = none) has passed, or spuriously when any event reaches the domain:
//!   the caller re-checks its ports. Pending ports are not cleared.
//! - **Errors:** `EFAULT` the structure or the port list is not readable; `EINVAL` more
//!   than [`SCHEDOP_POLL_MAX_PORTS`] ports or a port outside `1..MAX_PORTS`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Sub-operation: give up the pCPU to another runnable vCPU.
pub const SCHEDOP_YIELD: u64 = 0;
/// Sub-operation: block until an event is pending.
pub const SCHEDOP_BLOCK: u64 = 1;
/// Sub-operation: shut the calling domain down; argument is a [`SchedShutdown`].
pub const SCHEDOP_SHUTDOWN: u64 = 2;
/// Sub-operation: wait for one of a set of event channels, with a timeout.
pub const SCHEDOP_POLL: u64 = 3;
/// The most ports one `SCHEDOP_poll` may name.
pub const SCHEDOP_POLL_MAX_PORTS: u32 = 128;

/// Argument of `SCHEDOP_poll` (`struct sched_poll`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SchedPoll {
    /// Linear address of `nr_ports` `u32` ports.
    pub ports: u64,
    /// Number of ports.
    pub nr_ports: u32,
    /// Padding.
    pub pad: u32,
    /// Absolute deadline in ns of system time; 0 waits without one.
    pub timeout: u64,
}
const _: () = assert!(core::mem::size_of::<SchedPoll>() == 24);

/// Argument of `SCHEDOP_shutdown` (`struct sched_shutdown`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SchedShutdown {
    /// One of [`ShutdownReason`] as `u32`.
    pub reason: u32,
}
const _: () = assert!(core::mem::size_of::<SchedShutdown>() == 4);

/// Why a domain shut down (`SHUTDOWN_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ShutdownReason {
    /// Clean power-off.
    Poweroff = 0,
    /// Clean restart request.
    Reboot = 1,
    /// Suspend for save/restore (not implemented).
    Suspend = 2,
    /// The guest reports that it crashed.
    Crash = 3,
    /// A guest watchdog expired.
    Watchdog = 4,
    /// Soft reset (not implemented).
    SoftReset = 5,
}

impl ShutdownReason {
    /// The lowercase name used in logs, e.g. `"poweroff"`.
    pub const fn name(self) -> &'static str {
        match self {
            ShutdownReason::Poweroff => "poweroff",
            ShutdownReason::Reboot => "reboot",
            ShutdownReason::Suspend => "suspend",
            ShutdownReason::Crash => "crash",
            ShutdownReason::Watchdog => "watchdog",
            ShutdownReason::SoftReset => "soft_reset",
        }
    }
}

impl TryFrom<u32> for ShutdownReason {
    type Error = crate::Errno;

    fn try_from(v: u32) -> Result<Self, crate::Errno> {
        Ok(match v {
            0 => ShutdownReason::Poweroff,
            1 => ShutdownReason::Reboot,
            2 => ShutdownReason::Suspend,
            3 => ShutdownReason::Crash,
            4 => ShutdownReason::Watchdog,
            5 => ShutdownReason::SoftReset,
            _ => return Err(crate::Errno::EINVAL),
        })
    }
}
