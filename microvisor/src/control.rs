//! The control hypercall ([`shared_abi::control`]): privileged operations for domain 0.
//!
//! Portable: the domain table is reached through [`ControlSource`], the caller's buffer by
//! the vCPU code, so every check is tested on the host. Checks run in the order the ABI
//! documents: privilege, version, operation, buffer length, then the operation's own.

use shared_abi::Errno;
use shared_abi::control::{
    CONTROL_VERSION, ControlOp, DomainCreateRequest, DomainInfo, DomainParam, ForeignMapRequest,
    GRANT_MAP_READONLY, GrantCopySegment, GrantMapRequest, HostInfo, MAX_BUFFER,
    MAX_DOMAIN_MEM_MIB, MIN_DOMAIN_MEM_MIB, VcpuEntry, fixed_str,
};
use shared_abi::event_channel::MAX_PORTS;
use shared_abi::hvm::{
    HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN,
};
use zerocopy::{FromBytes, IntoBytes};

/// What the control operations read.
pub trait ControlSource {
    /// Facts about the machine.
    fn host_info(&self) -> HostInfo;
    /// The existing domain with the smallest id `>= from`, if any.
    fn domain_from(&self, from: u32) -> Option<DomainInfo>;
    /// Takes and clears domain 0's pending event bits.
    fn take_events(&self) -> u64;
}

/// A decoded control call.
#[derive(Clone, Copy, Debug)]
pub struct ControlCall {
    /// `RDI`.
    pub op: u64,
    /// `RDX`: buffer length.
    pub buf_len: u64,
    /// `R10`.
    pub arg: u64,
    /// `R8`.
    pub version: u64,
    /// The caller is domain 0.
    pub privileged: bool,
    /// The caller's CPL.
    pub cpl: u8,
}

/// What the caller of [`dispatch`] must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Copy `out[..len]` to the caller's buffer, then return `ret`.
    Reply {
        /// The call's result.
        ret: i64,
        /// Bytes of `out` to copy (never more than the buffer length).
        len: usize,
    },
    /// Map frame `gfn` of `domid` into foreign-window `slot`, then return 0.
    Map {
        /// Window slot (checked against the window size).
        slot: u64,
        /// Domain (not 0).
        domid: u32,
        /// Its guest frame number.
        gfn: u64,
    },
    /// Unmap foreign-window `slot`, then return 0.
    Unmap {
        /// Window slot (checked against the window size).
        slot: u64,
    },
    /// Map grant `gref` of DomU `domid` into foreign-window `slot`, then return 0.
    GrantMap {
        /// Window slot (checked against the window size).
        slot: u64,
        /// The granter (not 0, fits a domid).
        domid: u16,
        /// The grant reference.
        gref: u32,
        /// Writable (else read-only).
        write: bool,
    },
    /// Unmap the grant mapping in foreign-window `slot`, then return 0.
    GrantUnmap {
        /// Window slot (checked against the window size).
        slot: u64,
    },
    /// Run the `count` copy segments at the start of the buffer (its first `len` bytes,
    /// segments then data), write the buffer back and return how many succeeded.
    GrantCopy {
        /// Segments (at least 1; they fit in `len`).
        count: usize,
        /// Buffer length.
        len: usize,
    },
    /// Create an empty, paused domain, then return its domid.
    Create {
        /// Memory in MiB (checked against the ABI's bounds).
        mem_mib: u32,
        /// Name, NUL-padded (checked: printable ASCII, not empty).
        name: [u8; 32],
    },
    /// Set the entry state of a domain that has not run, then return 0.
    SetEntry {
        /// The domain (not 0).
        domid: u32,
        /// Guest-physical entry point.
        entry: u64,
        /// Guest-physical `hvm_start_info`.
        start_info: u64,
    },
    /// Apply a lifecycle operation to `domid` (never 0), then return 0.
    Lifecycle {
        /// What to do.
        op: LifecycleOp,
        /// The domain.
        domid: u32,
    },
    /// An event-channel operation of domain 0; return what it returns.
    Evtchn(Dom0Evtchn),
    /// Write up to `max` pending domain 0 ports (`u32`s, ascending) to the buffer, clearing
    /// them, then return how many.
    TakePending {
        /// How many fit in the buffer (at least 1).
        max: usize,
    },
    /// Set HVM parameter `index` of DomU `domid` (checked: one of the store and console
    /// parameters; a port in range; the frame is checked against the domain's RAM by the
    /// caller), then return 0.
    SetParam {
        /// The DomU.
        domid: u16,
        /// `HVM_PARAM_*`.
        index: u32,
        /// The value.
        value: u64,
    },
}

