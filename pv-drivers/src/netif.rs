//! The PV network protocol's rings (`shared_abi::io::netif`) on top of [`crate::ring`].
//!
//! - [`NetBack`]: a back-end's two ring ends.
//!   - tx: [`NetBack::next_tx`] copies each slot out of the ring once
//!     ([`BackRing::take_request`]) into a private chain buffer, and hands out a packet only
//!     once its whole chain (1..=[`NETIF_MAX_TX_SLOTS`] slots, linked by
//!     [`NETTXF_MORE_DATA`]) is published and copied. The chain is then checked by
//!     [`validate_tx`]; the caller acts only on the returned [`TxPacket`], so a front-end
//!     rewriting slots meanwhile changes nothing. Never more than [`NETIF_MAX_TX_SLOTS`]
//!     slots are read for one packet: a longer chain is refused ([`BadTx::TooManySlots`]).
//!   - rx: [`NetBack::next_rx_buffer`] takes posted buffers (private copies) and
//!     [`NetBack::respond_rx`] answers them **in the order they were taken, each in the
//!     ring slot of its own request**, as Linux netfront requires (it finds a buffer by
//!     slot, not by id).
//! - [`NetFront`]: a front-end's two ring ends. It tracks which tx ids are in flight and
//!   which rx ids are posted, so a back-end that answers an unknown id (or one twice) is
//!   caught ([`FrontError::UnknownId`]), and it checks that a received buffer's data lie
//!   inside the page ([`FrontError::BadRxResponse`]). Either disables the front-end.
//! - [`validate_tx`]: the back-end's tx chain checks, with a typed [`BadTx`] for each way a
//!   chain can be wrong. [`BadTx::is_protocol_violation`] separates what an honest
//!   front-end never sends from what it may (a packet larger than this back-end serves).
//!
//! ## tx chain semantics (Xen netback's)
//!
//! Slot 0's `size` is the packet's total length; each slot with [`NETTXF_MORE_DATA`] is
//! followed by another; a later slot's `size` is its own fragment's length, and the first
//! fragment's length is `slot0.size - sum(later sizes)`. Every fragment must lie inside its
//! page. Every slot's `id` gets one response with the packet's status (`NETIF_RSP_OKAY` or
//! an error; [`NETIF_RSP_NULL`] is for extra-info slots only, which are refused here), as
//! [`NetBack::respond_tx_chain`] does.
#![forbid(unsafe_code)]

pub mod csum;

use core::fmt;
use core::ops::Deref;

use shared_abi::io::netif::{
    NETIF_MAX_PACKET, NETIF_MAX_TX_SLOTS, NETIF_PAGE_SIZE, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
    NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse,
};

use crate::mem::SharedMem;
use crate::ring::{BackRing, FrontRing, RingError};

/// A netif tx ring's front-end end, unwrapped.
pub type NetTxFrontRing<M> = FrontRing<NetifTxRequest, NetifTxResponse, M>;
/// A netif rx ring's front-end end, unwrapped.
pub type NetRxFrontRing<M> = FrontRing<NetifRxRequest, NetifRxResponse, M>;
/// A netif tx ring's back-end end, unwrapped.
pub type NetTxBackRing<M> = BackRing<NetifTxRequest, NetifTxResponse, M>;
/// A netif rx ring's back-end end, unwrapped.
pub type NetRxBackRing<M> = BackRing<NetifRxRequest, NetifRxResponse, M>;

/// Ids a [`NetFront`] tracks (and the most rx buffers a [`NetBack`] holds taken at once):
/// ids are `0..MAX_IDS`, one page's ring size.
pub const MAX_IDS: usize = 256;

/// One validated fragment of a tx packet: `len` bytes at `offset` of the page granted as
/// `gref`; `offset + len <= 4096`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxFrag {
    /// Grant reference of the page.
    pub gref: u32,
    /// Byte offset in the page.
    pub offset: u16,
    /// Bytes of the fragment.
    pub len: u16,
}

