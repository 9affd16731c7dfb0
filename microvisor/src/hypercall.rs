//! Hypercall decoding and dispatch for DomUs.
//!
//! Everything here is portable: the exit handler wraps the calling vCPU in a [`GuestEnv`]
//! (guest memory access, the console, the event-channel [`Hub`], time and the vCPU's
//! timer) and acts on the returned [`Outcome`]. Every pointer argument is a claim checked
//! by [`GuestEnv::copy_from_guest`] / [`GuestEnv::copy_to_guest`]; nothing here touches
//! guest memory directly. Calls that return a structure first write the caller's own
//! input back, so a read-only or unmapped output fails with `EFAULT` before anything
//! (a port, say) is allocated.
//!
//! Event channels, grant tables, HVM parameters, `shared_info`, timers, block and poll are
//! DomU calls: domain 0 is native Linux and uses the control operations instead (`ENOSYS`
//! here).

use crate::evtchn::{Hub, Platform};
use crate::grant::{Grants, TableMem};
use shared_abi::console::{CONSOLEIO_MAX_WRITE, CONSOLEIO_WRITE};
use shared_abi::event_channel::{
    EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_BIND_INTERDOMAIN, EVTCHNOP_BIND_VIRQ, EVTCHNOP_CLOSE,
    EVTCHNOP_SEND, EVTCHNOP_STATUS, EVTCHNOP_UNMASK, EvtchnAllocUnbound, EvtchnBindInterdomain,
    EvtchnBindVirq, EvtchnPort, EvtchnStatus, MAX_PORTS,
};
use shared_abi::grant_table::{
    GNTST_BAD_DOMAIN, GNTST_OKAY, GNTTAB_MAX_FRAMES, GNTTABOP_GET_VERSION, GNTTABOP_QUERY_SIZE,
    GNTTABOP_SET_VERSION, GnttabGetVersion, GnttabQuerySize, GnttabVersion,
};
use shared_abi::hvm::{
    HVM_PARAM_CALLBACK_IRQ, HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN,
    HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN, HVMOP_GET_PARAM, HVMOP_SET_PARAM, XenHvmParam,
};
use shared_abi::memory::{
    XENMAPSPACE_GRANT_TABLE, XENMAPSPACE_SHARED_INFO, XENMEM_ADD_TO_PHYSMAP, XenAddToPhysmap,
};
use shared_abi::sched::{
    SCHEDOP_BLOCK, SCHEDOP_POLL, SCHEDOP_POLL_MAX_PORTS, SCHEDOP_SHUTDOWN, SCHEDOP_YIELD,
    SchedPoll, SchedShutdown, ShutdownReason,
};
use shared_abi::shared_info::VcpuTimeInfo;
use shared_abi::vcpu::{
    VCPU_SSHOTTMR_FUTURE, VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, VCPUOP_REGISTER_VCPU_INFO,
    VCPUOP_SET_SINGLESHOT_TIMER, VCPUOP_STOP_PERIODIC_TIMER, VCPUOP_STOP_SINGLESHOT_TIMER,
    VcpuRegisterRunstateMemoryArea, VcpuRegisterVcpuInfo, VcpuSetSingleshotTimer,
};
use shared_abi::version::{
    XENVER_EXTRAVERSION, XENVER_GET_FEATURES, XENVER_PAGESIZE, XENVER_VERSION, XenFeatureInfo,
    feature,
};
use shared_abi::{DomId, Errno, Hypercall, PAGE_SIZE, XEN_VERSION_MAJOR, XEN_VERSION_MINOR};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The extra-version string reported by `XENVER_extraversion`.
pub const EXTRAVERSION: &[u8] = b"-microvisor";

/// Feature submap 0: only what is actually implemented (PVH is auto-translated; upcalls
/// come through the callback vector; the pvclock data in `vcpu_info` is valid).
pub const FEATURES_SUBMAP0: u32 = (1 << feature::AUTO_TRANSLATED_PHYSMAP)
    | (1 << feature::HVM_CALLBACK_VECTOR)
    | (1 << feature::HVM_SAFE_PVCLOCK);

/// What the exit handler must provide for one call.
pub trait GuestEnv {
    /// The machine behind the event channels.
    type Events: Platform;
    /// Copies guest memory at linear address `la` into `buf`; `EFAULT` if any byte is not
    /// mapped by the guest or not backed by its own memory.
    fn copy_from_guest(&mut self, la: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Copies `buf` into guest memory at linear address `la`; `EFAULT` as above, or if the
    /// memory is not writable.
    fn copy_to_guest(&mut self, la: u64, buf: &[u8]) -> Result<(), Errno>;
    /// Emits console output of the calling domain.
    fn console_write(&mut self, bytes: &[u8]);
    /// The calling domain.
    fn domid(&self) -> u16;
    /// Every domain's event channels.
    fn hub(&self) -> Hub<'_, Self::Events>;
    /// The memory grant tables live in.
    type Table: TableMem;
    /// Every DomU's grant table.
    fn grants(&self) -> Grants<'_, Self::Table>;
    /// System time: nanoseconds since the microvisor booted.
    fn now_ns(&self) -> u64;
    /// The pvclock record for the caller's `vcpu_info` (its `version` is managed by the
    /// writer).
    fn time_info(&self) -> VcpuTimeInfo;
    /// The caller's event counter: it changes whenever an event reaches the domain.
    fn event_seq(&self) -> u64;
    /// Sets (`Some`, absolute ns of system time) or cancels the vCPU's single-shot timer.
    fn set_timer(&mut self, deadline_ns: Option<u64>);
    /// The machine address of guest frame `gpfn` if it is writable RAM of the caller.
    fn ram_frame(&mut self, gpfn: u64) -> Option<u64>;
    /// Registers the calling vCPU's runstate area at linear address `la` (0: unregisters)
    /// and writes it at once; a translation that fails drops the registration silently.
    fn register_runstate(&mut self, la: u64);
}

/// The registers of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypercallArgs {
    /// `RAX`.
    pub nr: u64,
    /// `RDI`, `RSI`, `RDX`, `R10`, `R8`.
    pub args: [u64; 5],
    /// The caller's CPL.
    pub cpl: u8,
}

/// What the vCPU does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Resume with this value in `RAX`.
    Return(i64),
    /// Resume with 0 in `RAX` after letting other vCPUs run.
    Yield,
    /// The domain shuts down with this reason.
    Shutdown(ShutdownReason),
    /// Resume with 0 in `RAX` once an upcall is pending (at once if one is).
    Block,
    /// Resume with 0 in `RAX` once the domain's event counter differs from `seq` (an
    /// event reached it since the call began) or at `deadline_ns` (0: none).
    Poll {
        /// [`GuestEnv::event_seq`] when the call began.
        seq: u64,
        /// Absolute ns of system time, or 0.
        deadline_ns: u64,
    },
}

fn ret(r: Result<u64, Errno>) -> Outcome {
    match r {
        Ok(v) => Outcome::Return(v as i64),
        Err(e) => Outcome::Return(e.to_ret()),
    }
}

/// Decodes and performs one DomU hypercall.
pub fn dispatch(env: &mut impl GuestEnv, call: HypercallArgs) -> Outcome {
    if call.cpl != 0 {
        return Outcome::Return(Errno::EPERM.to_ret());
    }
    let [a1, a2, a3, _, _] = call.args;
    let domu = env.domid() != 0;
    match Hypercall::try_from(call.nr) {
        Ok(Hypercall::ConsoleIo) => ret(console_io(env, a1, a2, a3)),
        Ok(Hypercall::XenVersion) => ret(xen_version(env, a1, a2)),
        Ok(Hypercall::SchedOp) => sched_op(env, a1, a2),
        Ok(Hypercall::MemoryOp) if domu => ret(memory_op(env, a1, a2)),
        Ok(Hypercall::SetTimerOp) if domu => ret(set_timer_op(env, a1)),
        Ok(Hypercall::VcpuOp) if domu => ret(vcpu_op(env, a1, a2, a3)),
        Ok(Hypercall::EventChannelOp) if domu => ret(event_channel_op(env, a1, a2)),
        Ok(Hypercall::HvmOp) if domu => ret(hvm_op(env, a1, a2)),
        Ok(Hypercall::GrantTableOp) if domu => ret(grant_table_op(env, a1, a2, a3)),
        // Part of the planned subset, not implemented yet (or not for domain 0): say so
        // truthfully.
        Ok(
            Hypercall::MemoryOp
            | Hypercall::SetTimerOp
            | Hypercall::GrantTableOp
            | Hypercall::VmAssist
            | Hypercall::VcpuOp
            | Hypercall::EventChannelOp
            | Hypercall::HvmOp,
        ) => Outcome::Return(Errno::ENOSYS.to_ret()),
        Err(e) => Outcome::Return(e.to_ret()),
    }
}

