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
//! ## Other sub-operations
//!
//! `SCHEDOP_block` and `SCHEDOP_poll` need event channels and return `ENOSYS` until they land.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Sub-operation: give up the pCPU to another runnable vCPU.
pub const SCHEDOP_YIELD: u64 = 0;
/// Sub-operation: block until an event is pending (not implemented).
pub const SCHEDOP_BLOCK: u64 = 1;
/// Sub-operation: shut the calling domain down; argument is a [`SchedShutdown`].
pub const SCHEDOP_SHUTDOWN: u64 = 2;
/// Sub-operation: poll a set of event channels (not implemented).
pub const SCHEDOP_POLL: u64 = 3;

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