/// The slot ids of one tx chain (1..=[`NETIF_MAX_TX_SLOTS`]), in ring order. Each needs
/// one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxIds {
    ids: [u16; NETIF_MAX_TX_SLOTS],
    nr: u8,
}

impl TxIds {
    fn from_slots(slots: &[NetifTxRequest]) -> Self {
        let mut ids = [0u16; NETIF_MAX_TX_SLOTS];
        for (d, s) in ids.iter_mut().zip(slots) {
            *d = s.id;
        }
        Self {
            ids,
            // Lossless: callers pass at most NETIF_MAX_TX_SLOTS (18) slots.
            nr: slots.len().min(NETIF_MAX_TX_SLOTS) as u8,
        }
    }

    /// The ids, first slot first.
    #[must_use]
    pub fn ids(&self) -> &[u16] {
        &self.ids[..usize::from(self.nr)]
    }
}

impl Deref for TxIds {
    type Target = [u16];
    fn deref(&self) -> &[u16] {
        self.ids()
    }
}

/// A validated tx packet: a private copy of its 1..=[`NETIF_MAX_TX_SLOTS`] slots, never a
/// view of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxPacket {
    frags: [TxFrag; NETIF_MAX_TX_SLOTS],
    ids: TxIds,
    len: u16,
    flags: u16,
}

impl TxPacket {
    /// The fragments in packet order; their lengths sum to [`len`](Self::len).
    #[must_use]
    pub fn frags(&self) -> &[TxFrag] {
        &self.frags[..self.ids.ids().len()]
    }

    /// The slot ids, one response each (all with the packet's status).
    #[must_use]
    pub fn ids(&self) -> &[u16] {
        self.ids.ids()
    }

    /// Total bytes of the packet (the first slot's `size`), at least 1.
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always `false`: empty packets are refused ([`BadTx::Empty`]).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first slot's `NETTXF_*` flags.
    #[must_use]
    pub fn flags(&self) -> u16 {
        self.flags
    }
}

/// Why a tx chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadTx {
    /// The chain is longer than [`NETIF_MAX_TX_SLOTS`]; `slots` is how many it has at least
    /// (only [`NETIF_MAX_TX_SLOTS`] were read). The rest of the chain cannot be told apart
    /// from the next packet, so the tx ring is dead afterwards.
    TooManySlots {
        /// Slots the chain has at least.
        slots: usize,
    },
    /// Fragment `index` does not lie inside its page.
    CrossesPage {
        /// Index of the fragment in the chain.
        index: u8,
        /// Its offset.
        offset: u16,
        /// Its length.
        len: u16,
    },
    /// The later slots' sizes add up to more than the first slot's (the total).
    SizeMismatch {
        /// The first slot's `size`.
        first: u16,
        /// The sum of the later slots' sizes.
        sum: u32,
    },
    /// The first slot asks for an extra-info slot ([`NETTXF_EXTRA_INFO`]), which this
    /// back-end never negotiates. The next slot is not a tx request, so the tx ring is dead
    /// afterwards.
    ExtraInfo,
    /// The packet has no bytes.
    Empty,
    /// The packet is larger than the back-end serves.
    TooLarge {
        /// The packet's length.
        len: usize,
        /// The back-end's maximum.
        max: usize,
    },
}

impl BadTx {
    /// Whether only a broken or hostile front-end sends this. [`BadTx::TooLarge`] is not
    /// one (the front-end may not know the limit): it is answered `NETIF_RSP_ERROR` and the
    /// ring goes on.
    #[must_use]
    pub const fn is_protocol_violation(&self) -> bool {
        !matches!(self, Self::TooLarge { .. })
    }

    /// Whether the tx ring cannot be used after this ([`BadTx::TooManySlots`],
    /// [`BadTx::ExtraInfo`]): the ring position is inside the refused chain.
    #[must_use]
    pub const fn is_fatal(&self) -> bool {
        matches!(self, Self::TooManySlots { .. } | Self::ExtraInfo)
    }
}

