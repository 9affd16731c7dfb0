//! `hvm_op` (hypercall 34): HVM parameters (`xen/include/public/hvm/hvm_op.h`,
//! `hvm/params.h`).
//!
//! ## `hvm_op(HVMOP_set_param, &XenHvmParam)`
//! - **In:** `domid` = `DOMID_SELF` or the caller; `index` = [`HVM_PARAM_CALLBACK_IRQ`];
//!   `value` = `(HVM_PARAM_CALLBACK_TYPE_VECTOR << 56) | vector` with vector `0x20..=0xFF`,
//!   or 0 to turn upcalls off.
//! - **Returns:** `0`.
//! - **Errors:** `EFAULT`; `EPERM` another domain, or a parameter the guest may only read;
//!   `EINVAL` unknown index, another callback type, or a vector below `0x20`.
//!
//! ## `hvm_op(HVMOP_get_param, &XenHvmParam)`
//! - **In:** `domid`, `index`. **Out:** `value` (0 if never set).
//! - **Errors:** `EFAULT`; `EPERM` another domain; `EINVAL` unknown index.
//!
//! The console and store parameters are set by the domain builder in Dom0 (control
//! operation `DomainSetParam`) before the domain first runs; the guest reads them.
//!
//! Other sub-operations return `ENOSYS` (among them `pagetable_dying` 9 and
//! `set_evtchn_upcall_vector` 23, which guests only use when advertised).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Sub-operation: set a parameter.
pub const HVMOP_SET_PARAM: u64 = 0;
/// Sub-operation: read a parameter.
pub const HVMOP_GET_PARAM: u64 = 1;

/// Parameter: how event-channel upcalls are delivered (guest-writable).
pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
/// Parameter: guest frame of the xenstore ring page (read-only to the guest).
pub const HVM_PARAM_STORE_PFN: u32 = 1;
/// Parameter: the guest's event channel port to xenstore (read-only to the guest).
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// Parameter: guest frame of the PV console ring page (read-only to the guest).
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
/// Parameter: the guest's event channel port to the console back-end (read-only).
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;

/// `CALLBACK_IRQ` type in bits 63:56: deliver upcalls as this vector (bits 7:0).
pub const HVM_PARAM_CALLBACK_TYPE_VECTOR: u64 = 2;
/// Shift of the callback type in `CALLBACK_IRQ`.
pub const HVM_PARAM_CALLBACK_TYPE_SHIFT: u32 = 56;

/// The `CALLBACK_IRQ` value for upcalls on `vector`.
pub const fn callback_vector(vector: u8) -> u64 {
    (HVM_PARAM_CALLBACK_TYPE_VECTOR << HVM_PARAM_CALLBACK_TYPE_SHIFT) | vector as u64
}

/// Argument of `HVMOP_set_param` / `HVMOP_get_param` (`struct xen_hvm_param`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenHvmParam {
    /// `DOMID_SELF` or the caller.
    pub domid: u16,
    /// Padding.
    pub pad: u16,
    /// `HVM_PARAM_*`.
    pub index: u32,
    /// The value.
    pub value: u64,
}
const _: () = assert!(core::mem::size_of::<XenHvmParam>() == 16);
