//! A PV network front-end: the guest's end of a vif served by dom0d's network back-end,
//! over [`pv_drivers::netif::NetFront`].
//!
//! ## Connecting ([`Nic::connect`], bare metal)
//!
//! 1. Reads `device/vif/<handle>/backend` (the back-end's directory) and `mac` (written by
//!    the toolstack into the front-end's directory), then the back-end's
//!    `feature-rx-copy` (must be 1: the back-end copies received frames into our
//!    buffers) and `ip` (optional: an address hint such as `10.0.0.2/24` for a guest
//!    without DHCP), all with the strict parsers of [`NicInfo::parse`].
//! 2. Places grant table frame 0 ([`crate::grants::init`]) and grants domain 0, for the
//!    life of the guest: the tx ring page ([`TX_RING_REF`]) and the rx ring page
//!    ([`RX_RING_REF`]) writable, [`TX_PAGES`] tx buffer pages read-only (references from
//!    [`FIRST_TX_REF`], two 2 KiB frame buffers each) and [`RX_BUFFERS`] rx buffer pages
//!    writable (references from [`FIRST_RX_REF`]). These references (384..=481) do not overlap the block
//!    front-end's (16..=368). The pages are statics of [`AtomicPage`]s.
//! 3. Initialises both rings, allocates an unbound event channel for domain 0, writes
//!    `tx-ring-ref`, `rx-ring-ref`, `event-channel`, `request-rx-copy` = 1,
//!    `feature-rx-notify` = 1, then `state` = Initialised (3).
//! 4. Waits for the back-end's `state` to be Connected (4), at most
//!    [`CONNECT_TIMEOUT_NS`] ([`crate::pvdev::wait_connected`]), writes `state` =
//!    Connected, posts every rx buffer and notifies the back-end.
//!
//! A connect that fails after step 2 writes `state` = Closed if it got that far, ends its
//! grants, closes its port and leaves the pages free for another try.
//!
//! ## Frames
//!
//! [`Nic::send`] copies one Ethernet frame (1..=[`ETH_FRAME_MAX`] bytes, one slot, no
//! checksum offload) into a free tx buffer and publishes it; buffers come back as the
//! back-end answers (reclaimed by every call). [`Nic::recv`] copies the next received
//! frame out and reposts its buffer at once. [`Nic::poll`] reclaims, reposts and re-arms
//! the ring events, and tells whether responses are waiting; after it returned `false`
//! the back-end's next response raises the event channel ([`Nic::port`]).
//!
//! A back-end that breaks a ring, answers an id that is not in flight, or sends what
//! this front-end never asked for (extra-info slots) makes the NIC unusable: every later
//! call returns the same [`NetError`]. A failed tx status or an errored rx slot only
//! counts in [`NetStats`]; so does a multi-slot rx packet (never requested: this
//! front-end does not advertise `feature-sg`), which is dropped whole.
//!
//! Everything but the bare-metal glue (node parsing, the buffer and id bookkeeping of
//! [`Datapath`]) is host-tested, the datapath against pv-drivers' back-end ring end.

use core::fmt;

use pv_drivers::SharedMem;
use pv_drivers::netif::{FrontError, NetFront};
use shared_abi::io::netif::{
    ETH_FRAME_MAX, NETIF_RSP_OKAY, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, NetifTxRequest,
};
use shared_abi::io::xenbus::XenbusState;

use crate::control::StoreError;
use crate::grants::GrantError;
use crate::pvdev::parse_decimal;
pub use crate::pvdev::{AtomicPage, PAGE};