impl fmt::Display for BadTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooManySlots { slots } => write!(
                f,
                "tx chain of at least {slots} slots (at most {NETIF_MAX_TX_SLOTS} allowed)"
            ),
            Self::CrossesPage { index, offset, len } => write!(
                f,
                "tx fragment {index} of {len} bytes at offset {offset} crosses its page"
            ),
            Self::SizeMismatch { first, sum } => write!(
                f,
                "tx chain of {first} bytes whose later fragments hold {sum} bytes"
            ),
            Self::ExtraInfo => f.write_str("tx extra-info slot, never negotiated"),
            Self::Empty => f.write_str("empty tx packet"),
            Self::TooLarge { len, max } => {
                write!(f, "tx packet of {len} bytes exceeds the maximum of {max}")
            }
        }
    }
}

impl core::error::Error for BadTx {}

/// Checks a whole tx chain copied out of the ring (`slots` in ring order) for a back-end
/// serving packets of at most `max_packet` bytes. See the [module docs](self) for the
/// semantics. The `NETTXF_MORE_DATA` flags are not re-checked here: the chain's extent is
/// the caller's (it is [`NetBack::next_tx`]'s job).
///
/// # Errors
/// The first rule broken, in the order: extra info, slot count, size sum, each fragment's
/// page bounds, empty, too large.
pub fn validate_tx(slots: &[NetifTxRequest], max_packet: usize) -> Result<TxPacket, BadTx> {
    let Some(first) = slots.first() else {
        return Err(BadTx::Empty);
    };
    if first.flags & NETTXF_EXTRA_INFO != 0 {
        return Err(BadTx::ExtraInfo);
    }
    if slots.len() > NETIF_MAX_TX_SLOTS {
        return Err(BadTx::TooManySlots { slots: slots.len() });
    }
    let sum: u32 = slots[1..].iter().map(|s| u32::from(s.size)).sum();
    if sum > u32::from(first.size) {
        return Err(BadTx::SizeMismatch {
            first: first.size,
            sum,
        });
    }
    let mut frags = [TxFrag::default(); NETIF_MAX_TX_SLOTS];
    for (index, (s, out)) in slots.iter().zip(frags.iter_mut()).enumerate() {
        let len = if index == 0 {
            // Lossless: sum <= first.size, a u16.
            first.size - sum as u16
        } else {
            s.size
        };
        if usize::from(s.offset) + usize::from(len) > NETIF_PAGE_SIZE {
            return Err(BadTx::CrossesPage {
                // Lossless: index < NETIF_MAX_TX_SLOTS (18).
                index: index as u8,
                offset: s.offset,
                len,
            });
        }
        *out = TxFrag {
            gref: s.gref,
            offset: s.offset,
            len,
        };
    }
    if first.size == 0 {
        return Err(BadTx::Empty);
    }
    let max = max_packet.min(NETIF_MAX_PACKET);
    if usize::from(first.size) > max {
        return Err(BadTx::TooLarge {
            len: usize::from(first.size),
            max,
        });
    }
    Ok(TxPacket {
        frags,
        ids: TxIds::from_slots(slots),
        len: first.size,
        flags: first.flags,
    })
}

/// What [`NetBack::next_tx`] took from the tx ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxTaken {
    /// A valid packet.
    Valid(TxPacket),
    /// A refused chain: answer its ids ([`NetBack::respond_tx_chain`] with
    /// `NETIF_RSP_ERROR`), and stop serving the device if `why` is a protocol violation.
    Invalid {
        /// The chain's slot ids (those read: at most [`NETIF_MAX_TX_SLOTS`]).
        ids: TxIds,
        /// Why.
        why: BadTx,
    },
}

impl TxTaken {
    /// The slot ids to answer, whether valid or not.
    #[must_use]
    pub fn ids(&self) -> &[u16] {
        match self {
            Self::Valid(p) => p.ids(),
            Self::Invalid { ids, .. } => ids.ids(),
        }
    }
}

