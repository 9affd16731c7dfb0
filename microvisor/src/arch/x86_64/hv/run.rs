//! The DomU pCPUs' scheduler: per-pCPU run queues, time slices and guest timers from the
//! local APIC timer, and the run loop of one vCPU (world switch, upcall injection, exit
//! handling, blocking, Dom0's requests).

use super::events::{self, EVENT_SEQ, POLL_TSC};
use super::{
    APIC_TICKS_PER_MS, AtExit, CPU_CYCLES, CrashReason, DOMAINS, Domain, DomainState, ExitAction,
    ExitHost, FpuArea, HOST_STATE, HostMem, LAST_SLOT, Ordering, RUNQ, SCHED, SLICE_MS, SchedState,
    ShutdownReason, TSC_KHZ, Vmcb, XSAVE, apic, cpu, domains, end_domain, mvlog, set_state, svm,
    vcpu,
};
use crate::lifecycle::Wait;
use crate::runstate::State as RunstateKind;
use crate::vcpu::BlockOn;

/// pCPU `me`'s scheduler loop: runs the vCPUs on its queue round robin; when none is
/// runnable it fires expired guest timers and halts until the next deadline or an IPI.
pub(super) fn schedule(me: usize) -> ! {
    loop {
        let next = {
            let mut q = RUNQ[me].lock();
            if q.len == 0 {
                None
            } else {
                let slot = q.slots[0];
                let len = q.len;
                q.slots.copy_within(1..len, 0);
                q.len -= 1;
                Some(slot)
            }
        };
        match next {
            Some(slot) => {
                if run_domain(me, slot as usize) {
                    let mut q = RUNQ[me].lock();
                    let len = q.len;
                    q.slots[len] = slot;
                    q.len += 1;
                }
            }
            None => {
                // A timer may wake a vCPU here: look at the queue again before halting.
                let next = events::expire_timers(me);
                if RUNQ[me].lock().len > 0 {
                    continue;
                }
                match next {
                    Some(t) => arm_timer_at(t),
                    None => apic::timer_stop(),
                }
                // An IPI or the timer arriving since is pending and ends the halt at once.
                cpu::wait_for_interrupt();
            }
        }
    }
}

/// Saves (`save = true`) or restores this vCPU's FPU/SSE/AVX state.
pub(super) fn fpu_switch(area: &mut FpuArea, save: bool) {
    let p = area.0.as_mut_ptr();
    let xsave = XSAVE.load(Ordering::Relaxed);
    // The area is 64-byte aligned, 4 KiB (larger than any XSAVE image of this CPU), and
    // owned by the domain whose lock we hold; OSFXSR/OSXSAVE were enabled at boot.
    match (xsave, save) {
        // SAFETY: see above.
        (true, true) => unsafe {
            core::arch::asm!("xsave64 [{}]", in(reg) p, in("eax") u32::MAX, in("edx") u32::MAX)
        },
        // SAFETY: see above; the image was written by XSAVE or is the initial one.
        (true, false) => unsafe {
            core::arch::asm!("xrstor64 [{}]", in(reg) p, in("eax") u32::MAX, in("edx") u32::MAX)
        },
        // SAFETY: see above.
        (false, true) => unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) p) },
        // SAFETY: see above; the image was written by FXSAVE or is the initial one.
        (false, false) => unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) p) },
    }
}

/// Why a vCPU leaves its pCPU.
pub(super) enum Leave {
    /// Its slice is over (or it yielded): back on the run queue.
    Yield,
    /// It blocked (its state says so already).
    Block,
    /// Dom0 paused it.
    Pause,
    /// It ended, or Dom0 destroyed it.
    End(Ending),
}

/// How a domain ends.
#[derive(Clone, Copy, Debug)]
pub(super) enum Ending {
    Shutdown(ShutdownReason),
    Crash(CrashReason),
    Destroyed,
}

/// Applies Dom0's pending request, if any, at an exit (or before a run).
pub(super) fn requested_leave(domid: u16) -> Option<Leave> {
    apply_request(domid, SchedState::at_exit)
}

/// As [`requested_leave`], before a run: a vCPU that runs counts as started.
pub(super) fn begin_run(domid: u16) -> Option<Leave> {
    apply_request(domid, SchedState::begin_run)
}

