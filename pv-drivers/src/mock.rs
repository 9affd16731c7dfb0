//! Scripted mocks of the other end of a ring, for host tests of real front- and back-ends.
//!
//! - [`MockFrontend`] plays the front-end: it initialises a ring in heap memory, submits
//!   requests, and checks the responses that the back-end under test produces.
//! - [`MockBackend`] plays the back-end: it takes the requests that the front-end under
//!   test produces and answers them from a script or a closure.
//!
//! Each mock hands the code under test a [`MockMem`] (via `mem()`), a cloneable
//! [`SharedMem`] over the same bytes. The mock itself uses the bytes directly, so its own
//! bookkeeping is never disturbed by the hostile mode.
//!
//! ## Hostile mode
//!
//! [`Hostility`] makes the mock behave like a malicious peer:
//! - `rewrite_slots_after_read`: every time the code under test reads bytes of an entry,
//!   the mock immediately overwrites those bytes with different values. A consumer that
//!   copies each slot once and never goes back is unaffected; one that reads a field twice
//!   (a double fetch) sees the rewrite.
//! - `scribble_event_indices`: after every index load by the code under test, both event
//!   fields are overwritten with garbage. That may change whether a notification is sent,
//!   never what is consumed.
//! - Index corruption is explicit: [`MockFrontend::overrun_requests`] and
//!   [`MockBackend::overrun_responses`] publish a producer index far beyond what the ring can
//!   hold, and `poke_u32` writes any header word.
//!
//! A correct end produces the same results with and without hostility (apart from the
//! ring disabling itself once after an overrun).
//!
//! ## netif
//!
//! [`MockNetFrontend`] and [`MockNetBackend`] pair a tx and an rx mock (one page each) with
//! packet-level helpers ([`tx_chain`] builds a tx slot chain).
#![forbid(unsafe_code)]

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::mem::{MemError, SharedMem};
use crate::ring::{
    BackRing, ENTRIES_OFFSET, FrontRing, REQ_EVENT_OFFSET, REQ_PROD_OFFSET, RSP_EVENT_OFFSET,
    RSP_PROD_OFFSET, RingEntry, RingError, ring_size_for,
};
use crate::vec_mem::VecMem;

mod net;
pub use net::{MockNetBackend, MockNetFrontend, tx_chain};

/// How hostile a mock peer is. The default is an honest peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hostility {
    /// Overwrite entry bytes right after the code under test reads them.
    pub rewrite_slots_after_read: bool,
    /// Overwrite both event indices with garbage after every index load by the code
    /// under test.
    pub scribble_event_indices: bool,
}

impl Hostility {
    /// An honest peer.
    pub const NONE: Self = Self {
        rewrite_slots_after_read: false,
        scribble_event_indices: false,
    };
    /// Every hostile behaviour at once.
    pub const ALL: Self = Self {
        rewrite_slots_after_read: true,
        scribble_event_indices: true,
    };
}

/// Hostility switches and counters shared between a mock and its [`MockMem`] handles.
#[derive(Debug, Default)]
struct HostileCtl {
    rewrite: AtomicBool,
    scribble: AtomicBool,
    /// Varies the garbage so that successive rewrites differ.
    counter: AtomicU32,
    /// Entry reads that were followed by a rewrite.
    rewrites: AtomicU64,
}

// ORDERING (whole impl): Relaxed everywhere. These are test switches and counters read by
// the same thread that sets them; they order nothing in the shared ring.
impl HostileCtl {
    fn set(&self, h: Hostility) {
        self.rewrite
            .store(h.rewrite_slots_after_read, Ordering::Relaxed);
        self.scribble
            .store(h.scribble_event_indices, Ordering::Relaxed);
    }

    fn get(&self) -> Hostility {
        Hostility {
            rewrite_slots_after_read: self.rewrite.load(Ordering::Relaxed),
            scribble_event_indices: self.scribble.load(Ordering::Relaxed),
        }
    }

    /// A fresh garbage word.
    fn garbage(&self) -> u32 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        n.wrapping_add(1).wrapping_mul(0x9e37_79b9)
    }
}