/// An rx response for buffer `id` with data at offset 0: `len_or_status` is the bytes
/// received (> 0) or a negative `NETIF_RSP_*`.
#[must_use]
pub fn rx_response(id: u16, len_or_status: i16, flags: u16) -> NetifRxResponse {
    NetifRxResponse {
        id,
        offset: 0,
        flags,
        status: len_or_status,
    }
}

/// A network back-end's two ring ends. See the [module docs](self).
#[derive(Debug)]
pub struct NetBack<M> {
    tx: NetTxBackRing<M>,
    rx: NetRxBackRing<M>,
    max_packet: usize,
    /// Private copies of the slots of a chain whose end is not published yet.
    chain: [NetifTxRequest; NETIF_MAX_TX_SLOTS],
    chain_len: u8,
    /// A fatal [`BadTx`] left the ring position inside a chain.
    tx_dead: bool,
    /// Ids of the rx buffers taken and not yet answered, oldest at `rx_head`.
    rx_ids: [u16; MAX_IDS],
    rx_head: usize,
    rx_taken: usize,
}

impl<M: SharedMem> NetBack<M> {
    /// Attaches to the tx and rx rings the front-end initialised, for packets of at most
    /// `max_packet` bytes (capped at [`NETIF_MAX_PACKET`]).
    ///
    /// # Errors
    /// [`RingError::TooSmall`] if either memory cannot hold one entry.
    pub fn attach(tx: M, rx: M, max_packet: usize) -> Result<Self, RingError> {
        Ok(Self {
            tx: BackRing::attach(tx)?,
            rx: BackRing::attach(rx)?,
            max_packet: max_packet.min(NETIF_MAX_PACKET),
            chain: [NetifTxRequest::default(); NETIF_MAX_TX_SLOTS],
            chain_len: 0,
            tx_dead: false,
            rx_ids: [0; MAX_IDS],
            rx_head: 0,
            rx_taken: 0,
        })
    }

    /// The tx ring, for inspection.
    #[must_use]
    pub fn tx_ring(&self) -> &NetTxBackRing<M> {
        &self.tx
    }

    /// The rx ring, for inspection.
    #[must_use]
    pub fn rx_ring(&self) -> &NetRxBackRing<M> {
        &self.rx
    }

    /// The largest packet served.
    #[must_use]
    pub fn max_packet(&self) -> usize {
        self.max_packet
    }

    /// Whether either ring is unusable: a ring error, or a fatal [`BadTx`] on tx.
    #[must_use]
    pub fn is_disabled(&self) -> bool {
        self.tx_dead || self.tx.is_disabled() || self.rx.is_disabled()
    }

    /// Slots of a chain copied so far whose end is not yet published.
    #[must_use]
    pub fn tx_partial_slots(&self) -> usize {
        usize::from(self.chain_len)
    }

    fn check_tx(&self) -> Result<(), RingError> {
        if self.tx_dead {
            Err(RingError::Disabled)
        } else {
            Ok(())
        }
    }

