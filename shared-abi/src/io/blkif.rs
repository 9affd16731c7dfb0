//! The PV block device protocol (`xen/include/public/io/blkif.h`), the subset served here.
//!
//! ## Discovery (xenstore)
//!
//! The toolstack creates the back-end directory
//! `/local/domain/<backend>/backend/vbd/<frontend-domid>/<devid>/` and the front-end
//! directory `/local/domain/<frontend-domid>/device/vbd/<devid>/` (`backend` = the
//! back-end directory's path, `backend-id`, `state`). The back-end publishes:
//!
//! | key | value |
//! |-----|-------|
//! | `sectors` | disk size in units of [`SECTOR_SIZE`] |
//! | `sector-size` | [`SECTOR_SIZE`] (512) |
//! | `info` | `VDISK_*` bits, e.g. [`VDISK_READONLY`] |
//! | `feature-flush-cache` | `1`: [`BLKIF_OP_FLUSH_DISKCACHE`] is served |
//! | `feature-persistent` | `1`: the back-end can keep data pages mapped (persistent grants) |
//! | `state` | a [`crate::io::xenbus::XenbusState`] number |
//!
//! The front-end writes `ring-ref` (the grant reference of its ring page, decimal),
//! `event-channel` (an unbound port for the back-end's domain, decimal), `protocol`
//! (`x86_64-abi`) and, if it grants its data pages for good and reuses them,
//! `feature-persistent` = `1` (the back-end may then map each page once and keep it
//! mapped until the ring goes, so the front-end must not revoke those grants meanwhile),
//! then its `state`. The handshake is in [`crate::io::xenbus`].
//!
//! ## The ring
//!
//! One page, granted by the front-end, holding a shared ring (`io/ring.h`: a 64-byte
//! header, then entries) of [`BLKIF_RING_SIZE`] entries of 112 bytes, each a union of a
//! [`BlkifRequest`] and a [`BlkifResponse`]. The front-end produces requests, the back-end
//! answers each with a response carrying the request's `id`; responses may come in any
//! order and many requests may be in flight.
//!
//! ## Requests
//!
//! - [`BLKIF_OP_READ`] / [`BLKIF_OP_WRITE`]: `nr_segments` 1..=[`BLKIF_MAX_SEGMENTS`]
//!   segments, each naming a granted page (`gref`) and the inclusive range of 512-byte
//!   sectors `first_sect..=last_sect` (at most 7) of it. The data run contiguously on the
//!   disk from `sector_number` (always in 512-byte units). A read needs grants the back-end
//!   may write; a write, grants it may read.
//! - [`BLKIF_OP_FLUSH_DISKCACHE`]: `nr_segments` 0; everything completed before it is on
//!   stable storage when it completes.
//! - Anything else is answered [`BLKIF_RSP_EOPNOTSUPP`].
//!
//! A response's `status` is [`BLKIF_RSP_OKAY`], [`BLKIF_RSP_ERROR`] (bad request, grant
//! failure, I/O error) or [`BLKIF_RSP_EOPNOTSUPP`].

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Read sectors into the segments' pages.
pub const BLKIF_OP_READ: u8 = 0;
/// Write the segments' pages to sectors.
pub const BLKIF_OP_WRITE: u8 = 1;
/// Write barrier (not served: answered [`BLKIF_RSP_EOPNOTSUPP`]).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// Flush the disk's write cache.
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// Discard (not served).
pub const BLKIF_OP_DISCARD: u8 = 5;
/// Indirect segments (not served).
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// Segments in one request.
pub const BLKIF_MAX_SEGMENTS: usize = 11;
/// Bytes of one sector, the unit of `sector_number`, `first_sect` and `last_sect`.
pub const SECTOR_SIZE: u64 = 512;
/// The last sector of a 4 KiB page (`last_sect` is inclusive).
pub const SECTORS_PER_PAGE_MAX: u8 = 7;

/// Status: done.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// Status: the request failed (bad request, grant or I/O error).
pub const BLKIF_RSP_ERROR: i16 = -1;
/// Status: the operation is not supported.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;

/// `info` bit: a CD-ROM.
pub const VDISK_CDROM: u32 = 1 << 0;
/// `info` bit: removable media.
pub const VDISK_REMOVABLE: u32 = 1 << 1;
/// `info` bit: read-only; writes are answered [`BLKIF_RSP_ERROR`].
pub const VDISK_READONLY: u32 = 1 << 2;

/// One segment of a request (`struct blkif_request_segment`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BlkifSegment {
    /// Grant reference of the page.
    pub gref: u32,
    /// First sector of the page used (0..=7).
    pub first_sect: u8,
    /// Last sector of the page used, inclusive (`first_sect..=7`).
    pub last_sect: u8,
    /// Padding.
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<BlkifSegment>() == 8);

/// A request (`struct blkif_request`, x86_64 layout).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Segments used (see the module docs).
    pub nr_segments: u8,
    /// The device (`virtual-device`); unused by this back-end.
    pub handle: u16,
    /// Padding.
    pub pad: u32,
    /// Echoed in the response.
    pub id: u64,
    /// Start sector, in 512-byte units.
    pub sector_number: u64,
    /// The segments; only the first `nr_segments` are meaningful.
    pub seg: [BlkifSegment; BLKIF_MAX_SEGMENTS],
}
const _: () = assert!(core::mem::size_of::<BlkifRequest>() == 112);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, nr_segments) == 1);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, handle) == 2);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, id) == 8);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, sector_number) == 16);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, seg) == 24);

/// A response (`struct blkif_response`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct BlkifResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's operation.
    pub operation: u8,
    /// Padding.
    pub pad: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    /// Padding.
    pub pad2: u32,
}
const _: () = assert!(core::mem::size_of::<BlkifResponse>() == 16);
const _: () = assert!(core::mem::offset_of!(BlkifResponse, operation) == 8);
const _: () = assert!(core::mem::offset_of!(BlkifResponse, status) == 10);

/// Entries of a one-page blkif ring: `(4096 - 64) / 112` = 36, rounded down to a power
/// of two.
pub const BLKIF_RING_SIZE: u32 = 32;
const _: () = assert!((4096 - 64) / 112 >= BLKIF_RING_SIZE as usize);
const _: () = assert!((4096 - 64) / 112 < 2 * BLKIF_RING_SIZE as usize);