/// The [`SharedMem`] a mock hands to the code under test: the mock's ring memory, plus the
/// hostile behaviours switched on with `set_hostility`.
#[derive(Clone)]
pub struct MockMem {
    mem: Arc<VecMem>,
    ctl: Arc<HostileCtl>,
}

impl MockMem {
    fn new(len: usize) -> Self {
        Self {
            mem: Arc::new(VecMem::new(len)),
            ctl: Arc::new(HostileCtl::default()),
        }
    }

    /// A copy of every byte, for assertions.
    #[must_use]
    pub fn snapshot(&self) -> Vec<u8> {
        self.mem.snapshot()
    }
}

impl SharedMem for MockMem {
    fn len(&self) -> usize {
        self.mem.len()
    }

    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        self.mem.read_bytes(offset, buf)?;
        if self.ctl.get().rewrite_slots_after_read && offset >= ENTRIES_OFFSET && !buf.is_empty() {
            // XOR with a non-zero byte, so every byte read now differs from what was read.
            let key = self.ctl.garbage().to_le_bytes()[1] | 1;
            let rewritten: Vec<u8> = buf.iter().map(|b| b ^ key).collect();
            self.mem.write_bytes(offset, &rewritten)?;
            self.ctl.rewrites.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        self.mem.write_bytes(offset, data)
    }

    fn load_acquire_u32(&self, offset: usize) -> Result<u32, MemError> {
        let value = self.mem.load_acquire_u32(offset)?;
        if self.ctl.get().scribble_event_indices {
            self.mem
                .store_release_u32(REQ_EVENT_OFFSET, self.ctl.garbage())?;
            self.mem
                .store_release_u32(RSP_EVENT_OFFSET, self.ctl.garbage())?;
        }
        Ok(value)
    }

    fn store_release_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.mem.store_release_u32(offset, value)
    }

    fn full_fence(&self) {
        self.mem.full_fence();
    }
}

impl fmt::Debug for MockMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockMem")
            .field("len", &self.mem.len())
            .field("hostility", &self.ctl.get())
            .finish()
    }
}

/// Publishes a producer index more than `size` ahead of `published`, and returns it.
fn overrun(mem: &VecMem, prod_off: usize, size: u32) -> Result<u32, MemError> {
    let published = mem.load_acquire_u32(prod_off)?;
    let bad = published.wrapping_add(size.wrapping_mul(2)).wrapping_add(1);
    mem.store_release_u32(prod_off, bad)?;
    Ok(bad)
}

/// Panics with both sequences if they differ.
#[track_caller]
fn check_sequence<T: PartialEq + fmt::Debug>(what: &str, got: &[T], expected: &[T]) {
    assert!(
        got == expected,
        "mock expected {what} {expected:?}, got {got:?}"
    );
}

/// A scripted front-end, for testing back-ends. See the [module docs](self).
pub struct MockFrontend<Req, Rsp> {
    handle: MockMem,
    ring: FrontRing<Req, Rsp, Arc<VecMem>>,
    notifications_sent: u64,
    notifications_received: u64,
}

impl<Req: RingEntry, Rsp: RingEntry> MockFrontend<Req, Rsp> {
    /// A fresh ring of `ring_bytes` bytes, initialised as a front-end does.
    ///
    /// # Errors
    /// [`RingError::TooSmall`] if not even one entry fits.
    pub fn new(ring_bytes: usize) -> Result<Self, RingError> {
        Self::with_start_index(ring_bytes, 0)
    }

    /// As [`new`](Self::new), with every index starting at `start`, to exercise the wrap
    /// at `u32::MAX`.
    ///
    /// # Errors
    /// [`RingError::TooSmall`] if not even one entry fits.
    pub fn with_start_index(ring_bytes: usize, start: u32) -> Result<Self, RingError> {
        let handle = MockMem::new(ring_bytes);
        let ring = FrontRing::init_at(Arc::clone(&handle.mem), start)?;
        Ok(Self {
            handle,
            ring,
            notifications_sent: 0,
            notifications_received: 0,
        })
    }