    /// The next whole packet, copied out of its slots once and validated; `None` until all
    /// its slots are published (the slots of a chain whose continuation is not yet
    /// published are kept privately and never read again). Reads at most
    /// [`NETIF_MAX_TX_SLOTS`] slots per packet.
    ///
    /// After a fatal refusal ([`BadTx::is_fatal`]) every later call returns
    /// [`RingError::Disabled`]; answering the refused ids still works.
    ///
    /// # Errors
    /// A [`RingError`] of the tx ring (e.g. the front-end's index overran it).
    pub fn next_tx(&mut self) -> Result<Option<TxTaken>, RingError> {
        self.check_tx()?;
        while let Some(slot) = self.tx.take_request()? {
            let n = usize::from(self.chain_len);
            self.chain[n] = slot;
            let n = n + 1;
            // Lossless: n <= NETIF_MAX_TX_SLOTS.
            self.chain_len = n as u8;
            let fatal = if n == 1 && slot.flags & NETTXF_EXTRA_INFO != 0 {
                Some(BadTx::ExtraInfo)
            } else if slot.flags & NETTXF_MORE_DATA == 0 {
                None
            } else if n == NETIF_MAX_TX_SLOTS {
                Some(BadTx::TooManySlots {
                    slots: NETIF_MAX_TX_SLOTS + 1,
                })
            } else {
                continue;
            };
            let slots = &self.chain[..n];
            self.chain_len = 0;
            let taken = match fatal {
                Some(why) => {
                    self.tx_dead = true;
                    TxTaken::Invalid {
                        ids: TxIds::from_slots(slots),
                        why,
                    }
                }
                None => match validate_tx(slots, self.max_packet) {
                    Ok(p) => TxTaken::Valid(p),
                    Err(why) => TxTaken::Invalid {
                        ids: TxIds::from_slots(slots),
                        why,
                    },
                },
            };
            return Ok(Some(taken));
        }
        Ok(None)
    }

    /// Queues a tx response for slot `id` (the front-end sees it after
    /// [`push_tx`](Self::push_tx)). Responses may be given in any order, one per slot of
    /// the packets returned by [`next_tx`](Self::next_tx).
    ///
    /// # Errors
    /// [`RingError::Full`] if every slot handed out is already answered (the slots of a
    /// partial chain cannot be answered yet); otherwise as [`BackRing::queue_response`].
    pub fn respond_tx(&mut self, id: u16, status: i16) -> Result<(), RingError> {
        if self.tx.awaiting_response() <= u32::from(self.chain_len) {
            return Err(RingError::Full);
        }
        self.tx.queue_response(&NetifTxResponse { id, status })
    }

    /// Answers a whole chain: every id with `status` (each slot's buffer is freed by its
    /// own response).
    ///
    /// # Errors
    /// As [`respond_tx`](Self::respond_tx); nothing is queued if not all fit.
    pub fn respond_tx_chain(&mut self, ids: &[u16], status: i16) -> Result<(), RingError> {
        let free = self.tx.awaiting_response() - u32::from(self.chain_len);
        if ids.len() > free as usize {
            return Err(RingError::Full);
        }
        for &id in ids {
            self.tx.queue_response(&NetifTxResponse { id, status })?;
        }
        Ok(())
    }

    /// Publishes the queued tx responses; `Ok(true)` = notify the front-end.
    ///
    /// # Errors
    /// As [`BackRing::push_responses`].
    pub fn push_tx(&mut self) -> Result<bool, RingError> {
        self.tx.push_responses()
    }

    /// Before going idle: whether tx slots arrived after all (ring.h's final check; sets
    /// `req_event` so the front-end notifies at its next slot).
    ///
    /// # Errors
    /// As [`BackRing::final_check_for_requests`]; [`RingError::Disabled`] after a fatal
    /// [`BadTx`].
    pub fn final_check_tx(&mut self) -> Result<bool, RingError> {
        self.check_tx()?;
        self.tx.final_check_for_requests()
    }

    /// Rx buffers taken with [`next_rx_buffer`](Self::next_rx_buffer) and not yet answered.
    #[must_use]
    pub fn rx_buffers_taken(&self) -> usize {
        self.rx_taken
    }

    /// The id of the oldest taken, unanswered rx buffer: the one
    /// [`respond_rx`](Self::respond_rx) answers next.
    #[must_use]
    pub fn oldest_rx_id(&self) -> Option<u16> {
        (self.rx_taken > 0).then(|| self.rx_ids[self.rx_head])
    }

