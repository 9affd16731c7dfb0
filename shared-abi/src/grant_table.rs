//! Grant tables, version 1 (`xen/include/public/grant_table.h`).
//!
//! A domain shares one of its frames with another domain by filling a grant entry in its
//! grant table: the grantee's domid and the frame, then (after a write barrier) the flags
//! [`GTF_PERMIT_ACCESS`] (plus [`GTF_READONLY`]). The reference (the entry's index) travels
//! to the other side (xenstore, a ring). Entries 0..[`GNTTAB_NR_RESERVED_ENTRIES`] are
//! reserved: 0 for the console page, 1 for the xenstore page.
//!
//! The microvisor marks an entry in use by setting [`GTF_READING`] (and [`GTF_WRITING`] for
//! writable use) with a compare-and-swap over the 32-bit `flags`+`domid` word, checking in
//! the same step that the entry still permits the access to that grantee; after
//! [`GNTTAB_PIN_ATTEMPTS`] failed swaps it gives up, so a granter that keeps rewriting the
//! entry cannot stall it. The granter may revoke an entry only while neither bit is set.
//!
//! ## DomU calls: `grant_table_op(cmd, uop, count)` (hypercall 20)
//!
//! `uop` is the guest-linear address of the argument, `count` the number of arguments
//! there. Domain 0 gets `ENOSYS` for every sub-operation (its back-ends use the control
//! operations).
//!
//! | `cmd` | `uop` | `count` | effect and returns | errors |
//! |-------|-------|---------|--------------------|--------|
//! | [`GNTTABOP_QUERY_SIZE`] | [`GnttabQuerySize`] | 1 | writes `nr_frames` (table frames placed so far), `max_nr_frames` ([`GNTTAB_MAX_FRAMES`]) and `status` ([`GNTST_OKAY`], or [`GNTST_BAD_DOMAIN`] with the sizes 0 when `dom` is neither `DOMID_SELF` nor the caller); returns 0 | `EINVAL` `count` is not 1; `EFAULT` |
//! | [`GNTTABOP_SET_VERSION`] | [`GnttabVersion`] | 1 | version 1: writes 1 back, returns 0 | `ENOSYS` version 2 (so guests stay on version 1); `EINVAL` any other version or `count` not 1; `EFAULT` |
//! | [`GNTTABOP_GET_VERSION`] | [`GnttabGetVersion`] | 1 | writes `version` = 1; returns 0 | `EPERM` `dom` is neither `DOMID_SELF` nor the caller; `EINVAL` `count` not 1; `EFAULT` |
//! | [`GNTTABOP_SETUP_TABLE`] | | | PV only | `ENOSYS` |
//! | [`GNTTABOP_MAP_GRANT_REF`], [`GNTTABOP_UNMAP_GRANT_REF`], [`GNTTABOP_COPY`] | | | back-ends live in domain 0 | `ENOSYS` |
//! | anything else | | | | `ENOSYS` |
//!
//! ## The table's frames
//!
//! A domain has no grant table until it places one: frame `N` (`0..`[`GNTTAB_MAX_FRAMES`])
//! is placed with `XENMEM_add_to_physmap(XENMAPSPACE_grant_table, idx = N, gpfn)`
//! ([`crate::memory`]). The named frame of the guest's own RAM *becomes* table frame `N`:
//! the microvisor records where it is and reads and updates its entries there with atomic
//! operations, so the guest keeps seeing its table at `gpfn` like any RAM. Frames are
//! placed in order (`N` at most the number placed so far); entries `N * 512 ..` exist
//! once frame `N` is placed. Placing a placed frame again at another `gpfn` moves it
//! (the entries are copied to the new frame, the old one is plain RAM again), unless an
//! entry of that frame is in use, so the guest cannot pull a frame away under a pin.
//!
//! Mapping, unmapping and copying granted frames is done by back-ends in domain 0 through
//! control operations ([`crate::control`]: `GrantMap`, `GrantUnmap`, `GrantCopy`), not
//! through this hypercall.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes of one v1 entry.
pub const GRANT_ENTRY_SIZE: usize = 8;
/// Entries per table frame.
pub const ENTRIES_PER_FRAME: u32 = 512;
/// Frames of grant table a domain may have.
pub const GNTTAB_MAX_FRAMES: u32 = 4;
/// Reserved references at the start of the table.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// Reference of the console page.
pub const GNTTAB_RESERVED_CONSOLE: u32 = 0;
/// Reference of the xenstore page.
pub const GNTTAB_RESERVED_XENSTORE: u32 = 1;
/// Compare-and-swap attempts before a pin gives up.
pub const GNTTAB_PIN_ATTEMPTS: u32 = 5;

