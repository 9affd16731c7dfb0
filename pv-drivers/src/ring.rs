//! Xen shared rings (`xen/include/public/io/ring.h`) over [`SharedMem`].
//!
//! ## Layout
//!
//! A shared ring is a 64-byte [`SringHeader`] followed by `size` entries. Each entry is a
//! union of one request and one response (a front-end's request slot is reused for the
//! response to it), so its stride is [`entry_size`]. `size` is the number of whole entries
//! that fit, rounded down to a power of two ([`ring_size`]).
//!
//! | offset | field       | written by |
//! |--------|-------------|------------|
//! | 0      | `req_prod`  | front-end  |
//! | 4      | `req_event` | back-end   |
//! | 8      | `rsp_prod`  | back-end   |
//! | 12     | `rsp_event` | front-end  |
//! | 16     | private (4 bytes), then 44 bytes of padding | |
//! | 64     | entries     | both       |
//!
//! ## Protocol
//!
//! - Indices are free-running `u32`s; only the slot is masked: `slot = idx & (size - 1)`.
//! - A producer fills slots privately ([`FrontRing::queue_request`],
//!   [`BackRing::queue_response`]), then publishes them all at once with a release store of
//!   its producer index, issues a full barrier, and notifies the peer iff the peer's event
//!   index lies in `(old, new]` ([`need_notify`]).
//! - A consumer copies each slot into a private value before returning it (the defence
//!   against double fetches), and never reads that slot again.
//! - Before sleeping, a consumer sets its event index to `cons + 1`, issues a full barrier,
//!   and checks once more ([`FrontRing::final_check_for_responses`],
//!   [`BackRing::final_check_for_requests`]).
//! - A peer whose producer index is more than `size` ahead of what it may overwrite is
//!   broken: the call that notices returns [`RingError::Overrun`] once, and every later call
//!   returns [`RingError::Disabled`], so the caller reports once and never spins.
//!
//! Neither end ever reads back an index it owns from shared memory: its own producer and
//! consumer positions live in private fields, so a peer scribbling over them changes at most
//! whether a notification is sent.
#![forbid(unsafe_code)]

use core::fmt;
use core::marker::PhantomData;
use core::mem::{align_of, offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::mem::{MemError, SharedMem};

/// The fixed 64-byte header of a shared ring (`struct *_sring` in ring.h, minus entries).
///
/// It may move into `shared-abi` once another crate needs it; the layout is pinned by const
/// asserts either way.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SringHeader {
    /// Requests published by the front-end (free-running).
    pub req_prod: u32,
    /// The back-end wants a notification once `req_prod` reaches this value.
    pub req_event: u32,
    /// Responses published by the back-end (free-running).
    pub rsp_prod: u32,
    /// The front-end wants a notification once `rsp_prod` reaches this value.
    pub rsp_event: u32,
    /// Per-protocol private bytes (ring.h's `pvt` union, e.g. netif `smartpoll_active`).
    pub pvt: [u8; 4],
    /// Reserved; zero.
    pub reserved: [u8; 44],
}

/// Offset of [`SringHeader::req_prod`].
pub const REQ_PROD_OFFSET: usize = offset_of!(SringHeader, req_prod);
/// Offset of [`SringHeader::req_event`].
pub const REQ_EVENT_OFFSET: usize = offset_of!(SringHeader, req_event);
/// Offset of [`SringHeader::rsp_prod`].
pub const RSP_PROD_OFFSET: usize = offset_of!(SringHeader, rsp_prod);
/// Offset of [`SringHeader::rsp_event`].
pub const RSP_EVENT_OFFSET: usize = offset_of!(SringHeader, rsp_event);
/// Offset of [`SringHeader::pvt`].
pub const PVT_OFFSET: usize = offset_of!(SringHeader, pvt);
/// Offset of the first entry: the header's size.
pub const ENTRIES_OFFSET: usize = size_of::<SringHeader>();

const _: () = assert!(REQ_PROD_OFFSET == 0);
const _: () = assert!(REQ_EVENT_OFFSET == 4);
const _: () = assert!(RSP_PROD_OFFSET == 8);
const _: () = assert!(RSP_EVENT_OFFSET == 12);
const _: () = assert!(PVT_OFFSET == 16);
const _: () = assert!(ENTRIES_OFFSET == 64);

