//! The PV block protocol's rings (`shared_abi::io::blkif`) on top of [`crate::ring`].
//!
//! - [`BlkFront`]: a front-end's ring end. It tracks which request ids are in flight, so a
//!   back-end that answers an id never asked (or twice) is caught
//!   ([`FrontError::UnknownId`]) instead of completing someone else's I/O.
//! - [`BlkBack`]: a back-end's ring end. [`BlkBack::next_request`] copies each request
//!   out of its slot once ([`BackRing::take_request`]) and validates the copy
//!   ([`validate`]); the caller acts only on the returned [`BlkRequest`], so a front-end
//!   rewriting the slot meanwhile changes nothing.
//! - [`validate`]: the back-end's checks, with a typed [`BadRequest`] for each way a
//!   request can be wrong. [`BadRequest::is_protocol_violation`] separates what an honest
//!   front-end never sends (malformed segments, sectors past the end of the disk) from
//!   what it may (an operation this back-end does not serve, a write to a read-only disk),
//!   which is answered with a status.
#![forbid(unsafe_code)]

use core::fmt;

use shared_abi::io::blkif::{
    BLKIF_MAX_SEGMENTS, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BlkifRequest, BlkifResponse, BlkifSegment, SECTOR_SIZE,
    SECTORS_PER_PAGE_MAX,
};

use crate::mem::SharedMem;
use crate::ring::{BackRing, FrontRing, RingError};

/// A blkif ring's front-end end, unwrapped.
pub type BlkFrontRing<M> = FrontRing<BlkifRequest, BlkifResponse, M>;
/// A blkif ring's back-end end, unwrapped.
pub type BlkBackRing<M> = BackRing<BlkifRequest, BlkifResponse, M>;

/// A validated operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkOp {
    /// Disk to the segments' pages.
    Read,
    /// The segments' pages to disk.
    Write,
    /// Flush the disk's write cache.
    Flush,
}

impl BlkOp {
    /// The wire operation.
    #[must_use]
    pub const fn wire(self) -> u8 {
        match self {
            Self::Read => BLKIF_OP_READ,
            Self::Write => BLKIF_OP_WRITE,
            Self::Flush => BLKIF_OP_FLUSH_DISKCACHE,
        }
    }
}

/// A validated segment: `len` bytes at byte `offset` of the page granted as `gref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Grant reference of the page.
    pub gref: u32,
    /// Byte offset in the page (`first_sect * 512`), below 4096.
    pub offset: u16,
    /// Bytes (`(last_sect - first_sect + 1) * 512`), 512..=4096; `offset + len <= 4096`.
    pub len: u16,
}

/// A request that passed [`validate`]: a private copy, never a view of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkRequest {
    /// The front-end's id, to echo.
    pub id: u64,
    /// What to do.
    pub op: BlkOp,
    /// First sector (512-byte units).
    pub sector: u64,
    segs: [Segment; BLKIF_MAX_SEGMENTS],
    nr: u8,
}

impl BlkRequest {
    /// The segments, in disk order (none for a flush).
    #[must_use]
    pub fn segments(&self) -> &[Segment] {
        &self.segs[..usize::from(self.nr)]
    }

    /// Total bytes the segments cover.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.segments().iter().map(|s| u64::from(s.len)).sum()
    }

    /// Byte offset on the disk of the first sector.
    #[must_use]
    pub fn disk_offset(&self) -> u64 {
        // Cannot overflow: validate checked sector + length against the disk, whose byte
        // size fits a u64.
        self.sector * SECTOR_SIZE
    }

    /// The response to this request with `status`.
    #[must_use]
    pub fn response(&self, status: i16) -> BlkifResponse {
        response(self.id, self.op.wire(), status)
    }
}

/// A response for request `id` of `operation`.
#[must_use]
pub fn response(id: u64, operation: u8, status: i16) -> BlkifResponse {
    BlkifResponse {
        id,
        operation,
        status,
        ..BlkifResponse::default()
    }
}

