//! `event_channel_op` (hypercall 32): 2-level event channels
//! (`xen/include/public/event_channel.h`, `xen/common/event_2l.c`).
//!
//! An event channel is a pair of ports, one in each domain (or a port bound to a virtual
//! IRQ). Sending on a port sets the peer port's bit in the peer's
//! [`shared_info`](crate::shared_info) `evtchn_pending` array and, unless the port is
//! masked, raises the peer vCPU's upcall (see [`crate::hvm`] `CALLBACK_IRQ`). Domain 0 is
//! native Linux and has no `shared_info`: its ports are served by control operations
//! ([`crate::control`]).
//!
//! Ports are `u32`; port 0 is never allocated; a domain has ports `1..`[`MAX_PORTS`].
//! Every call takes `RSI` = linear address of its argument structure; `RDI` = the
//! sub-operation. Common errors: `EFAULT` (the structure is not accessible guest memory),
//! `ENOSYS` (a sub-operation not listed here: bind_pirq 2, bind_ipi 7, bind_vcpu 8,
//! reset 10, and the FIFO ABI's init_control 11, expand_array 12, set_priority 13, so
//! guests fall back to the 2-level ABI).
//!
//! ## `EVTCHNOP_alloc_unbound` ([`EvtchnAllocUnbound`])
//! - **In:** `dom` = [`DomId::SELF`](crate::DomId::SELF) or the caller's own id;
//!   `remote_dom` = the domain allowed to bind (or `SELF`). **Out:** `port`.
//! - **Errors:** `EPERM` if `dom` is another domain; `ESRCH` no such `remote_dom`;
//!   `ENOSPC` no free port.
//!
//! ## `EVTCHNOP_bind_interdomain` ([`EvtchnBindInterdomain`])
//! - **In:** `remote_dom`, `remote_port` (an unbound port of `remote_dom` that names the
//!   caller as its remote; `DOMID_SELF` binds to one of the caller's own ports). **Out:**
//!   `local_port`.
//! - As in Xen, the new local port starts **pending** (with the upcall raised if it is
//!   not masked), so a notification the peer sent before the bind is not lost; expect
//!   one event on it.
//! - **Errors:** `ESRCH` no such domain; `EINVAL` the remote port is not unbound for the
//!   caller; `ENOSPC` no free port.
//!
//! ## `EVTCHNOP_bind_virq` ([`EvtchnBindVirq`])
//! - **In:** `virq` (only [`VIRQ_TIMER`] exists), `vcpu` (0). **Out:** `port`.
//! - **Errors:** `EINVAL` unknown virq or vcpu; `EEXIST` already bound; `ENOSPC`.
//!
//! ## `EVTCHNOP_close` ([`EvtchnPort`])
//! - Frees the port and clears its pending bit. The peer of an interdomain channel becomes
//!   unbound (its remote stays the caller), so the peer may rebind. When a domain ends,
//!   its peers' ports become unbound the same way (sends on them are dropped).
//!   **Errors:** `EINVAL` port not allocated (or outside `1..MAX_PORTS`).
//!
//! ## `EVTCHNOP_send` ([`EvtchnPort`])
//! - Signals the peer of an interdomain port. Sending on an unbound port is silently
//!   dropped (returns 0), as in Xen. **Errors:** `EINVAL` port not allocated or a virq.
//!
//! ## `EVTCHNOP_status` ([`EvtchnStatus`])
//! - **In:** `dom` (`SELF` or the caller's id), `port`. **Out:** `status` and `u` (port 0
//!   reads as closed).
//! - **Errors:** `EPERM` another domain; `EINVAL` port out of range.
//!
//! ## `EVTCHNOP_unmask` ([`EvtchnPort`])
//! - Clears the mask bit and, if the port is pending, raises the upcall again (a PVH guest
//!   cannot re-inject an event itself). **Errors:** `EINVAL` port out of range.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Sub-operation: connect to an unbound port of another domain.
pub const EVTCHNOP_BIND_INTERDOMAIN: u64 = 0;
/// Sub-operation: bind a virtual IRQ to a new port.
pub const EVTCHNOP_BIND_VIRQ: u64 = 1;
/// Sub-operation: free a port.
pub const EVTCHNOP_CLOSE: u64 = 3;
/// Sub-operation: signal the peer of a port.
pub const EVTCHNOP_SEND: u64 = 4;
/// Sub-operation: describe a port.
pub const EVTCHNOP_STATUS: u64 = 5;
/// Sub-operation: allocate a port that a named remote domain may bind to.
pub const EVTCHNOP_ALLOC_UNBOUND: u64 = 6;
/// Sub-operation: unmask a port (re-raising the upcall if it is pending).
pub const EVTCHNOP_UNMASK: u64 = 9;