/// Domain 0's event-channel operations (arguments checked for range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dom0Evtchn {
    /// A new port of DomU `domid`, unbound for domain 0.
    AllocUnbound {
        /// The DomU (not 0).
        domid: u16,
    },
    /// A new domain 0 port connected to `port` of DomU `domid`.
    Bind {
        /// The DomU (not 0).
        domid: u16,
        /// Its unbound port (`1..MAX_PORTS`).
        port: u32,
    },
    /// Signal the peer of domain 0's `port`.
    Send {
        /// `1..MAX_PORTS`.
        port: u32,
    },
    /// Close domain 0's `port`.
    Close {
        /// `1..MAX_PORTS`.
        port: u32,
    },
}

/// Lifecycle operations on a DomU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleOp {
    /// [`ControlOp::DomainPause`].
    Pause,
    /// [`ControlOp::DomainUnpause`].
    Unpause,
    /// [`ControlOp::DomainDestroy`].
    Destroy,
}

/// Validates and runs `call`, filling `out` with the bytes to copy to the caller's
/// buffer. `read_input` fills a slice from the start of the caller's buffer; it is called
/// only by operations that take input, after the common checks.
pub fn dispatch(
    call: &ControlCall,
    src: &impl ControlSource,
    read_input: impl FnOnce(&mut [u8]) -> Result<(), Errno>,
    out: &mut [u8; MAX_BUFFER],
) -> Result<Action, Errno> {
    if !call.privileged || call.cpl != 0 {
        return Err(Errno::EPERM);
    }
    if call.version != CONTROL_VERSION {
        return Err(Errno::EACCES);
    }
    let op = ControlOp::try_from(call.op)?;
    let len = usize::try_from(call.buf_len)
        .ok()
        .filter(|&l| l <= MAX_BUFFER)
        .ok_or(Errno::EINVAL)?;
    let buf = &mut out[..len];
    match op {
        ControlOp::HostInfo => {
            if call.arg != 0 {
                return Err(Errno::EINVAL);
            }
            put(buf, 0, &src.host_info())?;
            Ok(reply(size_of::<HostInfo>() as i64, size_of::<HostInfo>()))
        }
        ControlOp::DomainInfo => {
            let domid = u32::try_from(call.arg).map_err(|_| Errno::ESRCH)?;
            let d = src
                .domain_from(domid)
                .filter(|d| d.domid == domid)
                .ok_or(Errno::ESRCH)?;
            put(buf, 0, &d)?;
            Ok(reply(
                size_of::<DomainInfo>() as i64,
                size_of::<DomainInfo>(),
            ))
        }
        ControlOp::EventsTake => {
            if call.arg != 0 {
                return Err(Errno::EINVAL);
            }
            // Bit 63 is never an event, so the mask is a non-negative result.
            Ok(reply((src.take_events() & !(1 << 63)) as i64, 0))
        }
        ControlOp::ForeignMap => {
            let slot = window_slot(src, call.arg)?;
            let mut raw = [0u8; size_of::<ForeignMapRequest>()];
            if len < raw.len() {
                return Err(Errno::EINVAL);
            }
            read_input(&mut raw)?;
            let req = ForeignMapRequest::read_from_bytes(&raw).map_err(|_| Errno::EINVAL)?;
            if req.reserved != 0 {
                return Err(Errno::EINVAL);
            }
            if req.domid == 0 {
                return Err(Errno::ESRCH);
            }
            Ok(Action::Map {
                slot,
                domid: req.domid,
                gfn: req.gfn,
            })
        }
        ControlOp::ForeignUnmap => Ok(Action::Unmap {
            slot: window_slot(src, call.arg)?,
        }),
        ControlOp::DomainCreate => {
            if call.arg != 0 {
                return Err(Errno::EINVAL);
            }
            let mut raw = [0u8; size_of::<DomainCreateRequest>()];
            if len < raw.len() {
                return Err(Errno::EINVAL);
            }
            read_input(&mut raw)?;
            let req = DomainCreateRequest::read_from_bytes(&raw).map_err(|_| Errno::EINVAL)?;
            let name_ok = fixed_str(&req.name).is_some_and(|n| !n.is_empty());
            if req.vcpus != 1
                || req.reserved != [0, 0]
                || !(MIN_DOMAIN_MEM_MIB..=MAX_DOMAIN_MEM_MIB).contains(&req.mem_mib)
                || !name_ok
            {
                return Err(Errno::EINVAL);
            }
            Ok(Action::Create {
                mem_mib: req.mem_mib,
                name: req.name,
            })
        }
        ControlOp::DomainSetEntry => {
            let domid = existing_domu(src, call.arg)?;
            let mut raw = [0u8; size_of::<VcpuEntry>()];
            if len < raw.len() {
                return Err(Errno::EINVAL);
            }
            read_input(&mut raw)?;
            let e = VcpuEntry::read_from_bytes(&raw).map_err(|_| Errno::EINVAL)?;
            Ok(Action::SetEntry {
                domid,
                entry: e.entry,
                start_info: e.start_info,
            })
        }
        ControlOp::DomainPause | ControlOp::DomainUnpause | ControlOp::DomainDestroy => {
            let domid = existing_domu(src, call.arg)?;
            let op = match op {
                ControlOp::DomainPause => LifecycleOp::Pause,
                ControlOp::DomainUnpause => LifecycleOp::Unpause,
                _ => LifecycleOp::Destroy,
            };
            Ok(Action::Lifecycle { op, domid })
        }
        ControlOp::EvtchnAllocUnbound => Ok(Action::Evtchn(Dom0Evtchn::AllocUnbound {
            domid: domu(src, call.arg)?,
        })),
        ControlOp::EvtchnBindInterdomain => {
            let domid = domu(src, call.arg >> 32)?;
            let port = port(call.arg & 0xFFFF_FFFF)?;
            Ok(Action::Evtchn(Dom0Evtchn::Bind { domid, port }))
        }
        ControlOp::EvtchnSend => Ok(Action::Evtchn(Dom0Evtchn::Send {
            port: port(call.arg)?,
        })),
        ControlOp::EvtchnClose => Ok(Action::Evtchn(Dom0Evtchn::Close {
            port: port(call.arg)?,
        })),
        ControlOp::EvtchnTakePending => {
            if call.arg != 0 {
                return Err(Errno::EINVAL);
            }
            let max = len / size_of::<u32>();
            if max == 0 {
                return Err(Errno::ENOSPC);
            }
            Ok(Action::TakePending { max })
        }
        ControlOp::DomainSetParam => {
            let domid = domu(src, call.arg)?;
            let mut raw = [0u8; size_of::<DomainParam>()];
            if len < raw.len() {
                return Err(Errno::EINVAL);
            }
            read_input(&mut raw)?;
            let p = DomainParam::read_from_bytes(&raw).map_err(|_| Errno::EINVAL)?;
            if p.reserved != 0 {
                return Err(Errno::EINVAL);
            }
            match p.index {
                HVM_PARAM_STORE_PFN | HVM_PARAM_CONSOLE_PFN => {}
                HVM_PARAM_STORE_EVTCHN | HVM_PARAM_CONSOLE_EVTCHN => {
                    port(p.value)?;
                }
                _ => return Err(Errno::EINVAL),
            }
            Ok(Action::SetParam {
                domid,
                index: p.index,
                value: p.value,
            })
        }
        ControlOp::GrantMap => {
            let slot = window_slot(src, call.arg)?;
            let mut raw = [0u8; size_of::<GrantMapRequest>()];
            if len < raw.len() {
                return Err(Errno::EINVAL);
            }
            read_input(&mut raw)?;
            let req = GrantMapRequest::read_from_bytes(&raw).map_err(|_| Errno::EINVAL)?;
            if req.reserved != 0 || req.flags & !GRANT_MAP_READONLY != 0 {
                return Err(Errno::EINVAL);
            }
            let domid = u16::try_from(req.domid)
                .ok()
                .filter(|&d| d != 0)
                .ok_or(Errno::ESRCH)?;
            Ok(Action::GrantMap {
                slot,
                domid,
                gref: req.gref,
                write: req.flags & GRANT_MAP_READONLY == 0,
            })
        }
        ControlOp::GrantUnmap => Ok(Action::GrantUnmap {
            slot: window_slot(src, call.arg)?,
        }),
        ControlOp::GrantCopy => {
            let count = usize::try_from(call.arg)
                .ok()
                .filter(|&n| n > 0)
                .filter(|&n| {
                    n.checked_mul(size_of::<GrantCopySegment>())
                        .is_some_and(|b| b <= len)
                })
                .ok_or(Errno::EINVAL)?;
            Ok(Action::GrantCopy { count, len })
        }
        ControlOp::DomainList => {
            const REC: usize = size_of::<DomainInfo>();
            if len < REC {
                return Err(Errno::ENOSPC);
            }
            let mut next = u32::try_from(call.arg).ok();
            let mut count = 0;
            while let Some(from) = next
                && (count + 1) * REC <= len
                && let Some(d) = src.domain_from(from)
            {
                put(buf, count * REC, &d)?;
                count += 1;
                next = d.domid.checked_add(1);
            }
            Ok(reply(count as i64, count * REC))
        }
    }
}