/// The tx ring page's grant reference (above the block front-end's 16..=368).
pub const TX_RING_REF: u32 = 384;
/// The rx ring page's grant reference.
pub const RX_RING_REF: u32 = TX_RING_REF + 1;
/// Tx buffer pages; each holds two frame buffers (at offsets 0 and [`TX_HALF`]).
pub const TX_PAGES: usize = 32;
/// Tx frame buffers, so frames in flight at most.
pub const TX_BUFFERS: usize = 2 * TX_PAGES;
/// Bytes of a tx frame buffer (half a page; a frame is at most 1514 bytes).
pub const TX_HALF: usize = PAGE / 2;
/// The first tx buffer page's grant reference; tx page `p` is `FIRST_TX_REF + p`.
pub const FIRST_TX_REF: u32 = RX_RING_REF + 1;
/// Rx buffers (a page each: the back-end chooses the offset in the page).
pub const RX_BUFFERS: usize = 64;
/// The first rx buffer's grant reference; rx buffer `i` is `FIRST_RX_REF + i`.
pub const FIRST_RX_REF: u32 = FIRST_TX_REF + TX_PAGES as u32;
/// How long the back-end may take to connect.
pub const CONNECT_TIMEOUT_NS: u64 = 10_000_000_000;
/// The address prefix assumed when the `ip` hint has none.
pub const DEFAULT_PREFIX: u8 = 24;

const _: () = {
    // Above blkfront's references, inside table frame 0 (512 entries).
    assert!(TX_RING_REF > crate::blkfront::data_ref(crate::blkfront::SLOTS - 1, 10));
    assert!(FIRST_RX_REF as usize + RX_BUFFERS <= 512);
    // Buffer ids are bits of a u64 and below the rings' 256 slots.
    assert!(TX_BUFFERS <= 64 && RX_BUFFERS <= 64);
    assert!(ETH_FRAME_MAX <= TX_HALF);
};

/// The grant reference of tx page `page`.
pub const fn tx_ref(page: usize) -> u32 {
    FIRST_TX_REF + page as u32
}

/// The grant reference of rx buffer `index`.
pub const fn rx_ref(index: usize) -> u32 {
    FIRST_RX_REF + index as u32
}

/// Why a network call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// No hypervisor, no events or no xenstore.
    NoStore,
    /// `device/vif/<handle>/backend` does not exist: the domain has no such NIC.
    NoNic(u32),
    /// A xenstore access failed.
    Store(StoreError),
    /// A node holds something this front-end does not accept.
    BadNode(&'static str),
    /// The back-end does not offer `feature-rx-copy` = 1.
    NoRxCopy,
    /// A grant call failed.
    Grant(GrantError),
    /// A hypercall failed (grant table placement, event channel allocation).
    Hypercall(shared_abi::Errno),
    /// The back-end went Closing/Closed (or never connected).
    Backend(XenbusState),
    /// A ring broke or the back-end answered an id not in flight; the NIC is unusable.
    Ring(FrontError),
    /// The back-end sent something this front-end never asked for; the NIC is unusable.
    Protocol(&'static str),
    /// A frame to send is empty or longer than [`ETH_FRAME_MAX`].
    FrameSize(usize),
    /// Every tx buffer is in flight: poll and try again.
    Full,
    /// The NIC's buffers are in use by another [`Nic`] (one per guest).
    Busy,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::NoStore => f.write_str("no xenstore or events"),
            NetError::NoNic(h) => write!(f, "no vif {h} (device/vif/{h}/backend)"),
            NetError::Store(e) => write!(f, "xenstore: {e}"),
            NetError::BadNode(n) => write!(f, "the {n} node is malformed"),
            NetError::NoRxCopy => f.write_str("the back-end does not offer feature-rx-copy"),
            NetError::Grant(e) => write!(f, "grant: {e}"),
            NetError::Hypercall(e) => write!(f, "hypercall failed: {}", e.name()),
            NetError::Backend(s) => write!(f, "the back-end is {s:?}"),
            NetError::Ring(e) => write!(f, "ring: {e}"),
            NetError::Protocol(what) => write!(f, "the back-end sent {what}"),
            NetError::FrameSize(len) => {
                write!(
                    f,
                    "a frame of {len} bytes (1..={ETH_FRAME_MAX} can be sent)"
                )
            }
            NetError::Full => f.write_str("every tx buffer is in flight"),
            NetError::Busy => f.write_str("the network front-end is already in use"),
        }
    }
}

