//! A PV block front-end: the guest's end of a vbd served by dom0d's `blkback`, over
//! [`pv_drivers::blkif::BlkFront`].
//!
//! ## Connecting ([`Disk::connect`], bare metal)
//!
//! 1. Reads `device/vbd/<devid>/backend` (the back-end's directory) from xenstore, then
//!    the back-end's `sectors`, `sector-size` (must be 512), `info` (`VDISK_*` bits) and
//!    `feature-flush-cache` (optional) with the strict parsers of this module.
//! 2. Places grant table frame 0 ([`crate::grants::init`]) and grants domain 0 the ring
//!    page (reference [`RING_REF`]) and a pool of [`SLOTS`] × [`BLKIF_MAX_SEGMENTS`]
//!    bounce pages (references from [`FIRST_DATA_REF`]), all writable, for the life of the
//!    guest. The pages are statics of [`AtomicPage`]s, so filling and reading them needs no
//!    `unsafe` code.
//! 3. Allocates an unbound event channel for domain 0, writes `ring-ref`,
//!    `event-channel`, `protocol` = `x86_64-abi`, `feature-persistent` = 1 (its pages
//!    stay granted, so the back-end may keep them mapped), then `state` = Initialised (3).
//! 4. Watches the back-end's `state` and waits on events (re-reading it at each wakeup and
//!    at least every 100 ms) until it is Connected (4), at most [`CONNECT_TIMEOUT_NS`]
//!    (`crate::pvdev::wait_connected`, shared with [`crate::netfront`]); Closing/Closed or
//!    the timeout are errors. Then writes `state` = Connected.
//!
//! ## I/O
//!
//! [`Disk::read`] and [`Disk::write`] split the buffer into requests of up to
//! [`MAX_REQUEST_BYTES`] (11 pages, [`plan`] and [`segments`]), each using one slot of
//! bounce pages; they fill the ring (32 requests), publish, and then take responses as the
//! back-end's event channel signals them, refilling freed slots until the whole buffer is
//! done. [`Disk::flush`] sends `BLKIF_OP_FLUSH_DISKCACHE`. A failed status is a
//! [`BlkError::Io`]; the remaining requests in flight are still collected first. A
//! back-end that breaks the ring or answers an unknown id makes the disk unusable
//! ([`BlkError::Ring`]); one that does not answer for [`IO_TIMEOUT_NS`] is
//! [`BlkError::Timeout`].
//!
//! Everything but the bare-metal glue (request planning, segment building, node parsing,
//! [`AtomicPage`] as shared memory) is host-tested.

use core::fmt;

use pv_drivers::blkif::{FrontError, segment};
use shared_abi::io::blkif::{BLKIF_MAX_SEGMENTS, BlkifSegment, SECTOR_SIZE, VDISK_READONLY};
use shared_abi::io::xenbus::XenbusState;

use crate::control::StoreError;
use crate::grants::GrantError;
// Shared with the network front-end; re-exported under their old paths.
pub use crate::pvdev::{AtomicPage, PAGE, Text, parse_decimal, text};

/// Bytes one request moves at most: 11 segments of a whole page.
pub const MAX_REQUEST_BYTES: usize = BLKIF_MAX_SEGMENTS * PAGE;
/// Requests in flight at most (the ring's size), one slot of bounce pages each.
pub const SLOTS: usize = 32;
/// The ring page's grant reference (refs 0..8 are reserved by convention).
pub const RING_REF: u32 = 16;
/// The first bounce page's grant reference; slot `s` page `p` is
/// `FIRST_DATA_REF + s * 11 + p`.
pub const FIRST_DATA_REF: u32 = RING_REF + 1;
/// How long the back-end may take to connect.
pub const CONNECT_TIMEOUT_NS: u64 = 10_000_000_000;
/// How long the back-end may leave requests unanswered (no response at all).
pub const IO_TIMEOUT_NS: u64 = 30_000_000_000;
/// The device id of `xvda` (Xen's `xvd` encoding: major 202, minor 0).
pub const XVDA: u32 = 202 << 8;

const _: () = assert!(FIRST_DATA_REF as usize + SLOTS * BLKIF_MAX_SEGMENTS <= 512);