/// Reads a `T` at linear address `la`.
fn read<T: FromBytes + IntoBytes>(env: &mut impl GuestEnv, la: u64) -> Result<T, Errno> {
    let mut v = T::new_zeroed();
    env.copy_from_guest(la, v.as_mut_bytes())?;
    Ok(v)
}

/// Writes `v` at linear address `la`.
fn write<T: IntoBytes + Immutable>(env: &mut impl GuestEnv, la: u64, v: &T) -> Result<(), Errno> {
    env.copy_to_guest(la, v.as_bytes())
}

/// `dom` names the caller (`DOMID_SELF` or its own id); `EPERM` otherwise.
fn own(env: &impl GuestEnv, dom: u16) -> Result<u16, Errno> {
    if dom == DomId::SELF.0 || dom == env.domid() {
        Ok(env.domid())
    } else {
        Err(Errno::EPERM)
    }
}

/// `dom` with `DOMID_SELF` resolved.
fn resolve(env: &impl GuestEnv, dom: u16) -> u16 {
    if dom == DomId::SELF.0 {
        env.domid()
    } else {
        dom
    }
}

fn event_channel_op(env: &mut impl GuestEnv, cmd: u64, arg: u64) -> Result<u64, Errno> {
    let me = env.domid();
    match cmd {
        EVTCHNOP_ALLOC_UNBOUND => {
            let mut a: EvtchnAllocUnbound = read(env, arg)?;
            own(env, a.dom)?;
            let remote = resolve(env, a.remote_dom);
            write(env, arg, &a)?;
            a.port = env.hub().alloc_unbound(me, remote)?;
            write(env, arg, &a)?;
        }
        EVTCHNOP_BIND_INTERDOMAIN => {
            let mut b: EvtchnBindInterdomain = read(env, arg)?;
            let remote = resolve(env, b.remote_dom);
            write(env, arg, &b)?;
            b.local_port = env.hub().bind_interdomain(me, remote, b.remote_port)?;
            write(env, arg, &b)?;
        }
        EVTCHNOP_BIND_VIRQ => {
            let mut b: EvtchnBindVirq = read(env, arg)?;
            write(env, arg, &b)?;
            b.port = env.hub().bind_virq(me, b.virq, b.vcpu)?;
            write(env, arg, &b)?;
        }
        EVTCHNOP_CLOSE => {
            let p: EvtchnPort = read(env, arg)?;
            env.hub().close(me, p.port)?;
        }
        EVTCHNOP_SEND => {
            let p: EvtchnPort = read(env, arg)?;
            env.hub().send(me, p.port)?;
        }
        EVTCHNOP_STATUS => {
            let mut st: EvtchnStatus = read(env, arg)?;
            own(env, st.dom)?;
            write(env, arg, &st)?;
            let (status, u) = env.hub().status(me, st.port)?;
            st.status = status;
            st.vcpu = 0;
            st.u = u;
            write(env, arg, &st)?;
        }
        EVTCHNOP_UNMASK => {
            let p: EvtchnPort = read(env, arg)?;
            env.hub().unmask(me, p.port)?;
        }
        _ => return Err(Errno::ENOSYS),
    }
    Ok(0)
}

