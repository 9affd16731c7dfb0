//! A fake microvisor for host tests: the control ABI of `shared_abi::control`, answered
//! from a table in memory, plus switches that make it misbehave.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use shared_abi::control::{
    CONTROL_VERSION, ControlOp, DOMAIN_FLAG_PRIVILEGED, DomainInfo, DomainState, ForeignMapRequest,
    HostInfo, MAX_BUFFER, fill_fixed_str,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::microvisor::Microvisor;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EBUSY: i32 = 16;
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

/// A microvisor in memory, including the foreign window's slots and the pending event
/// bits, with the errors `shared_abi::control` documents.
#[derive(Debug)]
pub struct FakeMicrovisor {
    host: HostInfo,
    domains: Mutex<BTreeMap<u32, DomainInfo>>,
    /// Filled foreign-window slots: slot -> (domid, gfn).
    slots: Mutex<BTreeMap<u64, (u32, u64)>>,
    events: AtomicU64,
    fault: Mutex<Fault>,
    calls: AtomicUsize,
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
            events: AtomicU64::new(0),
            fault: Mutex::new(Fault::None),
            calls: AtomicUsize::new(0),
        }
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
            .map(|(&slot, &(domid, gfn))| (slot, domid, gfn))
            .collect()
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (u32, u64)>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        slots.insert(slot, (req.domid, req.gfn));
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
        // Matched by number: operations added to the ABI later are ENOSYS here.
        const HOST_INFO: u64 = ControlOp::HostInfo as u64;
        const DOMAIN_INFO: u64 = ControlOp::DomainInfo as u64;
        const DOMAIN_LIST: u64 = ControlOp::DomainList as u64;
        const EVENTS_TAKE: u64 = ControlOp::EventsTake as u64;
        const FOREIGN_MAP: u64 = ControlOp::ForeignMap as u64;
        const FOREIGN_UNMAP: u64 = ControlOp::ForeignUnmap as u64;
        match op {
            EVENTS_TAKE if arg != 0 => Err(EINVAL),
            EVENTS_TAKE => Ok(self.events.swap(0, Ordering::AcqRel) & !(1 << 63)),
            FOREIGN_MAP => self.foreign_map(arg, buf),
            FOREIGN_UNMAP => {
                let slot = self.window_slot(arg)?;
                self.lock_slots().remove(&slot).map(|_| 0).ok_or(ENOENT)
            }
            HOST_INFO => put(buf, self.host.as_bytes()),
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
}