/// Why a block-device call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkError {
    /// No hypervisor, no events or no xenstore.
    NoStore,
    /// `device/vbd/<devid>/backend` does not exist: the domain has no such disk.
    NoDisk(u32),
    /// A xenstore access failed.
    Store(StoreError),
    /// A node holds something this front-end does not accept.
    BadNode(&'static str),
    /// The back-end's sector size is not 512.
    SectorSize(u64),
    /// A grant call failed.
    Grant(GrantError),
    /// A hypercall failed (grant table placement, event channel allocation).
    Hypercall(shared_abi::Errno),
    /// The back-end went Closing/Closed (or never connected).
    Backend(XenbusState),
    /// The back-end did not answer in time.
    Timeout,
    /// The ring broke (the back-end broke the protocol); the disk is unusable now.
    Ring(FrontError),
    /// The back-end answered a request with a failed status.
    Io {
        /// First sector of the failed request.
        sector: u64,
        /// `BLKIF_RSP_*`.
        status: i16,
    },
    /// The buffer is not a whole number of sectors, or the range leaves the disk.
    OutOfRange {
        /// First sector asked for.
        sector: u64,
        /// Bytes asked for.
        len: usize,
    },
    /// A write to a read-only disk.
    ReadOnly,
    /// The disk's pool is in use by another [`Disk`] (one per guest).
    Busy,
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlkError::NoStore => f.write_str("no xenstore or events"),
            BlkError::NoDisk(devid) => write!(f, "no vbd {devid} (device/vbd/{devid}/backend)"),
            BlkError::Store(e) => write!(f, "xenstore: {e}"),
            BlkError::BadNode(n) => write!(f, "the back-end's {n} node is malformed"),
            BlkError::SectorSize(s) => write!(f, "sector size {s} is not 512"),
            BlkError::Grant(e) => write!(f, "grant: {e}"),
            BlkError::Hypercall(e) => write!(f, "hypercall failed: {}", e.name()),
            BlkError::Backend(s) => write!(f, "the back-end is {s:?}"),
            BlkError::Timeout => f.write_str("the back-end did not answer in time"),
            BlkError::Ring(e) => write!(f, "ring: {e}"),
            BlkError::Io { sector, status } => {
                write!(f, "request at sector {sector} failed with status {status}")
            }
            BlkError::OutOfRange { sector, len } => write!(
                f,
                "{len} bytes at sector {sector} are not whole sectors inside the disk"
            ),
            BlkError::ReadOnly => f.write_str("the disk is read-only"),
            BlkError::Busy => f.write_str("the block front-end is already in use"),
        }
    }
}

impl From<FrontError> for BlkError {
    fn from(e: FrontError) -> Self {
        BlkError::Ring(e)
    }
}

/// What the back-end published about the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// `VDISK_*` bits.
    pub info: u32,
    /// Whether `BLKIF_OP_FLUSH_DISKCACHE` is served.
    pub flush: bool,
}

impl DiskInfo {
    /// Parses the back-end's `sectors`, `sector-size`, `info` and (if present)
    /// `feature-flush-cache` node values.
    ///
    /// # Errors
    /// [`BlkError::BadNode`] naming the node; [`BlkError::SectorSize`] for a size other
    /// than 512.
    pub fn parse(
        sectors: &[u8],
        sector_size: &[u8],
        info: &[u8],
        flush: Option<&[u8]>,
    ) -> Result<Self, BlkError> {
        let sectors = parse_decimal(sectors).ok_or(BlkError::BadNode("sectors"))?;
        let size = parse_decimal(sector_size).ok_or(BlkError::BadNode("sector-size"))?;
        if size != SECTOR_SIZE {
            return Err(BlkError::SectorSize(size));
        }
        let info = parse_decimal(info)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(BlkError::BadNode("info"))?;
        let flush = match flush {
            None => false,
            Some(raw) => parse_decimal(raw).ok_or(BlkError::BadNode("feature-flush-cache"))? != 0,
        };
        Ok(Self {
            sectors,
            info,
            flush,
        })
    }

    /// Whether the disk is read-only.
    pub fn read_only(&self) -> bool {
        self.info & VDISK_READONLY != 0
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.sectors.saturating_mul(SECTOR_SIZE)
    }
}