    /// The memory to attach the back-end under test to.
    #[must_use]
    pub fn mem(&self) -> MockMem {
        self.handle.clone()
    }

    /// Switches hostile behaviours on or off; see [`Hostility`].
    pub fn set_hostility(&self, hostility: Hostility) {
        self.handle.ctl.set(hostility);
    }

    /// How many entry reads by the code under test were followed by a rewrite.
    #[must_use]
    pub fn slot_rewrites(&self) -> u64 {
        self.handle.ctl.rewrites.load(Ordering::Relaxed)
    }

    /// Entries in the ring.
    #[must_use]
    pub fn size(&self) -> u32 {
        self.ring.size()
    }

    /// The mock's own ring, for anything the scripted calls do not cover.
    pub fn ring(&mut self) -> &mut FrontRing<Req, Rsp, Arc<VecMem>> {
        &mut self.ring
    }

    /// Queues every request and publishes them together. Returns whether ring.h's rule
    /// asked for a notification of the back-end, and counts it if so.
    ///
    /// # Errors
    /// [`RingError::Full`] if the ring has no room for all of them (nothing is queued then),
    /// or an error of the mock's ring.
    pub fn submit<I: IntoIterator<Item = Req>>(&mut self, requests: I) -> Result<bool, RingError> {
        let requests: Vec<Req> = requests.into_iter().collect();
        if requests.len() > self.ring.free_requests() as usize {
            return Err(RingError::Full);
        }
        for req in &requests {
            self.ring.queue_request(req)?;
        }
        let notify = self.ring.push_requests()?;
        if notify {
            self.notifications_sent += 1;
        }
        Ok(notify)
    }

    /// Takes every published response.
    ///
    /// # Errors
    /// An error of the mock's ring, e.g. [`RingError::Overrun`] if the back-end under test
    /// published an impossible index.
    pub fn take_responses(&mut self) -> Result<Vec<Rsp>, RingError> {
        let mut out = Vec::new();
        while let Some(rsp) = self.ring.take_response()? {
            out.push(rsp);
        }
        Ok(out)
    }

    /// Takes every published response and panics unless they are exactly `expected`.
    #[track_caller]
    pub fn expect_responses(&mut self, expected: &[Rsp])
    where
        Rsp: PartialEq + fmt::Debug,
    {
        match self.take_responses() {
            Ok(got) => check_sequence("responses", &got, expected),
            Err(e) => panic!("mock expected responses {expected:?}, ring failed: {e}"),
        }
    }

    /// Publishes a request producer index far beyond what the ring can hold, as a broken
    /// or hostile front-end would, and returns it.
    ///
    /// # Errors
    /// Never for a ring built by this mock.
    pub fn overrun_requests(&self) -> Result<u32, MemError> {
        overrun(&self.handle.mem, REQ_PROD_OFFSET, self.ring.size())
    }

    /// Writes `value` at `offset` with a release store, bypassing the ring logic.
    ///
    /// # Errors
    /// [`MemError`] if `offset` is out of range or misaligned.
    pub fn poke_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.handle.mem.store_release_u32(offset, value)
    }

    /// Records that the back-end under test notified this front-end.
    pub fn notify(&mut self) {
        self.notifications_received += 1;
    }

    /// Notifications the mock sent to the back-end (as counted by [`submit`](Self::submit)).
    #[must_use]
    pub fn notifications_sent(&self) -> u64 {
        self.notifications_sent
    }

    /// Notifications recorded with [`notify`](Self::notify).
    #[must_use]
    pub fn notifications_received(&self) -> u64 {
        self.notifications_received
    }
}

impl<Req, Rsp> fmt::Debug for MockFrontend<Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockFrontend")
            .field("ring", &self.ring)
            .field("mem", &self.handle)
            .field("notifications_sent", &self.notifications_sent)
            .field("notifications_received", &self.notifications_received)
            .finish()
    }
}