impl From<FrontError> for NetError {
    fn from(e: FrontError) -> Self {
        NetError::Ring(e)
    }
}

/// An Ethernet (MAC) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Parses `xx:xx:xx:xx:xx:xx` (two hex digits per octet, either case, optionally
    /// NUL-terminated). A group (multicast) or all-zero address is refused: it cannot
    /// be a NIC's own.
    pub fn parse(raw: &[u8]) -> Option<Mac> {
        let s = raw.strip_suffix(&[0]).unwrap_or(raw);
        if s.len() != 17 {
            return None;
        }
        let mut out = [0u8; 6];
        for (i, o) in out.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && s[at - 1] != b':' {
                return None;
            }
            *o = (hex(s[at])? << 4) | hex(s[at + 1])?;
        }
        (out[0] & 1 == 0 && out != [0; 6]).then_some(Mac(out))
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Parses a dotted-quad IPv4 address: four decimal octets of 1..=3 digits, no leading
/// zeros, no sign or space.
pub fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&c| c == b'.');
    for o in &mut out {
        let part = parts.next()?;
        if part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        *o = u8::try_from(parse_decimal(part)?).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// An IPv4 address with its prefix length (`10.0.0.2/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: [u8; 4],
    /// Prefix length, 1..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Parses `A.B.C.D/N` (N in 1..=32) or a bare `A.B.C.D` (prefix
    /// [`DEFAULT_PREFIX`]), optionally NUL-terminated. The address must be a unicast
    /// host address: not 0.0.0.0, not multicast/reserved (224 and above), not loopback.
    pub fn parse(raw: &[u8]) -> Option<Ipv4Cidr> {
        let s = raw.strip_suffix(&[0]).unwrap_or(raw);
        let (addr, prefix) = match s.iter().position(|&c| c == b'/') {
            Some(slash) => {
                let p = &s[slash + 1..];
                if p.is_empty() || p.len() > 2 || (p.len() > 1 && p[0] == b'0') {
                    return None;
                }
                let prefix = u8::try_from(parse_decimal(p)?).ok()?;
                (&s[..slash], prefix)
            }
            None => (s, DEFAULT_PREFIX),
        };
        let addr = parse_ipv4(addr)?;
        let usable = addr != [0; 4] && addr[0] < 224 && addr[0] != 127;
        ((1..=32).contains(&prefix) && usable).then_some(Ipv4Cidr { addr, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.addr;
        write!(f, "{}.{}.{}.{}/{}", a[0], a[1], a[2], a[3], self.prefix)
    }
}

/// What the toolstack and the back-end published about the NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NicInfo {
    /// The NIC's MAC address (front-end `mac`).
    pub mac: Mac,
    /// The back-end's `ip` hint, if any.
    pub ip: Option<Ipv4Cidr>,
}

impl NicInfo {
    /// Parses the front-end's `mac`, and the back-end's `feature-rx-copy` and `ip` node
    /// values (`None`: the node does not exist).
    ///
    /// # Errors
    /// [`NetError::BadNode`] naming the node; [`NetError::NoRxCopy`] unless
    /// `feature-rx-copy` is 1.
    pub fn parse(mac: &[u8], rx_copy: Option<&[u8]>, ip: Option<&[u8]>) -> Result<Self, NetError> {
        let mac = Mac::parse(mac).ok_or(NetError::BadNode("mac"))?;
        match rx_copy.map(parse_decimal) {
            None | Some(Some(0)) => return Err(NetError::NoRxCopy),
            Some(Some(1)) => {}
            Some(_) => return Err(NetError::BadNode("feature-rx-copy")),
        }
        let ip = match ip {
            None => None,
            Some(raw) => Some(Ipv4Cidr::parse(raw).ok_or(NetError::BadNode("ip"))?),
        };
        Ok(Self { mac, ip })
    }
}

/// Counters of the datapath.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames published on the tx ring.
    pub tx_frames: u64,
    /// Tx responses with a status other than OKAY.
    pub tx_errors: u64,
    /// Frames handed out by [`Datapath::recv`].
    pub rx_frames: u64,
    /// Rx slots dropped: an error status, a multi-slot packet, or a frame longer than the
    /// caller's buffer.
    pub rx_dropped: u64,
}