/// The largest ring this crate builds: 2^30 entries, far above any page-sized ring, and
/// small enough that the sum of two in-flight counts never wraps a `u32`.
pub const MAX_RING_SIZE: u32 = 1 << 30;

/// A plain-data type that can live in a ring slot: any bit pattern is valid when read, and
/// it has no padding when written.
pub trait RingEntry: FromBytes + IntoBytes + Immutable {}
impl<T: FromBytes + IntoBytes + Immutable> RingEntry for T {}

/// Stride of one entry: the size of the C union of `Req` and `Rsp`, i.e. the larger size
/// rounded up to the larger alignment.
#[must_use]
pub const fn entry_size<Req, Rsp>() -> usize {
    let size = max(size_of::<Req>(), size_of::<Rsp>());
    let align = max(align_of::<Req>(), align_of::<Rsp>());
    size.div_ceil(align) * align
}

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Number of entries of `entry_size` bytes that a ring of `ring_bytes` bytes holds:
/// `(ring_bytes - 64) / entry_size` rounded down to a power of two (ring.h's
/// `__RING_SIZE`), capped at [`MAX_RING_SIZE`]. Zero if not even one entry fits or
/// `entry_size` is zero.
#[must_use]
pub const fn ring_size(ring_bytes: usize, entry_size: usize) -> u32 {
    if entry_size == 0 || ring_bytes < ENTRIES_OFFSET {
        return 0;
    }
    let fit = (ring_bytes - ENTRIES_OFFSET) / entry_size;
    if fit == 0 {
        return 0;
    }
    let pow2 = 1usize << (usize::BITS - 1 - fit.leading_zeros());
    if pow2 >= MAX_RING_SIZE as usize {
        MAX_RING_SIZE
    } else {
        // Lossless: pow2 < MAX_RING_SIZE, which fits in u32.
        pow2 as u32
    }
}

/// [`ring_size`] for the entry type of `Req`/`Rsp` rings.
#[must_use]
pub const fn ring_size_for<Req, Rsp>(ring_bytes: usize) -> u32 {
    ring_size(ring_bytes, entry_size::<Req, Rsp>())
}

/// ring.h's notification rule: after publishing a producer index that moved from `old` to
/// `new`, notify iff the peer's `event` index lies in `(old, new]`, all modulo 2^32:
/// `new - event < new - old`.
#[must_use]
pub const fn need_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// Errors from ring operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// The memory cannot hold even one entry.
    TooSmall {
        /// Bytes of shared memory offered.
        bytes: usize,
        /// Stride of one entry.
        entry_size: usize,
    },
    /// No slot for another entry: the front-end has `size` requests outstanding, or the
    /// back-end has no consumed request left to answer. Not fatal; retry later.
    Full,
    /// The peer's producer index `prod` is more than `size` ahead of `cons`, an index the
    /// peer may not overtake (a back-end's consumed or answered position, a front-end's
    /// consumed position). The peer is broken or hostile; the ring is now disabled.
    Overrun {
        /// The producer index read from shared memory.
        prod: u32,
        /// Our index it was checked against.
        cons: u32,
        /// Entries in the ring.
        size: u32,
    },
    /// The back-end published more responses than the front-end published requests. The
    /// back-end is broken or hostile; the ring is now disabled.
    ResponsesAhead {
        /// The response producer index read from shared memory.
        rsp_prod: u32,
        /// The request producer index the front-end published.
        req_prod: u32,
    },
    /// An earlier call found the peer broken (or the memory failing); this end stays
    /// unusable. Report the original error, not this one.
    Disabled,
    /// A shared-memory access failed. The ring checks its bounds up front, so this means
    /// the `SharedMem` implementation misbehaved; the ring is now disabled.
    Mem(MemError),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooSmall { bytes, entry_size } => write!(
                f,
                "{bytes} bytes of shared memory cannot hold a ring of {entry_size}-byte entries"
            ),
            Self::Full => f.write_str("no free ring slot"),
            Self::Overrun { prod, cons, size } => write!(
                f,
                "peer producer index {prod} is more than {size} entries ahead of {cons}; ring disabled"
            ),
            Self::ResponsesAhead { rsp_prod, req_prod } => write!(
                f,
                "back-end published responses up to {rsp_prod} but requests only reach {req_prod}; ring disabled"
            ),
            Self::Disabled => f.write_str("ring disabled after a protocol violation"),
            Self::Mem(_) => f.write_str("shared memory access failed; ring disabled"),
        }
    }
}

