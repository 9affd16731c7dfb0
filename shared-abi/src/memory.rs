//! `memory_op` (hypercall 12): the guest-physical address space
//! (`xen/include/public/memory.h`).
//!
//! ## `memory_op(XENMEM_add_to_physmap, &XenAddToPhysmap)`
//! - **In:** `domid` = `DOMID_SELF` or the caller; `space` = [`XENMAPSPACE_SHARED_INFO`];
//!   `idx` = 0; `gpfn` = a frame of the caller's RAM.
//! - **Effect:** that frame becomes the domain's `shared_info` page
//!   ([`crate::shared_info`]): the microvisor copies the current event state into it
//!   and writes events and time there from now on. Placing it again moves it; the old
//!   frame is left as ordinary RAM with whatever it held.
//! - **Returns:** `0`.
//! - **Errors:** `EFAULT`; `EPERM` another domain; `EINVAL` `gpfn` is not the caller's RAM
//!   or `idx` is not 0; `ENOSYS` another space (grant frames come with grant tables).
//!
//! Other sub-operations return `ENOSYS`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Sub-operation: place a special page in the guest-physical address space.
pub const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
/// `add_to_physmap` space: the `shared_info` page (idx 0).
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `add_to_physmap` space: a grant-table frame (not implemented).
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;

/// Argument of `XENMEM_add_to_physmap` (`struct xen_add_to_physmap`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenAddToPhysmap {
    /// `DOMID_SELF` or the caller.
    pub domid: u16,
    /// Number of pages (for the gmfn_range space only; 0 otherwise).
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index within the space.
    pub idx: u64,
    /// Guest frame where the page appears.
    pub gpfn: u64,
}
const _: () = assert!(core::mem::size_of::<XenAddToPhysmap>() == 24);