    /// The next rx buffer the front-end posted (a private copy), or `None` if none is
    /// published (or [`MAX_IDS`] are already taken and unanswered).
    ///
    /// # Errors
    /// A [`RingError`] of the rx ring.
    pub fn next_rx_buffer(&mut self) -> Result<Option<NetifRxRequest>, RingError> {
        if self.rx_taken == MAX_IDS {
            return Ok(None);
        }
        let Some(req) = self.rx.take_request()? else {
            return Ok(None);
        };
        self.rx_ids[(self.rx_head + self.rx_taken) % MAX_IDS] = req.id;
        self.rx_taken += 1;
        Ok(Some(req))
    }

    /// Answers the oldest taken rx buffer with `rsp`, in the ring slot of that buffer's
    /// request: responses go in the order buffers were taken, one per buffer. The buffer's
    /// own id is written whatever `rsp.id` says (it must be [`oldest_rx_id`](Self::oldest_rx_id);
    /// debug builds assert it).
    ///
    /// # Errors
    /// [`RingError::Full`] if no taken buffer awaits an answer; otherwise as
    /// [`BackRing::queue_response`].
    pub fn respond_rx(&mut self, rsp: &NetifRxResponse) -> Result<(), RingError> {
        let Some(id) = self.oldest_rx_id() else {
            return Err(RingError::Full);
        };
        debug_assert_eq!(rsp.id, id, "rx responses must follow the take order");
        self.rx.queue_response(&NetifRxResponse { id, ..*rsp })?;
        self.rx_head = (self.rx_head + 1) % MAX_IDS;
        self.rx_taken -= 1;
        Ok(())
    }

    /// Publishes the queued rx responses; `Ok(true)` = notify the front-end.
    ///
    /// # Errors
    /// As [`BackRing::push_responses`].
    pub fn push_rx(&mut self) -> Result<bool, RingError> {
        self.rx.push_responses()
    }

    /// Whether rx buffers are waiting; if not, sets the rx `req_event` so the front-end
    /// notifies when it posts more (ring.h's final check).
    ///
    /// # Errors
    /// As [`BackRing::final_check_for_requests`].
    pub fn final_check_rx(&mut self) -> Result<bool, RingError> {
        self.rx.final_check_for_requests()
    }
}

/// Why [`NetFront`] refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrontError {
    /// A ring failed (full, or the back-end broke it).
    Ring(RingError),
    /// The back-end answered an id not in flight (tx) or not posted (rx); the front-end is
    /// now disabled.
    UnknownId(u16),
    /// The back-end's rx response puts data outside the page (`offset + status > 4096`);
    /// the front-end is now disabled.
    BadRxResponse {
        /// The buffer's id.
        id: u16,
        /// The response's offset.
        offset: u16,
        /// The response's status (bytes).
        status: i16,
    },
    /// The caller's id is not below [`MAX_IDS`], or already in flight (tx) / posted (rx).
    BadId(u16),
    /// An earlier back-end violation disabled the front-end.
    Disabled,
}

impl From<RingError> for FrontError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

impl fmt::Display for FrontError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Ring(e) => write!(f, "{e}"),
            Self::UnknownId(id) => write!(
                f,
                "the back-end answered id {id}, which is not in flight or posted"
            ),
            Self::BadRxResponse { id, offset, status } => write!(
                f,
                "the back-end put {status} bytes at offset {offset} of rx buffer {id}, outside the page"
            ),
            Self::BadId(id) => write!(
                f,
                "id {id} is out of range (0..{MAX_IDS}) or already in use"
            ),
            Self::Disabled => f.write_str("front-end disabled after a back-end violation"),
        }
    }
}

impl core::error::Error for FrontError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Ring(e) => Some(e),
            _ => None,
        }
    }
}

/// A set of ids `0..MAX_IDS`.
#[derive(Debug, Clone, Copy, Default)]
struct IdSet([u64; MAX_IDS / 64]);

impl IdSet {
    fn contains(&self, id: u16) -> bool {
        let id = usize::from(id);
        id < MAX_IDS && self.0[id / 64] & (1 << (id % 64)) != 0
    }