impl core::error::Error for RingError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Mem(e) => Some(e),
            _ => None,
        }
    }
}

/// What both ends share: the memory, its geometry and the disabled flag.
#[derive(Debug)]
struct Core<M> {
    mem: M,
    size: u32,
    stride: usize,
    disabled: bool,
}

impl<M: SharedMem> Core<M> {
    fn new<Req, Rsp>(mem: M) -> Result<Self, RingError> {
        let stride = entry_size::<Req, Rsp>();
        let size = ring_size(mem.len(), stride);
        if size == 0 {
            return Err(RingError::TooSmall {
                bytes: mem.len(),
                entry_size: stride,
            });
        }
        Ok(Self {
            mem,
            size,
            stride,
            disabled: false,
        })
    }

    fn check_enabled(&self) -> Result<(), RingError> {
        if self.disabled {
            Err(RingError::Disabled)
        } else {
            Ok(())
        }
    }

    /// Disables the ring if `e` is a protocol or memory error, and returns it.
    fn fail(&mut self, e: RingError) -> RingError {
        if !matches!(e, RingError::Full | RingError::TooSmall { .. }) {
            self.disabled = true;
        }
        e
    }

    fn mem_err(&mut self, e: MemError) -> RingError {
        self.fail(RingError::Mem(e))
    }

    fn slot_offset(&self, idx: u32) -> usize {
        // In bounds: (idx & (size - 1)) < size and ENTRIES_OFFSET + size * stride <= len,
        // because `size` was derived from `len`.
        ENTRIES_OFFSET + (idx & (self.size - 1)) as usize * self.stride
    }

    fn write_slot<T: RingEntry>(&mut self, idx: u32, value: &T) -> Result<(), RingError> {
        let off = self.slot_offset(idx);
        self.mem.write_obj(off, value).map_err(|e| self.mem_err(e))
    }

    /// Copies slot `idx` out in one pass. The caller owns the copy; the slot is never read
    /// again for this index.
    fn read_slot<T: RingEntry>(&mut self, idx: u32) -> Result<T, RingError> {
        let off = self.slot_offset(idx);
        self.mem.read_obj(off).map_err(|e| self.mem_err(e))
    }

    fn load(&mut self, off: usize) -> Result<u32, RingError> {
        self.mem.load_acquire_u32(off).map_err(|e| self.mem_err(e))
    }

    fn store(&mut self, off: usize, v: u32) -> Result<(), RingError> {
        self.mem
            .store_release_u32(off, v)
            .map_err(|e| self.mem_err(e))
    }

    /// Publishes producer index `new` (previously `*published`) at `prod_off`, then decides
    /// whether the peer, whose event index is at `event_off`, needs a notification.
    fn publish(
        &mut self,
        prod_off: usize,
        event_off: usize,
        published: &mut u32,
        new: u32,
    ) -> Result<bool, RingError> {
        let old = *published;
        // Every slot up to `new` was written through `self.mem` before this release store.
        self.store(prod_off, new)?;
        *published = new;
        // The peer sets its event index, fences, then re-reads our producer index; our fence
        // here guarantees that either it sees `new` or we see its new event index.
        self.mem.full_fence();
        let event = self.load(event_off)?;
        Ok(need_notify(old, new, event))
    }
}

/// A consumer's view of the peer's producer index.
#[derive(Debug, Clone, Copy)]
struct Consumer {
    /// Next index to consume.
    cons: u32,
    /// Last producer index read and validated; `cons..seen` are published and unread.
    seen: u32,
}