/// Runs `check` on the domain's scheduling state (under its lock, where a pause also
/// shows in the record) and turns the verdict into a reason to leave.
fn apply_request(domid: u16, check: fn(&mut SchedState) -> AtExit) -> Option<Leave> {
    let mut sched = SCHED[usize::from(domid)].lock();
    match check(&mut sched) {
        AtExit::Continue => None,
        AtExit::Destroy => Some(Leave::End(Ending::Destroyed)),
        AtExit::Pause => {
            set_state(domid, DomainState::Paused, 0);
            Some(Leave::Pause)
        }
    }
}

/// TSC cycles in one time slice.
pub(super) fn slice_cycles() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed) * SLICE_MS
}

/// Arms this pCPU's timer to fire at TSC `deadline` (at once if it has passed).
pub(super) fn arm_timer_at(deadline: u64) {
    let left = deadline.saturating_sub(cpu::rdtsc());
    let khz = TSC_KHZ.load(Ordering::Relaxed).max(1);
    let ticks =
        u128::from(left) * u128::from(APIC_TICKS_PER_MS.load(Ordering::Relaxed)) / u128::from(khz);
    apic::timer_oneshot(u64::try_from(ticks).unwrap_or(u64::MAX));
}

/// Runs `slot`'s vCPU until its slice ends with others waiting, it yields, blocks, is
/// paused or ends. Returns whether it goes back on the run queue.
pub(super) fn run_domain(me: usize, slot: usize) -> bool {
    let mut guard = DOMAINS[slot].lock();
    let Some(d) = guard.as_mut() else {
        return false;
    };
    let leave = match begin_run(d.id) {
        Some(leave) => {
            // Paused (or destroyed) before it ran: it goes offline without running.
            // SAFETY: the VMCB frame belongs to this domain, whose lock we hold.
            let vmcb = unsafe { &*(d.vmcb_pa as *const Vmcb) };
            runstate_out(d, vmcb, &leave);
            leave
        }
        None => run_vcpu(me, slot, d),
    };
    apic::timer_stop();
    match leave {
        Leave::Yield => true,
        Leave::Pause => {
            mvlog!("d{} ({}) paused", d.id, d.name());
            false
        }
        Leave::Block => false,
        Leave::End(how) => {
            end_domain(&mut guard, how);
            false
        }
    }
}

/// Runstate of a vCPU leaving its pCPU (with its domain's lock held): runnable after its
/// slice or a yield, blocked, or offline when paused; an ending domain gets no update.
/// The guest's registered area is rewritten (translated afresh).
fn runstate_out(d: &mut Domain, vmcb: &Vmcb, leave: &Leave) {
    let to = match leave {
        Leave::Yield => RunstateKind::Runnable,
        Leave::Block => RunstateKind::Blocked,
        Leave::Pause => RunstateKind::Offline,
        Leave::End(_) => return,
    };
    d.vcpu
        .runstate_change(vmcb, &mut HostMem, to, events::now_ns());
}

/// The vCPU wants to block until `on`. Under its scheduling lock: if that has already
/// come (an upcall is pending, an event arrived since the poll began, the timeout
/// passed), it does not block (`None`: resume it); otherwise it blocks, unless Dom0's
/// request wins. A sender makes its event visible before it takes the lock, so no wake-up
/// is lost in between.
fn block_vcpu(domid: u16, on: BlockOn) -> Option<Leave> {
    let id = usize::from(domid);
    let wait = match on {
        BlockOn::Upcall => Wait::Upcall,
        BlockOn::Poll { deadline_ns, .. } => {
            if deadline_ns != 0 {
                events::set_poll_timeout(domid, deadline_ns);
            }
            Wait::Poll
        }
        BlockOn::Forever => Wait::Forever,
    };
    let mut sched = SCHED[id].lock();
    let due = match on {
        BlockOn::Upcall => events::hub().upcall_pending(domid),
        BlockOn::Poll { seq, deadline_ns } => {
            EVENT_SEQ[id].load(Ordering::SeqCst) != seq
                || (deadline_ns != 0 && events::now_ns() >= deadline_ns)
        }
        BlockOn::Forever => false,
    };
    if due {
        POLL_TSC[id].store(0, Ordering::SeqCst);
        return None;
    }
    match sched.block_on(wait) {
        AtExit::Continue => {
            domains::set_run_state(domid, DomainState::Blocked);
            Some(Leave::Block)
        }
        AtExit::Pause => {
            set_state(domid, DomainState::Paused, 0);
            Some(Leave::Pause)
        }
        AtExit::Destroy => Some(Leave::End(Ending::Destroyed)),
    }
}

