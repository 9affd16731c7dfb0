//! Talking to the microvisor: the [`Microvisor`] trait (one control call), and the typed
//! operations on top of it that decode and validate the microvisor's records.
//!
//! The real implementation is [`Device`](crate::device::Device) (`/dev/microvisor`); host
//! tests use [`FakeMicrovisor`](crate::fake::FakeMicrovisor). Everything the microvisor
//! returns is checked before it becomes a [`Host`] or [`Domain`]: result counts against the
//! buffer, states and shutdown reasons against the known values, names against the
//! NUL-padded ASCII rule, and list pages for ascending domain ids (so a broken microvisor
//! cannot make dom0d loop forever).
#![forbid(unsafe_code)]

use shared_abi::control::{
    ControlOp, DOMAIN_FLAG_PRIVILEGED, DomainInfo, DomainState, ForeignMapRequest, HostInfo,
    MAX_BUFFER, fixed_str,
};
use shared_abi::sched::ShutdownReason;
use std::sync::Arc;

use pv_drivers::SharedMem;
use shared_abi::control::DomainParam;
use zerocopy::{FromBytes, IntoBytes};

use crate::proto::{ApiError, Domain, Host, MAX_DOMAINS_PER_REPLY, Reason, State};

/// `ESRCH`: no such domain.
pub const ESRCH: i32 = 3;

/// Access to the microvisor's control hypercall.
///
/// Implementations must be usable from any thread; dom0d shares one across connections.
pub trait Microvisor: Send + Sync {
    /// Issues control operation `op` with argument `arg` on `buf` (at most
    /// `shared_abi::control::MAX_BUFFER` bytes, copied in before the call and back after a
    /// successful one). Returns the call's non-negative result or the positive errno.
    ///
    /// # Errors
    /// The positive errno of a failed call.
    fn control(&self, op: u64, arg: u64, buf: &mut [u8]) -> Result<u64, i32>;

    /// Maps `pages` foreign-window slots from `first_slot` read-write into this process
    /// (`mmap` of the device at offset `first_slot` × 4096), for the domain builder.
    ///
    /// # Errors
    /// The errno of the failed `mmap`; [`ENODEV`] (the default) where the implementation
    /// cannot map the window.
    fn map_window(&self, first_slot: u64, pages: usize) -> Result<Box<dyn WindowMap + '_>, i32> {
        let _ = (first_slot, pages);
        Err(ENODEV)
    }

    /// Maps foreign-window slot `slot` read-write into this process as memory the other
    /// domain shares ([`PageMap`]), for ring pages kept mapped for a domain's life (its
    /// console). Map only a slot that `ForeignMap` filled.
    ///
    /// # Errors
    /// The errno of the failed `mmap`; [`ENODEV`] (the default) where the implementation
    /// cannot map the window.
    fn map_page(&self, slot: u64) -> Result<Arc<dyn PageMap>, i32> {
        let _ = slot;
        Err(ENODEV)
    }
}

impl<M: Microvisor + ?Sized> Microvisor for std::sync::Arc<M> {
    fn control(&self, op: u64, arg: u64, buf: &mut [u8]) -> Result<u64, i32> {
        (**self).control(op, arg, buf)
    }
    fn map_window(&self, first_slot: u64, pages: usize) -> Result<Box<dyn WindowMap + '_>, i32> {
        (**self).map_window(first_slot, pages)
    }
    fn map_page(&self, slot: u64) -> Result<Arc<dyn PageMap>, i32> {
        (**self).map_page(slot)
    }
}

/// One foreign-window slot mapped into this process as shared memory
/// ([`Microvisor::map_page`]): the other domain may write it at any time, so it is only
/// reached through [`SharedMem`] (copies and acquire/release index accesses). The process
/// mapping goes when the last reference is dropped; the slot itself stays filled until
/// `ForeignUnmap` (see [`crate::pages`]).
pub trait PageMap: SharedMem + Send + Sync + std::fmt::Debug {}

/// `ENODEV`: what [`Microvisor::map_window`] answers where nothing can be mapped.
pub const ENODEV: i32 = 19;

/// Foreign-window slots mapped read-write into this process ([`Microvisor::map_window`]);
/// unmapped when dropped.
pub trait WindowMap: std::fmt::Debug {
    /// Copies `bytes` to `offset` bytes into the mapping (slot `offset / 4096` of it).
    ///
    /// # Errors
    /// `EINVAL` if the range does not lie inside the mapping. (On the real device a write
    /// to a slot that holds no frame is a fatal SIGSEGV, so callers write only to slots
    /// that `ForeignMap` filled; the fake answers `EFAULT` instead.)
    fn write(&mut self, offset: usize, bytes: &[u8]) -> Result<(), i32>;