/// Checks that `len` bytes at `sector` are whole sectors inside a disk of `disk_sectors`.
///
/// # Errors
/// [`BlkError::OutOfRange`].
pub fn check_range_of(disk_sectors: u64, sector: u64, len: usize) -> Result<(), BlkError> {
    let bad = BlkError::OutOfRange { sector, len };
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return Err(bad);
    }
    let end = sector.checked_add(len as u64 / SECTOR_SIZE).ok_or(bad)?;
    if end > disk_sectors {
        return Err(bad);
    }
    Ok(())
}

/// One request of a transfer: `bytes` at byte `offset` of the buffer, to or from `sector`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// First sector.
    pub sector: u64,
    /// Offset in the caller's buffer.
    pub offset: usize,
    /// Bytes, a multiple of 512, at most [`MAX_REQUEST_BYTES`].
    pub bytes: usize,
}

/// Splits a transfer of `len` bytes (whole sectors) at `sector` into requests of at most
/// [`MAX_REQUEST_BYTES`].
pub fn plan(sector: u64, len: usize) -> impl Iterator<Item = Chunk> {
    (0..len)
        .step_by(MAX_REQUEST_BYTES)
        .map(move |offset| Chunk {
            sector: sector + (offset as u64) / SECTOR_SIZE,
            offset,
            bytes: (len - offset).min(MAX_REQUEST_BYTES),
        })
}

/// The segments of a request of `bytes` (whole sectors, at most [`MAX_REQUEST_BYTES`])
/// laid out from the start of the pages `grefs` (one per 4 KiB): whole pages, then the
/// sectors left on the last one. Returns the segments and how many are used.
pub fn segments(bytes: usize, grefs: &[u32]) -> ([BlkifSegment; BLKIF_MAX_SEGMENTS], usize) {
    let mut out = [BlkifSegment::default(); BLKIF_MAX_SEGMENTS];
    let mut sectors = bytes / SECTOR_SIZE as usize;
    let mut n = 0;
    for (slot, &gref) in out.iter_mut().zip(grefs) {
        if sectors == 0 {
            break;
        }
        let here = sectors.min(PAGE / SECTOR_SIZE as usize);
        // Lossless: 1 <= here <= 8.
        *slot = segment(gref, 0, (here - 1) as u8);
        sectors -= here;
        n += 1;
    }
    (out, n)
}

/// The grant reference of page `page` of bounce slot `slot`.
pub const fn data_ref(slot: usize, page: usize) -> u32 {
    FIRST_DATA_REF + (slot * BLKIF_MAX_SEGMENTS + page) as u32
}

#[cfg(target_os = "none")]
pub use bare::Disk;

#[cfg(target_os = "none")]
mod bare {
    use core::sync::atomic::{AtomicBool, Ordering};

    use pv_drivers::blkif::{BlkFront, request};
    use shared_abi::DomId;
    use shared_abi::guest::{evtchn_alloc_unbound, evtchn_send};
    use shared_abi::io::blkif::{
        BLKIF_MAX_SEGMENTS, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE,
        BLKIF_RSP_OKAY, BlkifResponse,
    };
    use shared_abi::io::xenbus::XenbusState;

    use super::{
        AtomicPage, BlkError, Chunk, DiskInfo, IO_TIMEOUT_NS, PAGE, RING_REF, SLOTS, Text,
        check_range_of, data_ref, plan, segments, text,
    };
    use crate::control::{StoreError, store_read, store_write};
    use crate::{events, grants, pvdev, time};

    const POOL_PAGES: usize = SLOTS * BLKIF_MAX_SEGMENTS;

    static RING: AtomicPage = AtomicPage::new();
    static POOL: [AtomicPage; POOL_PAGES] = [const { AtomicPage::new() }; POOL_PAGES];
    /// The pool and ring are claimed by a [`Disk`].
    static CLAIMED: AtomicBool = AtomicBool::new(false);

    type Path = Text<128>;

    fn path(args: core::fmt::Arguments<'_>) -> Result<Path, BlkError> {
        text(args).ok_or(BlkError::BadNode("path (too long)"))
    }

    /// A request in flight from one slot.
    #[derive(Clone, Copy, Debug)]
    struct InFlight {
        chunk: Chunk,
    }