    /// Inserts `id`; false if out of range or present.
    fn insert(&mut self, id: u16) -> bool {
        if usize::from(id) >= MAX_IDS || self.contains(id) {
            return false;
        }
        let id = usize::from(id);
        self.0[id / 64] |= 1 << (id % 64);
        true
    }

    /// Removes `id`; false if absent.
    fn remove(&mut self, id: u16) -> bool {
        if !self.contains(id) {
            return false;
        }
        let id = usize::from(id);
        self.0[id / 64] &= !(1 << (id % 64));
        true
    }

    fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
}

/// A network front-end's two ring ends, with the ids in flight. See the
/// [module docs](self).
#[derive(Debug)]
pub struct NetFront<M> {
    tx: NetTxFrontRing<M>,
    rx: NetRxFrontRing<M>,
    tx_in_flight: IdSet,
    rx_posted: IdSet,
    disabled: bool,
}

impl<M: SharedMem> NetFront<M> {
    /// Initialises a tx ring in `tx` and an rx ring in `rx` as their front-end.
    ///
    /// # Errors
    /// [`RingError::TooSmall`] if either memory cannot hold one entry.
    pub fn init(tx: M, rx: M) -> Result<Self, RingError> {
        Ok(Self {
            tx: FrontRing::init(tx)?,
            rx: FrontRing::init(rx)?,
            tx_in_flight: IdSet::default(),
            rx_posted: IdSet::default(),
            disabled: false,
        })
    }

    /// The tx ring, for inspection.
    #[must_use]
    pub fn tx_ring(&self) -> &NetTxFrontRing<M> {
        &self.tx
    }

    /// The rx ring, for inspection.
    #[must_use]
    pub fn rx_ring(&self) -> &NetRxFrontRing<M> {
        &self.rx
    }

    /// Whether a back-end violation (or a ring failure) disabled the front-end.
    #[must_use]
    pub fn is_disabled(&self) -> bool {
        self.disabled || self.tx.is_disabled() || self.rx.is_disabled()
    }

    fn check(&self) -> Result<(), FrontError> {
        if self.disabled {
            Err(FrontError::Disabled)
        } else {
            Ok(())
        }
    }

    fn violation(&mut self, e: FrontError) -> FrontError {
        self.disabled = true;
        e
    }

    /// Free tx slots (`RING_FREE_REQUESTS`).
    #[must_use]
    pub fn tx_free(&self) -> u32 {
        self.tx.free_requests()
    }

    /// Free rx slots (`RING_FREE_REQUESTS`).
    #[must_use]
    pub fn rx_free(&self) -> u32 {
        self.rx.free_requests()
    }

    /// tx slots queued and not yet answered.
    #[must_use]
    pub fn tx_in_flight(&self) -> u32 {
        self.tx_in_flight.len()
    }

    /// rx buffers posted and not yet returned.
    #[must_use]
    pub fn rx_posted(&self) -> u32 {
        self.rx_posted.len()
    }

    /// Queues one tx slot (published by [`push_tx`](Self::push_tx)). A multi-slot packet
    /// is queued slot by slot, all but the last with `NETTXF_MORE_DATA`; check
    /// [`tx_free`](Self::tx_free) first so a chain is never left half-queued.
    ///
    /// # Errors
    /// [`FrontError::BadId`] if `req.id` is not below [`MAX_IDS`] or is in flight;
    /// [`FrontError::Ring`] (`Full`); [`FrontError::Disabled`].
    pub fn queue_tx(&mut self, req: &NetifTxRequest) -> Result<(), FrontError> {
        self.check()?;
        if usize::from(req.id) >= MAX_IDS || self.tx_in_flight.contains(req.id) {
            return Err(FrontError::BadId(req.id));
        }
        self.tx.queue_request(req)?;
        self.tx_in_flight.insert(req.id);
        Ok(())
    }