/// Why [`validate`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadRequest {
    /// An operation this back-end does not serve (answered `EOPNOTSUPP`).
    Unsupported {
        /// The wire operation.
        op: u8,
    },
    /// A write to a read-only disk (answered `ERROR`).
    ReadOnly,
    /// A read or write with no segments or more than 11, or a flush with segments.
    SegmentCount {
        /// The wire operation.
        op: u8,
        /// `nr_segments`.
        nr: u8,
    },
    /// A segment whose sectors are not `first <= last <= 7`.
    SegmentSectors {
        /// Index of the segment.
        index: u8,
        /// `first_sect`.
        first: u8,
        /// `last_sect`.
        last: u8,
    },
    /// The request's sectors do not lie inside the disk.
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Sectors the request covers.
        count: u64,
        /// Sectors of the disk.
        disk_sectors: u64,
    },
}

impl BadRequest {
    /// Whether only a broken or hostile front-end sends this (it knows the disk's size
    /// and the segment rules); the others are answered with [`Self::status`].
    #[must_use]
    pub const fn is_protocol_violation(&self) -> bool {
        !matches!(self, Self::Unsupported { .. } | Self::ReadOnly)
    }

    /// The response status for it.
    #[must_use]
    pub const fn status(&self) -> i16 {
        match self {
            Self::Unsupported { .. } => BLKIF_RSP_EOPNOTSUPP,
            _ => BLKIF_RSP_ERROR,
        }
    }
}

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unsupported { op } => write!(f, "operation {op} is not supported"),
            Self::ReadOnly => f.write_str("write to a read-only disk"),
            Self::SegmentCount { op, nr } => {
                write!(f, "operation {op} with {nr} segments")
            }
            Self::SegmentSectors { index, first, last } => write!(
                f,
                "segment {index} covers sectors {first}..={last} of its page (allowed: first <= last <= 7)"
            ),
            Self::OutOfRange {
                sector,
                count,
                disk_sectors,
            } => write!(
                f,
                "{count} sectors from sector {sector} do not fit a disk of {disk_sectors} sectors"
            ),
        }
    }
}

impl core::error::Error for BadRequest {}

/// Checks a request copied out of the ring against a disk of `disk_sectors` sectors.
/// Reads and writes need 1..=11 segments, each `first_sect <= last_sect <= 7`, and
/// `sector_number + total sectors <= disk_sectors`; a flush needs 0 segments.
///
/// # Errors
/// The first rule broken, checked in the order: operation, segment count, read-only,
/// each segment, range.
pub fn validate(
    req: &BlkifRequest,
    disk_sectors: u64,
    read_only: bool,
) -> Result<BlkRequest, BadRequest> {
    let op = match req.operation {
        BLKIF_OP_READ => BlkOp::Read,
        BLKIF_OP_WRITE => BlkOp::Write,
        BLKIF_OP_FLUSH_DISKCACHE => BlkOp::Flush,
        op => return Err(BadRequest::Unsupported { op }),
    };
    let nr = req.nr_segments;
    let count_ok = match op {
        BlkOp::Flush => nr == 0,
        BlkOp::Read | BlkOp::Write => (1..=BLKIF_MAX_SEGMENTS).contains(&usize::from(nr)),
    };
    if !count_ok {
        return Err(BadRequest::SegmentCount {
            op: req.operation,
            nr,
        });
    }
    if op == BlkOp::Write && read_only {
        return Err(BadRequest::ReadOnly);
    }
    let mut segs = [Segment::default(); BLKIF_MAX_SEGMENTS];
    let mut sectors = 0u64;
    for (index, (raw, out)) in req.seg.iter().zip(segs.iter_mut()).enumerate() {
        if index >= usize::from(nr) {
            break;
        }
        let BlkifSegment {
            gref,
            first_sect,
            last_sect,
            ..
        } = *raw;
        if first_sect > last_sect || last_sect > SECTORS_PER_PAGE_MAX {
            return Err(BadRequest::SegmentSectors {
                // Lossless: index < 11.
                index: index as u8,
                first: first_sect,
                last: last_sect,
            });
        }
        let n = u16::from(last_sect - first_sect) + 1;
        // At most 8 * 512 = 4096, and offset + len <= 4096.
        *out = Segment {
            gref,
            offset: u16::from(first_sect) * 512,
            len: n * 512,
        };
        sectors += u64::from(n);
    }
    let fits = req
        .sector_number
        .checked_add(sectors)
        .is_some_and(|end| end <= disk_sectors);
    // A flush covers no sectors; its sector_number is meaningless.
    if op != BlkOp::Flush && !fits {
        return Err(BadRequest::OutOfRange {
            sector: req.sector_number,
            count: sectors,
            disk_sectors,
        });
    }
    Ok(BlkRequest {
        id: req.id,
        op,
        sector: if op == BlkOp::Flush {
            0
        } else {
            req.sector_number
        },
        segs,
        nr,
    })
}