    /// Unmaps now, reporting the errno of a failed `munmap`.
    ///
    /// # Errors
    /// The errno.
    fn unmap(self: Box<Self>) -> Result<(), i32>;
}

/// Issues control operation `op`; a failure becomes [`ApiError::Hypercall`] naming it.
pub(crate) fn call(
    mv: &dyn Microvisor,
    op: ControlOp,
    arg: u64,
    buf: &mut [u8],
) -> Result<u64, ApiError> {
    mv.control(op as u64, arg, buf)
        .map_err(|errno| ApiError::Hypercall {
            op: format!("{op:?}"),
            errno,
        })
}

fn bad(reason: String) -> ApiError {
    ApiError::BadRecord { reason }
}

/// Asks the microvisor for its host information.
///
/// # Errors
/// [`ApiError::Hypercall`] if the call fails, [`ApiError::BadRecord`] if the result does
/// not validate.
pub fn host_info(mv: &dyn Microvisor) -> Result<Host, ApiError> {
    decode_host(&host_record(mv)?)
}

/// Asks the microvisor for its raw [`HostInfo`] record (checking only its size), e.g. for
/// the foreign window, which [`Host`] does not carry.
///
/// # Errors
/// [`ApiError::Hypercall`] if the call fails, [`ApiError::BadRecord`] if it returns
/// another size.
pub fn host_record(mv: &dyn Microvisor) -> Result<HostInfo, ApiError> {
    let mut buf = [0u8; size_of::<HostInfo>()];
    let n = call(mv, ControlOp::HostInfo, 0, &mut buf)?;
    if n != buf.len() as u64 {
        return Err(bad(format!(
            "HostInfo returned {n} bytes, expected {}",
            buf.len()
        )));
    }
    HostInfo::read_from_bytes(&buf)
        .map_err(|_| bad("HostInfo record has the wrong size".to_owned()))
}

/// The input buffer of `ForeignMap`: a [`ForeignMapRequest`] (domid, reserved, gfn; 16
/// bytes, little-endian).
#[must_use]
pub fn foreign_map_request(domid: u32, reserved: u32, gfn: u64) -> [u8; 16] {
    let mut buf = [0u8; size_of::<ForeignMapRequest>()];
    buf.copy_from_slice(
        ForeignMapRequest {
            domid,
            reserved,
            gfn,
        }
        .as_bytes(),
    );
    buf
}

/// `ForeignMap`: maps frame `gfn` of domain `domid` into foreign-window `slot`. Returns
/// the call's raw result (0 on success) or the positive errno, as the ABI documents them:
/// `EINVAL` (slot outside the window, `gfn` not RAM of the domain), `ESRCH` (no such
/// running domain, or domain 0), `EBUSY` (slot in use).
///
/// # Errors
/// The errno of the failed call.
pub fn foreign_map(mv: &dyn Microvisor, slot: u64, domid: u32, gfn: u64) -> Result<u64, i32> {
    let mut buf = foreign_map_request(domid, 0, gfn);
    mv.control(ControlOp::ForeignMap as u64, slot, &mut buf)
}

/// `ForeignUnmap`: empties foreign-window `slot`. Returns the call's raw result (0 on
/// success) or the positive errno: `EINVAL` (slot outside the window), `ENOENT` (slot
/// empty).
///
/// # Errors
/// The errno of the failed call.
pub fn foreign_unmap(mv: &dyn Microvisor, slot: u64) -> Result<u64, i32> {
    mv.control(ControlOp::ForeignUnmap as u64, slot, &mut [])
}

/// `EvtchnAllocUnbound`: a new port of DomU `domid`, unbound, that domain 0 may bind.
/// Errnos as the ABI documents them: `ESRCH` (no such DomU, or 0), `ENOSPC`.
///
/// # Errors
/// The errno of the failed call (also `ERANGE` for a result that is not a port).
pub fn evtchn_alloc_unbound(mv: &dyn Microvisor, domid: u32) -> Result<u32, i32> {
    let port = mv.control(
        ControlOp::EvtchnAllocUnbound as u64,
        u64::from(domid),
        &mut [],
    )?;
    port_of(port)
}