/// The buffer and id bookkeeping of a NIC, over any [`SharedMem`] (the bare-metal
/// [`Nic`] uses it over static [`AtomicPage`]s; host tests over leaked ones).
///
/// Tx buffer `i` is half `i % 2` of tx page `i / 2` (grant [`tx_ref`]`(i / 2)`) and its
/// requests carry id `i`; rx buffer `i` is rx page `i` (grant [`rx_ref`]`(i)`), posted
/// with id `i`. Two bitmasks record which tx buffers are in flight and which rx buffers
/// are posted, so every id the back-end answers is checked against them.
#[derive(Debug)]
pub struct Datapath<'a, M, P> {
    front: NetFront<M>,
    tx_pages: &'a [P],
    rx_pages: &'a [P],
    /// Bit `i`: tx buffer `i` is in flight.
    tx_busy: u64,
    /// Bit `i`: rx buffer `i` is posted.
    rx_posted: u64,
    /// The back-end must be notified of published requests.
    notify: bool,
    /// Dropping the continuation slots of a multi-slot rx packet.
    skipping: bool,
    broken: Option<NetError>,
    stats: NetStats,
}

impl<'a, M: SharedMem, P: SharedMem> Datapath<'a, M, P> {
    /// Wraps an initialised front-end with its buffer pages: `tx_pages` (two frame
    /// buffers each) and `rx_pages` (one buffer each), at most 32 and 64 of them, which
    /// the caller granted as [`tx_ref`] and [`rx_ref`] say.
    ///
    /// # Errors
    /// [`NetError::Protocol`] for more pages than that (a caller bug, named so).
    pub fn new(front: NetFront<M>, tx_pages: &'a [P], rx_pages: &'a [P]) -> Result<Self, NetError> {
        if tx_pages.len() > TX_PAGES || rx_pages.len() > RX_BUFFERS {
            return Err(NetError::Protocol("more buffer pages than ids"));
        }
        Ok(Self {
            front,
            tx_pages,
            rx_pages,
            tx_busy: 0,
            rx_posted: 0,
            notify: false,
            skipping: false,
            broken: None,
            stats: NetStats::default(),
        })
    }