/// `grant_table_op(cmd, uop, count)`: the DomU's own table. Mapping, unmapping and
/// copying are domain 0's control operations; `setup_table` is PV only.
fn grant_table_op(env: &mut impl GuestEnv, cmd: u64, uop: u64, count: u64) -> Result<u64, Errno> {
    let me = env.domid();
    let one = || {
        if count == 1 {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    };
    match cmd {
        GNTTABOP_QUERY_SIZE => {
            one()?;
            let mut q: GnttabQuerySize = read(env, uop)?;
            if q.dom == DomId::SELF.0 || q.dom == me {
                q.nr_frames = env.grants().nr_frames(me)?;
                q.max_nr_frames = GNTTAB_MAX_FRAMES;
                q.status = GNTST_OKAY;
            } else {
                q.nr_frames = 0;
                q.max_nr_frames = 0;
                q.status = GNTST_BAD_DOMAIN;
            }
            write(env, uop, &q)?;
        }
        GNTTABOP_SET_VERSION => {
            one()?;
            let mut v: GnttabVersion = read(env, uop)?;
            match v.version {
                1 => {
                    v.version = 1;
                    write(env, uop, &v)?;
                }
                // Guests fall back to version 1.
                2 => return Err(Errno::ENOSYS),
                _ => return Err(Errno::EINVAL),
            }
        }
        GNTTABOP_GET_VERSION => {
            one()?;
            let mut g: GnttabGetVersion = read(env, uop)?;
            own(env, g.dom)?;
            g.version = 1;
            write(env, uop, &g)?;
        }
        // setup_table (PV only), map/unmap/copy (back-ends are in domain 0), transfer,
        // v2 operations and anything else.
        _ => return Err(Errno::ENOSYS),
    }
    Ok(0)
}

fn hvm_op(env: &mut impl GuestEnv, cmd: u64, arg: u64) -> Result<u64, Errno> {
    let me = env.domid();
    match cmd {
        HVMOP_SET_PARAM => {
            let p: XenHvmParam = read(env, arg)?;
            own(env, p.domid)?;
            match p.index {
                HVM_PARAM_CALLBACK_IRQ => env.hub().set_callback(me, p.value)?,
                HVM_PARAM_STORE_PFN
                | HVM_PARAM_STORE_EVTCHN
                | HVM_PARAM_CONSOLE_PFN
                | HVM_PARAM_CONSOLE_EVTCHN => return Err(Errno::EPERM),
                _ => return Err(Errno::EINVAL),
            }
        }
        HVMOP_GET_PARAM => {
            let mut p: XenHvmParam = read(env, arg)?;
            own(env, p.domid)?;
            write(env, arg, &p)?;
            p.value = env.hub().param(me, p.index)?;
            write(env, arg, &p)?;
        }
        _ => return Err(Errno::ENOSYS),
    }
    Ok(0)
}

fn memory_op(env: &mut impl GuestEnv, cmd: u64, arg: u64) -> Result<u64, Errno> {
    if cmd != XENMEM_ADD_TO_PHYSMAP {
        return Err(Errno::ENOSYS);
    }
    let x: XenAddToPhysmap = read(env, arg)?;
    let me = own(env, x.domid)?;
    match x.space {
        XENMAPSPACE_SHARED_INFO => {
            if x.idx != 0 {
                return Err(Errno::EINVAL);
            }
            let pa = env.ram_frame(x.gpfn).ok_or(Errno::EINVAL)?;
            let time = env.time_info();
            env.hub().place_shared_info(me, x.gpfn, pa, &time)?;
            Ok(0)
        }
        XENMAPSPACE_GRANT_TABLE => {
            let pa = env.ram_frame(x.gpfn).ok_or(Errno::EINVAL)?;
            env.grants().place_frame(me, x.idx, x.gpfn, pa)?;
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

fn set_timer_op(env: &mut impl GuestEnv, deadline_ns: u64) -> Result<u64, Errno> {
    env.set_timer((deadline_ns != 0).then_some(deadline_ns));
    Ok(0)
}

fn vcpu_op(env: &mut impl GuestEnv, cmd: u64, vcpu: u64, arg: u64) -> Result<u64, Errno> {
    let vcpu0 = || {
        if vcpu == 0 {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    };
    match cmd {
        VCPUOP_SET_SINGLESHOT_TIMER => {
            vcpu0()?;
            let t: VcpuSetSingleshotTimer = read(env, arg)?;
            if t.flags & VCPU_SSHOTTMR_FUTURE != 0 && t.timeout_abs_ns < env.now_ns() {
                return Err(Errno::ETIME);
            }
            env.set_timer(Some(t.timeout_abs_ns));
        }
        VCPUOP_STOP_SINGLESHOT_TIMER => {
            vcpu0()?;
            env.set_timer(None);
        }
        VCPUOP_STOP_PERIODIC_TIMER => vcpu0()?,
        VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA => {
            vcpu0()?;
            let r: VcpuRegisterRunstateMemoryArea = read(env, arg)?;
            env.register_runstate(r.addr);
        }
        VCPUOP_REGISTER_VCPU_INFO => {
            vcpu0()?;
            let r: VcpuRegisterVcpuInfo = read(env, arg)?;
            let size = shared_abi::shared_info::VCPU_INFO_SIZE as u32;
            if r.rsvd != 0 || !r.offset.is_multiple_of(8) || r.offset > PAGE_SIZE as u32 - size {
                return Err(Errno::EINVAL);
            }
            let pa = env.ram_frame(r.mfn).ok_or(Errno::EINVAL)?;
            let time = env.time_info();
            let me = env.domid();
            env.hub()
                .register_vcpu_info(me, pa + u64::from(r.offset), &time)?;
        }
        _ => return Err(Errno::ENOSYS),
    }
    Ok(0)
}

/// `SCHEDOP_poll`: returns at once if a port is pending or the timeout has passed.
fn poll(env: &mut impl GuestEnv, arg: u64) -> Result<Outcome, Errno> {
    // Taken first: an event after this point ends the poll even if the port check below
    // misses it.
    let seq = env.event_seq();
    let p: SchedPoll = read(env, arg)?;
    if p.nr_ports > SCHEDOP_POLL_MAX_PORTS {
        return Err(Errno::EINVAL);
    }
    let mut raw = [0u8; 4 * SCHEDOP_POLL_MAX_PORTS as usize];
    let raw = &mut raw[..4 * p.nr_ports as usize];
    if !raw.is_empty() {
        env.copy_from_guest(p.ports, raw)?;
    }
    let ports = raw
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if ports.clone().any(|port| port == 0 || port >= MAX_PORTS) {
        return Err(Errno::EINVAL);
    }
    let me = env.domid();
    let hub = env.hub();
    if ports.clone().any(|port| hub.port_pending(me, port)) {
        return Ok(Outcome::Return(0));
    }
    if p.timeout != 0 && env.now_ns() >= p.timeout {
        return Ok(Outcome::Return(0));
    }
    Ok(Outcome::Poll {
        seq,
        deadline_ns: p.timeout,
    })
}

fn console_io(env: &mut impl GuestEnv, cmd: u64, count: u64, buf: u64) -> Result<u64, Errno> {
    if cmd != CONSOLEIO_WRITE {
        return Err(Errno::ENOSYS);
    }
    if count > CONSOLEIO_MAX_WRITE {
        return Err(Errno::EINVAL);
    }
    // Copy the whole buffer before emitting anything: a bad pointer writes nothing.
    let mut bytes = [0u8; CONSOLEIO_MAX_WRITE as usize];
    let bytes = &mut bytes[..count as usize];
    env.copy_from_guest(buf, bytes)?;
    env.console_write(bytes);
    Ok(0)
}

fn xen_version(env: &mut impl GuestEnv, cmd: u64, arg: u64) -> Result<u64, Errno> {
    match cmd {
        XENVER_VERSION => Ok((u64::from(XEN_VERSION_MAJOR) << 16) | u64::from(XEN_VERSION_MINOR)),
        XENVER_EXTRAVERSION => {
            let mut s = [0u8; 16];
            s[..EXTRAVERSION.len()].copy_from_slice(EXTRAVERSION);
            env.copy_to_guest(arg, &s).map(|()| 0)
        }
        XENVER_GET_FEATURES => {
            let mut raw = [0u8; 8];
            env.copy_from_guest(arg, &mut raw)?;
            let mut info = XenFeatureInfo::read_from_bytes(&raw).map_err(|_| Errno::EFAULT)?;
            info.submap = if info.submap_idx == 0 {
                FEATURES_SUBMAP0
            } else {
                0
            };
            env.copy_to_guest(arg, info.as_bytes()).map(|()| 0)
        }
        XENVER_PAGESIZE => Ok(PAGE_SIZE as u64),
        _ => Err(Errno::ENOSYS),
    }
}

fn sched_op(env: &mut impl GuestEnv, cmd: u64, arg: u64) -> Outcome {
    match cmd {
        SCHEDOP_YIELD => Outcome::Yield,
        SCHEDOP_BLOCK if env.domid() != 0 => Outcome::Block,
        SCHEDOP_POLL if env.domid() != 0 => match poll(env, arg) {
            Ok(o) => o,
            Err(e) => Outcome::Return(e.to_ret()),
        },
        SCHEDOP_SHUTDOWN => {
            let mut raw = [0u8; 4];
            if let Err(e) = env.copy_from_guest(arg, &mut raw) {
                return Outcome::Return(e.to_ret());
            }
            let reason = SchedShutdown::read_from_bytes(&raw)
                .map(|s| s.reason)
                .unwrap_or(u32::MAX);
            match ShutdownReason::try_from(reason) {
                Ok(ShutdownReason::Suspend | ShutdownReason::SoftReset) => {
                    Outcome::Return(Errno::ENOSYS.to_ret())
                }
                Ok(reason) => Outcome::Shutdown(reason),
                Err(e) => Outcome::Return(e.to_ret()),
            }
        }
        _ => Outcome::Return(Errno::ENOSYS.to_ret()),
    }
}

/// The bytes of a Xen-style hypercall page: 128 stubs of 32 bytes, stub `i` being
/// `mov eax, i; vmmcall; ret`. Stub 23 (`iret`, a PV-only call) is `ud2`.
pub fn hypercall_page() -> [u8; PAGE_SIZE] {
    let mut page = [0xCCu8; PAGE_SIZE];
    for (i, stub) in page.chunks_exact_mut(32).enumerate() {
        if i == 23 {
            stub[..2].copy_from_slice(&[0x0F, 0x0B]);
            continue;
        }
        stub[0] = 0xB8;
        stub[1..5].copy_from_slice(&(i as u32).to_le_bytes());
        stub[5..9].copy_from_slice(&[0x0F, 0x01, 0xD9, 0xC3]);
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::evtchn::SharedMem as _;
    use crate::evtchn::fake::{FakePlatform, tables};
    use crate::evtchn::{DomainEvents, Notify};
    use shared_abi::event_channel::{EVTCHNSTAT_INTERDOMAIN, EVTCHNSTAT_UNBOUND, VIRQ_TIMER};
    use shared_abi::shared_info::{EVTCHN_PENDING, port_word};
    use spin::Mutex;

    /// Machine address of the fake shared pages.
    const MBASE: u64 = 0x10_0000;

    /// Guest memory: identity-mapped linear addresses over a small RAM (16 pages), plus
    /// the event channels of domain 0 and DomUs 1 and 2.
    struct FakeGuest {
        ram: std::vec::Vec<u8>,
        console: std::vec::Vec<u8>,
        domid: u16,
        events: std::vec::Vec<Mutex<DomainEvents>>,
        grant_tables: std::vec::Vec<Mutex<crate::grant::DomainGrants>>,
        plat: FakePlatform,
        now: u64,
        seq: u64,
        timer: Option<Option<u64>>,
        /// The last runstate registration.
        runstate: Option<u64>,
    }

    impl FakeGuest {
        fn new() -> Self {
            let g = Self {
                ram: std::vec![0; 0x10000],
                console: std::vec::Vec::new(),
                domid: 1,
                events: tables(4),
                grant_tables: (0..4)
                    .map(|_| Mutex::new(crate::grant::DomainGrants::EMPTY))
                    .collect(),
                plat: FakePlatform::new(MBASE, 64),
                now: 1_000,
                seq: 7,
                timer: None,
                runstate: None,
            };
            g.hub().open_dom0();
            // Own shared_info frames: pages 40 and 41; guest frame n is page n.
            g.hub().open_domu(1, MBASE + 40 * 4096, 16);
            g.hub().open_domu(2, MBASE + 41 * 4096, 16);
            g.grants().open(1, 16);
            g.grants().open(2, 16);
            g
        }
        fn range(&self, la: u64, len: usize) -> Result<core::ops::Range<usize>, Errno> {
            let start = usize::try_from(la).map_err(|_| Errno::EFAULT)?;
            let end = start.checked_add(len).ok_or(Errno::EFAULT)?;
            if end > self.ram.len() {
                return Err(Errno::EFAULT);
            }
            Ok(start..end)
        }
        fn put<T: IntoBytes + Immutable>(&mut self, at: usize, v: &T) {
            self.ram[at..at + size_of::<T>()].copy_from_slice(v.as_bytes());
        }
        fn get<T: FromBytes>(&self, at: usize) -> T {
            T::read_from_prefix(&self.ram[at..]).unwrap().0
        }
    }

    impl GuestEnv for FakeGuest {
        type Events = FakePlatform;
        fn copy_from_guest(&mut self, la: u64, buf: &mut [u8]) -> Result<(), Errno> {
            let r = self.range(la, buf.len())?;
            buf.copy_from_slice(&self.ram[r]);
            Ok(())
        }
        fn copy_to_guest(&mut self, la: u64, buf: &[u8]) -> Result<(), Errno> {
            let r = self.range(la, buf.len())?;
            // The last page is read-only.
            if r.end > 0xF000 {
                return Err(Errno::EFAULT);
            }
            self.ram[r].copy_from_slice(buf);
            Ok(())
        }
        fn console_write(&mut self, bytes: &[u8]) {
            self.console.extend_from_slice(bytes);
        }
        fn domid(&self) -> u16 {
            self.domid
        }
        fn hub(&self) -> Hub<'_, FakePlatform> {
            Hub::new(&self.events, &self.plat)
        }
        type Table = crate::evtchn::fake::FakeShared;
        fn grants(&self) -> Grants<'_, crate::evtchn::fake::FakeShared> {
            Grants::new(&self.grant_tables, &self.plat.mem)
        }
        fn now_ns(&self) -> u64 {
            self.now
        }
        fn time_info(&self) -> VcpuTimeInfo {
            VcpuTimeInfo {
                tsc_timestamp: 99,
                tsc_to_system_mul: 1 << 31,
                flags: 1,
                ..VcpuTimeInfo::default()
            }
        }
        fn event_seq(&self) -> u64 {
            self.seq
        }
        fn set_timer(&mut self, deadline_ns: Option<u64>) {
            self.timer = Some(deadline_ns);
        }
        fn ram_frame(&mut self, gpfn: u64) -> Option<u64> {
            (gpfn < 15).then(|| MBASE + gpfn * 4096)
        }
        fn register_runstate(&mut self, la: u64) {
            self.runstate = Some(la);
        }
    }

    fn call(g: &mut FakeGuest, nr: u64, a1: u64, a2: u64, a3: u64) -> Outcome {
        dispatch(
            g,
            HypercallArgs {
                nr,
                args: [a1, a2, a3, 0, 0],
                cpl: 0,
            },
        )
    }
    const E: fn(Errno) -> Outcome = |e| Outcome::Return(e.to_ret());

    #[test]
    fn console_write_copies_then_emits() {
        let mut g = FakeGuest::new();
        g.ram[0x100..0x105].copy_from_slice(b"hello");
        assert_eq!(call(&mut g, 18, 0, 5, 0x100), Outcome::Return(0));
        assert_eq!(g.console, b"hello");
        // A buffer that runs off the end of RAM emits nothing.
        assert_eq!(call(&mut g, 18, 0, 16, 0xFFF8), E(Errno::EFAULT));
        assert_eq!(call(&mut g, 18, 0, 1 << 40, 0x100), E(Errno::EINVAL));
        assert_eq!(call(&mut g, 18, 0, 1, u64::MAX), E(Errno::EFAULT));
        assert_eq!(call(&mut g, 18, 99, 1, 0x100), E(Errno::ENOSYS));
        assert_eq!(g.console, b"hello");
    }

    #[test]
    fn version_and_features() {
        let mut g = FakeGuest::new();
        assert_eq!(call(&mut g, 17, 0, 0, 0), Outcome::Return(0x0004_0013));
        assert_eq!(
            call(&mut g, 17, XENVER_PAGESIZE, 0, 0),
            Outcome::Return(4096)
        );
        assert_eq!(
            call(&mut g, 17, XENVER_GET_FEATURES, 0x200, 0),
            Outcome::Return(0)
        );
        assert_eq!(&g.ram[0x204..0x208], &FEATURES_SUBMAP0.to_le_bytes());
        assert_eq!(
            call(&mut g, 17, XENVER_GET_FEATURES, 0xFFFC, 0),
            E(Errno::EFAULT)
        );
        assert_eq!(
            call(&mut g, 17, XENVER_EXTRAVERSION, 0x300, 0),
            Outcome::Return(0)
        );
        assert_eq!(&g.ram[0x300..0x30B], EXTRAVERSION);
        assert_eq!(call(&mut g, 17, 4242, 0, 0), E(Errno::ENOSYS));
    }

    #[test]
    fn sched_shutdown_validates_reason_and_pointer() {
        let mut g = FakeGuest::new();
        g.ram[0x400..0x404].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            call(&mut g, 29, 2, 0x400, 0),
            Outcome::Shutdown(ShutdownReason::Poweroff)
        );
        g.ram[0x400..0x404].copy_from_slice(&77u32.to_le_bytes());
        assert_eq!(call(&mut g, 29, 2, 0x400, 0), E(Errno::EINVAL));
        g.ram[0x400..0x404].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(call(&mut g, 29, 2, 0x400, 0), E(Errno::ENOSYS));
        assert_eq!(call(&mut g, 29, 2, 0x1_0000, 0), E(Errno::EFAULT));
        assert_eq!(call(&mut g, 29, 0, 0, 0), Outcome::Yield);
        assert_eq!(call(&mut g, 29, 99, 0, 0), E(Errno::ENOSYS));
    }

    fn call_as(g: &mut FakeGuest, dom: u16, nr: u64, a1: u64, a2: u64, a3: u64) -> Outcome {
        let was = g.domid;
        g.domid = dom;
        let o = call(g, nr, a1, a2, a3);
        g.domid = was;
        o
    }

    fn evtchn(g: &mut FakeGuest, cmd: u64, arg: u64) -> Outcome {
        call(g, 32, cmd, arg, 0)
    }

    #[test]
    fn event_channel_calls() {
        let mut g = FakeGuest::new();
        let self_ = DomId::SELF.0;
        // alloc_unbound for domain 2 (DOMID_SELF and the own id both work).
        g.put(
            0x100,
            &EvtchnAllocUnbound {
                dom: self_,
                remote_dom: 2,
                port: 0,
            },
        );
        assert_eq!(
            evtchn(&mut g, EVTCHNOP_ALLOC_UNBOUND, 0x100),
            Outcome::Return(0)
        );
        let a: EvtchnAllocUnbound = g.get(0x100);
        assert_eq!(a.port, 1);
        g.put(
            0x100,
            &EvtchnAllocUnbound {
                dom: 2,
                remote_dom: 1,
                port: 0,
            },
        );
        assert_eq!(
            evtchn(&mut g, EVTCHNOP_ALLOC_UNBOUND, 0x100),
            E(Errno::EPERM)
        );
        g.put(
            0x100,
            &EvtchnAllocUnbound {
                dom: 1,
                remote_dom: 9,
                port: 0,
            },
        );
        assert_eq!(
            evtchn(&mut g, EVTCHNOP_ALLOC_UNBOUND, 0x100),
            E(Errno::ESRCH)
        );
        // An output that cannot be written allocates nothing.
        g.ram[0xEFFC..0xF000].copy_from_slice(&[0xF0, 0x7F, 2, 0]);
        assert_eq!(
            evtchn(&mut g, EVTCHNOP_ALLOC_UNBOUND, 0xEFFC),
            E(Errno::EFAULT)
        );
        assert_eq!(g.hub().status(1, 2), Ok((0, [0, 0])), "port 2 still free");

        // Domain 2 binds to it.
        g.put(
            0x200,
            &EvtchnBindInterdomain {
                remote_dom: 1,
                pad: 0,
                remote_port: 1,
                local_port: 0,
            },
        );
        assert_eq!(
            call_as(&mut g, 2, 32, EVTCHNOP_BIND_INTERDOMAIN, 0x200, 0),
            Outcome::Return(0)
        );
        let b: EvtchnBindInterdomain = g.get(0x200);
        assert_eq!(b.local_port, 1);
        assert_eq!(
            call_as(&mut g, 2, 32, EVTCHNOP_BIND_INTERDOMAIN, 0x200, 0),
            E(Errno::EINVAL)
        );
        g.plat.take_notes();

        // status
        g.put(
            0x300,
            &EvtchnStatus {
                dom: self_,
                port: 1,
                ..Default::default()
            },
        );
        assert_eq!(evtchn(&mut g, EVTCHNOP_STATUS, 0x300), Outcome::Return(0));
        let st: EvtchnStatus = g.get(0x300);
        assert_eq!((st.status, st.u), (EVTCHNSTAT_INTERDOMAIN, [2, 1]));
        g.put(
            0x300,
            &EvtchnStatus {
                dom: 2,
                port: 1,
                ..Default::default()
            },
        );
        assert_eq!(evtchn(&mut g, EVTCHNOP_STATUS, 0x300), E(Errno::EPERM));
        g.put(
            0x300,
            &EvtchnStatus {
                dom: 1,
                port: MAX_PORTS,
                ..Default::default()
            },
        );
        assert_eq!(evtchn(&mut g, EVTCHNOP_STATUS, 0x300), E(Errno::EINVAL));

        // send reaches domain 2.
        g.put(0x400, &EvtchnPort { port: 1 });
        assert_eq!(evtchn(&mut g, EVTCHNOP_SEND, 0x400), Outcome::Return(0));
        assert!(g.hub().port_pending(2, 1));
        g.put(0x400, &EvtchnPort { port: 5 });
        assert_eq!(evtchn(&mut g, EVTCHNOP_SEND, 0x400), E(Errno::EINVAL));
        assert_eq!(evtchn(&mut g, EVTCHNOP_UNMASK, 0x400), Outcome::Return(0));
        g.put(0x400, &EvtchnPort { port: u32::MAX });
        assert_eq!(evtchn(&mut g, EVTCHNOP_UNMASK, 0x400), E(Errno::EINVAL));
        assert_eq!(evtchn(&mut g, EVTCHNOP_CLOSE, 0x400), E(Errno::EINVAL));

        // bind_virq
        g.put(
            0x500,
            &EvtchnBindVirq {
                virq: VIRQ_TIMER,
                vcpu: 0,
                port: 0,
            },
        );
        assert_eq!(
            evtchn(&mut g, EVTCHNOP_BIND_VIRQ, 0x500),
            Outcome::Return(0)
        );
        assert_eq!(g.get::<EvtchnBindVirq>(0x500).port, 2);
        assert_eq!(evtchn(&mut g, EVTCHNOP_BIND_VIRQ, 0x500), E(Errno::EEXIST));

        // close: the peer becomes unbound for us.
        g.put(0x400, &EvtchnPort { port: 1 });
        assert_eq!(evtchn(&mut g, EVTCHNOP_CLOSE, 0x400), Outcome::Return(0));
        assert_eq!(g.hub().status(2, 1), Ok((EVTCHNSTAT_UNBOUND, [1, 0])));

        // Unknown sub-ops (bind_pirq, bind_ipi, FIFO) are ENOSYS; bad pointers EFAULT.
        for cmd in [2, 7, 8, 10, 11, 12, 13, 99] {
            assert_eq!(evtchn(&mut g, cmd, 0x400), E(Errno::ENOSYS), "cmd {cmd}");
        }
        assert_eq!(evtchn(&mut g, EVTCHNOP_SEND, 0xFFFF_FFFF), E(Errno::EFAULT));
    }

    #[test]
    fn hvm_params() {
        let mut g = FakeGuest::new();
        let set = |g: &mut FakeGuest, domid, index, value| {
            g.put(
                0x100,
                &XenHvmParam {
                    domid,
                    pad: 0,
                    index,
                    value,
                },
            );
            call(g, 34, HVMOP_SET_PARAM, 0x100, 0)
        };
        let vec = shared_abi::hvm::callback_vector(0xF3);
        assert_eq!(
            set(&mut g, DomId::SELF.0, HVM_PARAM_CALLBACK_IRQ, vec),
            Outcome::Return(0)
        );
        assert_eq!(set(&mut g, 2, HVM_PARAM_CALLBACK_IRQ, vec), E(Errno::EPERM));
        assert_eq!(
            set(&mut g, 1, HVM_PARAM_STORE_PFN, 3),
            E(Errno::EPERM),
            "read-only"
        );
        assert_eq!(set(&mut g, 1, HVM_PARAM_CONSOLE_EVTCHN, 3), E(Errno::EPERM));
        assert_eq!(set(&mut g, 1, 3, 3), E(Errno::EINVAL), "unknown index");
        for bad in [0x1F, (1 << 56) | 0x40, (2 << 56) | 0x1_0040] {
            assert_eq!(
                set(&mut g, 1, HVM_PARAM_CALLBACK_IRQ, bad),
                E(Errno::EINVAL)
            );
        }
        g.hub()
            .set_builder_param(1, HVM_PARAM_CONSOLE_PFN, 9)
            .unwrap();
        g.put(
            0x200,
            &XenHvmParam {
                domid: 1,
                pad: 0,
                index: HVM_PARAM_CONSOLE_PFN,
                value: 0,
            },
        );
        assert_eq!(
            call(&mut g, 34, HVMOP_GET_PARAM, 0x200, 0),
            Outcome::Return(0)
        );
        assert_eq!(g.get::<XenHvmParam>(0x200).value, 9);
        g.put(
            0x200,
            &XenHvmParam {
                domid: 1,
                pad: 0,
                index: HVM_PARAM_CALLBACK_IRQ,
                value: 0,
            },
        );
        call(&mut g, 34, HVMOP_GET_PARAM, 0x200, 0);
        assert_eq!(g.get::<XenHvmParam>(0x200).value, vec);
        g.put(
            0x200,
            &XenHvmParam {
                domid: 1,
                pad: 0,
                index: 44,
                value: 0,
            },
        );
        assert_eq!(
            call(&mut g, 34, HVMOP_GET_PARAM, 0x200, 0),
            E(Errno::EINVAL)
        );
        assert_eq!(
            call(&mut g, 34, 23, 0x200, 0),
            E(Errno::ENOSYS),
            "upcall vector op"
        );
        assert_eq!(
            call(&mut g, 34, 9, 0x200, 0),
            E(Errno::ENOSYS),
            "pagetable_dying"
        );
    }

    #[test]
    fn add_to_physmap_places_shared_info() {
        let mut g = FakeGuest::new();
        let x = |domid, space, idx, gpfn| XenAddToPhysmap {
            domid,
            size: 0,
            space,
            idx,
            gpfn,
        };
        g.put(0x100, &x(DomId::SELF.0, XENMAPSPACE_SHARED_INFO, 0, 12));
        assert_eq!(
            call(&mut g, 12, XENMEM_ADD_TO_PHYSMAP, 0x100, 0),
            Outcome::Return(0)
        );
        assert_eq!(
            g.hub().inspect(1, DomainEvents::placed_gpfn),
            Some(Some(12))
        );
        // The pvclock record is there.
        let base = MBASE + 12 * 4096 + 32;
        assert_eq!(g.plat.mem.load(base + 8), 99, "tsc_timestamp");
        assert_eq!(g.plat.mem.load(base) % 2, 0, "version even");
        for (bad, err) in [
            (x(2, XENMAPSPACE_SHARED_INFO, 0, 12), Errno::EPERM),
            (x(1, XENMAPSPACE_SHARED_INFO, 1, 12), Errno::EINVAL),
            (x(1, XENMAPSPACE_SHARED_INFO, 0, 15), Errno::EINVAL),
            (x(1, XENMAPSPACE_SHARED_INFO, 0, u64::MAX), Errno::EINVAL),
            (x(1, 77, 0, 12), Errno::ENOSYS),
        ] {
            g.put(0x100, &bad);
            assert_eq!(
                call(&mut g, 12, XENMEM_ADD_TO_PHYSMAP, 0x100, 0),
                E(err),
                "{bad:?}"
            );
        }
        assert_eq!(
            call(&mut g, 12, 9, 0x100, 0),
            E(Errno::ENOSYS),
            "memory_map"
        );
        assert_eq!(
            call(&mut g, 12, XENMEM_ADD_TO_PHYSMAP, 0xFFF0, 0),
            E(Errno::EFAULT)
        );
    }

    fn gnttab(g: &mut FakeGuest, cmd: u64, uop: u64, count: u64) -> Outcome {
        call(g, 20, cmd, uop, count)
    }

    fn place_grant_frame(g: &mut FakeGuest, domid: u16, idx: u64, gpfn: u64) -> Outcome {
        g.put(
            0x100,
            &XenAddToPhysmap {
                domid,
                size: 0,
                space: XENMAPSPACE_GRANT_TABLE,
                idx,
                gpfn,
            },
        );
        call(g, 12, XENMEM_ADD_TO_PHYSMAP, 0x100, 0)
    }

    #[test]
    fn grant_table_frames_are_placed_in_order_and_move_with_their_entries() {
        use crate::grant::TableMem as _;
        let mut g = FakeGuest::new();
        let self_ = DomId::SELF.0;
        // Frame 1 before frame 0, and beyond the maximum: EINVAL.
        assert_eq!(place_grant_frame(&mut g, self_, 1, 5), E(Errno::EINVAL));
        assert_eq!(
            place_grant_frame(&mut g, self_, u64::from(GNTTAB_MAX_FRAMES), 5),
            E(Errno::EINVAL)
        );
        assert_eq!(
            place_grant_frame(&mut g, self_, 1 << 31, 5),
            E(Errno::EINVAL),
            "v2 status frames"
        );
        assert_eq!(place_grant_frame(&mut g, self_, 0, 15), E(Errno::EINVAL));
        assert_eq!(
            place_grant_frame(&mut g, self_, 0, u64::MAX),
            E(Errno::EINVAL)
        );
        assert_eq!(place_grant_frame(&mut g, 2, 0, 5), E(Errno::EPERM));
        assert_eq!(place_grant_frame(&mut g, self_, 0, 5), Outcome::Return(0));
        assert_eq!(
            place_grant_frame(&mut g, 1, 0, 5),
            Outcome::Return(0),
            "again"
        );
        // Another frame at the same page: EINVAL.
        assert_eq!(place_grant_frame(&mut g, self_, 1, 5), E(Errno::EINVAL));
        assert_eq!(place_grant_frame(&mut g, self_, 1, 6), Outcome::Return(0));
        assert_eq!(
            g.grants().inspect(1, |t| t.gpfns().to_vec()),
            Some(std::vec![5, 6])
        );
        // An entry of frame 1 (ref 512 + 3), then frame 1 moves to page 9: the entry goes
        // with it, the old page is plain RAM again.
        let entry = MBASE + 6 * 4096 + 3 * 8;
        g.plat.mem.store_u32(entry, 1); // permit_access for domain 0
        g.plat.mem.store_u32(entry + 4, 0x77);
        assert_eq!(place_grant_frame(&mut g, self_, 1, 9), Outcome::Return(0));
        assert_eq!(g.grants().header(1, 515), Some(1));
        assert_eq!(g.plat.mem.load_u32(MBASE + 9 * 4096 + 3 * 8 + 4), 0x77);
        // In use: the frame cannot move away under the pin.
        assert_eq!(g.grants().pin(1, 515, 0, true), Ok(0x77));
        assert_eq!(place_grant_frame(&mut g, self_, 1, 10), E(Errno::EBUSY));
        assert_eq!(place_grant_frame(&mut g, self_, 0, 11), Outcome::Return(0));
        assert!(g.grants().unpin(1, 515, true));
        assert_eq!(place_grant_frame(&mut g, self_, 1, 10), Outcome::Return(0));
        // query_size sees 2 frames.
        g.put(
            0x200,
            &GnttabQuerySize {
                dom: self_,
                ..Default::default()
            },
        );
        assert_eq!(
            gnttab(&mut g, GNTTABOP_QUERY_SIZE, 0x200, 1),
            Outcome::Return(0)
        );
        let q: GnttabQuerySize = g.get(0x200);
        assert_eq!((q.nr_frames, q.max_nr_frames, q.status), (2, 4, 0));
    }

    #[test]
    fn grant_table_op_calls() {
        let mut g = FakeGuest::new();
        let self_ = DomId::SELF.0;
        let q = |dom| GnttabQuerySize {
            dom,
            pad: 0,
            nr_frames: 99,
            max_nr_frames: 99,
            status: 99,
            pad2: 0,
        };
        g.put(0x200, &q(1));
        assert_eq!(
            gnttab(&mut g, GNTTABOP_QUERY_SIZE, 0x200, 1),
            Outcome::Return(0)
        );
        let got: GnttabQuerySize = g.get(0x200);
        assert_eq!((got.nr_frames, got.max_nr_frames, got.status), (0, 4, 0));
        g.put(0x200, &q(2));
        assert_eq!(
            gnttab(&mut g, GNTTABOP_QUERY_SIZE, 0x200, 1),
            Outcome::Return(0)
        );
        let got: GnttabQuerySize = g.get(0x200);
        assert_eq!((got.nr_frames, got.max_nr_frames), (0, 0));
        assert_eq!(got.status, shared_abi::grant_table::GNTST_BAD_DOMAIN);
        assert_eq!(
            gnttab(&mut g, GNTTABOP_QUERY_SIZE, 0x200, 2),
            E(Errno::EINVAL)
        );
        assert_eq!(
            gnttab(&mut g, GNTTABOP_QUERY_SIZE, 0x200, 0),
            E(Errno::EINVAL)
        );
        assert_eq!(
            gnttab(&mut g, GNTTABOP_QUERY_SIZE, 0xFFF8, 1),
            E(Errno::EFAULT)
        );
        assert_eq!(
            gnttab(&mut g, GNTTABOP_QUERY_SIZE, 0xEFFC, 1),
            E(Errno::EFAULT),
            "read-only output"
        );
        // Versions: 1 is fine, 2 is ENOSYS (v1 stays), others EINVAL.
        for (v, want) in [
            (1, Outcome::Return(0)),
            (2, E(Errno::ENOSYS)),
            (0, E(Errno::EINVAL)),
            (3, E(Errno::EINVAL)),
        ] {
            g.put(0x300, &GnttabVersion { version: v });
            assert_eq!(gnttab(&mut g, GNTTABOP_SET_VERSION, 0x300, 1), want, "v{v}");
        }
        assert_eq!(
            gnttab(&mut g, GNTTABOP_SET_VERSION, 0x300, 2),
            E(Errno::EINVAL)
        );
        g.put(
            0x400,
            &GnttabGetVersion {
                dom: self_,
                pad: 0,
                version: 0,
            },
        );
        assert_eq!(
            gnttab(&mut g, GNTTABOP_GET_VERSION, 0x400, 1),
            Outcome::Return(0)
        );
        assert_eq!(g.get::<GnttabGetVersion>(0x400).version, 1);
        g.put(
            0x400,
            &GnttabGetVersion {
                dom: 2,
                pad: 0,
                version: 0,
            },
        );
        assert_eq!(
            gnttab(&mut g, GNTTABOP_GET_VERSION, 0x400, 1),
            E(Errno::EPERM)
        );
        // Map, unmap, setup_table, transfer, copy, v2 calls and unknown ones: ENOSYS.
        for cmd in [0, 1, 2, 3, 4, 5, 7, 9, 11, 12, 99, u64::MAX] {
            assert_eq!(gnttab(&mut g, cmd, 0x200, 1), E(Errno::ENOSYS), "cmd {cmd}");
        }
        // Domain 0 has no grant-table hypercall at all.
        assert_eq!(
            call_as(&mut g, 0, 20, GNTTABOP_QUERY_SIZE, 0x200, 1),
            E(Errno::ENOSYS)
        );
    }

    #[test]
    fn timers() {
        let mut g = FakeGuest::new();
        assert_eq!(call(&mut g, 15, 5_000, 0, 0), Outcome::Return(0));
        assert_eq!(g.timer, Some(Some(5_000)));
        assert_eq!(call(&mut g, 15, 0, 0, 0), Outcome::Return(0));
        assert_eq!(g.timer, Some(None), "0 cancels");
        g.put(
            0x100,
            &VcpuSetSingleshotTimer {
                timeout_abs_ns: 500,
                flags: VCPU_SSHOTTMR_FUTURE,
                pad: 0,
            },
        );
        g.timer = None;
        assert_eq!(
            call(&mut g, 24, VCPUOP_SET_SINGLESHOT_TIMER, 0, 0x100),
            E(Errno::ETIME)
        );
        assert_eq!(g.timer, None, "not armed");
        g.put(
            0x100,
            &VcpuSetSingleshotTimer {
                timeout_abs_ns: 500,
                flags: 0,
                pad: 0,
            },
        );
        assert_eq!(
            call(&mut g, 24, VCPUOP_SET_SINGLESHOT_TIMER, 0, 0x100),
            Outcome::Return(0)
        );
        assert_eq!(g.timer, Some(Some(500)), "a past deadline fires at once");
        assert_eq!(
            call(&mut g, 24, VCPUOP_SET_SINGLESHOT_TIMER, 1, 0x100),
            E(Errno::EINVAL)
        );
        assert_eq!(
            call(&mut g, 24, VCPUOP_SET_SINGLESHOT_TIMER, 0, 0xFFFF),
            E(Errno::EFAULT)
        );
        assert_eq!(
            call(&mut g, 24, VCPUOP_STOP_SINGLESHOT_TIMER, 0, 0),
            Outcome::Return(0)
        );
        assert_eq!(g.timer, Some(None));
        assert_eq!(
            call(&mut g, 24, VCPUOP_STOP_PERIODIC_TIMER, 0, 0),
            Outcome::Return(0)
        );
        assert_eq!(
            call(&mut g, 24, VCPUOP_STOP_PERIODIC_TIMER, 3, 0),
            E(Errno::EINVAL)
        );
        for cmd in [6, 13, 99] {
            assert_eq!(
                call(&mut g, 24, cmd, 0, 0x100),
                E(Errno::ENOSYS),
                "cmd {cmd}"
            );
        }
    }

    #[test]
    fn register_runstate_memory_area_calls() {
        let mut g = FakeGuest::new();
        let reg = |g: &mut FakeGuest, vcpu, ptr| {
            call(g, 24, VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, vcpu, ptr)
        };
        g.put(0x100, &VcpuRegisterRunstateMemoryArea { addr: 0x2008 });
        assert_eq!(reg(&mut g, 0, 0x100), Outcome::Return(0));
        assert_eq!(g.runstate, Some(0x2008));
        // Another vCPU, even with a bad pointer: EINVAL; a bad pointer: EFAULT. Neither
        // touches the registration.
        assert_eq!(reg(&mut g, 1, 0xFFFF), E(Errno::EINVAL));
        for bad in [0xFFFC, 0x1_0000, u64::MAX - 3] {
            assert_eq!(reg(&mut g, 0, bad), E(Errno::EFAULT), "{bad:#x}");
        }
        assert_eq!(g.runstate, Some(0x2008));
        // Any address is a claim the environment checks when it writes; 0 unregisters.
        g.put(0x100, &VcpuRegisterRunstateMemoryArea { addr: u64::MAX });
        assert_eq!(reg(&mut g, 0, 0x100), Outcome::Return(0));
        assert_eq!(g.runstate, Some(u64::MAX));
        g.put(0x100, &VcpuRegisterRunstateMemoryArea { addr: 0 });
        assert_eq!(reg(&mut g, 0, 0x100), Outcome::Return(0));
        assert_eq!(g.runstate, Some(0));
        // Domain 0 has no vcpu_op.
        assert_eq!(
            call_as(
                &mut g,
                0,
                24,
                VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA,
                0,
                0x100
            ),
            E(Errno::ENOSYS)
        );
    }

    #[test]
    fn register_vcpu_info_moves_delivery_and_time() {
        use shared_abi::shared_info::{VCPU_INFO_PENDING_SEL, VCPU_INFO_TIME};
        let mut g = FakeGuest::new();
        let reg = |g: &mut FakeGuest, dom, vcpu, mfn, offset, rsvd| {
            g.put(0x300, &VcpuRegisterVcpuInfo { mfn, offset, rsvd });
            call_as(g, dom, 24, VCPUOP_REGISTER_VCPU_INFO, vcpu, 0x300)
        };
        let old = MBASE + 40 * 4096; // domain 1's shared_info (slot 0 is its vcpu_info)
        // A channel from domain 2; port 1 of domain 1 becomes pending before the move.
        let u = g.hub().alloc_unbound(1, 2).unwrap();
        let p2 = g.hub().bind_interdomain(2, 1, u).unwrap();
        g.hub().send(2, p2).unwrap();
        assert_eq!(g.plat.mem.load_u8(old), 1);
        // Bad arguments change nothing (and do not use up the one registration).
        for (vcpu, mfn, offset, rsvd, err) in [
            (1, 5, 0, 0, Errno::EINVAL),
            (0, 5, 0, 1, Errno::EINVAL),
            (0, 5, 4, 0, Errno::EINVAL),
            (0, 5, 4096 - 56, 0, Errno::EINVAL),
            (0, 5, u32::MAX - 7, 0, Errno::EINVAL),
            (0, 15, 0, 0, Errno::EINVAL),
            (0, u64::MAX, 0, 0, Errno::EINVAL),
        ] {
            assert_eq!(
                reg(&mut g, 1, vcpu, mfn, offset, rsvd),
                E(err),
                "{vcpu} {mfn} {offset} {rsvd}"
            );
        }
        assert_eq!(
            call(&mut g, 24, VCPUOP_REGISTER_VCPU_INFO, 0, 0xFFF8),
            E(Errno::EFAULT)
        );
        assert_eq!(
            g.hub().inspect(1, DomainEvents::registered_vcpu_info),
            Some(None)
        );
        // Moved to frame 5 at 0xFC0 (the last 64 bytes of the page).
        let vi = MBASE + 5 * 4096 + 0xFC0;
        assert_eq!(reg(&mut g, 1, 0, 5, 0xFC0, 0), Outcome::Return(0));
        assert_eq!(
            g.hub().inspect(1, DomainEvents::registered_vcpu_info),
            Some(Some(vi))
        );
        assert_eq!(g.plat.mem.load_u8(vi), 1, "upcall copied");
        assert_eq!(g.plat.mem.load(vi + VCPU_INFO_PENDING_SEL as u64), 1);
        assert_eq!(
            g.plat.mem.load(vi + VCPU_INFO_TIME as u64 + 8),
            99,
            "pvclock"
        );
        assert_eq!(g.plat.mem.load(vi + VCPU_INFO_TIME as u64) % 2, 0);
        // Once only.
        assert_eq!(reg(&mut g, 1, 0, 6, 0, 0), E(Errno::EINVAL));
        // The guest handles the event in the new place; the old slot is left alone.
        g.plat.mem.store(old, 0x5A);
        g.plat.mem.store(old + 8, 0);
        g.plat.mem.store_u8(vi, 0);
        g.plat.mem.store(vi + 8, 0);
        g.plat.mem.store(old + EVTCHN_PENDING as u64, 0);
        assert!(!g.hub().upcall_pending(1));
        g.hub()
            .set_callback(1, shared_abi::hvm::callback_vector(0xF3))
            .unwrap();
        assert_eq!(g.hub().pending_upcall(1), None);
        g.plat.take_notes();
        g.hub().send(2, p2).unwrap();
        assert_eq!(g.plat.take_notes(), std::vec![Notify::Upcall(1)]);
        assert_eq!(g.plat.mem.load_u8(vi), 1);
        assert_eq!(g.plat.mem.load(vi + 8), 1);
        assert_eq!((g.plat.mem.load(old), g.plat.mem.load(old + 8)), (0x5A, 0));
        assert!(g.hub().upcall_pending(1));
        assert_eq!(g.hub().pending_upcall(1), Some(0xF3));
        // Unmask re-raises there too.
        g.plat.mem.store_u8(vi, 0);
        g.plat.mem.store(vi + 8, 0);
        let (moff, bit) = port_word(shared_abi::shared_info::EVTCHN_MASK, 1);
        g.plat.mem.fetch_or(old + moff as u64, bit);
        g.put(0x400, &EvtchnPort { port: 1 });
        assert_eq!(evtchn(&mut g, EVTCHNOP_UNMASK, 0x400), Outcome::Return(0));
        assert_eq!(g.plat.mem.load_u8(vi), 1);
        // Placing shared_info afterwards moves the bitmaps but not slot 0, and writes no
        // pvclock record there.
        g.put(
            0x100,
            &XenAddToPhysmap {
                domid: DomId::SELF.0,
                size: 0,
                space: XENMAPSPACE_SHARED_INFO,
                idx: 0,
                gpfn: 12,
            },
        );
        assert_eq!(
            call(&mut g, 12, XENMEM_ADD_TO_PHYSMAP, 0x100, 0),
            Outcome::Return(0)
        );
        let new_si = MBASE + 12 * 4096;
        assert_eq!(g.plat.mem.load(new_si), 0, "slot 0 not copied");
        assert_eq!(
            g.plat.mem.load(new_si + VCPU_INFO_TIME as u64),
            0,
            "no time"
        );
        assert!(g.hub().port_pending(1, 1));
        // Domain 2 moves its own into frame 3 at offset 0; its events go there.
        assert_eq!(reg(&mut g, 2, 0, 3, 0, 0), Outcome::Return(0));
        g.hub().send(1, u).unwrap();
        assert_eq!(g.plat.mem.load_u8(MBASE + 3 * 4096), 1);
        // The end of the domain forgets it.
        g.hub().teardown(1);
        assert_eq!(
            g.hub().inspect(1, DomainEvents::registered_vcpu_info),
            Some(None)
        );
    }

    #[test]
    fn block_and_poll() {
        let mut g = FakeGuest::new();
        assert_eq!(call(&mut g, 29, SCHEDOP_BLOCK, 0, 0), Outcome::Block);
        // Two ports of domain 1, connected to domain 2.
        for _ in 0..2 {
            let u = g.hub().alloc_unbound(1, 2).unwrap();
            g.hub().bind_interdomain(2, 1, u).unwrap();
        }
        g.ram[0x200..0x208].copy_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        let poll = |g: &mut FakeGuest, nr_ports, timeout| {
            g.put(
                0x100,
                &SchedPoll {
                    ports: 0x200,
                    nr_ports,
                    pad: 0,
                    timeout,
                },
            );
            call(g, 29, SCHEDOP_POLL, 0x100, 0)
        };
        assert_eq!(
            poll(&mut g, 2, 0),
            Outcome::Poll {
                seq: 7,
                deadline_ns: 0
            }
        );
        assert_eq!(
            poll(&mut g, 0, 5_000),
            Outcome::Poll {
                seq: 7,
                deadline_ns: 5_000
            }
        );
        assert_eq!(poll(&mut g, 2, 1_000), Outcome::Return(0), "timeout passed");
        // A pending port (masked or not) ends it at once; pending bits stay set.
        g.hub().send(2, 2).unwrap();
        assert_eq!(poll(&mut g, 2, 0), Outcome::Return(0));
        let (off, bit) = port_word(EVTCHN_PENDING, 2);
        assert_ne!(g.plat.mem.load(MBASE + 40 * 4096 + off as u64) & bit, 0);
        assert_eq!(poll(&mut g, 129, 0), E(Errno::EINVAL));
        g.ram[0x204..0x208].copy_from_slice(&MAX_PORTS.to_le_bytes());
        assert_eq!(poll(&mut g, 2, 0), E(Errno::EINVAL));
        g.ram[0x204..0x208].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(poll(&mut g, 2, 0), E(Errno::EINVAL));
        g.put(
            0x100,
            &SchedPoll {
                ports: 0xFFFC,
                nr_ports: 2,
                pad: 0,
                timeout: 0,
            },
        );
        assert_eq!(call(&mut g, 29, SCHEDOP_POLL, 0x100, 0), E(Errno::EFAULT));
        assert_eq!(
            call(&mut g, 29, SCHEDOP_POLL, 0x1_0000, 0),
            E(Errno::EFAULT)
        );
        let _ = g.plat.take_notes();
        let _ = Notify::Dom0;
    }

    #[test]
    fn domain0_gets_no_domu_event_calls() {
        let mut g = FakeGuest::new();
        for (nr, cmd) in [
            (12, 7),
            (15, 1),
            (24, 9),
            (32, 4),
            (34, 1),
            (29, 1),
            (29, 3),
        ] {
            assert_eq!(
                call_as(&mut g, 0, nr, cmd, 0x100, 0),
                E(Errno::ENOSYS),
                "{nr}/{cmd}"
            );
        }
        assert_eq!(
            call_as(&mut g, 0, 17, 0, 0, 0),
            Outcome::Return(0x0004_0013)
        );
    }

    #[test]
    fn unknown_and_unprivileged_calls_fail() {
        let mut g = FakeGuest::new();
        for nr in [0, 1, 11, 64, 0xFFFF, u64::MAX, (1 << 32) | 17, 20, 21] {
            assert_eq!(call(&mut g, nr, 0, 0, 0), E(Errno::ENOSYS), "nr {nr:#x}");
        }
        let user = HypercallArgs {
            nr: 17,
            args: [0; 5],
            cpl: 3,
        };
        assert_eq!(dispatch(&mut g, user), E(Errno::EPERM));
    }

    #[test]
    fn hypercall_page_stubs() {
        let page = hypercall_page();
        assert_eq!(
            &page[32 * 18..32 * 18 + 9],
            &[0xB8, 18, 0, 0, 0, 0x0F, 0x01, 0xD9, 0xC3]
        );
        assert_eq!(&page[32 * 23..32 * 23 + 2], &[0x0F, 0x0B]);
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(nr in 0u64..64, a in proptest::array::uniform5(proptest::num::u64::ANY), cpl in 0u8..4) {
            let mut g = FakeGuest::new();
            let _ = dispatch(&mut g, HypercallArgs { nr, args: a, cpl });
        }

        /// Event, timer, param and poll calls with hostile structures (random bytes in
        /// guest memory, pointers near and beyond its end) never panic, and the port
        /// tables stay consistent.
        #[test]
        fn hostile_event_calls_never_panic(
            calls in proptest::collection::vec(
                (proptest::sample::select(std::vec![12u64, 15, 20, 24, 29, 32, 34]), 0u64..16,
                 proptest::sample::select(std::vec![0x100u64, 0xFFF0, 0xFFFC, 0x1_0000, u64::MAX - 3]),
                 0u64..3, proptest::array::uniform32(proptest::num::u8::ANY)),
                1..40)
        ) {
            let mut g = FakeGuest::new();
            for (nr, cmd, ptr, who, bytes) in calls {
                g.ram[0x100..0x120].copy_from_slice(&bytes);
                // A poll's port list at the pointer it names (if in RAM).
                let _ = call_as(&mut g, who as u16, nr, cmd, ptr, ptr);
                let _ = call_as(&mut g, who as u16, nr, cmd, 0x100, 0x100);
            }
            for d in 0..3u16 {
                for p in 1..MAX_PORTS {
                    if let Some(crate::evtchn::Port::Interdomain { remote_dom, remote_port }) =
                        g.hub().inspect(d, |t| t.port(p))
                    {
                        let back = g.hub().inspect(remote_dom, |t| t.port(remote_port));
                        proptest::prop_assert_eq!(back, Some(crate::evtchn::Port::Interdomain {
                            remote_dom: d,
                            remote_port: p,
                        }));
                    }
                }
            }
        }
    }
}