/// `EvtchnBindInterdomain`: a new domain 0 port connected to DomU `domid`'s unbound
/// `port`. `ESRCH` (no such DomU), `EINVAL` (not an unbound port for domain 0), `ENOSPC`.
///
/// # Errors
/// The errno of the failed call (also `ERANGE` for a result that is not a port).
pub fn evtchn_bind_interdomain(mv: &dyn Microvisor, domid: u32, port: u32) -> Result<u32, i32> {
    let arg = (u64::from(domid) << 32) | u64::from(port);
    let local = mv.control(ControlOp::EvtchnBindInterdomain as u64, arg, &mut [])?;
    port_of(local)
}

fn port_of(raw: u64) -> Result<u32, i32> {
    u32::try_from(raw)
        .ok()
        .filter(|p| (1..shared_abi::event_channel::MAX_PORTS).contains(p))
        .ok_or(ERANGE)
}

/// `ERANGE`: a result outside what the ABI allows.
pub const ERANGE: i32 = 34;

/// `EvtchnSend`: signals the peer of domain 0 port `port` (dropped if the peer is gone).
/// `EINVAL` if the port is not allocated.
///
/// # Errors
/// The errno of the failed call.
pub fn evtchn_send(mv: &dyn Microvisor, port: u32) -> Result<(), i32> {
    mv.control(ControlOp::EvtchnSend as u64, u64::from(port), &mut [])
        .map(|_| ())
}

/// `EvtchnClose`: frees domain 0 port `port`. `EINVAL` if it is not allocated.
///
/// # Errors
/// The errno of the failed call.
pub fn evtchn_close(mv: &dyn Microvisor, port: u32) -> Result<(), i32> {
    mv.control(ControlOp::EvtchnClose as u64, u64::from(port), &mut [])
        .map(|_| ())
}

/// Most `EvtchnTakePending` calls one [`evtchn_take_pending`] makes: a microvisor that
/// never runs out of pending ports cannot keep dom0d in a loop.
pub const MAX_TAKE_PENDING_CALLS: usize = 16;