/// Entry type in flags bits 1:0: not in use.
pub const GTF_INVALID: u16 = 0;
/// Entry type: the grantee may map or copy the frame.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// Entry type: page transfer (not supported).
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// Entry type: transitive grant (not supported).
pub const GTF_TRANSITIVE: u16 = 3;
/// Mask of the entry type.
pub const GTF_TYPE_MASK: u16 = 3;
/// The grantee may only read.
pub const GTF_READONLY: u16 = 1 << 2;
/// Set by the hypervisor while the frame is in use for reading.
pub const GTF_READING: u16 = 1 << 3;
/// Set by the hypervisor while the frame is in use for writing.
pub const GTF_WRITING: u16 = 1 << 4;
/// Sub-page grant (v2 only; refused).
pub const GTF_SUB_PAGE: u16 = 1 << 8;

/// Sub-operation: map a grant (back-end domains; not a DomU call here).
pub const GNTTABOP_MAP_GRANT_REF: u64 = 0;
/// Sub-operation: unmap a grant (back-end domains; not a DomU call here).
pub const GNTTABOP_UNMAP_GRANT_REF: u64 = 1;
/// Sub-operation: size of the caller's table in frames (PV only; `ENOSYS`).
pub const GNTTABOP_SETUP_TABLE: u64 = 2;
/// Sub-operation: copy between granted frames (back-end domains; not a DomU call here).
pub const GNTTABOP_COPY: u64 = 5;
/// Sub-operation: the table's size.
pub const GNTTABOP_QUERY_SIZE: u64 = 6;
/// Sub-operation: choose the table version.
pub const GNTTABOP_SET_VERSION: u64 = 8;
/// Sub-operation: the table version.
pub const GNTTABOP_GET_VERSION: u64 = 10;

/// Status: success.
pub const GNTST_OKAY: i16 = 0;
/// Status: anything else went wrong (including a pin that kept losing its race).
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// Status: no such domain.
pub const GNTST_BAD_DOMAIN: i16 = -2;
/// Status: the reference is out of range or not a usable entry.
pub const GNTST_BAD_GNTREF: i16 = -3;
/// Status: unknown mapping handle.
pub const GNTST_BAD_HANDLE: i16 = -4;
/// Status: the entry does not grant this access to this domain.
pub const GNTST_PERMISSION_DENIED: i16 = -8;
/// Status: the granted frame is not RAM of the granting domain.
pub const GNTST_BAD_PAGE: i16 = -9;
/// Status: a copy segment is out of range.
pub const GNTST_BAD_COPY_ARG: i16 = -10;
/// Status: try again.
pub const GNTST_EAGAIN: i16 = -12;
/// Status: out of space (too many entries of one domain in use at once).
pub const GNTST_NO_SPACE: i16 = -13;

/// `GrantCopySegment::flags` (control operation `GrantCopy`): the source is a grant
/// reference (`GNTCOPY_source_gref`).
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GrantCopySegment::flags`: the destination is a grant reference (`GNTCOPY_dest_gref`).
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// A v1 grant entry (`struct grant_entry_v1`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct GrantEntryV1 {
    /// `GTF_*`.
    pub flags: u16,
    /// The grantee.
    pub domid: u16,
    /// The granter's frame (GFN).
    pub frame: u32,
}
const _: () = assert!(core::mem::size_of::<GrantEntryV1>() == GRANT_ENTRY_SIZE);

/// Argument of `GNTTABOP_query_size` (`struct gnttab_query_size`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct GnttabQuerySize {
    /// In: `DOMID_SELF` or the caller.
    pub dom: u16,
    /// Padding.
    pub pad: u16,
    /// Out: frames in use.
    pub nr_frames: u32,
    /// Out: the most frames the table may have.
    pub max_nr_frames: u32,
    /// Out: `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub pad2: u16,
}
const _: () = assert!(core::mem::size_of::<GnttabQuerySize>() == 16);

/// Argument of `GNTTABOP_set_version` (`struct gnttab_set_version`); `get_version` takes
/// [`GnttabGetVersion`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct GnttabVersion {
    /// In: the version wanted. Out: the version in effect.
    pub version: u32,
}
const _: () = assert!(core::mem::size_of::<GnttabVersion>() == 4);

/// Argument of `GNTTABOP_get_version` (`struct gnttab_get_version`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct GnttabGetVersion {
    /// In: `DOMID_SELF` or the caller.
    pub dom: u16,
    /// Padding.
    pub pad: u16,
    /// Out: the version in effect (1).
    pub version: u32,
}
const _: () = assert!(core::mem::size_of::<GnttabGetVersion>() == 8);
