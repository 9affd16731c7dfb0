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
//! taking its memory from the free pool; `DomainSetEntry` records the entry state
//! (`EBUSY` once the domain has run, i.e. after an unpause; `EINVAL` for addresses not
//! below its memory). Guest RAM is kept (sparsely) per domain, reachable through the
//! foreign window: [`Microvisor::map_window`] maps slots, and writes through it land in
//! the frames the slots hold, which tests read back with [`FakeMicrovisor::read_guest`].
//! As in the microvisor, a frame that is still mapped when its domain is destroyed stays
//! allocated (out of the free memory) until its last slot is unmapped.
//! [`FakeMicrovisor::fail_nth`] makes one particular call fail.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use shared_abi::control::{
    CONTROL_VERSION, ControlOp, DOMAIN_FLAG_PRIVILEGED, DomainCreateRequest, DomainInfo,
    DomainState, ForeignMapRequest, HostInfo, MAX_BUFFER, MAX_DOMAIN_MEM_MIB, MIN_DOMAIN_MEM_MIB,
    VcpuEntry, fill_fixed_str, fixed_str,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::microvisor::{Microvisor, WindowMap};

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

/// A filled foreign-window slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotEntry {
    domid: u32,
    gfn: u64,
    /// The domain was destroyed while the slot held its frame.
    orphan: bool,
}

/// What the fake keeps of a domain beyond its record: whether it has run, its entry
/// state, and the RAM pages written so far (absent pages are zero).
#[derive(Debug, Default)]
struct Guest {
    fresh: bool,
    entry: Option<VcpuEntry>,
    pages: BTreeMap<u64, Box<[u8; 4096]>>,
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
    /// Memory of domains created by `DomainCreate`, KiB, taken from the free memory.
    used_kib: AtomicU64,
    /// Largest domid `DomainCreate` hands out.
    domid_limit: AtomicU32,
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
            used_kib: AtomicU64::new(0),
            domid_limit: AtomicU32::new(0x7FEF),
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
                Some(page) => out.extend_from_slice(&page[offset..offset + n]),
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
        for (i, b) in (gpa..).zip(bytes) {
            g.pages
                .entry(i / 4096)
                .or_insert_with(|| Box::new([0; 4096]))[usize::try_from(i % 4096).unwrap_or(0)] =
                *b;
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
        let domid = (1..=limit)
            .find(|id| !domains.contains_key(id))
            .ok_or(ENOSPC)?;
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
}

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
        for (at, b) in (offset..).zip(bytes) {
            let slot = self.first_slot + (at / 4096) as u64;
            // The real device kills the process (SIGSEGV) here.
            let e = slots.get(&slot).ok_or(EFAULT)?;
            if !e.orphan {
                let page = guests
                    .entry(e.domid)
                    .or_default()
                    .pages
                    .entry(e.gfn)
                    .or_insert_with(|| Box::new([0; 4096]));
                page[at % 4096] = *b;
            }
        }
        Ok(())
    }

    fn unmap(self: Box<Self>) -> Result<(), i32> {
        Ok(())
    }
}