/// The front-end of a ring: produces `Req`s and consumes `Rsp`s.
pub struct FrontRing<Req, Rsp, M> {
    core: Core<M>,
    /// Next request slot to fill (ring.h's `req_prod_pvt`).
    req_prod_pvt: u32,
    /// The request producer index we last published.
    req_prod_published: u32,
    rsp: Consumer,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<Req: RingEntry, Rsp: RingEntry, M: SharedMem> FrontRing<Req, Rsp, M> {
    /// Initialises the shared ring in `mem` and attaches to it as the front-end
    /// (ring.h's `SHARED_RING_INIT` + `FRONT_RING_INIT`): both producer indices 0, both
    /// event indices 1, private and reserved bytes zeroed. Entries are left as they are.
    ///
    /// # Errors
    /// [`RingError::TooSmall`] if `mem` cannot hold one entry.
    pub fn init(mem: M) -> Result<Self, RingError> {
        Self::init_at(mem, 0)
    }

    /// [`init`](Self::init) with every index starting at `start` instead of 0
    /// (ring.h's `FRONT_RING_ATTACH` on a freshly initialised ring). Real front-ends start
    /// at 0; tests use this to cross `u32::MAX` quickly.
    ///
    /// # Errors
    /// [`RingError::TooSmall`] if `mem` cannot hold one entry.
    pub fn init_at(mem: M, start: u32) -> Result<Self, RingError> {
        let mut core = Core::new::<Req, Rsp>(mem)?;
        // Index words are only ever accessed as atomic u32s; the bytes after them as bytes.
        let zeros = [0u8; ENTRIES_OFFSET - PVT_OFFSET];
        core.mem
            .write_bytes(PVT_OFFSET, &zeros)
            .map_err(|e| core.mem_err(e))?;
        core.store(REQ_EVENT_OFFSET, start.wrapping_add(1))?;
        core.store(RSP_EVENT_OFFSET, start.wrapping_add(1))?;
        core.store(RSP_PROD_OFFSET, start)?;
        core.store(REQ_PROD_OFFSET, start)?;
        // The back-end learns of the ring later (xenbus handshake); order the header
        // before anything we publish after returning.
        core.mem.full_fence();
        Ok(Self {
            core,
            req_prod_pvt: start,
            req_prod_published: start,
            rsp: Consumer {
                cons: start,
                seen: start,
            },
            _entries: PhantomData,
        })
    }

    /// Entries in the ring.
    #[must_use]
    pub fn size(&self) -> u32 {
        self.core.size
    }

    /// The shared memory.
    #[must_use]
    pub fn mem(&self) -> &M {
        &self.core.mem
    }

    /// Whether an earlier call disabled the ring.
    #[must_use]
    pub fn is_disabled(&self) -> bool {
        self.core.disabled
    }

    /// Requests that can still be queued before the ring is full (`RING_FREE_REQUESTS`).
    #[must_use]
    pub fn free_requests(&self) -> u32 {
        self.core.size - self.req_prod_pvt.wrapping_sub(self.rsp.cons)
    }

    /// Whether no request slot is free (`RING_FULL`).
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Requests queued but not yet published by [`push_requests`](Self::push_requests).
    #[must_use]
    pub fn unpublished_requests(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.req_prod_published)
    }

