//! Guest-side hypercall wrappers (feature `guest`): the only unsafe code in this crate.
//!
//! These issue `VMMCALL` directly and must run at CPL 0 in 64-bit mode inside a domain.
//! Pointer arguments are linear addresses in the caller's address space.
//!
//! Every wrapper of a call that can fail returns `Result<_, Errno>`; the argument
//! structures are built here from plain values and live on the caller's stack for the
//! duration of the call, so none of the wrappers needs `unsafe` at the call site.

use crate::console::CONSOLEIO_WRITE;
use crate::event_channel::{
    EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_BIND_INTERDOMAIN, EVTCHNOP_BIND_VIRQ, EVTCHNOP_CLOSE,
    EVTCHNOP_SEND, EVTCHNOP_STATUS, EVTCHNOP_UNMASK, EvtchnAllocUnbound, EvtchnBindInterdomain,
    EvtchnBindVirq, EvtchnPort, EvtchnStatus,
};
use crate::grant_table::{
    GNTST_OKAY, GNTTABOP_GET_VERSION, GNTTABOP_QUERY_SIZE, GnttabGetVersion, GnttabQuerySize,
};
use crate::hvm::{HVMOP_GET_PARAM, HVMOP_SET_PARAM, XenHvmParam};
use crate::memory::{
    XENMAPSPACE_GRANT_TABLE, XENMAPSPACE_SHARED_INFO, XENMEM_ADD_TO_PHYSMAP, XenAddToPhysmap,
};
use crate::sched::{
    SCHEDOP_BLOCK, SCHEDOP_POLL, SCHEDOP_SHUTDOWN, SCHEDOP_YIELD, SchedPoll, SchedShutdown,
    ShutdownReason,
};
use crate::vcpu::{
    VCPUOP_SET_SINGLESHOT_TIMER, VCPUOP_STOP_PERIODIC_TIMER, VCPUOP_STOP_SINGLESHOT_TIMER,
    VcpuSetSingleshotTimer,
};
use crate::version::{XENVER_GET_FEATURES, XENVER_VERSION, XenFeatureInfo};
use crate::{DomId, Errno, Hypercall};

/// Issues hypercall `nr` with up to five raw arguments and returns raw `RAX`.
///
/// # Safety
///
/// The caller must run at CPL 0 under the microvisor (or Xen), and every pointer argument
/// that the call dereferences must be valid for the access the call makes.
#[inline(always)]
pub unsafe fn hypercall_raw(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: VMMCALL traps to the hypervisor, which reads RAX/RDI/RSI/RDX/R10/R8 and
    // writes RAX; the argument registers are declared clobbered as the ABI allows. Memory
    // validity of pointer arguments is the caller's obligation (see `# Safety`).
    unsafe {
        core::arch::asm!(
            "vmmcall",
            inlateout("rax") nr => ret,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            options(nostack),
        );
    }
    ret
}

/// Writes `bytes` to the hypervisor console.
pub fn console_write(bytes: &[u8]) -> Result<(), Errno> {
    // SAFETY: `bytes` is a valid readable slice for the duration of the call.
    let ret = unsafe {
        hypercall_raw(
            Hypercall::ConsoleIo as u64,
            CONSOLEIO_WRITE,
            bytes.len() as u64,
            bytes.as_ptr() as u64,
            0,
            0,
        )
    };
    Errno::from_ret(ret).map(|_| ())
}

/// Returns `(major, minor)` of the hypervisor's Xen interface level.
pub fn xen_version() -> (u16, u16) {
    // SAFETY: XENVER_version takes no pointer.
    let ret = unsafe { hypercall_raw(Hypercall::XenVersion as u64, XENVER_VERSION, 0, 0, 0, 0) };
    let v = ret as u64;
    ((v >> 16) as u16, v as u16)
}

/// Reads feature submap `idx`.
pub fn xen_features(idx: u32) -> Result<u32, Errno> {
    let mut info = XenFeatureInfo {
        submap_idx: idx,
        submap: 0,
    };
    // SAFETY: `info` is a valid, writable `XenFeatureInfo` for the duration of the call.
    let ret = unsafe {
        hypercall_raw(
            Hypercall::XenVersion as u64,
            XENVER_GET_FEATURES,
            core::ptr::from_mut(&mut info) as u64,
            0,
            0,
            0,
        )
    };
    Errno::from_ret(ret).map(|_| info.submap)
}