    fn tx_buffers(&self) -> usize {
        2 * self.tx_pages.len()
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The error that made the NIC unusable, if one did.
    pub fn broken(&self) -> Option<NetError> {
        self.broken
    }

    /// Whether published requests need an event to the back-end; clears the flag.
    pub fn take_notify(&mut self) -> bool {
        core::mem::take(&mut self.notify)
    }

    /// Tx buffers in flight.
    pub fn tx_in_flight(&self) -> u32 {
        self.tx_busy.count_ones()
    }

    /// Rx buffers posted to the back-end.
    pub fn rx_posted(&self) -> u32 {
        self.rx_posted.count_ones()
    }

    fn check(&self) -> Result<(), NetError> {
        self.broken.map_or(Ok(()), Err)
    }

    fn fail(&mut self, e: NetError) -> NetError {
        *self.broken.get_or_insert(e)
    }

    fn ring<T>(&mut self, r: Result<T, FrontError>) -> Result<T, NetError> {
        r.map_err(|e| self.fail(NetError::Ring(e)))
    }

    /// Posts every rx buffer that is not posted and publishes them.
    ///
    /// # Errors
    /// The NIC's error, once broken.
    pub fn post_rx_all(&mut self) -> Result<(), NetError> {
        self.check()?;
        let mut posted = false;
        for i in 0..self.rx_pages.len() {
            if self.rx_posted & (1 << i) == 0 {
                // Lossless: i < 64.
                let r = self.front.post_rx(i as u16, rx_ref(i));
                self.ring(r)?;
                self.rx_posted |= 1 << i;
                posted = true;
            }
        }
        if posted {
            let r = self.front.push_rx();
            self.notify |= self.ring(r)?;
        }
        Ok(())
    }

    /// Takes every tx response, freeing their buffers; returns how many.
    ///
    /// # Errors
    /// The NIC's error, once broken (a response for a buffer not in flight breaks it).
    pub fn reclaim(&mut self) -> Result<usize, NetError> {
        self.check()?;
        let mut n = 0;
        loop {
            let r = self.front.take_tx_response();
            let Some(rsp) = self.ring(r)? else {
                return Ok(n);
            };
            let bit = 1u64.checked_shl(u32::from(rsp.id)).unwrap_or(0);
            if self.tx_busy & bit == 0 {
                return Err(self.fail(NetError::Ring(FrontError::UnknownId(rsp.id))));
            }
            self.tx_busy &= !bit;
            if rsp.status != NETIF_RSP_OKAY {
                self.stats.tx_errors += 1;
            }
            n += 1;
        }
    }

    /// Whether a tx buffer is free (after reclaiming answered ones).
    ///
    /// # Errors
    /// The NIC's error, once broken.
    pub fn tx_available(&mut self) -> Result<bool, NetError> {
        if self.free_tx().is_none() {
            self.reclaim()?;
        }
        self.check()?;
        Ok(self.free_tx().is_some())
    }

    fn free_tx(&self) -> Option<usize> {
        let free = !self.tx_busy;
        let i = free.trailing_zeros() as usize;
        (i < self.tx_buffers()).then_some(i)
    }

    /// Copies `frame` into a free tx buffer and publishes it.
    ///
    /// # Errors
    /// [`NetError::FrameSize`], [`NetError::Full`] (nothing reclaimable), or the NIC's
    /// error once broken.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.check()?;
        if frame.is_empty() || frame.len() > ETH_FRAME_MAX {
            return Err(NetError::FrameSize(frame.len()));
        }
        if self.free_tx().is_none() {
            self.reclaim()?;
        }
        let i = self.free_tx().ok_or(NetError::Full)?;
        let (page, offset) = (i / 2, (i % 2) * TX_HALF);
        if self.tx_pages[page].write_bytes(offset, frame).is_err() {
            return Err(self.fail(NetError::Protocol("a tx page shorter than 4096 bytes")));
        }
        // Lossless: i < 64, offset <= 2048, frame.len() <= 1514.
        let req = NetifTxRequest {
            gref: tx_ref(page),
            offset: offset as u16,
            flags: 0,
            id: i as u16,
            size: frame.len() as u16,
        };
        let r = self.front.queue_tx(&req);
        self.ring(r)?;
        self.tx_busy |= 1 << i;
        self.stats.tx_frames += 1;
        let r = self.front.push_tx();
        self.notify |= self.ring(r)?;
        Ok(())
    }