/// The run loop of one vCPU on pCPU `me`: world switches and exits until it leaves.
pub(super) fn run_vcpu(me: usize, slot: usize, d: &mut Domain) -> Leave {
    // A full barrier: a sender that then reads LAST_SLOT to decide on a kick has made its
    // upcall visible to the check before our first VMRUN, or sees us here.
    let switched = LAST_SLOT[me].swap(slot as u32, Ordering::SeqCst) != slot as u32;
    let xsave = XSAVE.load(Ordering::Relaxed);
    if switched {
        if xsave {
            // SAFETY: XCR0 value saved from this vCPU (or its x87-only initial value).
            unsafe { cpu::xsetbv0(d.vcpu.xcr0) };
        }
        fpu_switch(&mut d.fpu, false);
    }
    // SAFETY: the VMCB frame belongs to this domain, whose lock the caller holds; nothing
    // else references it while the lock is held.
    let vmcb = unsafe { &mut *(d.vmcb_pa as *mut Vmcb) };
    if switched {
        vmcb.control.tlb_control = 1;
    }
    let host_state = HOST_STATE[me].load(Ordering::Relaxed);
    // A poll that ended (by an event or its timeout) no longer needs its timeout.
    POLL_TSC[usize::from(d.id)].store(0, Ordering::SeqCst);
    // Runstate: runnable since it was woken or unpaused (if it was), running from now.
    if let Some(since) = events::take_runnable_since(d.id) {
        d.vcpu.runstate.change(RunstateKind::Runnable, since);
    }
    d.vcpu
        .runstate_change(vmcb, &mut HostMem, RunstateKind::Running, events::now_ns());
    let hub = events::hub();
    let mut deadline = cpu::rdtsc() + slice_cycles();
    let mut armed_for = 0;
    let leave = loop {
        if xsave && cpu::xgetbv0() != d.vcpu.xcr0 {
            // SAFETY: restoring the guest's own XCR0, validated by the CPU when set.
            unsafe { cpu::xsetbv0(d.vcpu.xcr0) };
        }
        // Guest timers of every vCPU on this pCPU that have expired fire now (which may
        // raise this vCPU's upcall); the local APIC timer aims at whichever comes first of
        // the slice's end and the next deadline.
        let next = events::expire_timers(me).map_or(deadline, |t| t.min(deadline));
        if next != armed_for || !apic::timer_armed() {
            arm_timer_at(next);
            armed_for = next;
        }
        // The upcall is level-triggered: V_IRQ is recomputed before every entry.
        vcpu::set_upcall_irq(vmcb, hub.pending_upcall(d.id));
        let start = cpu::rdtsc();
        // SAFETY: VMCB, NPT, IOPM and MSRPM are valid and owned by this domain / shared
        // read-only; `regs` is this vCPU's; `host_state` is this CPU's VMSAVE page.
        unsafe { svm::run(d.vmcb_pa, &raw mut d.vcpu.regs, host_state) };
        let now = cpu::rdtsc();
        CPU_CYCLES[usize::from(d.id)].fetch_add(now.wrapping_sub(start), Ordering::Relaxed);
        vmcb.control.tlb_control = 0;
        vmcb.control.event_inj = 0;
        if xsave {
            d.vcpu.xcr0 = cpu::xgetbv0();
        }
        let mut host = ExitHost {
            mem: HostMem,
            domid: d.id,
            console: &mut d.console,
            notes: &mut d.notes,
        };
        let action = d.vcpu.handle_exit(vmcb, &mut host);
        match action {
            ExitAction::Shutdown(reason) => break Leave::End(Ending::Shutdown(reason)),
            ExitAction::Crash(why) => break Leave::End(Ending::Crash(why)),
            _ => {}
        }
        if let Some(leave) = requested_leave(d.id) {
            break leave;
        }
        match action {
            ExitAction::Yield => break Leave::Yield,
            ExitAction::Block(on) => {
                if let Some(leave) = block_vcpu(d.id, on) {
                    break leave;
                }
            }
            ExitAction::HostInterrupt => cpu::take_pending_interrupt(),
            _ => {}
        }
        if now >= deadline {
            if RUNQ[me].lock().len > 0 {
                break Leave::Yield;
            }
            deadline = now + slice_cycles();
        }
    };
    runstate_out(d, vmcb, &leave);
    // The vCPU leaves this pCPU: the next one to run here reloads its own state.
    LAST_SLOT[me].store(u32::MAX, Ordering::SeqCst);
    if !matches!(leave, Leave::End(_)) {
        fpu_switch(&mut d.fpu, true);
    }
    leave
}
