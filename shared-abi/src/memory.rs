//! `memory_op` (hypercall 12): the guest-physical address space
//! (`xen/include/public/memory.h`).
//!
//! ## `memory_op(XENMEM_add_to_physmap, &XenAddToPhysmap)`
//! - **In:** `domid` = `DOMID_SELF` or the caller; `space`, `idx` and `gpfn` (a frame of
//!   the caller's RAM) as below.
//! - **[`XENMAPSPACE_SHARED_INFO`]**, `idx` = 0: that frame becomes the domain's
//!   `shared_info` page ([`crate::shared_info`]): the microvisor copies the current event
//!   state into it and writes events and time there from now on. Placing it again moves
//!   it; the old frame is left as ordinary RAM with whatever it held.
//! - **[`XENMAPSPACE_GRANT_TABLE`]**, `idx` = `N` below
//!   [`GNTTAB_MAX_FRAMES`](crate::grant_table::GNTTAB_MAX_FRAMES): that frame becomes
//!   frame `N` of the domain's grant table ([`crate::grant_table`]), whose entries the
//!   microvisor reads and marks in use there. Frames are placed in order: `N` is at most
//!   the number of frames placed so far. Placing frame `N` again at another `gpfn` moves
//!   it: its entries are copied there and the old frame is ordinary RAM again.
//! - **Returns:** `0`.
//! - **Errors:** `EFAULT`; `EPERM` another domain; `EINVAL` `gpfn` is not the caller's
//!   RAM, `idx` is out of range (not 0 for `shared_info`; for the grant table not below
//!   the maximum, beyond the next frame, or with the v2 status-frame bit), or `gpfn` is
//!   already another frame of the grant table; `EBUSY` moving a grant frame one of whose
//!   entries is in use (mapped or being copied by a back-end); `ENOSYS` another space.
//!
//! Frames are not checked against each other across spaces: a guest that puts
//! `shared_info` and a grant frame in one page only garbles its own state.
//!
//! Other sub-operations return `ENOSYS`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Sub-operation: place a special page in the guest-physical address space.
pub const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
/// `add_to_physmap` space: the `shared_info` page (idx 0).
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `add_to_physmap` space: a grant-table frame (`idx` = frame number).
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