/// What [`BlkBack::next_request`] took from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// A valid request.
    Valid(BlkRequest),
    /// A refused request: answer it with `BadRequest::status` (or stop serving the
    /// device if it is a protocol violation).
    Invalid {
        /// The front-end's id.
        id: u64,
        /// The wire operation.
        op: u8,
        /// Why.
        why: BadRequest,
    },
}

/// A block back-end's ring end. See the [module docs](self).
#[derive(Debug)]
pub struct BlkBack<M> {
    ring: BlkBackRing<M>,
    disk_sectors: u64,
    read_only: bool,
}

impl<M: SharedMem> BlkBack<M> {
    /// Attaches to the ring the front-end initialised in `mem`, for a disk of
    /// `disk_sectors` sectors.
    ///
    /// # Errors
    /// [`RingError::TooSmall`] if `mem` cannot hold one entry.
    pub fn attach(mem: M, disk_sectors: u64, read_only: bool) -> Result<Self, RingError> {
        Ok(Self {
            ring: BackRing::attach(mem)?,
            disk_sectors,
            read_only,
        })
    }

    /// The ring, for anything not wrapped here.
    pub fn ring(&mut self) -> &mut BlkBackRing<M> {
        &mut self.ring
    }

    /// Takes the next request (copied once, then validated), or `None` if none is
    /// published.
    ///
    /// # Errors
    /// A [`RingError`] of the ring (e.g. the front-end's index overran it).
    pub fn next_request(&mut self) -> Result<Option<Taken>, RingError> {
        let Some(raw) = self.ring.take_request()? else {
            return Ok(None);
        };
        Ok(Some(
            match validate(&raw, self.disk_sectors, self.read_only) {
                Ok(r) => Taken::Valid(r),
                Err(why) => Taken::Invalid {
                    id: raw.id,
                    op: raw.operation,
                    why,
                },
            },
        ))
    }

    /// Queues a response (the front-end sees it after [`Self::push`]).
    ///
    /// # Errors
    /// As [`BackRing::queue_response`].
    pub fn respond(&mut self, rsp: &BlkifResponse) -> Result<(), RingError> {
        self.ring.queue_response(rsp)
    }

    /// Publishes the queued responses; whether the front-end must be notified.
    ///
    /// # Errors
    /// As [`BackRing::push_responses`].
    pub fn push(&mut self) -> Result<bool, RingError> {
        self.ring.push_responses()
    }

    /// Before going idle: whether requests arrived after all (ring.h's final check).
    ///
    /// # Errors
    /// As [`BackRing::final_check_for_requests`].
    pub fn final_check(&mut self) -> Result<bool, RingError> {
        self.ring.final_check_for_requests()
    }
}

/// Why [`BlkFront`] refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrontError {
    /// The ring failed (full, or the back-end broke it).
    Ring(RingError),
    /// A request with this id is already in flight.
    DuplicateId(u64),
    /// The back-end answered an id that is not in flight; the front-end is now disabled.
    UnknownId(u64),
    /// An earlier [`FrontError::UnknownId`] disabled the front-end.
    Disabled,
}

impl From<RingError> for FrontError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