/// A scripted back-end, for testing front-ends. See the [module docs](self).
///
/// The front-end under test initialises the ring, so the mock attaches to it on first use:
/// create the front-end ring on [`mem`](Self::mem) before calling anything else.
pub struct MockBackend<Req, Rsp> {
    handle: MockMem,
    ring: Option<BackRing<Req, Rsp, Arc<VecMem>>>,
    notifications_sent: u64,
    notifications_received: u64,
}

impl<Req: RingEntry, Rsp: RingEntry> MockBackend<Req, Rsp> {
    /// Zeroed ring memory of `ring_bytes` bytes, for the front-end under test to initialise.
    ///
    /// # Errors
    /// [`RingError::TooSmall`] if not even one entry fits.
    pub fn new(ring_bytes: usize) -> Result<Self, RingError> {
        if ring_size_for::<Req, Rsp>(ring_bytes) == 0 {
            let entry_size = crate::ring::entry_size::<Req, Rsp>();
            return Err(RingError::TooSmall {
                bytes: ring_bytes,
                entry_size,
            });
        }
        Ok(Self {
            handle: MockMem::new(ring_bytes),
            ring: None,
            notifications_sent: 0,
            notifications_received: 0,
        })
    }

    /// The memory to initialise the front-end under test on.
    #[must_use]
    pub fn mem(&self) -> MockMem {
        self.handle.clone()
    }

    /// Switches hostile behaviours on or off; see [`Hostility`].
    pub fn set_hostility(&self, hostility: Hostility) {
        self.handle.ctl.set(hostility);
    }

    /// How many entry reads by the code under test were followed by a rewrite.
    #[must_use]
    pub fn slot_rewrites(&self) -> u64 {
        self.handle.ctl.rewrites.load(Ordering::Relaxed)
    }

    /// The mock's own ring, attaching to the shared ring on first use.
    ///
    /// # Errors
    /// An error from [`BackRing::attach`].
    pub fn ring(&mut self) -> Result<&mut BackRing<Req, Rsp, Arc<VecMem>>, RingError> {
        match &mut self.ring {
            Some(ring) => Ok(ring),
            slot @ None => Ok(slot.insert(BackRing::attach(Arc::clone(&self.handle.mem))?)),
        }
    }

    /// Takes every published request.
    ///
    /// # Errors
    /// An error of the mock's ring, e.g. [`RingError::Overrun`] if the front-end under test
    /// published an impossible index.
    pub fn take_requests(&mut self) -> Result<Vec<Req>, RingError> {
        let ring = self.ring()?;
        let mut out = Vec::new();
        while let Some(req) = ring.take_request()? {
            out.push(req);
        }
        Ok(out)
    }

    /// Takes every published request and panics unless they are exactly `expected`.
    #[track_caller]
    pub fn expect_requests(&mut self, expected: &[Req])
    where
        Req: PartialEq + fmt::Debug,
    {
        match self.take_requests() {
            Ok(got) => check_sequence("requests", &got, expected),
            Err(e) => panic!("mock expected requests {expected:?}, ring failed: {e}"),
        }
    }

    /// Answers the oldest taken requests with `responses`, in order, and publishes them.
    /// Returns whether ring.h's rule asked for a notification of the front-end, and counts
    /// it if so.
    ///
    /// # Errors
    /// [`RingError::Full`] if there are more responses than taken, unanswered requests
    /// (nothing is queued then), or an error of the mock's ring.
    pub fn respond<I: IntoIterator<Item = Rsp>>(
        &mut self,
        responses: I,
    ) -> Result<bool, RingError> {
        let responses: Vec<Rsp> = responses.into_iter().collect();
        let ring = self.ring()?;
        if responses.len() > ring.awaiting_response() as usize {
            return Err(RingError::Full);
        }
        for rsp in &responses {
            ring.queue_response(rsp)?;
        }
        let notify = ring.push_responses()?;
        if notify {
            self.notifications_sent += 1;
        }
        Ok(notify)
    }