/// Ports per domain: valid ports are `1..MAX_PORTS`. (The 2-level ABI allows 4096 for
/// 64-bit guests; the microvisor serves the first 1024, which `shared_info` covers with
/// the first 16 words of each bitmap.)
pub const MAX_PORTS: u32 = 1024;

/// Virtual IRQ: the vCPU's single-shot timer fired (`set_timer_op`,
/// `VCPUOP_set_singleshot_timer`).
pub const VIRQ_TIMER: u32 = 0;

/// `EVTCHNOP_status` result: the port is not allocated.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
/// `EVTCHNOP_status` result: allocated, waiting for `u[0]` (the remote domid) to bind.
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
/// `EVTCHNOP_status` result: connected to domain `u[0]` (low 16 bits), port `u[1]`.
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
/// `EVTCHNOP_status` result: bound to virtual IRQ `u[0]`.
pub const EVTCHNSTAT_VIRQ: u32 = 4;

/// Argument of `EVTCHNOP_alloc_unbound` (`struct evtchn_alloc_unbound`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct EvtchnAllocUnbound {
    /// In: the domain that gets the port (`DOMID_SELF` or the caller).
    pub dom: u16,
    /// In: the domain that may bind to it.
    pub remote_dom: u16,
    /// Out: the new port.
    pub port: u32,
}
const _: () = assert!(core::mem::size_of::<EvtchnAllocUnbound>() == 8);

/// Argument of `EVTCHNOP_bind_interdomain` (`struct evtchn_bind_interdomain`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct EvtchnBindInterdomain {
    /// In: the domain owning the unbound port.
    pub remote_dom: u16,
    /// Padding.
    pub pad: u16,
    /// In: its unbound port.
    pub remote_port: u32,
    /// Out: the caller's new port.
    pub local_port: u32,
}
const _: () = assert!(core::mem::size_of::<EvtchnBindInterdomain>() == 12);

/// Argument of `EVTCHNOP_bind_virq` (`struct evtchn_bind_virq`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct EvtchnBindVirq {
    /// In: the virtual IRQ ([`VIRQ_TIMER`]).
    pub virq: u32,
    /// In: the vCPU (0).
    pub vcpu: u32,
    /// Out: the new port.
    pub port: u32,
}
const _: () = assert!(core::mem::size_of::<EvtchnBindVirq>() == 12);

/// Argument of `EVTCHNOP_close`, `EVTCHNOP_send` and `EVTCHNOP_unmask`
/// (`struct evtchn_close` / `evtchn_send` / `evtchn_unmask`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct EvtchnPort {
    /// The port.
    pub port: u32,
}
const _: () = assert!(core::mem::size_of::<EvtchnPort>() == 4);

/// Argument of `EVTCHNOP_status` (`struct evtchn_status`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct EvtchnStatus {
    /// In: `DOMID_SELF` or the caller's id.
    pub dom: u16,
    /// Padding.
    pub pad: u16,
    /// In: the port.
    pub port: u32,
    /// Out: `EVTCHNSTAT_*`.
    pub status: u32,
    /// Out: the vCPU notified (0).
    pub vcpu: u32,
    /// Out: unbound: `[remote domid, 0]`; interdomain: `[remote domid, remote port]`;
    /// virq: `[virq, 0]`.
    pub u: [u32; 2],
}
const _: () = assert!(core::mem::size_of::<EvtchnStatus>() == 24);