    enum Data<'a> {
        Read(&'a mut [u8]),
        Write(&'a [u8]),
    }

    /// A connected virtual block device. One per guest (the bounce pool is static).
    #[derive(Debug)]
    pub struct Disk {
        devid: u32,
        info: DiskInfo,
        front: BlkFront<&'static AtomicPage>,
        port: u32,
        slots: [Option<InFlight>; SLOTS],
        broken: Option<BlkError>,
    }

    impl Disk {
        /// Connects to vbd `devid` (see the [module docs](super)).
        ///
        /// # Errors
        /// [`BlkError`]: [`BlkError::NoDisk`] when the domain has no such disk.
        pub fn connect(devid: u32) -> Result<Disk, BlkError> {
            if !events::initialised() {
                return Err(BlkError::NoStore);
            }
            let fe = path(format_args!("device/vbd/{devid}"))?;
            let mut raw = [0u8; 128];
            let be = match store_read(
                path(format_args!("{}/backend", fe.as_str()))?.as_str(),
                &mut raw,
            ) {
                Ok(n) => {
                    core::str::from_utf8(&raw[..n]).map_err(|_| BlkError::BadNode("backend"))?
                }
                Err(StoreError::Refused(_)) => return Err(BlkError::NoDisk(devid)),
                Err(StoreError::NoStore) => return Err(BlkError::NoStore),
                Err(e) => return Err(BlkError::Store(e)),
            };
            let be: Path = path(format_args!("{be}"))?;
            let node = |leaf: &str, out: &mut [u8; 32]| -> Result<usize, BlkError> {
                store_read(path(format_args!("{}/{leaf}", be.as_str()))?.as_str(), out)
                    .map_err(BlkError::Store)
            };
            let (mut a, mut b, mut c, mut d) = ([0u8; 32], [0u8; 32], [0u8; 32], [0u8; 32]);
            let na = node("sectors", &mut a)?;
            let nb = node("sector-size", &mut b)?;
            let nc = node("info", &mut c)?;
            let flush = node("feature-flush-cache", &mut d).ok();
            let info = DiskInfo::parse(&a[..na], &b[..nb], &c[..nc], flush.map(|n| &d[..n]))?;

            if CLAIMED.swap(true, Ordering::Relaxed) {
                return Err(BlkError::Busy);
            }
            grants::init().map_err(BlkError::Hypercall)?;
            let dom0 = DomId::DOM0.0;
            grants::grant_access(RING_REF, dom0, RING.gfn(), false).map_err(BlkError::Grant)?;
            for (i, page) in POOL.iter().enumerate() {
                let (slot, p) = (i / BLKIF_MAX_SEGMENTS, i % BLKIF_MAX_SEGMENTS);
                grants::grant_access(data_ref(slot, p), dom0, page.gfn(), false)
                    .map_err(BlkError::Grant)?;
            }
            let front = BlkFront::init(&RING).map_err(|e| BlkError::Ring(e.into()))?;
            let port = evtchn_alloc_unbound(DomId::DOM0).map_err(BlkError::Hypercall)?;

            let write = |leaf: &str, value: core::fmt::Arguments<'_>| -> Result<(), BlkError> {
                let v: Text<32> = text(value).ok_or(BlkError::BadNode("value"))?;
                store_write(
                    path(format_args!("{}/{leaf}", fe.as_str()))?.as_str(),
                    v.as_str().as_bytes(),
                )
                .map_err(BlkError::Store)
            };
            write("ring-ref", format_args!("{RING_REF}"))?;
            write("event-channel", format_args!("{port}"))?;
            write("protocol", format_args!("x86_64-abi"))?;
            // The bounce pages stay granted for the guest's life, so the back-end may map
            // them once and copy through the mappings (Xen's persistent grants).
            write("feature-persistent", format_args!("1"))?;
            write(
                "state",
                format_args!("{}", XenbusState::Initialised.as_u32()),
            )?;

            let state_path = path(format_args!("{}/state", be.as_str()))?;
            pvdev::wait_connected(state_path.as_str(), "blkfront", super::CONNECT_TIMEOUT_NS)
                .map_err(BlkError::Backend)?;
            write("state", format_args!("{}", XenbusState::Connected.as_u32()))?;
            Ok(Disk {
                devid,
                info,
                front,
                port,
                slots: [None; SLOTS],
                broken: None,
            })
        }

        /// The device id.
        pub fn devid(&self) -> u32 {
            self.devid
        }

        /// What the back-end published.
        pub fn info(&self) -> DiskInfo {
            self.info
        }

        /// The event channel shared with the back-end.
        pub fn port(&self) -> u32 {
            self.port
        }

        /// Reads `buf.len()` bytes (whole sectors) from `sector`.
        ///
        /// # Errors
        /// [`BlkError`].
        pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
            check_range_of(self.info.sectors, sector, buf.len())?;
            self.transfer(sector, Data::Read(buf))
        }