    /// Takes every published request, answers each with `handler`, publishes the answers,
    /// and returns how many were served.
    ///
    /// # Errors
    /// An error of the mock's ring.
    pub fn serve<F: FnMut(&Req) -> Rsp>(&mut self, mut handler: F) -> Result<usize, RingError> {
        let requests = self.take_requests()?;
        let served = requests.len();
        self.respond(requests.iter().map(&mut handler).collect::<Vec<_>>())?;
        Ok(served)
    }

    /// Publishes a response producer index far beyond what the ring can hold, as a broken
    /// or hostile back-end would, and returns it.
    ///
    /// # Errors
    /// Never for a ring built by this mock.
    pub fn overrun_responses(&self) -> Result<u32, MemError> {
        let size = ring_size_for::<Req, Rsp>(self.handle.mem.len());
        overrun(&self.handle.mem, RSP_PROD_OFFSET, size)
    }

    /// Writes `value` at `offset` with a release store, bypassing the ring logic.
    ///
    /// # Errors
    /// [`MemError`] if `offset` is out of range or misaligned.
    pub fn poke_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.handle.mem.store_release_u32(offset, value)
    }

    /// Records that the front-end under test notified this back-end.
    pub fn notify(&mut self) {
        self.notifications_received += 1;
    }

    /// Notifications the mock sent to the front-end (as counted by
    /// [`respond`](Self::respond) and [`serve`](Self::serve)).
    #[must_use]
    pub fn notifications_sent(&self) -> u64 {
        self.notifications_sent
    }

    /// Notifications recorded with [`notify`](Self::notify).
    #[must_use]
    pub fn notifications_received(&self) -> u64 {
        self.notifications_received
    }
}