/// `EvtchnTakePending` until it returns 0: the domain 0 ports that were pending (each now
/// cleared), ascending and without duplicates. Ports outside `1..MAX_PORTS` are dropped.
///
/// # Errors
/// The errno of the failed call; ports taken by earlier calls are lost then (their
/// owners catch up on their next event or poll).
pub fn evtchn_take_pending(mv: &dyn Microvisor) -> Result<Vec<u32>, i32> {
    let mut buf = vec![0u8; MAX_BUFFER];
    let mut ports = Vec::new();
    for _ in 0..MAX_TAKE_PENDING_CALLS {
        buf.fill(0);
        let n = mv.control(ControlOp::EvtchnTakePending as u64, 0, &mut buf)?;
        let n = usize::try_from(n).unwrap_or(usize::MAX).min(MAX_BUFFER / 4);
        if n == 0 {
            break;
        }
        ports.extend(
            buf.chunks_exact(4)
                .take(n)
                .filter_map(|c| c.try_into().ok().map(u32::from_le_bytes))
                .filter(|p| (1..shared_abi::event_channel::MAX_PORTS).contains(p)),
        );
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// `DomainSetParam`: sets HVM parameter `index` (`shared_abi::hvm::HVM_PARAM_*`) of DomU
/// `domid` to `value`. `EINVAL` (another index, a frame outside the domain's RAM, a port
/// outside `1..MAX_PORTS`), `ESRCH` (no such DomU).
///
/// # Errors
/// The errno of the failed call.
pub fn domain_set_param(
    mv: &dyn Microvisor,
    domid: u32,
    index: u32,
    value: u64,
) -> Result<(), i32> {
    let mut buf = [0u8; size_of::<DomainParam>()];
    buf.copy_from_slice(
        DomainParam {
            index,
            reserved: 0,
            value,
        }
        .as_bytes(),
    );
    mv.control(ControlOp::DomainSetParam as u64, u64::from(domid), &mut buf)
        .map(|_| ())
}

/// Validates a raw [`HostInfo`].
///
/// # Errors
/// [`ApiError::BadRecord`] for a malformed version string, no pCPUs, or domain 0 on a
/// pCPU that does not exist.
pub fn decode_host(raw: &HostInfo) -> Result<Host, ApiError> {
    let version = fixed_str(&raw.version)
        .ok_or_else(|| bad("the microvisor version is not NUL-padded ASCII".to_owned()))?;
    if raw.pcpus == 0 || raw.dom0_pcpu >= raw.pcpus {
        return Err(bad(format!(
            "host reports {} pCPUs with domain 0 on pCPU {}",
            raw.pcpus, raw.dom0_pcpu
        )));
    }
    Ok(Host {
        pcpus: raw.pcpus,
        dom0_pcpu: raw.dom0_pcpu,
        mem_total_kib: raw.mem_total_kib,
        mem_free_kib: raw.mem_free_kib,
        tsc_khz: raw.tsc_khz,
        uptime_ns: raw.uptime_ns,
        microvisor_version: version.to_owned(),
        control_version: raw.control_version,
    })
}

/// Validates a raw [`DomainInfo`].
///
/// # Errors
/// [`ApiError::BadRecord`] for an unknown state or shutdown reason or a malformed name.
pub fn decode_domain(raw: &DomainInfo) -> Result<Domain, ApiError> {
    let domid = raw.domid;
    let state = match DomainState::from_u32(raw.state) {
        Some(DomainState::Running) => State::Running,
        Some(DomainState::Blocked) => State::Blocked,
        Some(DomainState::Paused) => State::Paused,
        Some(DomainState::Shutdown) => State::Shutdown,
        Some(DomainState::Crashed) => State::Crashed,
        Some(DomainState::Dying) => State::Dying,
        None => {
            return Err(bad(format!(
                "domain {domid} has unknown state {}",
                raw.state
            )));
        }
    };
    let reason = if state == State::Shutdown {
        Some(match ShutdownReason::try_from(raw.shutdown_reason) {
            Ok(ShutdownReason::Poweroff) => Reason::Poweroff,
            Ok(ShutdownReason::Reboot) => Reason::Reboot,
            Ok(ShutdownReason::Suspend) => Reason::Suspend,
            Ok(ShutdownReason::Crash) => Reason::Crash,
            Ok(ShutdownReason::Watchdog) => Reason::Watchdog,
            Ok(ShutdownReason::SoftReset) => Reason::SoftReset,
            Err(_) => {
                return Err(bad(format!(
                    "domain {domid} has unknown shutdown reason {}",
                    raw.shutdown_reason
                )));
            }
        })
    } else {
        None
    };
    let name = fixed_str(&raw.name).ok_or_else(|| {
        bad(format!(
            "domain {domid} has a name that is not NUL-padded ASCII"
        ))
    })?;
    Ok(Domain {
        domid,
        name: name.to_owned(),
        state,
        reason,
        privileged: raw.flags & DOMAIN_FLAG_PRIVILEGED != 0,
        vcpus: raw.vcpus,
        pcpu: raw.pcpu,
        mem_kib: raw.mem_kib,
        cpu_time_ns: raw.cpu_time_ns,
    })
}

/// Asks the microvisor for one domain. `ESRCH` becomes [`ApiError::NoSuchDomain`].
///
/// # Errors
/// [`ApiError::NoSuchDomain`], [`ApiError::Hypercall`] or [`ApiError::BadRecord`].
pub fn domain_info(mv: &dyn Microvisor, domid: u32) -> Result<Domain, ApiError> {
    let mut buf = [0u8; size_of::<DomainInfo>()];
    let n = match call(mv, ControlOp::DomainInfo, u64::from(domid), &mut buf) {
        Err(ApiError::Hypercall { errno: ESRCH, .. }) => {
            return Err(ApiError::NoSuchDomain { domid });
        }
        other => other?,
    };
    if n != buf.len() as u64 {
        return Err(bad(format!(
            "DomainInfo returned {n} bytes, expected {}",
            buf.len()
        )));
    }
    let raw = DomainInfo::read_from_bytes(&buf)
        .map_err(|_| bad("DomainInfo record has the wrong size".to_owned()))?;
    if raw.domid != domid {
        return Err(bad(format!(
            "asked for domain {domid}, got a record for domain {}",
            raw.domid
        )));
    }
    decode_domain(&raw)
}

/// One page of the domain list: domains with `domid >= from`, ascending, at most
/// [`MAX_DOMAINS_PER_REPLY`], gathered from as many `DomainList` calls as needed, and the
/// `from` of the next page (`None` when the list is complete).
///
/// # Errors
/// [`ApiError::Hypercall`] or [`ApiError::BadRecord`] (also for a page that is not
/// ascending, or that starts below what was asked for).
pub fn list_domains(
    mv: &dyn Microvisor,
    from: u32,
) -> Result<(Vec<Domain>, Option<u32>), ApiError> {
    const RECORD: usize = size_of::<DomainInfo>();
    let mut buf = vec![0u8; MAX_BUFFER - MAX_BUFFER % RECORD];
    let capacity = buf.len() / RECORD;
    let mut domains: Vec<Domain> = Vec::new();
    let mut next = from;
    loop {
        buf.fill(0);
        let n = call(mv, ControlOp::DomainList, u64::from(next), &mut buf)?;
        if n == 0 {
            return Ok((domains, None));
        }
        let count = usize::try_from(n).unwrap_or(usize::MAX);
        if count > capacity {
            return Err(bad(format!(
                "DomainList returned {n} records, but only {capacity} fit the buffer"
            )));
        }
        for chunk in buf.chunks_exact(RECORD).take(count) {
            let raw = DomainInfo::read_from_bytes(chunk)
                .map_err(|_| bad("DomainList record has the wrong size".to_owned()))?;
            if raw.domid < next {
                return Err(bad(format!(
                    "DomainList from {next} returned domain {} out of order",
                    raw.domid
                )));
            }
            let domain = decode_domain(&raw)?;
            let Some(after) = raw.domid.checked_add(1) else {
                // The largest possible domid: nothing can follow it.
                domains.push(domain);
                return Ok((domains, None));
            };
            next = after;
            domains.push(domain);
            if domains.len() == MAX_DOMAINS_PER_REPLY {
                return Ok((domains, Some(next)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use shared_abi::control::fill_fixed_str;

    use super::*;
    use crate::fake::{FakeMicrovisor, Fault, domain_record};

    #[test]
    fn host_info_is_decoded() {
        let fake = FakeMicrovisor::new();
        let h = host_info(&fake).unwrap();
        assert_eq!(h.pcpus, 2);
        assert_eq!(h.dom0_pcpu, 0);
        assert_eq!(h.microvisor_version, "0.1.0-fake");
        assert_eq!(h.control_version, 1);
        assert_eq!(h.mem_total_kib, 4 * 1024 * 1024);
    }

    #[test]
    fn bad_host_records_are_refused() {
        let good = {
            let mut h = HostInfo {
                pcpus: 2,
                ..HostInfo::default()
            };
            fill_fixed_str(&mut h.version, "1.0");
            h
        };
        assert!(decode_host(&good).is_ok());
        let mut h = good;
        h.version[5] = b'x'; // text after the NUL padding
        assert!(matches!(decode_host(&h), Err(ApiError::BadRecord { .. })));
        let mut h = good;
        h.version[0] = 0x07;
        assert!(decode_host(&h).is_err());
        let mut h = good;
        h.pcpus = 0;
        assert!(decode_host(&h).is_err());
        let mut h = good;
        h.dom0_pcpu = 2;
        assert!(decode_host(&h).is_err());
    }

    #[test]
    fn domain_records_are_validated() {
        let d = decode_domain(&domain_record(0, "Domain-0", DomainState::Running, 1024)).unwrap();
        assert_eq!(d.name, "Domain-0");
        assert_eq!(d.state, State::Running);
        assert!(d.privileged);
        assert_eq!(d.reason, None);

        let mut raw = domain_record(3, "x", DomainState::Shutdown, 1);
        raw.shutdown_reason = 4;
        let d = decode_domain(&raw).unwrap();
        assert_eq!(
            (d.state, d.reason),
            (State::Shutdown, Some(Reason::Watchdog))
        );
        assert!(!d.privileged);

        raw.shutdown_reason = 99;
        assert!(matches!(
            decode_domain(&raw),
            Err(ApiError::BadRecord { .. })
        ));

        let mut raw = domain_record(3, "x", DomainState::Running, 1);
        raw.state = 0;
        let e = decode_domain(&raw).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the microvisor returned a bad record: domain 3 has unknown state 0"
        );
        raw.state = 6;
        let dying = decode_domain(&raw).unwrap();
        assert_eq!(dying.state, State::Dying);
        assert!(dying.state.ended());
        assert_eq!(crate::output::state_flags(&dying), "-----d");
        raw.state = 7;
        assert!(decode_domain(&raw).is_err());

        let mut raw = domain_record(3, "x", DomainState::Blocked, 1);
        raw.name[31] = b'y'; // no terminating NUL is fine, padding after text is not
        raw.name[1] = 0;
        assert!(decode_domain(&raw).is_err());
        let mut raw = domain_record(3, "", DomainState::Blocked, 1);
        raw.name = [b'a'; 32];
        assert_eq!(decode_domain(&raw).unwrap().name.len(), 32);
        raw.name[0] = 0xc3;
        assert!(decode_domain(&raw).is_err(), "non-ASCII names are refused");
        // A reason on a running domain is ignored.
        let mut raw = domain_record(3, "x", DomainState::Running, 1);
        raw.shutdown_reason = 99;
        assert_eq!(decode_domain(&raw).unwrap().reason, None);
    }

    #[test]
    fn unknown_domain_is_no_such_domain() {
        let fake = FakeMicrovisor::new();
        assert_eq!(
            domain_info(&fake, 4000),
            Err(ApiError::NoSuchDomain { domid: 4000 })
        );
        assert_eq!(domain_info(&fake, 1).unwrap().name, "hello1");
    }

    #[test]
    fn other_errnos_are_reported_with_the_operation() {
        let fake = FakeMicrovisor::new();
        fake.set_fault(Fault::Errno(13));
        assert_eq!(
            domain_info(&fake, 0),
            Err(ApiError::Hypercall {
                op: "DomainInfo".into(),
                errno: 13
            })
        );
        let e = host_info(&fake).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the microvisor's HostInfo call failed with EACCES (Permission denied)"
        );
        assert!(list_domains(&fake, 0).is_err());
    }

    #[test]
    fn a_record_for_the_wrong_domain_is_refused() {
        let fake = FakeMicrovisor::new();
        fake.set_fault(Fault::WrongDomain);
        assert!(matches!(
            domain_info(&fake, 1),
            Err(ApiError::BadRecord { .. })
        ));
    }

    /// 300 domains with gaps: several DomainList pages (56 records each) per reply, and
    /// several replies (256 domains each).
    fn many() -> FakeMicrovisor {
        let fake = FakeMicrovisor::empty();
        for i in 0..300u32 {
            fake.insert(domain_record(
                i * 3,
                &format!("d{i}"),
                DomainState::Blocked,
                1024,
            ));
        }
        fake
    }

    #[test]
    fn list_pages_through_domain_list_calls() {
        let fake = many();
        let (first, next) = list_domains(&fake, 0).unwrap();
        assert_eq!(first.len(), MAX_DOMAINS_PER_REPLY);
        let ids: Vec<u32> = first.iter().map(|d| d.domid).collect();
        let expected: Vec<u32> = (0..256).map(|i| i * 3).collect();
        assert_eq!(ids, expected);
        assert_eq!(next, Some(255 * 3 + 1));
        // 256 records at 56 per 4 KiB page: 5 calls.
        assert_eq!(fake.calls(), 5);

        let (rest, next) = list_domains(&fake, next.unwrap()).unwrap();
        assert_eq!(next, None);
        let ids: Vec<u32> = rest.iter().map(|d| d.domid).collect();
        let expected: Vec<u32> = (256..300).map(|i| i * 3).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn list_from_the_middle_and_past_the_end() {
        let fake = many();
        let (ds, next) = list_domains(&fake, 100).unwrap();
        assert_eq!(ds[0].domid, 102);
        assert_eq!(ds.len(), 256);
        assert!(next.is_some());
        assert_eq!(list_domains(&fake, 100_000).unwrap(), (Vec::new(), None));
        assert_eq!(
            list_domains(&FakeMicrovisor::empty(), 0).unwrap(),
            (Vec::new(), None)
        );
    }

    #[test]
    fn list_ends_at_the_largest_domid() {
        let fake = FakeMicrovisor::empty();
        fake.insert(domain_record(u32::MAX, "last", DomainState::Running, 1));
        let (ds, next) = list_domains(&fake, 5).unwrap();
        assert_eq!(ds.len(), 1);
        assert_eq!(next, None);
    }

    #[test]
    fn broken_list_pages_are_refused_not_looped_on() {
        let fake = many();
        fake.set_fault(Fault::ListRepeats);
        let e = list_domains(&fake, 0).unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
        assert!(fake.calls() <= 2);

        let fake = many();
        fake.set_fault(Fault::ListOverflow);
        let e = list_domains(&fake, 0).unwrap_err();
        assert!(e.to_string().contains("only 56 fit"), "{e}");
    }
}