impl fmt::Display for FrontError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ring(e) => write!(f, "{e}"),
            Self::DuplicateId(id) => write!(f, "request id {id} is already in flight"),
            Self::UnknownId(id) => {
                write!(f, "the back-end answered id {id}, which is not in flight")
            }
            Self::Disabled => f.write_str("front-end disabled after a back-end violation"),
        }
    }
}

impl core::error::Error for FrontError {}

/// A block front-end's ring end, with the ids in flight. See the [module docs](self).
#[derive(Debug)]
pub struct BlkFront<M> {
    ring: BlkFrontRing<M>,
    /// Ids in flight; at most the ring size (32 for a page), so a small array.
    in_flight: [Option<u64>; 64],
    disabled: bool,
}

impl<M: SharedMem> BlkFront<M> {
    /// Initialises a ring in `mem` as its front-end.
    ///
    /// # Errors
    /// [`RingError::TooSmall`], or a ring of more than 64 entries (more than one page).
    pub fn init(mem: M) -> Result<Self, RingError> {
        let ring = FrontRing::init(mem)?;
        if ring.size() > 64 {
            return Err(RingError::TooSmall {
                bytes: 0,
                entry_size: 112,
            });
        }
        Ok(Self {
            ring,
            in_flight: [None; 64],
            disabled: false,
        })
    }

    /// The ring, for anything not wrapped here.
    pub fn ring(&mut self) -> &mut BlkFrontRing<M> {
        &mut self.ring
    }

    /// Requests in flight.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|s| s.is_some()).count()
    }

    /// Queues `req` (published by [`Self::push`]).
    ///
    /// # Errors
    /// [`FrontError::DuplicateId`], [`FrontError::Ring`] (`Full`), or
    /// [`FrontError::Disabled`].
    pub fn queue(&mut self, req: &BlkifRequest) -> Result<(), FrontError> {
        if self.disabled {
            return Err(FrontError::Disabled);
        }
        if self.in_flight.contains(&Some(req.id)) {
            return Err(FrontError::DuplicateId(req.id));
        }
        self.ring.queue_request(req)?;
        // A free slot exists: at most `size` requests are in flight and size <= 64.
        if let Some(slot) = self.in_flight.iter_mut().find(|s| s.is_none()) {
            *slot = Some(req.id);
        }
        Ok(())
    }

    /// Publishes queued requests; whether the back-end must be notified.
    ///
    /// # Errors
    /// As [`FrontRing::push_requests`].
    pub fn push(&mut self) -> Result<bool, FrontError> {
        Ok(self.ring.push_requests()?)
    }

    /// Takes the next response for a request in flight, or `None`.
    ///
    /// # Errors
    /// [`FrontError::UnknownId`] (then disabled), or a ring error.
    pub fn take(&mut self) -> Result<Option<BlkifResponse>, FrontError> {
        if self.disabled {
            return Err(FrontError::Disabled);
        }
        let Some(rsp) = self.ring.take_response()? else {
            return Ok(None);
        };
        match self.in_flight.iter_mut().find(|s| **s == Some(rsp.id)) {
            Some(slot) => {
                *slot = None;
                Ok(Some(rsp))
            }
            None => {
                self.disabled = true;
                Err(FrontError::UnknownId(rsp.id))
            }
        }
    }
}

/// Builds a request for `op` on `sector` with `segs` (at most 11 are used).
#[must_use]
pub fn request(op: u8, id: u64, sector: u64, segs: &[BlkifSegment]) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation: op,
        // Lossless after the min.
        nr_segments: segs.len().min(BLKIF_MAX_SEGMENTS) as u8,
        id,
        sector_number: sector,
        ..BlkifRequest::default()
    };
    for (dst, src) in r.seg.iter_mut().zip(segs) {
        *dst = *src;
    }
    r
}

/// A segment of `gref` covering sectors `first..=last` of the page.
#[must_use]
pub const fn segment(gref: u32, first: u8, last: u8) -> BlkifSegment {
    BlkifSegment {
        gref,
        first_sect: first,
        last_sect: last,
        pad: 0,
    }
}

#[cfg(test)]
mod tests;