    /// Copies the next received frame into `buf` and reposts its buffer; `None` when no
    /// frame is waiting. Errored slots, multi-slot packets and frames longer than `buf`
    /// are dropped (counted) and skipped.
    ///
    /// # Errors
    /// The NIC's error, once broken: a ring error, an unknown id, or an extra-info slot.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        self.check()?;
        loop {
            let r = self.front.take_rx();
            let Some(rsp) = self.ring(r)? else {
                return Ok(None);
            };
            let i = usize::from(rsp.id);
            let bit = 1u64.checked_shl(u32::from(rsp.id)).unwrap_or(0);
            if self.rx_posted & bit == 0 || i >= self.rx_pages.len() {
                return Err(self.fail(NetError::Ring(FrontError::UnknownId(rsp.id))));
            }
            self.rx_posted &= !bit;
            if rsp.flags & NETRXF_EXTRA_INFO != 0 {
                return Err(self.fail(NetError::Protocol("an rx extra-info slot")));
            }
            let more = rsp.flags & NETRXF_MORE_DATA != 0;
            let chained = core::mem::replace(&mut self.skipping, more) || more;
            let mut got = None;
            if chained || rsp.status <= 0 {
                self.stats.rx_dropped += 1;
            } else {
                // Lossless: status > 0; NetFront checked offset + status <= 4096.
                let len = rsp.status as usize;
                match buf.get_mut(..len) {
                    Some(dst) => {
                        if self.rx_pages[i]
                            .read_bytes(usize::from(rsp.offset), dst)
                            .is_err()
                        {
                            return Err(self.fail(NetError::Protocol("an rx slot beyond its page")));
                        }
                        self.stats.rx_frames += 1;
                        got = Some(len);
                    }
                    None => self.stats.rx_dropped += 1,
                }
            }
            // Repost the buffer at once (same id and grant).
            let r = self.front.post_rx(rsp.id, rx_ref(i));
            self.ring(r)?;
            self.rx_posted |= bit;
            let r = self.front.push_rx();
            self.notify |= self.ring(r)?;
            if got.is_some() {
                return Ok(got);
            }
        }
    }

    /// Reclaims tx buffers, reposts rx buffers, and re-arms both rings' events; returns
    /// whether responses are waiting (call [`Self::recv`] / poll again), `false` when
    /// the back-end's next response will raise the event.
    ///
    /// # Errors
    /// The NIC's error, once broken.
    pub fn poll(&mut self) -> Result<bool, NetError> {
        self.reclaim()?;
        self.post_rx_all()?;
        let r = self.front.final_check();
        self.ring(r)
    }
}

#[cfg(target_os = "none")]
pub use bare::Nic;

#[cfg(target_os = "none")]
mod bare {
    use core::sync::atomic::{AtomicBool, Ordering};

    use pv_drivers::netif::NetFront;
    use shared_abi::DomId;
    use shared_abi::guest::{evtchn_alloc_unbound, evtchn_close, evtchn_send};
    use shared_abi::io::xenbus::XenbusState;

    use super::{
        AtomicPage, CONNECT_TIMEOUT_NS, Datapath, Ipv4Cidr, Mac, NetError, NetStats, NicInfo,
        RX_BUFFERS, RX_RING_REF, TX_PAGES, TX_RING_REF, rx_ref, tx_ref,
    };
    use crate::control::{StoreError, store_read, store_write};
    use crate::pvdev::{self, Text, text};
    use crate::{events, grants};

    static TX_RING: AtomicPage = AtomicPage::new();
    static RX_RING: AtomicPage = AtomicPage::new();
    static TX_POOL: [AtomicPage; TX_PAGES] = [const { AtomicPage::new() }; TX_PAGES];
    static RX_POOL: [AtomicPage; RX_BUFFERS] = [const { AtomicPage::new() }; RX_BUFFERS];
    /// The rings and pools are claimed by a [`Nic`].
    static CLAIMED: AtomicBool = AtomicBool::new(false);

    type Path = Text<128>;

    fn path(args: core::fmt::Arguments<'_>) -> Result<Path, NetError> {
        text(args).ok_or(NetError::BadNode("path (too long)"))
    }

    /// Reads a node; `Ok(None)` if it does not exist.
    fn read_opt(p: &str, out: &mut [u8]) -> Result<Option<usize>, NetError> {
        match store_read(p, out) {
            Ok(n) => Ok(Some(n)),
            Err(StoreError::Refused(_)) => Ok(None),
            Err(StoreError::NoStore) => Err(NetError::NoStore),
            Err(e) => Err(NetError::Store(e)),
        }
    }

