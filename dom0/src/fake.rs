//! A fake microvisor for host tests: the control ABI of `shared_abi::control`, answered
//! from a table in memory, plus switches that make it misbehave.
//!
//! The lifecycle operations follow the ABI's rules: `DomainPause` of a paused domain and
//! `DomainUnpause` of one that is not paused are `EBUSY`, either on a domain that shut
//! down or crashed is `EINVAL`, domain 0 is `EPERM`, an unknown domain `ESRCH`;
//! `DomainDestroy` works in every state and returns the domain's memory to the free pool.
//! An unpaused domain is `running`. [`FakeMicrovisor::set_lag`] delays when an accepted
//! pause or destroy shows in `DomainInfo`/`DomainList`, as a microvisor that stops the
//! domain at its next exit would.
//!
//! Building domains follows "Building a domain" of the ABI: `DomainCreate` checks its
//! request (`EINVAL`: vCPUs not 1, memory outside the bounds, an empty or non-ASCII name,
//! reserved fields, a non-zero argument or a short buffer; `EEXIST`: the name is taken;
//! `ENOMEM`: more than the free memory; `ENOSPC`: no domain id left below
//! [`FakeMicrovisor::set_domid_limit`]) and makes a paused domain that has never run,
//! with the next free domid after the one the last create got (domids go round, as in
//! the microvisor: a destroyed domain's id is not handed out again at once),
//! taking its memory from the free pool; `DomainSetEntry` records the entry state
//! (`EBUSY` once the domain has run, i.e. after an unpause; `EINVAL` for addresses not
//! below its memory). Guest RAM is kept (sparsely) per domain, reachable through the
//! foreign window: [`Microvisor::map_window`] maps slots, and writes through it land in
//! the frames the slots hold, which tests read back with [`FakeMicrovisor::read_guest`].
//! As in the microvisor, a frame that is still mapped when its domain is destroyed stays
//! allocated (out of the free memory) until its last slot is unmapped.
//! [`FakeMicrovisor::fail_nth`] makes one particular call fail.
//!
//! Event channels follow "Event channels of domain 0" of the ABI: `EvtchnAllocUnbound`
//! gives a DomU port (the lowest free one) unbound for domain 0, `EvtchnBindInterdomain`
//! connects a new domain 0 port to it (`EINVAL` unless it is such an unbound port),
//! `EvtchnSend` counts a notification for the DomU port ([`FakeMicrovisor::notified`]),
//! `EvtchnClose` frees the domain 0 port and leaves the DomU port unbound again, and
//! `EvtchnTakePending` hands out and clears the pending domain 0 ports, ascending. When a
//! DomU sends ([`FakeMicrovisor::guest_send`]) on a port bound to domain 0, that port
//! becomes pending and `EVENT_EVTCHN` is raised. Destroying a DomU frees its ports; domain
//! 0's ports to it stay allocated, unbound, until closed. `DomainSetParam` keeps the four
//! parameters the ABI names ([`FakeMicrovisor::param`]). Guest pages are shared memory
//! ([`pv_drivers::VecMem`]): [`Microvisor::map_page`] maps a filled slot's frame, which
//! stays alive while mapped, also after its domain is gone, and
//! [`FakeMicrovisor::console_write`] plays a guest console front-end on the page named by
//! `CONSOLE_PFN`.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pv_drivers::console::ConsoleFront;
use pv_drivers::{MemError, SharedMem, VecMem};
use shared_abi::control::{
    CONTROL_VERSION, ControlOp, DOMAIN_FLAG_PRIVILEGED, DomainCreateRequest, DomainInfo,
    DomainParam, DomainState, EVENT_EVTCHN, ForeignMapRequest, HostInfo, MAX_BUFFER,
    MAX_DOMAIN_MEM_MIB, MIN_DOMAIN_MEM_MIB, VcpuEntry, fill_fixed_str, fixed_str,
};
use shared_abi::control::{GRANT_MAP_READONLY, GrantCopyPtr, GrantCopySegment, GrantMapRequest};
use shared_abi::event_channel::MAX_PORTS;
use shared_abi::grant_table::{
    ENTRIES_PER_FRAME, GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTST_BAD_COPY_ARG,
    GNTST_BAD_DOMAIN, GNTST_BAD_GNTREF, GNTST_BAD_PAGE, GNTST_GENERAL_ERROR, GNTST_OKAY,
    GNTST_PERMISSION_DENIED, GNTTAB_MAX_FRAMES, GRANT_ENTRY_SIZE, GTF_PERMIT_ACCESS, GTF_READING,
    GTF_READONLY, GTF_SUB_PAGE, GTF_TYPE_MASK, GTF_WRITING,
};
use shared_abi::hvm::{
    HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::microvisor::{Microvisor, PageMap, WindowMap};

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENOMEM: i32 = 12;
const EFAULT: i32 = 14;
const EBUSY: i32 = 16;
const EEXIST: i32 = 17;
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;
const ENOSYS: i32 = 38;
const EAGAIN: i32 = 11;
const ERANGE: i32 = 34;

/// How the fake misbehaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    #[default]
    None,
    /// Fail every call with this errno.
    Errno(i32),
    /// Claim one more `DomainList` record than fits the buffer.
    ListOverflow,
    /// Return every `DomainList` page starting from the first domain again.
    ListRepeats,
    /// Return a `DomainInfo` record for a different domain than asked.
    WrongDomain,
}

/// Guest-physical base of the fake's foreign window (the microvisor's).
pub const FAKE_WINDOW_GPA: u64 = 0x10_0000_0000;
/// Slots in the fake's foreign window.
pub const FAKE_WINDOW_PAGES: u64 = 4096;
/// The "operation" [`FakeMicrovisor::fail_nth`] uses for `mmap` of the window
/// ([`Microvisor::map_window`]).
pub const OP_MMAP: u64 = u64::MAX;
/// The "operation" [`FakeMicrovisor::fail_nth`] uses for `mmap` of one shared page
/// ([`Microvisor::map_page`]).
pub const OP_MAP_PAGE: u64 = u64::MAX - 1;

/// A filled foreign-window slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotEntry {
    domid: u32,
    gfn: u64,
    /// The domain was destroyed while the slot held its frame.
    orphan: bool,
    /// A `GrantMap` mapping: the reference and whether it is writable.
    grant: Option<(u32, bool)>,
}

/// What the fake keeps of a domain beyond its record: whether it has run, its entry
/// state, its HVM parameters, and the RAM pages touched so far (absent pages are zero).
#[derive(Debug, Default)]
struct Guest {
    fresh: bool,
    entry: Option<VcpuEntry>,
    params: BTreeMap<u32, u64>,
    pages: BTreeMap<u64, Arc<VecMem>>,
    /// Grant table frames placed so far (table frame `i` is RAM frame `grant_frames[i]`).
    grant_frames: Vec<u64>,
    /// Entries in use by domain 0, by reference.
    active: BTreeMap<u32, ActiveGrant>,
}

/// A grant entry domain 0 uses: the frame copied at the first pin, and the pins.
#[derive(Debug, Clone, Copy)]
struct ActiveGrant {
    gfn: u64,
    readers: u32,
    writers: u32,
}

impl Guest {
    /// The page `gfn`, made (zeroed) on first use.
    fn page(&mut self, gfn: u64) -> Arc<VecMem> {
        Arc::clone(
            self.pages
                .entry(gfn)
                .or_insert_with(|| Arc::new(VecMem::new(4096))),
        )
    }
}

/// A DomU port that domain 0 may bind or has bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DomuPort {
    /// Allocated by `EvtchnAllocUnbound`, waiting for domain 0.
    Unbound,
    /// Connected to this domain 0 port.
    Bound(u32),
}

/// The event channels between domain 0 and the DomUs.
#[derive(Debug, Default)]
struct Channels {
    /// (domid, port) of DomU ports made for domain 0.
    domu: BTreeMap<(u32, u32), DomuPort>,
    /// Domain 0 ports and their peer (domid, port); `None` once the peer is gone.
    dom0: BTreeMap<u32, Option<(u32, u32)>>,
    /// Pending domain 0 ports.
    pending: BTreeSet<u32>,
    /// Notifications sent to each DomU port.
    sent: BTreeMap<(u32, u32), u64>,
}

/// The lowest port in `1..MAX_PORTS` that `used` does not contain.
fn free_port(used: impl Fn(u32) -> bool) -> Result<u32, i32> {
    (1..MAX_PORTS).find(|&p| !used(p)).ok_or(ENOSPC)
}