/// Gives other runnable vCPUs on this pCPU a turn.
pub fn sched_yield() {
    // SAFETY: SCHEDOP_yield takes no pointer.
    unsafe { hypercall_raw(Hypercall::SchedOp as u64, SCHEDOP_YIELD, 0, 0, 0, 0) };
}

/// Shuts the calling domain down. Returns only if the hypervisor refused the request.
pub fn sched_shutdown(reason: ShutdownReason) -> Errno {
    let arg = SchedShutdown {
        reason: reason as u32,
    };
    // SAFETY: `arg` is a valid `SchedShutdown` for the duration of the call.
    let ret = unsafe {
        hypercall_raw(
            Hypercall::SchedOp as u64,
            SCHEDOP_SHUTDOWN,
            core::ptr::from_ref(&arg) as u64,
            0,
            0,
            0,
        )
    };
    match Errno::from_ret(ret) {
        Ok(_) => Errno::EIO,
        Err(e) => e,
    }
}

/// Issues `nr(cmd, &mut arg)`: a call whose second argument (`RSI`) is the linear address
/// of one structure the hypervisor may read and write.
fn call_with<T>(nr: Hypercall, cmd: u64, arg: &mut T) -> Result<u64, Errno> {
    // SAFETY: `arg` is a valid, writable `T` that lives for the duration of the call; the
    // hypervisor accesses at most `size_of::<T>()` bytes of it (the structure of `cmd`).
    let ret = unsafe { hypercall_raw(nr as u64, cmd, core::ptr::from_mut(arg) as u64, 0, 0, 0) };
    Errno::from_ret(ret)
}

/// `EVTCHNOP_alloc_unbound`: a new port of the caller that `remote` may bind to.
pub fn evtchn_alloc_unbound(remote: DomId) -> Result<u32, Errno> {
    let mut arg = EvtchnAllocUnbound {
        dom: DomId::SELF.0,
        remote_dom: remote.0,
        port: 0,
    };
    call_with(Hypercall::EventChannelOp, EVTCHNOP_ALLOC_UNBOUND, &mut arg)?;
    Ok(arg.port)
}

/// `EVTCHNOP_bind_interdomain`: connects to unbound port `remote_port` of `remote`;
/// returns the caller's new port.
pub fn evtchn_bind_interdomain(remote: DomId, remote_port: u32) -> Result<u32, Errno> {
    let mut arg = EvtchnBindInterdomain {
        remote_dom: remote.0,
        pad: 0,
        remote_port,
        local_port: 0,
    };
    call_with(
        Hypercall::EventChannelOp,
        EVTCHNOP_BIND_INTERDOMAIN,
        &mut arg,
    )?;
    Ok(arg.local_port)
}

/// `EVTCHNOP_bind_virq`: binds virtual IRQ `virq` of vCPU `vcpu` to a new port.
pub fn evtchn_bind_virq(virq: u32, vcpu: u32) -> Result<u32, Errno> {
    let mut arg = EvtchnBindVirq {
        virq,
        vcpu,
        port: 0,
    };
    call_with(Hypercall::EventChannelOp, EVTCHNOP_BIND_VIRQ, &mut arg)?;
    Ok(arg.port)
}

fn evtchn_port_op(cmd: u64, port: u32) -> Result<(), Errno> {
    let mut arg = EvtchnPort { port };
    call_with(Hypercall::EventChannelOp, cmd, &mut arg).map(|_| ())
}

/// `EVTCHNOP_close`: frees `port`.
pub fn evtchn_close(port: u32) -> Result<(), Errno> {
    evtchn_port_op(EVTCHNOP_CLOSE, port)
}

/// `EVTCHNOP_send`: signals the peer of `port`.
pub fn evtchn_send(port: u32) -> Result<(), Errno> {
    evtchn_port_op(EVTCHNOP_SEND, port)
}

/// `EVTCHNOP_unmask`: clears `port`'s mask bit, re-raising the upcall if it is pending.
pub fn evtchn_unmask(port: u32) -> Result<(), Errno> {
    evtchn_port_op(EVTCHNOP_UNMASK, port)
}

