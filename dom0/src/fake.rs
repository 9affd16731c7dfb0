//! A fake microvisor for host tests: the control ABI of `shared_abi::control`, answered
//! from a table in memory, plus switches that make it misbehave.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use shared_abi::control::{
    CONTROL_VERSION, ControlOp, DOMAIN_FLAG_PRIVILEGED, DomainInfo, DomainState, HostInfo,
    MAX_BUFFER, fill_fixed_str,
};
use zerocopy::IntoBytes;

use crate::microvisor::Microvisor;

const ESRCH: i32 = 3;
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

/// A microvisor in memory.
#[derive(Debug)]
pub struct FakeMicrovisor {
    host: HostInfo,
    domains: Mutex<BTreeMap<u32, DomainInfo>>,
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
            ..HostInfo::default()
        };
        fill_fixed_str(&mut host.version, "0.1.0-fake");
        Self {
            host,
            domains: Mutex::new(BTreeMap::new()),
            fault: Mutex::new(Fault::None),
            calls: AtomicUsize::new(0),
        }
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
        match op {
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