impl<Req, Rsp> fmt::Debug for MockBackend<Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockBackend")
            .field("ring", &self.ring)
            .field("mem", &self.handle)
            .field("notifications_sent", &self.notifications_sent)
            .field("notifications_received", &self.notifications_received)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BYTES: usize = ENTRIES_OFFSET + 4 * 8;

    #[test]
    fn frontend_script_against_a_real_back_ring() {
        let mut mock = MockFrontend::<u64, u64>::new(BYTES).unwrap();
        let mut back = BackRing::<u64, u64, _>::attach(mock.mem()).unwrap();
        assert!(mock.submit([1, 2]).unwrap());
        assert!(!mock.submit([3]).unwrap());
        assert_eq!(mock.notifications_sent(), 1);
        while let Some(r) = back.take_request().unwrap() {
            back.queue_response(&(r * 2)).unwrap();
        }
        if back.push_responses().unwrap() {
            mock.notify();
        }
        assert_eq!(mock.notifications_received(), 1);
        mock.expect_responses(&[2, 4, 6]);
        mock.expect_responses(&[]);
    }

    #[test]
    fn submit_refuses_more_than_fits_without_queueing() {
        let mut mock = MockFrontend::<u64, u64>::new(BYTES).unwrap();
        assert_eq!(mock.submit([1, 2, 3, 4, 5]), Err(RingError::Full));
        assert_eq!(mock.ring().unpublished_requests(), 0);
        mock.submit([1, 2, 3, 4]).unwrap();
    }

    #[test]
    #[should_panic(expected = "mock expected responses [1], got []")]
    fn expect_responses_panics_on_mismatch() {
        let mut mock = MockFrontend::<u64, u64>::new(BYTES).unwrap();
        mock.expect_responses(&[1]);
    }

    #[test]
    fn backend_script_against_a_real_front_ring() {
        let mut mock = MockBackend::<u64, u64>::new(BYTES).unwrap();
        let mut front = FrontRing::<u64, u64, _>::init_at(mock.mem(), u32::MAX).unwrap();
        front.queue_request(&5).unwrap();
        front.queue_request(&6).unwrap();
        if front.push_requests().unwrap() {
            mock.notify();
        }
        mock.expect_requests(&[5, 6]);
        assert!(mock.respond([50]).unwrap());
        assert_eq!(mock.respond([60, 70]), Err(RingError::Full));
        assert!(!mock.respond([60]).unwrap());
        assert_eq!(mock.notifications_sent(), 1);
        assert_eq!(mock.notifications_received(), 1);
        assert_eq!(front.take_response().unwrap(), Some(50));
        assert_eq!(front.take_response().unwrap(), Some(60));
        front.queue_request(&7).unwrap();
        front.push_requests().unwrap();
        assert_eq!(mock.serve(|r| r + 1).unwrap(), 1);
        assert_eq!(front.take_response().unwrap(), Some(8));
    }

    #[test]
    #[should_panic(expected = "mock expected requests [9], got [1]")]
    fn expect_requests_panics_on_mismatch() {
        let mut mock = MockBackend::<u64, u64>::new(BYTES).unwrap();
        let mut front = FrontRing::<u64, u64, _>::init(mock.mem()).unwrap();
        front.queue_request(&1).unwrap();
        front.push_requests().unwrap();
        mock.expect_requests(&[9]);
    }

    #[test]
    fn backend_mock_refuses_tiny_memory() {
        assert_eq!(
            MockBackend::<u64, u64>::new(ENTRIES_OFFSET + 7).unwrap_err(),
            RingError::TooSmall {
                bytes: 71,
                entry_size: 8
            }
        );
    }

    #[test]
    fn rewrite_mode_changes_slots_right_after_each_read() {
        let mut mock = MockFrontend::<u64, u64>::new(BYTES).unwrap();
        mock.set_hostility(Hostility {
            rewrite_slots_after_read: true,
            ..Hostility::NONE
        });
        mock.submit([0x1111]).unwrap();
        let mem = mock.mem();
        let first: u64 = mem.read_obj(ENTRIES_OFFSET).unwrap();
        let second: u64 = mem.read_obj(ENTRIES_OFFSET).unwrap();
        assert_eq!(first, 0x1111);
        assert_ne!(second, first, "a double fetch sees different data");
        assert_eq!(mock.slot_rewrites(), 2);
        // Header reads are left alone.
        assert_eq!(mem.read_obj::<u32>(REQ_PROD_OFFSET).unwrap(), 1);
        assert_eq!(mock.slot_rewrites(), 2);
    }

    #[test]
    fn scribble_mode_garbles_event_indices_after_index_loads() {
        let mock = MockFrontend::<u64, u64>::new(BYTES).unwrap();
        mock.set_hostility(Hostility {
            scribble_event_indices: true,
            ..Hostility::NONE
        });
        let mem = mock.mem();
        assert_eq!(mem.load_acquire_u32(REQ_PROD_OFFSET).unwrap(), 0);
        let events = (
            mem.load_acquire_u32(REQ_EVENT_OFFSET).unwrap(),
            mem.load_acquire_u32(RSP_EVENT_OFFSET).unwrap(),
        );
        assert_ne!(events, (1, 1));
        assert_eq!(
            mem.load_acquire_u32(REQ_PROD_OFFSET).unwrap(),
            0,
            "producers untouched"
        );
        let dbg = alloc::format!("{mem:?}");
        assert!(dbg.contains("scribble_event_indices: true"), "{dbg}");
    }

    #[test]
    fn overrun_helpers_publish_impossible_indices() {
        let mut front = MockFrontend::<u64, u64>::new(BYTES).unwrap();
        let mut back = BackRing::<u64, u64, _>::attach(front.mem()).unwrap();
        front.submit([1]).unwrap();
        assert_eq!(front.overrun_requests().unwrap(), 1 + 8 + 1);
        assert!(matches!(
            back.take_request(),
            Err(RingError::Overrun { prod: 10, .. })
        ));

        let mut mock = MockBackend::<u64, u64>::new(BYTES).unwrap();
        let mut ring = FrontRing::<u64, u64, _>::init(mock.mem()).unwrap();
        mock.ring().unwrap();
        assert_eq!(mock.overrun_responses().unwrap(), 9);
        assert!(matches!(
            ring.take_response(),
            Err(RingError::Overrun { prod: 9, .. })
        ));
        mock.poke_u32(REQ_PROD_OFFSET, 3).unwrap();
        assert_eq!(mock.mem().load_acquire_u32(REQ_PROD_OFFSET).unwrap(), 3);
    }
}