/// `EVTCHNOP_status`: describes the caller's `port`.
pub fn evtchn_status(port: u32) -> Result<EvtchnStatus, Errno> {
    let mut arg = EvtchnStatus {
        dom: DomId::SELF.0,
        port,
        ..EvtchnStatus::default()
    };
    call_with(Hypercall::EventChannelOp, EVTCHNOP_STATUS, &mut arg)?;
    Ok(arg)
}

/// `HVMOP_get_param`: reads the caller's HVM parameter `index` (`HVM_PARAM_*`).
pub fn hvm_get_param(index: u32) -> Result<u64, Errno> {
    let mut arg = XenHvmParam {
        domid: DomId::SELF.0,
        pad: 0,
        index,
        value: 0,
    };
    call_with(Hypercall::HvmOp, HVMOP_GET_PARAM, &mut arg)?;
    Ok(arg.value)
}

/// `HVMOP_set_param`: sets the caller's HVM parameter `index` to `value`.
pub fn hvm_set_param(index: u32, value: u64) -> Result<(), Errno> {
    let mut arg = XenHvmParam {
        domid: DomId::SELF.0,
        pad: 0,
        index,
        value,
    };
    call_with(Hypercall::HvmOp, HVMOP_SET_PARAM, &mut arg).map(|_| ())
}

/// `XENMEM_add_to_physmap` of `space`/`idx` at guest frame `gpfn`.
pub fn add_to_physmap(space: u32, idx: u64, gpfn: u64) -> Result<(), Errno> {
    let mut arg = XenAddToPhysmap {
        domid: DomId::SELF.0,
        size: 0,
        space,
        idx,
        gpfn,
    };
    call_with(Hypercall::MemoryOp, XENMEM_ADD_TO_PHYSMAP, &mut arg).map(|_| ())
}

/// Places the caller's `shared_info` page at guest frame `gpfn`
/// (`XENMEM_add_to_physmap`, space `shared_info`, idx 0).
pub fn add_to_physmap_shared_info(gpfn: u64) -> Result<(), Errno> {
    add_to_physmap(XENMAPSPACE_SHARED_INFO, 0, gpfn)
}

/// Places frame `idx` of the caller's grant table at guest frame `gpfn`
/// (`XENMEM_add_to_physmap`, space `grant_table`): that frame of the caller's RAM becomes
/// the table frame ([`crate::grant_table`]).
pub fn add_to_physmap_grant_table(idx: u32, gpfn: u64) -> Result<(), Errno> {
    add_to_physmap(XENMAPSPACE_GRANT_TABLE, u64::from(idx), gpfn)
}

/// `grant_table_op(cmd, &mut arg, 1)`: one argument structure, which the hypervisor may
/// read and write.
fn gnttab_op_one<T>(cmd: u64, arg: &mut T) -> Result<u64, Errno> {
    // SAFETY: `arg` is a valid, writable `T` that lives for the duration of the call; with
    // a count of 1 the hypervisor accesses at most `size_of::<T>()` bytes of it (the
    // structure of `cmd`).
    let ret = unsafe {
        hypercall_raw(
            Hypercall::GrantTableOp as u64,
            cmd,
            core::ptr::from_mut(arg) as u64,
            1,
            0,
            0,
        )
    };
    Errno::from_ret(ret)
}

/// `GNTTABOP_query_size` for the caller: `(nr_frames, max_nr_frames)`, the table frames
/// placed so far and the most it may have.
///
/// # Errors
/// The call's error; `EINVAL` if it returned a `GNTST_*` status other than okay.
pub fn gnttab_query_size() -> Result<(u32, u32), Errno> {
    let mut arg = GnttabQuerySize {
        dom: DomId::SELF.0,
        ..GnttabQuerySize::default()
    };
    gnttab_op_one(GNTTABOP_QUERY_SIZE, &mut arg)?;
    if arg.status != GNTST_OKAY {
        return Err(Errno::EINVAL);
    }
    Ok((arg.nr_frames, arg.max_nr_frames))
}