/// `arg` names an existing DomU: `EPERM` for domain 0, `ESRCH` if there is none.
fn existing_domu(src: &impl ControlSource, arg: u64) -> Result<u32, Errno> {
    let domid = u32::try_from(arg).map_err(|_| Errno::ESRCH)?;
    if domid == 0 {
        return Err(Errno::EPERM);
    }
    src.domain_from(domid)
        .filter(|d| d.domid == domid)
        .ok_or(Errno::ESRCH)?;
    Ok(domid)
}

/// `arg` names an existing DomU for an event or parameter operation: `ESRCH` for none and
/// for domain 0.
fn domu(src: &impl ControlSource, arg: u64) -> Result<u16, Errno> {
    let domid = u16::try_from(arg)
        .ok()
        .filter(|&d| d != 0)
        .ok_or(Errno::ESRCH)?;
    src.domain_from(u32::from(domid))
        .filter(|d| d.domid == u32::from(domid))
        .ok_or(Errno::ESRCH)?;
    Ok(domid)
}

/// A port number in `1..MAX_PORTS`, else `EINVAL`.
fn port(arg: u64) -> Result<u32, Errno> {
    u32::try_from(arg)
        .ok()
        .filter(|p| (1..MAX_PORTS).contains(p))
        .ok_or(Errno::EINVAL)
}