    /// Copies `req` into the next free slot. The back-end sees it only after
    /// [`push_requests`](Self::push_requests).
    ///
    /// # Errors
    /// [`RingError::Full`] if every slot holds an outstanding request;
    /// [`RingError::Disabled`] after an earlier failure.
    pub fn queue_request(&mut self, req: &Req) -> Result<(), RingError> {
        self.core.check_enabled()?;
        if self.is_full() {
            return Err(RingError::Full);
        }
        self.core.write_slot(self.req_prod_pvt, req)?;
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes every queued request and returns whether the back-end must be notified
    /// (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`). The old index is our own record of what we
    /// last published, never a re-read of shared memory.
    ///
    /// # Errors
    /// [`RingError::Disabled`] after an earlier failure.
    pub fn push_requests(&mut self) -> Result<bool, RingError> {
        self.core.check_enabled()?;
        let new = self.req_prod_pvt;
        self.core.publish(
            REQ_PROD_OFFSET,
            REQ_EVENT_OFFSET,
            &mut self.req_prod_published,
            new,
        )
    }

    /// Re-reads `rsp_prod` if every response seen so far was consumed, and validates it.
    fn refresh_responses(&mut self) -> Result<u32, RingError> {
        self.core.check_enabled()?;
        let Consumer { cons, seen } = self.rsp;
        if seen != cons {
            return Ok(seen.wrapping_sub(cons));
        }
        let prod = self.core.load(RSP_PROD_OFFSET)?;
        let size = self.core.size;
        let avail = prod.wrapping_sub(cons);
        if avail > size {
            return Err(self.core.fail(RingError::Overrun { prod, cons, size }));
        }
        if avail > self.req_prod_published.wrapping_sub(cons) {
            let req_prod = self.req_prod_published;
            return Err(self.core.fail(RingError::ResponsesAhead {
                rsp_prod: prod,
                req_prod,
            }));
        }
        self.rsp.seen = prod;
        Ok(avail)
    }

    /// Number of published responses not yet taken (`RING_HAS_UNCONSUMED_RESPONSES`). It
    /// counts at least the responses already seen; shared memory is re-read only once those
    /// are consumed.
    ///
    /// # Errors
    /// [`RingError::Overrun`] or [`RingError::ResponsesAhead`] if the back-end's index is
    /// impossible (the ring is then disabled); [`RingError::Disabled`] afterwards.
    pub fn unconsumed_responses(&mut self) -> Result<u32, RingError> {
        self.refresh_responses()
    }

    /// Takes the next response, copied out of its slot, or `None` if none is published.
    ///
    /// # Errors
    /// As for [`unconsumed_responses`](Self::unconsumed_responses).
    pub fn take_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.refresh_responses()? == 0 {
            return Ok(None);
        }
        let rsp = self.core.read_slot(self.rsp.cons)?;
        self.rsp.cons = self.rsp.cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// The last check before sleeping (`RING_FINAL_CHECK_FOR_RESPONSES`): returns `true` if
    /// responses are waiting; otherwise asks for a notification at the next response
    /// (`rsp_event = rsp_cons + 1`), fences, and checks again.
    ///
    /// # Errors
    /// As for [`unconsumed_responses`](Self::unconsumed_responses).
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.refresh_responses()? > 0 {
            return Ok(true);
        }
        self.core
            .store(RSP_EVENT_OFFSET, self.rsp.cons.wrapping_add(1))?;
        self.core.mem.full_fence();
        Ok(self.refresh_responses()? > 0)
    }
}

impl<Req, Rsp, M: fmt::Debug> fmt::Debug for FrontRing<Req, Rsp, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontRing")
            .field("core", &self.core)
            .field("req_prod_pvt", &self.req_prod_pvt)
            .field("req_prod_published", &self.req_prod_published)
            .field("rsp_cons", &self.rsp.cons)
            .field("rsp_prod_seen", &self.rsp.seen)
            .finish()
    }
}