/// `GNTTABOP_get_version` for the caller: the grant table version in effect.
pub fn gnttab_get_version() -> Result<u32, Errno> {
    let mut arg = GnttabGetVersion {
        dom: DomId::SELF.0,
        ..GnttabGetVersion::default()
    };
    gnttab_op_one(GNTTABOP_GET_VERSION, &mut arg)?;
    Ok(arg.version)
}

/// `set_timer_op`: arms the single-shot timer for `deadline_ns` of system time; 0
/// cancels it.
pub fn set_timer_op(deadline_ns: u64) -> Result<(), Errno> {
    // SAFETY: set_timer_op takes no pointer.
    let ret = unsafe { hypercall_raw(Hypercall::SetTimerOp as u64, deadline_ns, 0, 0, 0, 0) };
    Errno::from_ret(ret).map(|_| ())
}

/// `VCPUOP_set_singleshot_timer` for `vcpu`: deadline `timeout_abs_ns`, flags
/// `VCPU_SSHOTTMR_*`.
pub fn vcpu_set_singleshot_timer(vcpu: u32, timeout_abs_ns: u64, flags: u32) -> Result<(), Errno> {
    let arg = VcpuSetSingleshotTimer {
        timeout_abs_ns,
        flags,
        pad: 0,
    };
    // SAFETY: `arg` is a valid `VcpuSetSingleshotTimer` for the duration of the call.
    let ret = unsafe {
        hypercall_raw(
            Hypercall::VcpuOp as u64,
            VCPUOP_SET_SINGLESHOT_TIMER,
            u64::from(vcpu),
            core::ptr::from_ref(&arg) as u64,
            0,
            0,
        )
    };
    Errno::from_ret(ret).map(|_| ())
}

fn vcpu_op_no_arg(cmd: u64, vcpu: u32) -> Result<(), Errno> {
    // SAFETY: these sub-operations take no pointer (the argument is 0).
    let ret = unsafe { hypercall_raw(Hypercall::VcpuOp as u64, cmd, u64::from(vcpu), 0, 0, 0) };
    Errno::from_ret(ret).map(|_| ())
}

/// `VCPUOP_stop_singleshot_timer` for `vcpu`.
pub fn vcpu_stop_singleshot_timer(vcpu: u32) -> Result<(), Errno> {
    vcpu_op_no_arg(VCPUOP_STOP_SINGLESHOT_TIMER, vcpu)
}

/// `VCPUOP_stop_periodic_timer` for `vcpu`.
pub fn vcpu_stop_periodic_timer(vcpu: u32) -> Result<(), Errno> {
    vcpu_op_no_arg(VCPUOP_STOP_PERIODIC_TIMER, vcpu)
}

/// `SCHEDOP_block`: returns once `evtchn_upcall_pending` is set in the vCPU's `vcpu_info`
/// (at once if it already is).
///
/// Call it with `RFLAGS.IF` clear after checking for work, then set `IF`: an event that
/// arrives after the check sets `evtchn_upcall_pending`, so the block returns and the
/// upcall is taken as soon as `IF` is set. No wakeup is lost.
pub fn sched_block() -> Result<(), Errno> {
    // SAFETY: SCHEDOP_block takes no pointer.
    let ret = unsafe { hypercall_raw(Hypercall::SchedOp as u64, SCHEDOP_BLOCK, 0, 0, 0, 0) };
    Errno::from_ret(ret).map(|_| ())
}

/// `SCHEDOP_poll`: waits until one of `ports` is pending or `timeout_ns` (absolute system
/// time, 0 = none) passes; may return spuriously. Pending bits are not cleared.
pub fn sched_poll(ports: &[u32], timeout_ns: u64) -> Result<(), Errno> {
    let arg = SchedPoll {
        ports: ports.as_ptr() as u64,
        nr_ports: u32::try_from(ports.len()).map_err(|_| Errno::EINVAL)?,
        pad: 0,
        timeout: timeout_ns,
    };
    // SAFETY: `arg` is a valid `SchedPoll` whose `ports`/`nr_ports` describe the readable
    // slice `ports`; both live for the duration of the call.
    let ret = unsafe {
        hypercall_raw(
            Hypercall::SchedOp as u64,
            SCHEDOP_POLL,
            core::ptr::from_ref(&arg) as u64,
            0,
            0,
            0,
        )
    };
    Errno::from_ret(ret).map(|_| ())
}