/// A call [`FakeMicrovisor::fail_nth`] will fail.
#[derive(Debug, Clone, Copy)]
struct Injected {
    op: u64,
    /// Matching calls to let through first.
    skip: u32,
    errno: i32,
}

/// A microvisor in memory, including the foreign window's slots and the pending event
/// bits, with the errors `shared_abi::control` documents.
#[derive(Debug)]
pub struct FakeMicrovisor {
    host: HostInfo,
    domains: Mutex<BTreeMap<u32, DomainInfo>>,
    /// Filled foreign-window slots.
    slots: Mutex<BTreeMap<u64, SlotEntry>>,
    /// Guest state and RAM by domid.
    guests: Mutex<BTreeMap<u32, Guest>>,
    /// Event channels with domain 0.
    channels: Mutex<Channels>,
    /// Pages mapped by [`Microvisor::map_page`] and not dropped yet.
    page_maps: Arc<AtomicUsize>,
    /// Memory of domains created by `DomainCreate`, KiB, taken from the free memory.
    used_kib: AtomicU64,
    /// Largest domid `DomainCreate` hands out.
    domid_limit: AtomicU32,
    /// The domid the last `DomainCreate` handed out (0: none yet).
    last_domid: AtomicU32,
    /// Calls to fail.
    injected: Mutex<Vec<Injected>>,
    events: AtomicU64,
    fault: Mutex<Fault>,
    calls: AtomicUsize,
    /// Memory of destroyed domains, KiB, added to the host's free memory.
    freed_kib: AtomicU64,
    /// Reads of the domain table an accepted pause or destroy waits before it shows.
    lag: AtomicU32,
    /// Accepted actions not shown yet: domid -> (action, reads left).
    pending: Mutex<BTreeMap<u32, (Pending, u32)>>,
}

/// An accepted lifecycle action that does not show yet ([`FakeMicrovisor::set_lag`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Pause,
    Destroy,
}

/// A raw domain record, as the microvisor would write it.
#[must_use]
pub fn domain_record(domid: u32, name: &str, state: DomainState, mem_kib: u64) -> DomainInfo {
    let mut d = DomainInfo {
        domid,
        state: state as u32,
        flags: if domid == 0 {
            DOMAIN_FLAG_PRIVILEGED
        } else {
            0
        },
        vcpus: 1,
        pcpu: if domid == 0 { 0 } else { 1 },
        shutdown_reason: 0,
        mem_kib,
        cpu_time_ns: u64::from(domid) * 1_500_000_000,
        ..DomainInfo::default()
    };
    fill_fixed_str(&mut d.name, name);
    d
}

impl FakeMicrovisor {
    /// A two-pCPU host running `Domain-0` (1 GiB) and two guests, `hello1` and `hello2`.
    #[must_use]
    pub fn new() -> Self {
        let fake = Self::empty();
        fake.insert(domain_record(
            0,
            "Domain-0",
            DomainState::Running,
            1024 * 1024,
        ));
        fake.insert(domain_record(1, "hello1", DomainState::Blocked, 16 * 1024));
        fake.insert(domain_record(2, "hello2", DomainState::Running, 32 * 1024));
        fake
    }

