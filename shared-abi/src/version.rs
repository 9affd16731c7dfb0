//! `xen_version` (hypercall 17): version and feature information
//! (`xen/include/public/version.h`, `features.h`).
//!
//! ## `xen_version(XENVER_version, 0)`
//! - **Returns:** `(major << 16) | minor` of the Xen interface level this ABI mirrors.
//! - **Errors:** none.
//!
//! ## `xen_version(XENVER_extraversion, buf)`
//! - **Arguments:** `RSI` = linear address of a 16-byte buffer ([`XenExtraVersion`]).
//! - **Returns:** `0`; the buffer holds a NUL-padded string such as `"-microvisor"`.
//! - **Errors:** `EFAULT` if the buffer is not writable guest memory.
//!
//! ## `xen_version(XENVER_get_features, &XenFeatureInfo)`
//! - **Arguments:** `RSI` = linear address of a [`XenFeatureInfo`]; the guest sets
//!   `submap_idx`, the microvisor fills `submap`.
//! - **Returns:** `0`. Submaps other than 0 read as all zero.
//! - **Errors:** `EFAULT` if the structure is not accessible guest memory.
//!
//! ## `xen_version(XENVER_pagesize, 0)`
//! - **Returns:** `4096`.
//!
//! Other sub-operations return `ENOSYS`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Sub-operation: `(major << 16) | minor`.
pub const XENVER_VERSION: u64 = 0;
/// Sub-operation: copy the 16-byte extra-version string.
pub const XENVER_EXTRAVERSION: u64 = 1;
/// Sub-operation: read one 32-bit feature submap.
pub const XENVER_GET_FEATURES: u64 = 6;
/// Sub-operation: the page size.
pub const XENVER_PAGESIZE: u64 = 7;

/// The extra-version string buffer (`xen_extraversion_t`).
pub type XenExtraVersion = [u8; 16];

/// Argument of `XENVER_get_features` (`struct xen_feature_info`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenFeatureInfo {
    /// Which 32-bit submap to read (in).
    pub submap_idx: u32,
    /// The feature bits of that submap (out).
    pub submap: u32,
}
const _: () = assert!(core::mem::size_of::<XenFeatureInfo>() == 8);

/// Feature bit numbers (`XENFEAT_*`) in submap 0.
pub mod feature {
    /// The guest's physical address space is translated by the hypervisor (always, for PVH).
    pub const AUTO_TRANSLATED_PHYSMAP: u32 = 2;
    /// Event-channel upcalls may be delivered through a callback vector.
    pub const HVM_CALLBACK_VECTOR: u32 = 8;
    /// The pvclock TSC data in `vcpu_info` is safe to use.
    pub const HVM_SAFE_PVCLOCK: u32 = 9;
}