    /// Publishes queued tx slots; `Ok(true)` = notify the back-end.
    ///
    /// # Errors
    /// A ring error; [`FrontError::Disabled`].
    pub fn push_tx(&mut self) -> Result<bool, FrontError> {
        self.check()?;
        Ok(self.tx.push_requests()?)
    }

    /// Takes the next tx response for a slot in flight, or `None`.
    ///
    /// # Errors
    /// [`FrontError::UnknownId`] (then disabled), a ring error, or
    /// [`FrontError::Disabled`].
    pub fn take_tx_response(&mut self) -> Result<Option<NetifTxResponse>, FrontError> {
        self.check()?;
        let Some(rsp) = self.tx.take_response()? else {
            return Ok(None);
        };
        if !self.tx_in_flight.remove(rsp.id) {
            return Err(self.violation(FrontError::UnknownId(rsp.id)));
        }
        Ok(Some(rsp))
    }

    /// Posts an rx buffer: the page granted (writable) as `gref`, known as `id` (published
    /// by [`push_rx`](Self::push_rx)).
    ///
    /// # Errors
    /// [`FrontError::BadId`] if `id` is not below [`MAX_IDS`] or is posted;
    /// [`FrontError::Ring`] (`Full`); [`FrontError::Disabled`].
    pub fn post_rx(&mut self, id: u16, gref: u32) -> Result<(), FrontError> {
        self.check()?;
        if usize::from(id) >= MAX_IDS || self.rx_posted.contains(id) {
            return Err(FrontError::BadId(id));
        }
        self.rx
            .queue_request(&NetifRxRequest { id, pad: 0, gref })?;
        self.rx_posted.insert(id);
        Ok(())
    }

    /// Publishes posted rx buffers; `Ok(true)` = notify the back-end.
    ///
    /// # Errors
    /// A ring error; [`FrontError::Disabled`].
    pub fn push_rx(&mut self) -> Result<bool, FrontError> {
        self.check()?;
        Ok(self.rx.push_requests()?)
    }

    /// Takes the next received buffer, or `None`. It is validated: its id was posted (and
    /// is no longer), and if `status > 0` the data `offset..offset + status` lie inside the
    /// page. A `status <= 0` is a buffer returned empty (`NETIF_RSP_*`).
    ///
    /// # Errors
    /// [`FrontError::UnknownId`] or [`FrontError::BadRxResponse`] (then disabled), a ring
    /// error, or [`FrontError::Disabled`].
    pub fn take_rx(&mut self) -> Result<Option<NetifRxResponse>, FrontError> {
        self.check()?;
        let Some(rsp) = self.rx.take_response()? else {
            return Ok(None);
        };
        if !self.rx_posted.remove(rsp.id) {
            return Err(self.violation(FrontError::UnknownId(rsp.id)));
        }
        if rsp.status > 0
            && usize::from(rsp.offset) + rsp.status.unsigned_abs() as usize > NETIF_PAGE_SIZE
        {
            return Err(self.violation(FrontError::BadRxResponse {
                id: rsp.id,
                offset: rsp.offset,
                status: rsp.status,
            }));
        }
        Ok(Some(rsp))
    }

    /// Before going idle: whether tx or rx responses are waiting. Checks both rings (ring.h's
    /// final check), so each ring's `rsp_event` is set if it has nothing waiting.
    ///
    /// # Errors
    /// A ring error; [`FrontError::Disabled`].
    pub fn final_check(&mut self) -> Result<bool, FrontError> {
        self.check()?;
        let tx = self.tx.final_check_for_responses()?;
        let rx = self.rx.final_check_for_responses()?;
        Ok(tx || rx)
    }
}

/// A tx slot: `size` bytes (the packet total in a first slot, the fragment length in a
/// later one) at `offset` of page `gref`, known as `id`.
#[must_use]
pub const fn tx_request(id: u16, gref: u32, offset: u16, size: u16, flags: u16) -> NetifTxRequest {
    NetifTxRequest {
        gref,
        offset,
        flags,
        id,
        size,
    }
}

#[cfg(test)]
mod tests;