fn reply(ret: i64, len: usize) -> Action {
    Action::Reply { ret, len }
}

fn window_slot(src: &impl ControlSource, slot: u64) -> Result<u64, Errno> {
    if slot < src.host_info().foreign_window_pages {
        Ok(slot)
    } else {
        Err(Errno::EINVAL)
    }
}

fn put<T: IntoBytes + zerocopy::Immutable>(buf: &mut [u8], at: usize, v: &T) -> Result<(), Errno> {
    let bytes = v.as_bytes();
    buf.get_mut(at..at + bytes.len())
        .ok_or(Errno::ENOSPC)?
        .copy_from_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    struct Table(std::vec::Vec<u32>);

    impl ControlSource for Table {
        fn host_info(&self) -> HostInfo {
            HostInfo {
                pcpus: 3,
                foreign_window_pages: 16,
                ..HostInfo::default()
            }
        }
        fn domain_from(&self, from: u32) -> Option<DomainInfo> {
            let domid = *self.0.iter().filter(|&&d| d >= from).min()?;
            Some(DomainInfo {
                domid,
                vcpus: 1,
                ..DomainInfo::default()
            })
        }
        fn take_events(&self) -> u64 {
            u64::MAX
        }
    }

    fn call(op: u64, len: u64, arg: u64) -> ControlCall {
        ControlCall {
            op,
            buf_len: len,
            arg,
            version: CONTROL_VERSION,
            privileged: true,
            cpl: 0,
        }
    }

    fn run(c: &ControlCall, t: &Table, out: &mut [u8; MAX_BUFFER]) -> Result<(i64, usize), Errno> {
        match dispatch(c, t, |_| panic!("no input expected"), out)? {
            Action::Reply { ret, len } => Ok((ret, len)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn foreign_map_checks() {
        let t = Table(std::vec![0, 1]);
        let mut out = [0u8; MAX_BUFFER];
        let input = |req: ForeignMapRequest| {
            move |buf: &mut [u8]| {
                buf.copy_from_slice(req.as_bytes());
                Ok(())
            }
        };
        let good = ForeignMapRequest {
            domid: 1,
            reserved: 0,
            gfn: 7,
        };
        assert_eq!(
            dispatch(&call(5, 16, 3), &t, input(good), &mut out),
            Ok(Action::Map {
                slot: 3,
                domid: 1,
                gfn: 7
            })
        );
        assert_eq!(
            dispatch(&call(5, 16, 16), &t, input(good), &mut out),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            dispatch(&call(5, 15, 0), &t, input(good), &mut out),
            Err(Errno::EINVAL)
        );
        let dom0 = ForeignMapRequest { domid: 0, ..good };
        assert_eq!(
            dispatch(&call(5, 16, 0), &t, input(dom0), &mut out),
            Err(Errno::ESRCH)
        );
        let reserved = ForeignMapRequest {
            reserved: 1,
            ..good
        };
        assert_eq!(
            dispatch(&call(5, 16, 0), &t, input(reserved), &mut out),
            Err(Errno::EINVAL)
        );
        let fault = |_: &mut [u8]| Err(Errno::EFAULT);
        assert_eq!(
            dispatch(&call(5, 16, 0), &t, fault, &mut out),
            Err(Errno::EFAULT)
        );
        assert_eq!(
            dispatch(&call(6, 0, 15), &t, fault, &mut out),
            Ok(Action::Unmap { slot: 15 })
        );
        assert_eq!(
            dispatch(&call(6, 0, u64::MAX), &t, fault, &mut out),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn create_and_set_entry_checks() {
        let t = Table(std::vec![0, 2]);
        let mut out = [0u8; MAX_BUFFER];
        let mut name = [0u8; 32];
        name[..4].copy_from_slice(b"spin");
        let good = DomainCreateRequest {
            mem_mib: 16,
            vcpus: 1,
            reserved: [0; 2],
            name,
        };
        let with = |req: DomainCreateRequest| {
            move |buf: &mut [u8]| {
                buf.copy_from_slice(req.as_bytes());
                Ok(())
            }
        };
        assert_eq!(
            dispatch(&call(10, 48, 0), &t, with(good), &mut out),
            Ok(Action::Create { mem_mib: 16, name })
        );
        for bad in [
            DomainCreateRequest { vcpus: 0, ..good },
            DomainCreateRequest { vcpus: 2, ..good },
            DomainCreateRequest { mem_mib: 1, ..good },
            DomainCreateRequest {
                mem_mib: 4096,
                ..good
            },
            DomainCreateRequest {
                reserved: [0, 1],
                ..good
            },
            DomainCreateRequest {
                name: [0; 32],
                ..good
            },
            DomainCreateRequest {
                name: [7; 32],
                ..good
            },
        ] {
            assert_eq!(
                dispatch(&call(10, 48, 0), &t, with(bad), &mut out),
                Err(Errno::EINVAL),
                "{bad:?}"
            );
        }
        assert_eq!(
            dispatch(&call(10, 47, 0), &t, with(good), &mut out),
            Err(Errno::EINVAL)
        );
        let entry = VcpuEntry {
            entry: 0x10_0000,
            start_info: 0x1000,
        };
        let with_entry = move |buf: &mut [u8]| {
            buf.copy_from_slice(entry.as_bytes());
            Ok(())
        };
        assert_eq!(
            dispatch(&call(11, 16, 2), &t, with_entry, &mut out),
            Ok(Action::SetEntry {
                domid: 2,
                entry: 0x10_0000,
                start_info: 0x1000
            })
        );
        assert_eq!(
            dispatch(&call(11, 16, 0), &t, with_entry, &mut out),
            Err(Errno::EPERM)
        );
        assert_eq!(
            dispatch(&call(11, 16, 3), &t, with_entry, &mut out),
            Err(Errno::ESRCH)
        );
    }

    #[test]
    fn lifecycle_checks() {
        let t = Table(std::vec![0, 2]);
        let mut out = [0u8; MAX_BUFFER];
        let go = |op, arg| {
            dispatch(
                &call(op, 0, arg),
                &t,
                |_| Err(Errno::EFAULT),
                &mut [0; MAX_BUFFER],
            )
        };
        assert_eq!(
            go(7, 2),
            Ok(Action::Lifecycle {
                op: LifecycleOp::Pause,
                domid: 2
            })
        );
        assert_eq!(
            go(9, 2),
            Ok(Action::Lifecycle {
                op: LifecycleOp::Destroy,
                domid: 2
            })
        );
        assert_eq!(go(8, 0), Err(Errno::EPERM), "domain 0 is refused");
        assert_eq!(go(7, 1), Err(Errno::ESRCH));
        assert_eq!(go(9, 1 << 40), Err(Errno::ESRCH));
        let _ = &mut out;
    }

    #[test]
    fn event_channel_op_checks() {
        let t = Table(std::vec![0, 2]);
        let go = |op, len, arg| {
            dispatch(
                &call(op, len, arg),
                &t,
                |_| Err(Errno::EFAULT),
                &mut [0; MAX_BUFFER],
            )
        };
        assert_eq!(
            go(12, 0, 2),
            Ok(Action::Evtchn(Dom0Evtchn::AllocUnbound { domid: 2 }))
        );
        for bad in [0, 1, 3, 1 << 16, (2 << 32) | 2, u64::MAX] {
            assert_eq!(go(12, 0, bad), Err(Errno::ESRCH), "{bad:#x}");
        }
        assert_eq!(
            go(13, 0, (2 << 32) | 5),
            Ok(Action::Evtchn(Dom0Evtchn::Bind { domid: 2, port: 5 }))
        );
        assert_eq!(go(13, 0, 5), Err(Errno::ESRCH), "domid 0");
        assert_eq!(go(13, 0, (1 << 32) | 5), Err(Errno::ESRCH));
        assert_eq!(go(13, 0, 2 << 32), Err(Errno::EINVAL), "port 0");
        assert_eq!(go(13, 0, (2 << 32) | 1024), Err(Errno::EINVAL));
        assert_eq!(go(13, 0, (0x1_0002 << 32) | 5), Err(Errno::ESRCH));
        assert_eq!(
            go(14, 0, 1023),
            Ok(Action::Evtchn(Dom0Evtchn::Send { port: 1023 }))
        );
        assert_eq!(
            go(15, 0, 1),
            Ok(Action::Evtchn(Dom0Evtchn::Close { port: 1 }))
        );
        for bad in [0, 1024, 1 << 32 | 1, u64::MAX] {
            assert_eq!(go(14, 0, bad), Err(Errno::EINVAL));
            assert_eq!(go(15, 0, bad), Err(Errno::EINVAL));
        }
        assert_eq!(go(16, 4096, 0), Ok(Action::TakePending { max: 1024 }));
        assert_eq!(go(16, 7, 0), Ok(Action::TakePending { max: 1 }));
        assert_eq!(go(16, 3, 0), Err(Errno::ENOSPC));
        assert_eq!(go(16, 8, 1), Err(Errno::EINVAL));
    }

    #[test]
    fn set_param_checks() {
        let t = Table(std::vec![0, 2]);
        let with = |p: DomainParam| {
            move |buf: &mut [u8]| {
                buf.copy_from_slice(p.as_bytes());
                Ok(())
            }
        };
        let go = |arg, len, p| dispatch(&call(17, len, arg), &t, with(p), &mut [0; MAX_BUFFER]);
        let p = |index, value| DomainParam {
            index,
            reserved: 0,
            value,
        };
        assert_eq!(
            go(2, 16, p(HVM_PARAM_STORE_PFN, 1 << 40)),
            Ok(Action::SetParam {
                domid: 2,
                index: HVM_PARAM_STORE_PFN,
                value: 1 << 40
            }),
            "the frame is checked against the domain's RAM later"
        );
        assert!(go(2, 16, p(HVM_PARAM_CONSOLE_EVTCHN, 1023)).is_ok());
        assert_eq!(
            go(2, 16, p(HVM_PARAM_CONSOLE_EVTCHN, 1024)),
            Err(Errno::EINVAL)
        );
        assert_eq!(go(2, 16, p(HVM_PARAM_STORE_EVTCHN, 0)), Err(Errno::EINVAL));
        assert_eq!(go(2, 16, p(0, 0x20)), Err(Errno::EINVAL), "CALLBACK_IRQ");
        assert_eq!(go(2, 16, p(99, 1)), Err(Errno::EINVAL));
        assert_eq!(
            go(
                2,
                16,
                DomainParam {
                    reserved: 1,
                    ..p(HVM_PARAM_STORE_PFN, 1)
                }
            ),
            Err(Errno::EINVAL)
        );
        assert_eq!(go(2, 15, p(HVM_PARAM_STORE_PFN, 1)), Err(Errno::EINVAL));
        assert_eq!(go(0, 16, p(HVM_PARAM_STORE_PFN, 1)), Err(Errno::ESRCH));
        assert_eq!(go(3, 16, p(HVM_PARAM_STORE_PFN, 1)), Err(Errno::ESRCH));
        let fault = dispatch(
            &call(17, 16, 2),
            &t,
            |_| Err(Errno::EFAULT),
            &mut [0; MAX_BUFFER],
        );
        assert_eq!(fault, Err(Errno::EFAULT));
    }

    #[test]
    fn grant_op_checks() {
        let t = Table(std::vec![0, 2]);
        let with = |r: GrantMapRequest| {
            move |buf: &mut [u8]| {
                buf.copy_from_slice(r.as_bytes());
                Ok(())
            }
        };
        let go = |len, slot, r| dispatch(&call(18, len, slot), &t, with(r), &mut [0; MAX_BUFFER]);
        let r = |domid, gref, flags, reserved| GrantMapRequest {
            domid,
            gref,
            flags,
            reserved,
        };
        assert_eq!(
            go(16, 3, r(2, 8, 0, 0)),
            Ok(Action::GrantMap {
                slot: 3,
                domid: 2,
                gref: 8,
                write: true
            })
        );
        assert_eq!(
            go(4096, 15, r(9, u32::MAX, GRANT_MAP_READONLY, 0)),
            Ok(Action::GrantMap {
                slot: 15,
                domid: 9,
                gref: u32::MAX,
                write: false
            }),
            "whether domain 9 lives is the machine's to say"
        );
        for (len, slot, req, err) in [
            (16, 16, r(2, 8, 0, 0), Errno::EINVAL),
            (16, u64::MAX, r(2, 8, 0, 0), Errno::EINVAL),
            (15, 0, r(2, 8, 0, 0), Errno::EINVAL),
            (16, 0, r(2, 8, 0, 1), Errno::EINVAL),
            (16, 0, r(2, 8, 2, 0), Errno::EINVAL),
            (16, 0, r(2, 8, u32::MAX, 0), Errno::EINVAL),
            (16, 0, r(0, 8, 0, 0), Errno::ESRCH),
            (16, 0, r(0x1_0000, 8, 0, 0), Errno::ESRCH),
        ] {
            assert_eq!(
                go(len, slot, req),
                Err(err),
                "{req:?} len {len} slot {slot}"
            );
        }
        let fault = dispatch(
            &call(18, 16, 0),
            &t,
            |_| Err(Errno::EFAULT),
            &mut [0; MAX_BUFFER],
        );
        assert_eq!(fault, Err(Errno::EFAULT));
        let no_input = |_: &mut [u8]| -> Result<(), Errno> { panic!("no input") };
        let go = |op, len, arg| dispatch(&call(op, len, arg), &t, no_input, &mut [0; MAX_BUFFER]);
        assert_eq!(go(19, 0, 15), Ok(Action::GrantUnmap { slot: 15 }));
        assert_eq!(go(19, 0, 16), Err(Errno::EINVAL));
        assert_eq!(go(20, 24, 1), Ok(Action::GrantCopy { count: 1, len: 24 }));
        assert_eq!(
            go(20, 4096, 170),
            Ok(Action::GrantCopy {
                count: 170,
                len: 4096
            })
        );
        assert_eq!(go(20, 4096, 171), Err(Errno::EINVAL));
        assert_eq!(go(20, 23, 1), Err(Errno::EINVAL));
        assert_eq!(go(20, 4096, 0), Err(Errno::EINVAL));
        assert_eq!(go(20, 4096, u64::MAX), Err(Errno::EINVAL));
        assert_eq!(go(20, 4096, 1 << 62), Err(Errno::EINVAL));
    }

    #[test]
    fn refuses_in_documented_order() {
        let t = Table(std::vec![0]);
        let mut out = [0u8; MAX_BUFFER];
        let denied = ControlCall {
            privileged: false,
            ..call(99, 1 << 40, 0)
        };
        assert_eq!(run(&denied, &t, &mut out), Err(Errno::EPERM));
        let user = ControlCall {
            cpl: 3,
            ..call(1, 80, 0)
        };
        assert_eq!(run(&user, &t, &mut out), Err(Errno::EPERM));
        let old = ControlCall {
            version: 0,
            ..call(99, 80, 0)
        };
        assert_eq!(run(&old, &t, &mut out), Err(Errno::EACCES));
        assert_eq!(run(&call(99, 1 << 40, 0), &t, &mut out), Err(Errno::ENOSYS));
        assert_eq!(run(&call(1, 4097, 0), &t, &mut out), Err(Errno::EINVAL));
        assert_eq!(run(&call(1, 95, 0), &t, &mut out), Err(Errno::ENOSPC));
        assert_eq!(run(&call(1, 96, 5), &t, &mut out), Err(Errno::EINVAL));
        assert_eq!(run(&call(3, 72, 7), &t, &mut out), Err(Errno::ESRCH));
        assert_eq!(run(&call(3, 72, u64::MAX), &t, &mut out), Err(Errno::ESRCH));
        assert_eq!(run(&call(2, 71, 0), &t, &mut out), Err(Errno::ENOSPC));
        assert_eq!(run(&call(4, 0, 1), &t, &mut out), Err(Errno::EINVAL));
        assert_eq!(run(&call(4, 0, 0), &t, &mut out), Ok((i64::MAX, 0)));
    }

    #[test]
    fn host_and_domain_info() {
        let t = Table(std::vec![0, 2]);
        let mut out = [0u8; MAX_BUFFER];
        assert_eq!(run(&call(1, 4096, 0), &t, &mut out), Ok((96, 96)));
        assert_eq!(HostInfo::read_from_prefix(&out).unwrap().0.pcpus, 3);
        assert_eq!(run(&call(3, 72, 2), &t, &mut out), Ok((72, 72)));
        assert_eq!(DomainInfo::read_from_prefix(&out).unwrap().0.domid, 2);
        // domid 1 does not exist even though domid 2 follows it.
        assert_eq!(run(&call(3, 72, 1), &t, &mut out), Err(Errno::ESRCH));
    }

    #[test]
    fn list_pages_through_domains() {
        let t = Table(std::vec![0, 1, 5, 7, u32::MAX]);
        let mut out = [0u8; MAX_BUFFER];
        let mut seen = std::vec::Vec::new();
        let mut from = 0u64;
        loop {
            // Room for two records (plus a partial third that must stay unused).
            let (n, bytes) = run(&call(2, 72 * 2 + 50, from), &t, &mut out).unwrap();
            assert_eq!(bytes, n as usize * 72);
            if n == 0 {
                break;
            }
            for i in 0..n as usize {
                seen.push(
                    DomainInfo::read_from_prefix(&out[i * 72..])
                        .unwrap()
                        .0
                        .domid,
                );
            }
            let last = *seen.last().unwrap();
            if last == u32::MAX {
                break;
            }
            from = u64::from(last) + 1;
        }
        assert_eq!(seen, [0, 1, 5, 7, u32::MAX]);
        assert_eq!(run(&call(2, 4096, 1 << 33), &t, &mut out), Ok((0, 0)));
    }

    proptest::proptest! {
        /// Any operation, argument, length and input bytes: an error or an action, never a
        /// panic, and a reply never claims more bytes than the buffer holds.
        #[test]
        fn garbage_never_panics(
            op in 0u64..24, arg in proptest::num::u64::ANY, len in 0u64..5000,
            input in proptest::collection::vec(proptest::num::u8::ANY, 48),
            privileged in proptest::bool::ANY,
        ) {
            let t = Table(std::vec![0, 2, 7]);
            let c = ControlCall { privileged, ..call(op, len, arg) };
            let read = |buf: &mut [u8]| {
                buf.copy_from_slice(&input[..buf.len()]);
                Ok(())
            };
            if let Ok(Action::Reply { len: n, .. }) = dispatch(&c, &t, read, &mut [0; MAX_BUFFER]) {
                proptest::prop_assert!(n as u64 <= len);
            }
        }
    }
}