/// The back-end of a ring: consumes `Req`s and produces `Rsp`s.
pub struct BackRing<Req, Rsp, M> {
    core: Core<M>,
    req: Consumer,
    /// Next response slot to fill (ring.h's `rsp_prod_pvt`). Every slot from here up to
    /// `req.cons` holds a consumed request that awaits its response.
    rsp_prod_pvt: u32,
    /// The response producer index we last published.
    rsp_prod_published: u32,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<Req: RingEntry, Rsp: RingEntry, M: SharedMem> BackRing<Req, Rsp, M> {
    /// Attaches to a ring the front-end initialised (ring.h's `BACK_RING_ATTACH` with the
    /// current `rsp_prod`; on a fresh ring that is `BACK_RING_INIT`). `rsp_prod` is read
    /// once, here; from then on the back-end trusts only its private copy.
    ///
    /// # Errors
    /// [`RingError::TooSmall`] if `mem` cannot hold one entry.
    pub fn attach(mem: M) -> Result<Self, RingError> {
        let mut core = Core::new::<Req, Rsp>(mem)?;
        let start = core.load(RSP_PROD_OFFSET)?;
        Ok(Self {
            core,
            req: Consumer {
                cons: start,
                seen: start,
            },
            rsp_prod_pvt: start,
            rsp_prod_published: start,
            _entries: PhantomData,
        })
    }

    /// Entries in the ring.
    #[must_use]
    pub fn size(&self) -> u32 {
        self.core.size
    }

    /// The shared memory.
    #[must_use]
    pub fn mem(&self) -> &M {
        &self.core.mem
    }

    /// Whether an earlier call disabled the ring.
    #[must_use]
    pub fn is_disabled(&self) -> bool {
        self.core.disabled
    }

    /// Requests taken but not yet answered with [`queue_response`](Self::queue_response).
    #[must_use]
    pub fn awaiting_response(&self) -> u32 {
        self.req.cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Responses queued but not yet published by [`push_responses`](Self::push_responses).
    #[must_use]
    pub fn unpublished_responses(&self) -> u32 {
        self.rsp_prod_pvt.wrapping_sub(self.rsp_prod_published)
    }

    /// Re-reads `req_prod` if every request seen so far was consumed, and validates it.
    fn refresh_requests(&mut self) -> Result<u32, RingError> {
        self.core.check_enabled()?;
        let Consumer { cons, seen } = self.req;
        if seen != cons {
            return Ok(seen.wrapping_sub(cons));
        }
        let prod = self.core.load(REQ_PROD_OFFSET)?;
        let size = self.core.size;
        let avail = prod.wrapping_sub(cons);
        if avail > size {
            return Err(self.core.fail(RingError::Overrun { prod, cons, size }));
        }
        // ring.h's RING_REQUEST_PROD_OVERFLOW: slots from rsp_prod_pvt on are either
        // unconsumed or await our response, so the front-end may not be more than `size`
        // ahead of rsp_prod_pvt either.
        let answered = self.rsp_prod_pvt;
        if prod.wrapping_sub(answered) > size {
            return Err(self.core.fail(RingError::Overrun {
                prod,
                cons: answered,
                size,
            }));
        }
        self.req.seen = prod;
        Ok(avail)
    }

    /// Number of published requests not yet taken (`RING_HAS_UNCONSUMED_REQUESTS`). It
    /// counts at least the requests already seen; shared memory is re-read only once those
    /// are consumed.
    ///
    /// # Errors
    /// [`RingError::Overrun`] if the front-end's index is impossible (the ring is then
    /// disabled); [`RingError::Disabled`] afterwards.
    pub fn unconsumed_requests(&mut self) -> Result<u32, RingError> {
        self.refresh_requests()
    }

    /// Takes the next request, copied out of its slot in one pass, or `None` if none is
    /// published. Validate the returned copy; never go back to the ring for a field.
    ///
    /// # Errors
    /// As for [`unconsumed_requests`](Self::unconsumed_requests).
    pub fn take_request(&mut self) -> Result<Option<Req>, RingError> {
        if self.refresh_requests()? == 0 {
            return Ok(None);
        }
        let req = self.core.read_slot(self.req.cons)?;
        self.req.cons = self.req.cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Copies `rsp` into the slot of the oldest unanswered request. The front-end sees it
    /// only after [`push_responses`](Self::push_responses).
    ///
    /// # Errors
    /// [`RingError::Full`] if no taken request awaits a response;
    /// [`RingError::Disabled`] after an earlier failure.
    pub fn queue_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        self.core.check_enabled()?;
        if self.awaiting_response() == 0 {
            return Err(RingError::Full);
        }
        self.core.write_slot(self.rsp_prod_pvt, rsp)?;
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes every queued response and returns whether the front-end must be notified
    /// (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`). The old index is our own record of what we
    /// last published, never a re-read of shared memory.
    ///
    /// # Errors
    /// [`RingError::Disabled`] after an earlier failure.
    pub fn push_responses(&mut self) -> Result<bool, RingError> {
        self.core.check_enabled()?;
        let new = self.rsp_prod_pvt;
        self.core.publish(
            RSP_PROD_OFFSET,
            RSP_EVENT_OFFSET,
            &mut self.rsp_prod_published,
            new,
        )
    }

    /// The last check before sleeping (`RING_FINAL_CHECK_FOR_REQUESTS`): returns `true` if
    /// requests are waiting; otherwise asks for a notification at the next request
    /// (`req_event = req_cons + 1`), fences, and checks again.
    ///
    /// # Errors
    /// As for [`unconsumed_requests`](Self::unconsumed_requests).
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.refresh_requests()? > 0 {
            return Ok(true);
        }
        self.core
            .store(REQ_EVENT_OFFSET, self.req.cons.wrapping_add(1))?;
        self.core.mem.full_fence();
        Ok(self.refresh_requests()? > 0)
    }
}

impl<Req, Rsp, M: fmt::Debug> fmt::Debug for BackRing<Req, Rsp, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackRing")
            .field("core", &self.core)
            .field("req_cons", &self.req.cons)
            .field("req_prod_seen", &self.req.seen)
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
            .field("rsp_prod_published", &self.rsp_prod_published)
            .finish()
    }
}

#[cfg(test)]
mod tests;