    /// Undoes a failed connect: ends every grant it may have made (a grant the back-end
    /// still maps cannot be ended and stays), closes the port, and frees the pages for
    /// another try.
    fn release(port: Option<u32>) {
        let refs = [TX_RING_REF, RX_RING_REF]
            .into_iter()
            .chain((0..TX_PAGES).map(tx_ref))
            .chain((0..RX_BUFFERS).map(rx_ref));
        for gref in refs {
            let _ = grants::end_access(gref);
        }
        if let Some(p) = port {
            let _ = evtchn_close(p);
        }
        CLAIMED.store(false, Ordering::Relaxed);
    }

    /// A connected virtual NIC. One per guest (the buffers are static).
    #[derive(Debug)]
    pub struct Nic {
        handle: u32,
        info: NicInfo,
        port: u32,
        dp: Datapath<'static, &'static AtomicPage, AtomicPage>,
    }

    impl Nic {
        /// Connects to vif `handle` (see the [module docs](super)).
        ///
        /// # Errors
        /// [`NetError`]: [`NetError::NoNic`] when the domain has no such NIC.
        pub fn connect(handle: u32) -> Result<Nic, NetError> {
            if !events::initialised() {
                return Err(NetError::NoStore);
            }
            let fe = path(format_args!("device/vif/{handle}"))?;
            let mut raw = [0u8; 128];
            let n = read_opt(
                path(format_args!("{}/backend", fe.as_str()))?.as_str(),
                &mut raw,
            )?
            .ok_or(NetError::NoNic(handle))?;
            let be = core::str::from_utf8(&raw[..n]).map_err(|_| NetError::BadNode("backend"))?;
            let be: Path = path(format_args!("{be}"))?;
            let (mut mac, mut copy, mut ip) = ([0u8; 32], [0u8; 32], [0u8; 32]);
            let nm = read_opt(
                path(format_args!("{}/mac", fe.as_str()))?.as_str(),
                &mut mac,
            )?
            .ok_or(NetError::BadNode("mac"))?;
            let nc = read_opt(
                path(format_args!("{}/feature-rx-copy", be.as_str()))?.as_str(),
                &mut copy,
            )?;
            let ni = read_opt(path(format_args!("{}/ip", be.as_str()))?.as_str(), &mut ip)?;
            let info = NicInfo::parse(&mac[..nm], nc.map(|n| &copy[..n]), ni.map(|n| &ip[..n]))?;

            if CLAIMED.swap(true, Ordering::Relaxed) {
                return Err(NetError::Busy);
            }
            let mut port = None;
            let result = Self::connect_claimed(handle, &fe, &be, info, &mut port);
            if result.is_err() {
                release(port);
            }
            result
        }