    /// A host without domains.
    #[must_use]
    pub fn empty() -> Self {
        let mut host = HostInfo {
            control_version: u32::try_from(CONTROL_VERSION).unwrap_or(u32::MAX),
            pcpus: 2,
            dom0_pcpu: 0,
            mem_total_kib: 4 * 1024 * 1024,
            mem_free_kib: 3 * 1024 * 1024,
            tsc_khz: 2_000_000,
            uptime_ns: 12_345_000_000,
            foreign_window_gpa: FAKE_WINDOW_GPA,
            foreign_window_pages: FAKE_WINDOW_PAGES,
            ..HostInfo::default()
        };
        fill_fixed_str(&mut host.version, "0.1.0-fake");
        Self {
            host,
            domains: Mutex::new(BTreeMap::new()),
            slots: Mutex::new(BTreeMap::new()),
            guests: Mutex::new(BTreeMap::new()),
            channels: Mutex::new(Channels::default()),
            page_maps: Arc::new(AtomicUsize::new(0)),
            used_kib: AtomicU64::new(0),
            domid_limit: AtomicU32::new(0x7FEF),
            last_domid: AtomicU32::new(0),
            injected: Mutex::new(Vec::new()),
            events: AtomicU64::new(0),
            fault: Mutex::new(Fault::None),
            calls: AtomicUsize::new(0),
            freed_kib: AtomicU64::new(0),
            lag: AtomicU32::new(0),
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    /// From now on, an accepted pause or destroy shows only after `reads` further
    /// `DomainInfo`/`DomainList` calls; `u32::MAX` means never. 0 (the default) shows it
    /// at once.
    pub fn set_lag(&self, reads: u32) {
        self.lag.store(reads, Ordering::Relaxed);
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, (Pending, u32)>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One read of the domain table: counts down the pending actions and applies those
    /// that are due.
    fn tick(&self) {
        let mut pending = self.lock_pending();
        let mut due = Vec::new();
        for (&domid, (action, left)) in pending.iter_mut() {
            if *left == u32::MAX {
                continue;
            }
            *left = left.saturating_sub(1);
            if *left == 0 {
                due.push((domid, *action));
            }
        }
        for (domid, action) in due {
            pending.remove(&domid);
            self.apply(domid, action);
        }
    }

    fn apply(&self, domid: u32, action: Pending) {
        match action {
            Pending::Pause => {
                if let Some(d) = self.lock_domains().get_mut(&domid) {
                    d.state = DomainState::Paused as u32;
                }
            }
            Pending::Destroy => {
                // Lock order: slots, domains, guests.
                let mut slots = self.lock_slots();
                let mut domains = self.lock_domains();
                let Some(d) = domains.remove(&domid) else {
                    return;
                };
                // Frames still mapped stay allocated until their last slot goes.
                let mut held: Vec<u64> = Vec::new();
                for e in slots.values_mut() {
                    if e.domid == domid && !e.orphan {
                        e.orphan = true;
                        if !held.contains(&e.gfn) {
                            held.push(e.gfn);
                        }
                    }
                }
                let held_kib = held.len() as u64 * 4;
                self.freed_kib
                    .fetch_add(d.mem_kib.saturating_sub(held_kib), Ordering::Relaxed);
                self.lock_guests().remove(&domid);
                let mut ch = self.lock_channels();
                ch.domu.retain(|&(d, _), _| d != domid);
                ch.sent.retain(|&(d, _), _| d != domid);
                for peer in ch.dom0.values_mut() {
                    if peer.is_some_and(|(d, _)| d == domid) {
                        *peer = None;
                    }
                }
            }
        }
    }

    /// Accepts `action` on `domid`: applies it now, or later with a lag.
    fn accept(&self, domid: u32, action: Pending) {
        match self.lag.load(Ordering::Relaxed) {
            0 => self.apply(domid, action),
            reads => {
                self.lock_pending().insert(domid, (action, reads));
            }
        }
    }

    /// `DomainPause`, `DomainUnpause` and `DomainDestroy`, with the ABI's errors.
    fn lifecycle(&self, op: ControlOp, arg: u64) -> Result<u64, i32> {
        let domid = u32::try_from(arg).map_err(|_| ESRCH)?;
        let state = {
            let domains = self.lock_domains();
            let d = domains.get(&domid).ok_or(ESRCH)?;
            DomainState::from_u32(d.state)
        };
        if domid == 0 {
            return Err(EPERM);
        }
        let pending = self.lock_pending().get(&domid).map(|&(action, _)| action);
        let ended = matches!(state, Some(DomainState::Shutdown | DomainState::Crashed));
        let paused = state == Some(DomainState::Paused) || pending == Some(Pending::Pause);
        match op {
            ControlOp::DomainPause if ended => Err(EINVAL),
            ControlOp::DomainPause if paused => Err(EBUSY),
            ControlOp::DomainPause => {
                self.accept(domid, Pending::Pause);
                Ok(0)
            }
            ControlOp::DomainUnpause if ended => Err(EINVAL),
            ControlOp::DomainUnpause if !paused => Err(EBUSY),
            ControlOp::DomainUnpause => {
                self.lock_pending().remove(&domid);
                if let Some(d) = self.lock_domains().get_mut(&domid) {
                    d.state = DomainState::Running as u32;
                }
                self.lock_guests().entry(domid).or_default().fresh = false;
                Ok(0)
            }
            _ => {
                self.lock_pending().remove(&domid);
                self.accept(domid, Pending::Destroy);
                Ok(0)
            }
        }
    }

    /// Test hook: domain `domid` shuts itself down with `reason` (a
    /// `shared_abi::sched::ShutdownReason` number), as after `SCHEDOP_shutdown`, and the
    /// microvisor raises `EVENT_DOMAIN_STATE`. `false` if there is no such domain.
    pub fn shut_down(&self, domid: u32, reason: u32) -> bool {
        self.end(domid, DomainState::Shutdown, reason)
    }

    /// Test hook: domain `domid` crashes (state `crashed`), and the microvisor raises
    /// `EVENT_DOMAIN_STATE`. `false` if there is no such domain.
    pub fn crash(&self, domid: u32) -> bool {
        self.end(domid, DomainState::Crashed, 0)
    }

    fn end(&self, domid: u32, state: DomainState, reason: u32) -> bool {
        let found = match self.lock_domains().get_mut(&domid) {
            Some(d) => {
                d.state = state as u32;
                d.shutdown_reason = reason;
                true
            }
            None => false,
        };
        if found {
            self.raise(shared_abi::control::EVENT_DOMAIN_STATE);
        }
        found
    }

    /// Takes the pending event bits, as `EventsTake` does (0 if none).
    pub fn take_events(&self) -> u64 {
        self.events.swap(0, Ordering::AcqRel) & !(1 << 63)
    }

    /// Raises event bits, as the microvisor does (`EventsTake` returns and clears them).
    pub fn raise(&self, bits: u64) {
        self.events.fetch_or(bits, Ordering::AcqRel);
    }

    /// The filled foreign-window slots: (slot, domid, gfn), ascending by slot.
    #[must_use]
    pub fn foreign_slots(&self) -> Vec<(u64, u32, u64)> {
        self.lock_slots()
            .iter()
            .map(|(&slot, e)| (slot, e.domid, e.gfn))
            .collect()
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, SlotEntry>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_guests(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Guest>> {
        self.guests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_channels(&self) -> std::sync::MutexGuard<'_, Channels> {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The DomU `domid`, if it exists (`ESRCH` for domain 0 and unknown ids).
    fn domu(&self, arg: u64) -> Result<(u32, DomainInfo), i32> {
        let domid = u32::try_from(arg).map_err(|_| ESRCH)?;
        if domid == 0 {
            return Err(ESRCH);
        }
        let d = *self.lock_domains().get(&domid).ok_or(ESRCH)?;
        Ok((domid, d))
    }

    /// `EvtchnAllocUnbound`.
    fn evtchn_alloc_unbound(&self, arg: u64) -> Result<u64, i32> {
        let (domid, _) = self.domu(arg)?;
        let mut ch = self.lock_channels();
        let port = free_port(|p| ch.domu.contains_key(&(domid, p)))?;
        ch.domu.insert((domid, port), DomuPort::Unbound);
        Ok(u64::from(port))
    }

    /// `EvtchnBindInterdomain`.
    fn evtchn_bind(&self, arg: u64) -> Result<u64, i32> {
        let (domid, _) = self.domu(arg >> 32)?;
        let remote = u32::try_from(arg & 0xffff_ffff).map_err(|_| EINVAL)?;
        let mut ch = self.lock_channels();
        if ch.domu.get(&(domid, remote)) != Some(&DomuPort::Unbound) {
            return Err(EINVAL);
        }
        let local = free_port(|p| ch.dom0.contains_key(&p))?;
        ch.dom0.insert(local, Some((domid, remote)));
        ch.domu.insert((domid, remote), DomuPort::Bound(local));
        Ok(u64::from(local))
    }

    fn dom0_port(arg: u64, ch: &Channels) -> Result<u32, i32> {
        u32::try_from(arg)
            .ok()
            .filter(|p| ch.dom0.contains_key(p))
            .ok_or(EINVAL)
    }

    /// `EvtchnSend`: counted for the DomU port; dropped if the peer is gone.
    fn evtchn_send(&self, arg: u64) -> Result<u64, i32> {
        let mut ch = self.lock_channels();
        let port = Self::dom0_port(arg, &ch)?;
        if let Some(peer) = ch.dom0.get(&port).copied().flatten() {
            *ch.sent.entry(peer).or_insert(0) += 1;
        }
        Ok(0)
    }

    /// `EvtchnClose`: the DomU port becomes unbound again.
    fn evtchn_close(&self, arg: u64) -> Result<u64, i32> {
        let mut ch = self.lock_channels();
        let port = Self::dom0_port(arg, &ch)?;
        if let Some(peer) = ch.dom0.remove(&port).flatten()
            && let Some(p) = ch.domu.get_mut(&peer)
        {
            *p = DomuPort::Unbound;
        }
        ch.pending.remove(&port);
        Ok(0)
    }

    /// `EvtchnTakePending`.
    fn evtchn_take_pending(&self, arg: u64, buf: &mut [u8]) -> Result<u64, i32> {
        if arg != 0 {
            return Err(EINVAL);
        }
        if buf.len() < 4 {
            return Err(ENOSPC);
        }
        let mut ch = self.lock_channels();
        let mut n = 0u64;
        for slot in buf.chunks_exact_mut(4) {
            let Some(port) = ch.pending.pop_first() else {
                break;
            };
            slot.copy_from_slice(&port.to_le_bytes());
            n += 1;
        }
        Ok(n)
    }

    /// `DomainSetParam`.
    fn set_param(&self, arg: u64, buf: &[u8]) -> Result<u64, i32> {
        let (domid, d) = self.domu(arg)?;
        let raw = buf.get(..size_of::<DomainParam>()).ok_or(EINVAL)?;
        let p = DomainParam::read_from_bytes(raw).map_err(|_| EINVAL)?;
        if p.reserved != 0 {
            return Err(EINVAL);
        }
        let ok = match p.index {
            HVM_PARAM_STORE_PFN | HVM_PARAM_CONSOLE_PFN => p
                .value
                .checked_mul(4096)
                .is_some_and(|gpa| gpa < d.mem_kib * 1024),
            HVM_PARAM_STORE_EVTCHN | HVM_PARAM_CONSOLE_EVTCHN => {
                (1..u64::from(MAX_PORTS)).contains(&p.value)
            }
            _ => false,
        };
        if !ok {
            return Err(EINVAL);
        }
        self.lock_guests()
            .entry(domid)
            .or_default()
            .params
            .insert(p.index, p.value);
        Ok(0)
    }

    /// Test hook: DomU `domid` sends on its port `port`, as with `EVTCHNOP_send`: if the
    /// port is bound to domain 0, that port becomes pending and `EVENT_EVTCHN` is raised.
    /// Returns whether it reached domain 0.
    pub fn guest_send(&self, domid: u32, port: u32) -> bool {
        let mut ch = self.lock_channels();
        match ch.domu.get(&(domid, port)) {
            Some(&DomuPort::Bound(local)) => {
                ch.pending.insert(local);
                drop(ch);
                self.raise(EVENT_EVTCHN);
                true
            }
            _ => false,
        }
    }

    /// HVM parameter `index` of `domid`, as `DomainSetParam` set it.
    #[must_use]
    pub fn param(&self, domid: u32, index: u32) -> Option<u64> {
        self.lock_guests()
            .get(&domid)
            .and_then(|g| g.params.get(&index).copied())
    }

    /// How many times domain 0 signalled DomU `domid`'s port `port`.
    #[must_use]
    pub fn notified(&self, domid: u32, port: u32) -> u64 {
        self.lock_channels()
            .sent
            .get(&(domid, port))
            .copied()
            .unwrap_or(0)
    }

    /// Domain 0's allocated ports and their peers (`None` once the DomU is gone).
    #[must_use]
    pub fn dom0_ports(&self) -> Vec<(u32, Option<(u32, u32)>)> {
        self.lock_channels()
            .dom0
            .iter()
            .map(|(&p, &peer)| (p, peer))
            .collect()
    }

    /// DomU `domid`'s ports made for domain 0, and whether each is bound.
    #[must_use]
    pub fn domu_ports(&self, domid: u32) -> Vec<(u32, bool)> {
        self.lock_channels()
            .domu
            .iter()
            .filter(|((d, _), _)| *d == domid)
            .map(|(&(_, p), &s)| (p, s != DomuPort::Unbound))
            .collect()
    }

    /// Pages mapped with [`Microvisor::map_page`] and not dropped yet.
    #[must_use]
    pub fn page_maps(&self) -> usize {
        self.page_maps.load(Ordering::Relaxed)
    }

    /// The shared page `gfn` of DomU `domid` (made zeroed on first use); `None` if there
    /// is no such domain or the frame is not in its RAM.
    #[must_use]
    pub fn guest_page(&self, domid: u32, gfn: u64) -> Option<Arc<VecMem>> {
        let mem = self.lock_domains().get(&domid)?.mem_kib * 1024;
        if gfn.checked_mul(4096)? >= mem {
            return None;
        }
        Some(self.lock_guests().entry(domid).or_default().page(gfn))
    }

    /// The console page and port of `domid`, from its `CONSOLE_PFN`/`CONSOLE_EVTCHN`.
    fn console_of(&self, domid: u32) -> Option<(ConsoleFront<Arc<VecMem>>, u32)> {
        let pfn = self.param(domid, HVM_PARAM_CONSOLE_PFN)?;
        let port = u32::try_from(self.param(domid, HVM_PARAM_CONSOLE_EVTCHN)?).ok()?;
        let front = ConsoleFront::new(self.guest_page(domid, pfn)?).ok()?;
        Some((front, port))
    }

    /// Test hook: DomU `domid`'s console front-end writes as much of `bytes` as fits in
    /// the output ring and, if it wrote any, signals its console port. Returns how many
    /// bytes it wrote; `None` if the domain has no console parameters or its ring is
    /// broken.
    #[must_use]
    pub fn console_write(&self, domid: u32, bytes: &[u8]) -> Option<usize> {
        let (mut front, port) = self.console_of(domid)?;
        let n = front.write(bytes).ok()?;
        if n > 0 {
            self.guest_send(domid, port);
        }
        Some(n)
    }

    /// Test hook: DomU `domid`'s console front-end takes the input waiting in its ring
    /// (signalling its port if there was any, as a front-end does to make room); `None`
    /// without a console.
    #[must_use]
    pub fn console_read_input(&self, domid: u32) -> Option<Vec<u8>> {
        let (mut front, port) = self.console_of(domid)?;
        let mut buf = vec![0u8; 2048];
        let n = front.read(&mut buf).ok()?;
        buf.truncate(n);
        if n > 0 {
            self.guest_send(domid, port);
        }
        Some(buf)
    }

    /// Makes the `nth` (1-based) next call of `op` (a `ControlOp` number, or [`OP_MMAP`])
    /// fail with `errno`, once. Several can be pending.
    pub fn fail_nth(&self, op: u64, nth: u32, errno: i32) {
        self.injected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Injected {
                op,
                skip: nth.saturating_sub(1),
                errno,
            });
    }

    /// Whether an injected failure applies to this call of `op` (counting it down).
    fn injected_failure(&self, op: u64) -> Option<i32> {
        let mut list = self
            .injected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut fire = None;
        list.retain_mut(|i| {
            if i.op != op || fire.is_some() {
                return true;
            }
            if i.skip == 0 {
                fire = Some(i.errno);
                false
            } else {
                i.skip -= 1;
                true
            }
        });
        fire
    }

    /// From now on `DomainCreate` hands out domain ids up to `limit` only (`ENOSPC`
    /// beyond).
    pub fn set_domid_limit(&self, limit: u32) {
        self.domid_limit.store(limit, Ordering::Relaxed);
    }

    /// Free memory as `HostInfo` reports it, KiB.
    #[must_use]
    pub fn mem_free_kib(&self) -> u64 {
        self.host
            .mem_free_kib
            .saturating_add(self.freed_kib.load(Ordering::Relaxed))
            .saturating_sub(self.used_kib.load(Ordering::Relaxed))
    }

    /// `len` bytes of domain `domid`'s RAM at guest-physical `gpa` (unwritten bytes are
    /// zero); `None` if there is no such domain or the range is not inside its RAM.
    #[must_use]
    pub fn read_guest(&self, domid: u32, gpa: u64, len: usize) -> Option<Vec<u8>> {
        let mem = self.lock_domains().get(&domid)?.mem_kib * 1024;
        let end = gpa.checked_add(len as u64)?;
        if end > mem {
            return None;
        }
        let guests = self.lock_guests();
        let pages = guests.get(&domid).map(|g| &g.pages);
        let mut out = Vec::with_capacity(len);
        let mut at = gpa;
        while at < end {
            let offset = usize::try_from(at % 4096).ok()?;
            let n = usize::try_from((end - at).min(4096 - at % 4096)).ok()?;
            match pages.and_then(|p| p.get(&(at / 4096))) {
                Some(page) => {
                    let mut chunk = vec![0u8; n];
                    page.read_bytes(offset, &mut chunk).ok()?;
                    out.extend_from_slice(&chunk);
                }
                None => out.resize(out.len() + n, 0),
            }
            at += n as u64;
        }
        Some(out)
    }

    /// The entry state `DomainSetEntry` recorded for `domid`.
    #[must_use]
    pub fn entry_of(&self, domid: u32) -> Option<VcpuEntry> {
        self.lock_guests().get(&domid).and_then(|g| g.entry)
    }

    /// Writes `bytes` into domain `domid`'s RAM at `gpa` directly (for tests that need a
    /// domain's memory to hold something).
    pub fn write_guest(&self, domid: u32, gpa: u64, bytes: &[u8]) {
        let mut guests = self.lock_guests();
        let g = guests.entry(domid).or_default();
        let mut at = gpa;
        let mut rest = bytes;
        while !rest.is_empty() {
            let offset = usize::try_from(at % 4096).unwrap_or(0);
            let (now, later) = rest.split_at(rest.len().min(4096 - offset));
            let _ = g.page(at / 4096).write_bytes(offset, now);
            at += now.len() as u64;
            rest = later;
        }
    }

    /// `DomainCreate`, with the ABI's checks in the microvisor's order.
    fn domain_create(&self, arg: u64, buf: &[u8]) -> Result<u64, i32> {
        if arg != 0 {
            return Err(EINVAL);
        }
        let raw = buf.get(..size_of::<DomainCreateRequest>()).ok_or(EINVAL)?;
        let req = DomainCreateRequest::read_from_bytes(raw).map_err(|_| EINVAL)?;
        let name = fixed_str(&req.name)
            .filter(|n| !n.is_empty())
            .ok_or(EINVAL)?;
        if req.vcpus != 1
            || req.reserved != [0, 0]
            || !(MIN_DOMAIN_MEM_MIB..=MAX_DOMAIN_MEM_MIB).contains(&req.mem_mib)
        {
            return Err(EINVAL);
        }
        let mut domains = self.lock_domains();
        if domains.values().any(|d| fixed_str(&d.name) == Some(name)) {
            return Err(EEXIST);
        }
        let mem_kib = u64::from(req.mem_mib) * 1024;
        if mem_kib > self.mem_free_kib() {
            return Err(ENOMEM);
        }
        let limit = self.domid_limit.load(Ordering::Relaxed);
        let last = self.last_domid.load(Ordering::Relaxed);
        let domid = (0..limit)
            .map(|i| 1 + (last.wrapping_add(i)) % limit.max(1))
            .find(|id| !domains.contains_key(id))
            .ok_or(ENOSPC)?;
        self.last_domid.store(domid, Ordering::Relaxed);
        self.used_kib.fetch_add(mem_kib, Ordering::Relaxed);
        let mut d = domain_record(domid, name, DomainState::Paused, mem_kib);
        d.cpu_time_ns = 0;
        domains.insert(domid, d);
        drop(domains);
        self.lock_guests().insert(
            domid,
            Guest {
                fresh: true,
                ..Guest::default()
            },
        );
        self.raise(shared_abi::control::EVENT_DOMAIN_STATE);
        Ok(u64::from(domid))
    }

    /// `DomainSetEntry`.
    fn set_entry(&self, arg: u64, buf: &[u8]) -> Result<u64, i32> {
        let domid = u32::try_from(arg).map_err(|_| ESRCH)?;
        if domid == 0 {
            return Err(EPERM);
        }
        let mem = self.lock_domains().get(&domid).ok_or(ESRCH)?.mem_kib * 1024;
        let raw = buf.get(..size_of::<VcpuEntry>()).ok_or(EINVAL)?;
        let e = VcpuEntry::read_from_bytes(raw).map_err(|_| EINVAL)?;
        if e.entry >= mem || e.start_info >= mem {
            return Err(EINVAL);
        }
        let mut guests = self.lock_guests();
        let g = guests.entry(domid).or_default();
        if !g.fresh {
            return Err(EBUSY);
        }
        g.entry = Some(e);
        Ok(0)
    }

    /// `ForeignUnmap`: a frame of a destroyed domain is freed with its last slot.
    fn foreign_unmap(&self, slot: u64) -> Result<u64, i32> {
        let slot = self.window_slot(slot)?;
        let mut slots = self.lock_slots();
        if slots.get(&slot).ok_or(ENOENT)?.grant.is_some() {
            return Err(EINVAL);
        }
        let e = slots.remove(&slot).ok_or(ENOENT)?;
        if e.orphan
            && !slots
                .values()
                .any(|o| o.orphan && (o.domid, o.gfn) == (e.domid, e.gfn))
        {
            self.freed_kib.fetch_add(4, Ordering::Relaxed);
        }
        Ok(0)
    }

    fn window_slot(&self, slot: u64) -> Result<u64, i32> {
        if slot < self.host.foreign_window_pages {
            Ok(slot)
        } else {
            Err(EINVAL)
        }
    }

    /// `ForeignMap`, with the microvisor's order of checks.
    fn foreign_map(&self, slot: u64, buf: &[u8]) -> Result<u64, i32> {
        let slot = self.window_slot(slot)?;
        let raw = buf.get(..size_of::<ForeignMapRequest>()).ok_or(EINVAL)?;
        let req = ForeignMapRequest::read_from_bytes(raw).map_err(|_| EINVAL)?;
        if req.reserved != 0 {
            return Err(EINVAL);
        }
        if req.domid == 0 {
            return Err(ESRCH);
        }
        let mut slots = self.lock_slots();
        if slots.contains_key(&slot) {
            return Err(EBUSY);
        }
        let domain = self
            .lock_domains()
            .get(&req.domid)
            .copied()
            .filter(|d| {
                !matches!(
                    DomainState::from_u32(d.state),
                    Some(DomainState::Shutdown | DomainState::Crashed)
                )
            })
            .ok_or(ESRCH)?;
        let in_ram = req
            .gfn
            .checked_mul(4096)
            .is_some_and(|gpa| gpa < domain.mem_kib.saturating_mul(1024));
        if !in_ram {
            return Err(EINVAL);
        }
        slots.insert(
            slot,
            SlotEntry {
                domid: req.domid,
                gfn: req.gfn,
                orphan: false,
                grant: None,
            },
        );
        Ok(0)
    }

    /// Replaces the host record.
    #[must_use]
    pub fn with_host(mut self, host: HostInfo) -> Self {
        self.host = host;
        self
    }

    /// Adds or replaces a domain.
    pub fn insert(&self, d: DomainInfo) {
        self.lock_domains().insert(d.domid, d);
    }

    /// Makes the fake misbehave from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
    }

    /// How many control calls were made.
    #[must_use]
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    fn lock_domains(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, DomainInfo>> {
        self.domains
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fault(&self) -> Fault {
        *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Offset of grant entry `gref` in its table frame.
fn entry_offset(gref: u32) -> usize {
    (gref % ENTRIES_PER_FRAME) as usize * GRANT_ENTRY_SIZE
}

/// Grant tables and Dom0's grant operations (`GrantMap`, `GrantUnmap`, `GrantCopy`),
/// following "Grant mappings and copies" of the ABI. A DomU's table lives in its own RAM
/// (frames placed with [`FakeMicrovisor::place_grant_frame`], as `add_to_physmap` does);
/// entries are read and marked there, so a test plays the granter by writing entries
/// ([`FakeMicrovisor::grant_access`], or any raw bytes). A pin checks the `flags|domid`
/// word (permit-access, not sub-page, grantee 0, not read-only for a writable use) and
/// sets `GTF_READING` (+ `GTF_WRITING`); the frame is copied at the first pin and used
/// from then on; the bits are cleared with the last writer / last user. The fake holds
/// its guest lock across the check and the store, so the microvisor's compare-and-swap
/// retry (5 attempts) never fails here. Simplifications: a read-only mapping is writable
/// through [`Microvisor::map_page`], and a destroyed DomU's mapped grants orphan like
/// foreign mappings (no dying state).
impl FakeMicrovisor {
    /// Test hook: DomU `domid` places frame `gfn` of its RAM as grant table frame
    /// `index` (the next one, or one already placed). `false` if that is not allowed.
    pub fn place_grant_frame(&self, domid: u32, index: u32, gfn: u64) -> bool {
        if self.guest_page(domid, gfn).is_none() || index >= GNTTAB_MAX_FRAMES {
            return false;
        }
        let mut guests = self.lock_guests();
        let g = guests.entry(domid).or_default();
        let i = index as usize;
        match i.cmp(&g.grant_frames.len()) {
            std::cmp::Ordering::Less => g.grant_frames[i] = gfn,
            std::cmp::Ordering::Equal => g.grant_frames.push(gfn),
            std::cmp::Ordering::Greater => return false,
        }
        true
    }

    /// Test hook: DomU `domid` grants frame `gfn` to domain 0 as `gref` (frame and domid
    /// first, then the flags, as a granter does). `false` without a table frame for it.
    pub fn grant_access(&self, domid: u32, gref: u32, gfn: u64, readonly: bool) -> bool {
        let Some(page) = self.table_page(domid, gref) else {
            return false;
        };
        let off = entry_offset(gref);
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        let frame = u32::try_from(gfn).unwrap_or(u32::MAX);
        page.store_release_u32(off + 4, frame).is_ok()
            && page.store_release_u32(off, u32::from(flags)).is_ok()
    }

    /// Test hook: DomU `domid` revokes `gref` as `gnttab_end_foreign_access` does: only
    /// while neither `GTF_READING` nor `GTF_WRITING` is set. Whether it was revoked.
    pub fn end_access(&self, domid: u32, gref: u32) -> bool {
        let Some(page) = self.table_page(domid, gref) else {
            return false;
        };
        let off = entry_offset(gref);
        match page.load_acquire_u32(off) {
            Ok(word) if word & u32::from(GTF_READING | GTF_WRITING) == 0 => {
                page.store_release_u32(off, 0).is_ok()
            }
            _ => false,
        }
    }

    /// The flags of DomU `domid`'s entry `gref` (`None` without a table frame for it).
    #[must_use]
    pub fn grant_flags(&self, domid: u32, gref: u32) -> Option<u16> {
        let page = self.table_page(domid, gref)?;
        let word = page.load_acquire_u32(entry_offset(gref)).ok()?;
        Some((word & 0xffff) as u16)
    }

    /// Entries of `domid` that domain 0 has in use.
    #[must_use]
    pub fn grants_in_use(&self, domid: u32) -> usize {
        self.lock_guests().get(&domid).map_or(0, |g| g.active.len())
    }

    /// The table frame holding `gref` of `domid`.
    fn table_page(&self, domid: u32, gref: u32) -> Option<Arc<VecMem>> {
        let mut guests = self.lock_guests();
        let g = guests.get_mut(&domid)?;
        let gfn = *g.grant_frames.get((gref / ENTRIES_PER_FRAME) as usize)?;
        Some(g.page(gfn))
    }

    /// Pins `gref` of live DomU `domid` for reading (and writing); returns the frame.
    /// Errors are `GNTST_*` statuses.
    fn pin(&self, domid: u32, gref: u32, writable: bool) -> Result<u64, i16> {
        let mem_kib = self
            .lock_domains()
            .get(&domid)
            .filter(|d| {
                domid != 0
                    && !matches!(
                        DomainState::from_u32(d.state),
                        Some(DomainState::Shutdown | DomainState::Crashed)
                    )
            })
            .ok_or(GNTST_BAD_DOMAIN)?
            .mem_kib;
        let mut guests = self.lock_guests();
        let g = guests.get_mut(&domid).ok_or(GNTST_BAD_DOMAIN)?;
        let table_gfn = *g
            .grant_frames
            .get((gref / ENTRIES_PER_FRAME) as usize)
            .ok_or(GNTST_BAD_GNTREF)?;
        let page = g.page(table_gfn);
        let off = entry_offset(gref);
        let word = page
            .load_acquire_u32(off)
            .map_err(|_| GNTST_GENERAL_ERROR)?;
        let flags = (word & 0xffff) as u16;
        let grantee = word >> 16;
        if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || flags & GTF_SUB_PAGE != 0 {
            return Err(GNTST_BAD_GNTREF);
        }
        if grantee != 0 || (writable && flags & GTF_READONLY != 0) {
            return Err(GNTST_PERMISSION_DENIED);
        }
        let gfn = match g.active.get(&gref) {
            Some(a) => a.gfn,
            None => {
                let frame = page
                    .load_acquire_u32(off + 4)
                    .map_err(|_| GNTST_GENERAL_ERROR)?;
                let gfn = u64::from(frame);
                if gfn.saturating_mul(4096) >= mem_kib.saturating_mul(1024)
                    || g.grant_frames.contains(&gfn)
                {
                    return Err(GNTST_BAD_PAGE);
                }
                gfn
            }
        };
        let set = GTF_READING | if writable { GTF_WRITING } else { 0 };
        page.store_release_u32(off, word | u32::from(set))
            .map_err(|_| GNTST_GENERAL_ERROR)?;
        let a = g.active.entry(gref).or_insert(ActiveGrant {
            gfn,
            readers: 0,
            writers: 0,
        });
        a.readers += 1;
        if writable {
            a.writers += 1;
        }
        Ok(gfn)
    }

    /// Drops one pin of `gref` of `domid` (nothing if the domain is gone).
    fn unpin(&self, domid: u32, gref: u32, writable: bool) {
        let mut guests = self.lock_guests();
        let Some(g) = guests.get_mut(&domid) else {
            return;
        };
        let Some(a) = g.active.get_mut(&gref) else {
            return;
        };
        a.readers = a.readers.saturating_sub(1);
        if writable {
            a.writers = a.writers.saturating_sub(1);
        }
        let mut clear = 0u16;
        if a.writers == 0 {
            clear |= GTF_WRITING;
        }
        if a.readers == 0 {
            clear |= GTF_READING;
            g.active.remove(&gref);
        }
        let Some(&table_gfn) = g.grant_frames.get((gref / ENTRIES_PER_FRAME) as usize) else {
            return;
        };
        let page = g.page(table_gfn);
        let off = entry_offset(gref);
        if let Ok(word) = page.load_acquire_u32(off) {
            let _ = page.store_release_u32(off, word & !u32::from(clear));
        }
    }

    /// `GrantMap`.
    fn grant_map(&self, slot: u64, buf: &[u8]) -> Result<u64, i32> {
        let slot = self.window_slot(slot)?;
        let raw = buf.get(..size_of::<GrantMapRequest>()).ok_or(EINVAL)?;
        let req = GrantMapRequest::read_from_bytes(raw).map_err(|_| EINVAL)?;
        if req.reserved != 0 || req.flags & !GRANT_MAP_READONLY != 0 {
            return Err(EINVAL);
        }
        if req.domid == 0 {
            return Err(ESRCH);
        }
        let mut slots = self.lock_slots();
        if slots.contains_key(&slot) {
            return Err(EBUSY);
        }
        let writable = req.flags & GRANT_MAP_READONLY == 0;
        let gfn = self
            .pin(req.domid, req.gref, writable)
            .map_err(|st| match st {
                GNTST_BAD_DOMAIN => ESRCH,
                GNTST_BAD_GNTREF => ENOENT,
                GNTST_PERMISSION_DENIED => EPERM,
                GNTST_BAD_PAGE => ERANGE,
                _ => EAGAIN,
            })?;
        slots.insert(
            slot,
            SlotEntry {
                domid: req.domid,
                gfn,
                orphan: false,
                grant: Some((req.gref, writable)),
            },
        );
        Ok(0)
    }

    /// `GrantUnmap`.
    fn grant_unmap(&self, slot: u64) -> Result<u64, i32> {
        let slot = self.window_slot(slot)?;
        let mut slots = self.lock_slots();
        let (gref, writable) = slots.get(&slot).ok_or(ENOENT)?.grant.ok_or(EINVAL)?;
        let e = slots.remove(&slot).ok_or(ENOENT)?;
        if e.orphan {
            if !slots
                .values()
                .any(|o| o.orphan && (o.domid, o.gfn) == (e.domid, e.gfn))
            {
                self.freed_kib.fetch_add(4, Ordering::Relaxed);
            }
        } else {
            self.unpin(e.domid, gref, writable);
        }
        Ok(0)
    }

    /// `GrantCopy`: `n` segments at the start of `buf`, then data.
    fn grant_copy(&self, n: u64, buf: &mut [u8]) -> Result<u64, i32> {
        const SEG: usize = size_of::<GrantCopySegment>();
        let n = usize::try_from(n).map_err(|_| EINVAL)?;
        let data_start = n.checked_mul(SEG).ok_or(EINVAL)?;
        if n == 0 || data_start > buf.len() {
            return Err(EINVAL);
        }
        let mut ok = 0u64;
        for i in 0..n {
            let at = i * SEG;
            let mut seg =
                GrantCopySegment::read_from_bytes(&buf[at..at + SEG]).map_err(|_| EINVAL)?;
            seg.status = self.copy_segment(&seg, buf, data_start);
            if seg.status == GNTST_OKAY {
                ok += 1;
            }
            buf[at..at + SEG].copy_from_slice(seg.as_bytes());
        }
        Ok(ok)
    }

    /// One segment of `GrantCopy`; its status.
    fn copy_segment(&self, seg: &GrantCopySegment, buf: &mut [u8], data_start: usize) -> i16 {
        let len = usize::from(seg.len);
        let src_grant = seg.flags & GNTCOPY_SOURCE_GREF != 0;
        let dst_grant = seg.flags & GNTCOPY_DEST_GREF != 0;
        if seg.flags & !(GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF) != 0
            || seg.pad != 0
            || !(src_grant || dst_grant)
            || len > 4096
        {
            return GNTST_BAD_COPY_ARG;
        }
        let side_ok = |p: &GrantCopyPtr, grant: bool| {
            if grant {
                usize::from(p.offset) + len <= 4096
            } else {
                p.domid == 0
                    && p.offset == 0
                    && (p.u as usize) >= data_start
                    && (p.u as usize)
                        .checked_add(len)
                        .is_some_and(|e| e <= buf.len())
            }
        };
        if !side_ok(&seg.source, src_grant) || !side_ok(&seg.dest, dst_grant) {
            return GNTST_BAD_COPY_ARG;
        }
        let mut bytes = vec![0u8; len];
        if src_grant {
            let (d, r) = (u32::from(seg.source.domid), seg.source.u);
            let gfn = match self.pin(d, r, false) {
                Ok(g) => g,
                Err(st) => return st,
            };
            let page = self.lock_guests().entry(d).or_default().page(gfn);
            let read = page.read_bytes(usize::from(seg.source.offset), &mut bytes);
            self.unpin(d, r, false);
            if read.is_err() {
                return GNTST_GENERAL_ERROR;
            }
        } else {
            let s = seg.source.u as usize;
            bytes.copy_from_slice(&buf[s..s + len]);
        }
        if dst_grant {
            let (d, r) = (u32::from(seg.dest.domid), seg.dest.u);
            let gfn = match self.pin(d, r, true) {
                Ok(g) => g,
                Err(st) => return st,
            };
            let page = self.lock_guests().entry(d).or_default().page(gfn);
            let wrote = page.write_bytes(usize::from(seg.dest.offset), &bytes);
            self.unpin(d, r, true);
            if wrote.is_err() {
                return GNTST_GENERAL_ERROR;
            }
        } else {
            let d = seg.dest.u as usize;
            buf[d..d + len].copy_from_slice(&bytes);
        }
        GNTST_OKAY
    }
}

impl Default for FakeMicrovisor {
    fn default() -> Self {
        Self::new()
    }
}

fn put(buf: &mut [u8], record: &[u8]) -> Result<u64, i32> {
    let dst = buf.get_mut(..record.len()).ok_or(ENOSPC)?;
    dst.copy_from_slice(record);
    Ok(record.len() as u64)
}

impl Microvisor for FakeMicrovisor {
    fn control(&self, op: u64, arg: u64, buf: &mut [u8]) -> Result<u64, i32> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let fault = self.fault();
        if let Fault::Errno(errno) = fault {
            return Err(errno);
        }
        if buf.len() > MAX_BUFFER {
            return Err(EINVAL);
        }
        if let Some(errno) = self.injected_failure(op) {
            return Err(errno);
        }
        // Matched by number: operations added to the ABI later are ENOSYS here.
        const HOST_INFO: u64 = ControlOp::HostInfo as u64;
        const DOMAIN_INFO: u64 = ControlOp::DomainInfo as u64;
        const DOMAIN_LIST: u64 = ControlOp::DomainList as u64;
        const EVENTS_TAKE: u64 = ControlOp::EventsTake as u64;
        const FOREIGN_MAP: u64 = ControlOp::ForeignMap as u64;
        const FOREIGN_UNMAP: u64 = ControlOp::ForeignUnmap as u64;
        const DOMAIN_PAUSE: u64 = ControlOp::DomainPause as u64;
        const DOMAIN_UNPAUSE: u64 = ControlOp::DomainUnpause as u64;
        const DOMAIN_DESTROY: u64 = ControlOp::DomainDestroy as u64;
        const DOMAIN_CREATE: u64 = ControlOp::DomainCreate as u64;
        const DOMAIN_SET_ENTRY: u64 = ControlOp::DomainSetEntry as u64;
        const EVTCHN_ALLOC_UNBOUND: u64 = ControlOp::EvtchnAllocUnbound as u64;
        const EVTCHN_BIND_INTERDOMAIN: u64 = ControlOp::EvtchnBindInterdomain as u64;
        const EVTCHN_SEND: u64 = ControlOp::EvtchnSend as u64;
        const EVTCHN_CLOSE: u64 = ControlOp::EvtchnClose as u64;
        const EVTCHN_TAKE_PENDING: u64 = ControlOp::EvtchnTakePending as u64;
        const DOMAIN_SET_PARAM: u64 = ControlOp::DomainSetParam as u64;
        const GRANT_MAP: u64 = ControlOp::GrantMap as u64;
        const GRANT_UNMAP: u64 = ControlOp::GrantUnmap as u64;
        const GRANT_COPY: u64 = ControlOp::GrantCopy as u64;
        if matches!(op, DOMAIN_INFO | DOMAIN_LIST) {
            self.tick();
        }
        match op {
            DOMAIN_PAUSE => self.lifecycle(ControlOp::DomainPause, arg),
            DOMAIN_UNPAUSE => self.lifecycle(ControlOp::DomainUnpause, arg),
            DOMAIN_DESTROY => self.lifecycle(ControlOp::DomainDestroy, arg),
            EVENTS_TAKE if arg != 0 => Err(EINVAL),
            EVENTS_TAKE => Ok(self.take_events()),
            FOREIGN_MAP => self.foreign_map(arg, buf),
            DOMAIN_CREATE => self.domain_create(arg, buf),
            DOMAIN_SET_ENTRY => self.set_entry(arg, buf),
            FOREIGN_UNMAP => self.foreign_unmap(arg),
            EVTCHN_ALLOC_UNBOUND => self.evtchn_alloc_unbound(arg),
            EVTCHN_BIND_INTERDOMAIN => self.evtchn_bind(arg),
            EVTCHN_SEND => self.evtchn_send(arg),
            EVTCHN_CLOSE => self.evtchn_close(arg),
            EVTCHN_TAKE_PENDING => self.evtchn_take_pending(arg, buf),
            DOMAIN_SET_PARAM => self.set_param(arg, buf),
            GRANT_MAP => self.grant_map(arg, buf),
            GRANT_UNMAP => self.grant_unmap(arg),
            GRANT_COPY => self.grant_copy(arg, buf),
            HOST_INFO => {
                let mut host = self.host;
                host.mem_free_kib = self.mem_free_kib();
                put(buf, host.as_bytes())
            }
            DOMAIN_INFO => {
                let domid = u32::try_from(arg).map_err(|_| ESRCH)?;
                let mut d = *self.lock_domains().get(&domid).ok_or(ESRCH)?;
                if fault == Fault::WrongDomain {
                    d.domid = domid.wrapping_add(1);
                }
                put(buf, d.as_bytes())
            }
            DOMAIN_LIST => {
                const RECORD: usize = size_of::<DomainInfo>();
                let capacity = buf.len() / RECORD;
                if capacity == 0 {
                    return Err(ENOSPC);
                }
                let first = if fault == Fault::ListRepeats { 0 } else { arg };
                let domains = self.lock_domains();
                let mut n = 0;
                for (d, slot) in domains
                    .values()
                    .filter(|d| u64::from(d.domid) >= first)
                    .zip(buf.chunks_exact_mut(RECORD))
                {
                    slot.copy_from_slice(d.as_bytes());
                    n += 1;
                }
                if fault == Fault::ListOverflow {
                    n = capacity + 1;
                }
                Ok(n as u64)
            }
            _ => Err(ENOSYS),
        }
    }

    fn map_window(&self, first_slot: u64, pages: usize) -> Result<Box<dyn WindowMap + '_>, i32> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(errno) = self.injected_failure(OP_MMAP) {
            return Err(errno);
        }
        let inside = first_slot
            .checked_add(pages as u64)
            .is_some_and(|end| end <= self.host.foreign_window_pages);
        if pages == 0 || !inside {
            return Err(EINVAL);
        }
        Ok(Box::new(FakeWindow {
            fake: self,
            first_slot,
            pages,
        }))
    }

    /// Maps the frame slot `slot` holds now. (The real `mmap` succeeds on an empty slot
    /// and the first access kills the process; the fake answers `EFAULT` instead.)
    fn map_page(&self, slot: u64) -> Result<Arc<dyn PageMap>, i32> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(errno) = self.injected_failure(OP_MAP_PAGE) {
            return Err(errno);
        }
        self.window_slot(slot)?;
        // Lock order: slots, guests.
        let slots = self.lock_slots();
        let e = slots.get(&slot).filter(|e| !e.orphan).ok_or(EFAULT)?;
        let page = self.lock_guests().entry(e.domid).or_default().page(e.gfn);
        self.page_maps.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(FakePage {
            page,
            live: Arc::clone(&self.page_maps),
        }))
    }
}

/// A guest frame "mapped into the process" by [`Microvisor::map_page`]: it keeps the
/// frame alive (as the real mapping does) and counts itself in
/// [`FakeMicrovisor::page_maps`] until dropped.
#[derive(Debug)]
struct FakePage {
    page: Arc<VecMem>,
    live: Arc<AtomicUsize>,
}

impl Drop for FakePage {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SharedMem for FakePage {
    fn len(&self) -> usize {
        self.page.len()
    }
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        self.page.read_bytes(offset, buf)
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        self.page.write_bytes(offset, data)
    }
    fn load_acquire_u32(&self, offset: usize) -> Result<u32, MemError> {
        self.page.load_acquire_u32(offset)
    }
    fn store_release_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        self.page.store_release_u32(offset, value)
    }
}

impl PageMap for FakePage {}

/// Slots of the fake's window "mapped into the process": writes go to whatever frames
/// the slots hold at the time of the write, as with the real `mmap`.
#[derive(Debug)]
struct FakeWindow<'a> {
    fake: &'a FakeMicrovisor,
    first_slot: u64,
    pages: usize,
}

impl WindowMap for FakeWindow<'_> {
    fn write(&mut self, offset: usize, bytes: &[u8]) -> Result<(), i32> {
        let end = offset.checked_add(bytes.len()).ok_or(EINVAL)?;
        if end > self.pages * 4096 {
            return Err(EINVAL);
        }
        // Lock order: slots, guests.
        let slots = self.fake.lock_slots();
        let mut guests = self.fake.lock_guests();
        let mut at = offset;
        let mut rest = bytes;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(rest.len().min(4096 - at % 4096));
            let slot = self.first_slot + (at / 4096) as u64;
            // The real device kills the process (SIGSEGV) here.
            let e = slots.get(&slot).ok_or(EFAULT)?;
            if !e.orphan {
                let page = guests.entry(e.domid).or_default().page(e.gfn);
                page.write_bytes(at % 4096, now).map_err(|_| EINVAL)?;
            }
            at += now.len();
            rest = later;
        }
        Ok(())
    }

    fn unmap(self: Box<Self>) -> Result<(), i32> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use shared_abi::control::{ControlOp, DomainParam, EVENT_EVTCHN};
    use shared_abi::hvm::{
        HVM_PARAM_CALLBACK_IRQ, HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN,
    };
    use zerocopy::IntoBytes;

    use super::*;
    use crate::microvisor::{
        self, domain_set_param, evtchn_alloc_unbound, evtchn_bind_interdomain, evtchn_close,
        evtchn_send, evtchn_take_pending,
    };

    #[test]
    fn event_channels_follow_the_abi() {
        let fake = FakeMicrovisor::new();
        assert_eq!(evtchn_alloc_unbound(&fake, 0), Err(ESRCH));
        assert_eq!(evtchn_alloc_unbound(&fake, 77), Err(ESRCH));
        let remote = evtchn_alloc_unbound(&fake, 1).unwrap();
        assert_eq!(remote, 1);
        assert_eq!(evtchn_alloc_unbound(&fake, 1), Ok(2));
        assert_eq!(evtchn_bind_interdomain(&fake, 1, 9), Err(EINVAL));
        assert_eq!(evtchn_bind_interdomain(&fake, 0, 1), Err(ESRCH));
        let local = evtchn_bind_interdomain(&fake, 1, remote).unwrap();
        assert_eq!(local, 1);
        assert_eq!(
            evtchn_bind_interdomain(&fake, 1, remote),
            Err(EINVAL),
            "bound already"
        );
        assert_eq!(fake.domu_ports(1), [(1, true), (2, false)]);

        // The guest signals: the port is pending and EVENT_EVTCHN raised, until taken.
        fake.take_events();
        assert!(fake.guest_send(1, remote));
        assert!(!fake.guest_send(1, 2), "unbound: nobody to signal");
        assert_eq!(fake.take_events() & EVENT_EVTCHN, EVENT_EVTCHN);
        assert_eq!(evtchn_take_pending(&fake), Ok(vec![local]));
        assert_eq!(evtchn_take_pending(&fake), Ok(vec![]));
        assert_eq!(
            fake.control(ControlOp::EvtchnTakePending as u64, 0, &mut [0; 3]),
            Err(ENOSPC)
        );

        // Dom0 signals the guest.
        evtchn_send(&fake, local).unwrap();
        evtchn_send(&fake, local).unwrap();
        assert_eq!(fake.notified(1, remote), 2);
        assert_eq!(evtchn_send(&fake, 99), Err(EINVAL));

        // Destroying the DomU leaves domain 0's port unbound; sends are dropped.
        fake.control(ControlOp::DomainDestroy as u64, 1, &mut [])
            .unwrap();
        assert_eq!(fake.dom0_ports(), [(local, None)]);
        assert_eq!(evtchn_send(&fake, local), Ok(()));
        assert!(fake.domu_ports(1).is_empty());
        evtchn_close(&fake, local).unwrap();
        assert_eq!(evtchn_close(&fake, local), Err(EINVAL));
        assert!(fake.dom0_ports().is_empty());
    }

    #[test]
    fn closing_leaves_the_domu_port_unbound_for_a_rebind() {
        let fake = FakeMicrovisor::new();
        let remote = evtchn_alloc_unbound(&fake, 2).unwrap();
        let local = evtchn_bind_interdomain(&fake, 2, remote).unwrap();
        assert!(fake.guest_send(2, remote));
        evtchn_close(&fake, local).unwrap();
        assert_eq!(
            evtchn_take_pending(&fake),
            Ok(vec![]),
            "closed ports are not pending"
        );
        assert_eq!(fake.domu_ports(2), [(remote, false)]);
        assert_eq!(evtchn_bind_interdomain(&fake, 2, remote), Ok(local));
    }

    #[test]
    fn many_pending_ports_take_several_calls() {
        let fake = FakeMicrovisor::new();
        let mut locals = Vec::new();
        for _ in 0..1023 {
            let remote = evtchn_alloc_unbound(&fake, 1).unwrap();
            locals.push(evtchn_bind_interdomain(&fake, 1, remote).unwrap());
            assert!(fake.guest_send(1, remote));
        }
        assert_eq!(evtchn_alloc_unbound(&fake, 1), Err(ENOSPC));
        assert_eq!(evtchn_take_pending(&fake).unwrap(), locals);
    }

    #[test]
    fn parameters_are_checked_and_kept() {
        let fake = FakeMicrovisor::new();
        let set = |domid: u64, p: DomainParam| {
            let mut buf = [0u8; 16];
            buf.copy_from_slice(p.as_bytes());
            fake.control(ControlOp::DomainSetParam as u64, domid, &mut buf)
        };
        let p = |index, value| DomainParam {
            index,
            reserved: 0,
            value,
        };
        // hello1 has 16 MiB: frames 0..4096.
        assert_eq!(set(1, p(HVM_PARAM_CONSOLE_PFN, 4096)), Err(EINVAL));
        assert_eq!(set(1, p(HVM_PARAM_CONSOLE_EVTCHN, 0)), Err(EINVAL));
        assert_eq!(set(1, p(HVM_PARAM_CONSOLE_EVTCHN, 1024)), Err(EINVAL));
        assert_eq!(set(1, p(HVM_PARAM_CALLBACK_IRQ, 1)), Err(EINVAL));
        assert_eq!(
            set(
                1,
                DomainParam {
                    reserved: 1,
                    ..p(HVM_PARAM_CONSOLE_PFN, 1)
                }
            ),
            Err(EINVAL)
        );
        assert_eq!(set(0, p(HVM_PARAM_CONSOLE_PFN, 1)), Err(ESRCH));
        assert_eq!(set(9, p(HVM_PARAM_CONSOLE_PFN, 1)), Err(ESRCH));
        assert_eq!(fake.param(1, HVM_PARAM_CONSOLE_PFN), None);
        domain_set_param(&fake, 1, HVM_PARAM_CONSOLE_PFN, 4095).unwrap();
        domain_set_param(&fake, 1, HVM_PARAM_CONSOLE_EVTCHN, 1023).unwrap();
        assert_eq!(fake.param(1, HVM_PARAM_CONSOLE_PFN), Some(4095));
        assert_eq!(fake.param(1, HVM_PARAM_CONSOLE_EVTCHN), Some(1023));
    }

    #[test]
    fn a_mapped_page_outlives_its_domain() {
        let fake = FakeMicrovisor::new();
        let free = fake.mem_free_kib();
        microvisor::foreign_map(&fake, 7, 1, 5).unwrap();
        let page = fake.map_page(7).unwrap();
        assert_eq!(fake.page_maps(), 1);
        fake.write_guest(1, 5 * 4096, b"last words");
        fake.control(ControlOp::DomainDestroy as u64, 1, &mut [])
            .unwrap();
        let mut buf = [0u8; 10];
        page.read_bytes(0, &mut buf).unwrap();
        assert_eq!(&buf, b"last words");
        assert_eq!(fake.mem_free_kib(), free + 16 * 1024 - 4);
        drop(page);
        assert_eq!(fake.page_maps(), 0);
        microvisor::foreign_unmap(&fake, 7).unwrap();
        assert_eq!(fake.mem_free_kib(), free + 16 * 1024);
        // An empty slot cannot be mapped (the real device would fault on access).
        assert_eq!(fake.map_page(7).unwrap_err(), EFAULT);
        assert_eq!(fake.map_page(FAKE_WINDOW_PAGES).unwrap_err(), EINVAL);
    }

    #[test]
    fn the_fake_guest_console_writes_and_reads_its_rings() {
        let fake = FakeMicrovisor::new();
        assert_eq!(
            fake.console_write(1, b"x"),
            None,
            "no console parameters yet"
        );
        let remote = evtchn_alloc_unbound(&fake, 1).unwrap();
        let local = evtchn_bind_interdomain(&fake, 1, remote).unwrap();
        domain_set_param(&fake, 1, HVM_PARAM_CONSOLE_PFN, 4095).unwrap();
        domain_set_param(&fake, 1, HVM_PARAM_CONSOLE_EVTCHN, u64::from(remote)).unwrap();
        assert_eq!(fake.console_write(1, &[b'a'; 3000]), Some(2048));
        assert_eq!(fake.console_write(1, b"more"), Some(0), "full");
        assert_eq!(evtchn_take_pending(&fake), Ok(vec![local]));
        // Dom0's side of the same page.
        microvisor::foreign_map(&fake, 3, 1, 4095).unwrap();
        let mut back = pv_drivers::console::ConsoleBack::new(fake.map_page(3).unwrap()).unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(back.read_output(&mut buf).unwrap(), 2048);
        assert_eq!(back.write_input(b"typed").unwrap(), 5);
        assert_eq!(fake.console_read_input(1).unwrap(), b"typed");
        assert_eq!(fake.console_read_input(1).unwrap(), b"");
    }
}