        /// Writes `buf` (whole sectors) at `sector`.
        ///
        /// # Errors
        /// [`BlkError`], [`BlkError::ReadOnly`] on a read-only disk.
        pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
            if self.info.read_only() {
                return Err(BlkError::ReadOnly);
            }
            check_range_of(self.info.sectors, sector, buf.len())?;
            self.transfer(sector, Data::Write(buf))
        }

        /// Flushes the back-end's write cache (a no-op without `feature-flush-cache`).
        ///
        /// # Errors
        /// [`BlkError`].
        pub fn flush(&mut self) -> Result<(), BlkError> {
            if let Some(e) = self.broken {
                return Err(e);
            }
            if !self.info.flush {
                return Ok(());
            }
            let slot = self.free_slot().ok_or(BlkError::Busy)?;
            let req = request(BLKIF_OP_FLUSH_DISKCACHE, slot as u64, 0, &[]);
            self.queue(
                slot,
                &req,
                Chunk {
                    sector: 0,
                    offset: 0,
                    bytes: 0,
                },
            )?;
            let mut none = Data::Write(&[]);
            self.complete(&mut none, true)
        }

        fn free_slot(&self) -> Option<usize> {
            self.slots.iter().position(Option::is_none)
        }

        fn in_flight(&self) -> usize {
            self.slots.iter().filter(|s| s.is_some()).count()
        }

        fn fail(&mut self, e: BlkError) -> BlkError {
            self.broken = Some(e);
            e
        }

        fn queue(
            &mut self,
            slot: usize,
            req: &shared_abi::io::blkif::BlkifRequest,
            chunk: Chunk,
        ) -> Result<(), BlkError> {
            self.front.queue(req).map_err(|e| self.fail(e.into()))?;
            self.slots[slot] = Some(InFlight { chunk });
            Ok(())
        }

        fn transfer(&mut self, sector: u64, mut data: Data<'_>) -> Result<(), BlkError> {
            if let Some(e) = self.broken {
                return Err(e);
            }
            let (op, len) = match &data {
                Data::Read(b) => (BLKIF_OP_READ, b.len()),
                Data::Write(b) => (BLKIF_OP_WRITE, b.len()),
            };
            let mut chunks = plan(sector, len).peekable();
            let mut first_error = None;
            loop {
                // Fill every free slot, then publish all at once.
                while first_error.is_none()
                    && chunks.peek().is_some()
                    && let Some(slot) = self.free_slot()
                {
                    let Some(chunk) = chunks.next() else { break };
                    let pages = &POOL[slot * BLKIF_MAX_SEGMENTS..(slot + 1) * BLKIF_MAX_SEGMENTS];
                    if let Data::Write(b) = &data {
                        let src = &b[chunk.offset..chunk.offset + chunk.bytes];
                        for (page, piece) in pages.iter().zip(src.chunks(PAGE)) {
                            let _ = pv_drivers::SharedMem::write_bytes(page, 0, piece);
                        }
                    }
                    let mut grefs = [0u32; BLKIF_MAX_SEGMENTS];
                    for (p, g) in grefs.iter_mut().enumerate() {
                        *g = data_ref(slot, p);
                    }
                    let (segs, n) = segments(chunk.bytes, &grefs);
                    let req = request(op, slot as u64, chunk.sector, &segs[..n]);
                    self.queue(slot, &req, chunk)?;
                }
                if self.in_flight() == 0 {
                    return first_error.map_or(Ok(()), Err);
                }
                if let Err(e) = self.complete(&mut data, false) {
                    if matches!(e, BlkError::Io { .. }) {
                        first_error.get_or_insert(e);
                    } else {
                        return Err(e);
                    }
                }
            }
        }

        /// Publishes queued requests, then waits until at least one response arrived
        /// (all of them with `all`) and handles those that did.
        fn complete(&mut self, data: &mut Data<'_>, all: bool) -> Result<(), BlkError> {
            if self.front.push().map_err(|e| self.fail(e.into()))? {
                let _ = evtchn_send(self.port);
            }
            let mut deadline = time::now_ns().saturating_add(IO_TIMEOUT_NS);
            let mut handled = 0usize;
            let mut error = None;
            loop {
                while let Some(rsp) = self.front.take().map_err(|e| self.fail(e.into()))? {
                    handled += 1;
                    if let Err(e) = self.finish(&rsp, data) {
                        error.get_or_insert(e);
                    }
                    deadline = time::now_ns().saturating_add(IO_TIMEOUT_NS);
                }
                let done = if all {
                    self.in_flight() == 0
                } else {
                    handled > 0
                };
                if done {
                    return error.map_or(Ok(()), Err);
                }
                if self
                    .front
                    .ring()
                    .final_check_for_responses()
                    .map_err(|e| self.fail(BlkError::Ring(e.into())))?
                {
                    continue;
                }
                let now = time::now_ns();
                if now >= deadline {
                    return Err(self.fail(BlkError::Timeout));
                }
                if time::wait_event_until(deadline).is_none() {
                    core::hint::spin_loop();
                }
            }
        }

        fn finish(&mut self, rsp: &BlkifResponse, data: &mut Data<'_>) -> Result<(), BlkError> {
            // BlkFront only returns ids it has in flight, which are slot numbers.
            let slot = usize::try_from(rsp.id).unwrap_or(usize::MAX);
            let Some(InFlight { chunk }) = self.slots.get_mut(slot).and_then(Option::take) else {
                return Err(
                    self.fail(BlkError::Ring(pv_drivers::blkif::FrontError::UnknownId(
                        rsp.id,
                    ))),
                );
            };
            if rsp.status != BLKIF_RSP_OKAY {
                return Err(BlkError::Io {
                    sector: chunk.sector,
                    status: rsp.status,
                });
            }
            if let Data::Read(b) = data
                && rsp.operation == BLKIF_OP_READ
            {
                let pages = &POOL[slot * BLKIF_MAX_SEGMENTS..(slot + 1) * BLKIF_MAX_SEGMENTS];
                let dst = &mut b[chunk.offset..chunk.offset + chunk.bytes];
                for (page, piece) in pages.iter().zip(dst.chunks_mut(PAGE)) {
                    let _ = pv_drivers::SharedMem::read_bytes(page, 0, piece);
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pv_drivers::blkif::{BlkBack, BlkFront, Taken, request};
    use shared_abi::io::blkif::{BLKIF_OP_WRITE, BLKIF_RSP_OKAY};
    use std::boxed::Box;
    use std::vec::Vec;

    #[test]
    fn disk_info_from_backend_nodes() {
        let i = DiskInfo::parse(b"147456", b"512", b"0", Some(b"1")).unwrap();
        assert_eq!(
            i,
            DiskInfo {
                sectors: 147_456,
                info: 0,
                flush: true
            }
        );
        assert_eq!(i.bytes(), 72 << 20);
        assert!(!i.read_only());
        let ro = DiskInfo::parse(b"8", b"512", b"4", None).unwrap();
        assert!(ro.read_only() && !ro.flush);
        assert_eq!(
            DiskInfo::parse(b"8", b"4096", b"0", None),
            Err(BlkError::SectorSize(4096))
        );
        assert_eq!(
            DiskInfo::parse(b"x", b"512", b"0", None),
            Err(BlkError::BadNode("sectors"))
        );
        assert_eq!(
            DiskInfo::parse(b"8", b"512", b"4294967296", None),
            Err(BlkError::BadNode("info"))
        );
        assert_eq!(
            DiskInfo::parse(b"8", b"512", b"0", Some(b"yes")),
            Err(BlkError::BadNode("feature-flush-cache"))
        );
    }

    #[test]
    fn ranges_are_whole_sectors_inside_the_disk() {
        assert_eq!(check_range_of(16, 0, 8192), Ok(()));
        assert_eq!(check_range_of(16, 8, 4096), Ok(()));
        assert!(check_range_of(16, 9, 4096).is_err());
        assert!(check_range_of(16, 0, 100).is_err());
        assert!(check_range_of(16, u64::MAX, 512).is_err());
        assert_eq!(check_range_of(16, 16, 0), Ok(()));
    }

    #[test]
    fn plans_cover_the_buffer_in_requests_of_eleven_pages() {
        let c: Vec<Chunk> = plan(100, 2 * MAX_REQUEST_BYTES + 1536).collect();
        assert_eq!(
            c,
            [
                Chunk {
                    sector: 100,
                    offset: 0,
                    bytes: MAX_REQUEST_BYTES
                },
                Chunk {
                    sector: 188,
                    offset: MAX_REQUEST_BYTES,
                    bytes: MAX_REQUEST_BYTES
                },
                Chunk {
                    sector: 276,
                    offset: 2 * MAX_REQUEST_BYTES,
                    bytes: 1536
                },
            ]
        );
        assert_eq!(plan(0, 0).count(), 0);
        // 64 MiB: 1490 requests, the last one partial.
        let all: Vec<Chunk> = plan(0, 64 << 20).collect();
        assert_eq!(all.len(), (64usize << 20).div_ceil(MAX_REQUEST_BYTES));
        assert_eq!(all.iter().map(|c| c.bytes).sum::<usize>(), 64 << 20);
    }

    #[test]
    fn segments_fill_pages_from_their_start() {
        let grefs: Vec<u32> = (0..11).map(|p| data_ref(3, p)).collect();
        let (s, n) = segments(MAX_REQUEST_BYTES, &grefs);
        assert_eq!(n, 11);
        assert!(s.iter().all(|x| x.first_sect == 0 && x.last_sect == 7));
        assert_eq!(s[0].gref, FIRST_DATA_REF + 33);
        assert_eq!(s[10].gref, FIRST_DATA_REF + 43);
        let (s, n) = segments(4096 + 1536, &grefs);
        assert_eq!(n, 2);
        assert_eq!((s[1].first_sect, s[1].last_sect), (0, 2));
        assert_eq!(s[2], BlkifSegment::default());
        let (_, n) = segments(512, &grefs);
        assert_eq!(n, 1);
        assert_eq!(data_ref(SLOTS - 1, 10), FIRST_DATA_REF + 351);
    }

    #[test]
    fn requests_built_here_pass_the_back_ends_validation() {
        // The front-end over an AtomicPage ring, the real back-end end over the same page.
        let ring: &'static AtomicPage = Box::leak(Box::new(AtomicPage::new()));
        let mut front = BlkFront::init(ring).unwrap();
        let mut back = BlkBack::attach(ring, 1 << 20, false).unwrap();
        let mut grefs = [0u32; 11];
        for (slot, chunk) in plan(1000, 3 * MAX_REQUEST_BYTES - 512).enumerate() {
            for (p, g) in grefs.iter_mut().enumerate() {
                *g = data_ref(slot, p);
            }
            let (segs, n) = segments(chunk.bytes, &grefs);
            front
                .queue(&request(
                    BLKIF_OP_WRITE,
                    slot as u64,
                    chunk.sector,
                    &segs[..n],
                ))
                .unwrap();
        }
        front.push().unwrap();
        let mut sectors = Vec::new();
        while let Some(t) = back.next_request().unwrap() {
            let Taken::Valid(r) = t else {
                panic!("refused: {t:?}")
            };
            sectors.push((r.sector, r.bytes()));
            back.respond(&r.response(BLKIF_RSP_OKAY)).unwrap();
        }
        back.push().unwrap();
        assert_eq!(sectors, [(1000, 45056), (1088, 45056), (1176, 45056 - 512)]);
        let mut ids = Vec::new();
        while let Some(r) = front.take().unwrap() {
            ids.push(r.id);
        }
        assert_eq!(ids, [0, 1, 2]);
    }
}