        /// The part of [`Self::connect`] that runs with the pages claimed; the port it
        /// allocates is left in `port`, so a failure can be undone.
        fn connect_claimed(
            handle: u32,
            fe: &Path,
            be: &Path,
            info: NicInfo,
            port: &mut Option<u32>,
        ) -> Result<Nic, NetError> {
            grants::init().map_err(NetError::Hypercall)?;
            let dom0 = DomId::DOM0.0;
            // The back-end writes the rings and rx buffers; it only reads tx buffers.
            let grant = |gref, page: &AtomicPage, readonly| {
                grants::grant_access(gref, dom0, page.gfn(), readonly).map_err(NetError::Grant)
            };
            grant(TX_RING_REF, &TX_RING, false)?;
            grant(RX_RING_REF, &RX_RING, false)?;
            for (p, page) in TX_POOL.iter().enumerate() {
                grant(tx_ref(p), page, true)?;
            }
            for (i, page) in RX_POOL.iter().enumerate() {
                grant(rx_ref(i), page, false)?;
            }
            let front = NetFront::init(&TX_RING, &RX_RING).map_err(|e| NetError::Ring(e.into()))?;
            let dp = Datapath::new(front, &TX_POOL, &RX_POOL)?;
            let evtchn = evtchn_alloc_unbound(DomId::DOM0).map_err(NetError::Hypercall)?;
            *port = Some(evtchn);

            let write = |leaf: &str, value: core::fmt::Arguments<'_>| -> Result<(), NetError> {
                let v: Text<32> = text(value).ok_or(NetError::BadNode("value"))?;
                store_write(
                    path(format_args!("{}/{leaf}", fe.as_str()))?.as_str(),
                    v.as_str().as_bytes(),
                )
                .map_err(NetError::Store)
            };
            write("tx-ring-ref", format_args!("{TX_RING_REF}"))?;
            write("rx-ring-ref", format_args!("{RX_RING_REF}"))?;
            write("event-channel", format_args!("{evtchn}"))?;
            write("request-rx-copy", format_args!("1"))?;
            // Linux's netback insists on it; we always signal after posting rx buffers.
            write("feature-rx-notify", format_args!("1"))?;
            write(
                "state",
                format_args!("{}", XenbusState::Initialised.as_u32()),
            )?;
            let state_path = path(format_args!("{}/state", be.as_str()))?;
            let connected =
                pvdev::wait_connected(state_path.as_str(), "netfront", CONNECT_TIMEOUT_NS)
                    .map_err(NetError::Backend);
            if let Err(e) = connected {
                // Tell the back-end this front-end gave up, so it unmaps what it mapped.
                let _ = write("state", format_args!("{}", XenbusState::Closed.as_u32()));
                return Err(e);
            }
            write("state", format_args!("{}", XenbusState::Connected.as_u32()))?;

            let mut nic = Nic {
                handle,
                info,
                port: evtchn,
                dp,
            };
            nic.dp.post_rx_all()?;
            nic.kick();
            Ok(nic)
        }

        /// Sends an event if published requests need one.
        fn kick(&mut self) {
            if self.dp.take_notify() {
                let _ = evtchn_send(self.port);
            }
        }

        /// The vif's handle.
        pub fn handle(&self) -> u32 {
            self.handle
        }

        /// The NIC's MAC address.
        pub fn mac(&self) -> Mac {
            self.info.mac
        }

        /// The back-end's `ip` hint, if it gave one.
        pub fn ip_hint(&self) -> Option<Ipv4Cidr> {
            self.info.ip
        }

        /// The event channel shared with the back-end.
        pub fn port(&self) -> u32 {
            self.port
        }

        /// The datapath's counters.
        pub fn stats(&self) -> NetStats {
            self.dp.stats()
        }

        /// Sends one Ethernet frame (see [`Datapath::send`]).
        ///
        /// # Errors
        /// [`NetError::FrameSize`], [`NetError::Full`], or the NIC's error once broken.
        pub fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
            let r = self.dp.send(frame);
            self.kick();
            r
        }

        /// Whether [`Self::send`] has a free tx buffer now.
        ///
        /// # Errors
        /// The NIC's error once broken.
        pub fn tx_available(&mut self) -> Result<bool, NetError> {
            self.dp.tx_available()
        }

        /// The next received frame, copied into `buf` (see [`Datapath::recv`]).
        ///
        /// # Errors
        /// The NIC's error once broken.
        pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
            let r = self.dp.recv(buf);
            self.kick();
            r
        }

        /// Reclaims, reposts and re-arms the events (see [`Datapath::poll`]); `true`
        /// when responses are waiting.
        ///
        /// # Errors
        /// The NIC's error once broken.
        pub fn poll(&mut self) -> Result<bool, NetError> {
            let r = self.dp.poll();
            self.kick();
            r
        }
    }
}

#[cfg(test)]
mod tests;
