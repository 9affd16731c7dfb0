//! The DomU pCPUs' scheduler: per-pCPU run queues, time slices from the local APIC
//! timer, and the run loop of one vCPU (world switch, exit handling, Dom0's requests).

use super::{
    APIC_TICKS_PER_MS, AtExit, CPU_CYCLES, CrashReason, DOMAINS, Domain, DomainState, ExitAction,
    ExitHost, FpuArea, HOST_STATE, HostMem, LAST_SLOT, Ordering, RUNQ, SCHED, SLICE_MS, SchedState,
    ShutdownReason, TSC_KHZ, Vmcb, XSAVE, apic, cpu, end_domain, mvlog, set_state, svm,
};

/// pCPU `me`'s scheduler loop: runs the vCPUs on its queue round robin, halts when none
/// is runnable.
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
            None => cpu::wait_for_interrupt(),
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
    /// It halted.
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

/// Arms this pCPU's timer for the rest of the slice ending at `deadline` (TSC).
pub(super) fn arm_slice_timer(deadline: u64) {
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
        Some(leave) => leave,
        None => run_vcpu(me, slot, d),
    };
    apic::timer_stop();
    let d_id = d.id;
    match leave {
        Leave::Yield => true,
        Leave::Pause => {
            mvlog!("d{} ({}) paused", d.id, d.name());
            false
        }
        Leave::Block => {
            let verdict = SCHED[usize::from(d_id)].lock().block();
            match verdict {
                AtExit::Continue => {
                    set_state(d_id, DomainState::Blocked, 0);
                    mvlog!(
                        "d{} ({}) halted; no event source can wake it yet",
                        d.id,
                        d.name()
                    );
                }
                AtExit::Pause => set_state(d_id, DomainState::Paused, 0),
                AtExit::Destroy => end_domain(&mut guard, Ending::Destroyed),
            }
            false
        }
        Leave::End(how) => {
            end_domain(&mut guard, how);
            false
        }
    }
}

/// The run loop of one vCPU on pCPU `me`: world switches and exits until it leaves.
pub(super) fn run_vcpu(me: usize, slot: usize, d: &mut Domain) -> Leave {
    let switched = LAST_SLOT[me].swap(slot as u32, Ordering::Relaxed) != slot as u32;
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
    let mut deadline = cpu::rdtsc() + slice_cycles();
    let leave = loop {
        if xsave && cpu::xgetbv0() != d.vcpu.xcr0 {
            // SAFETY: restoring the guest's own XCR0, validated by the CPU when set.
            unsafe { cpu::xsetbv0(d.vcpu.xcr0) };
        }
        if !apic::timer_armed() {
            arm_slice_timer(deadline);
        }
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
            ExitAction::Block => break Leave::Block,
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
    // The vCPU leaves this pCPU: the next one to run here reloads its own state.
    LAST_SLOT[me].store(u32::MAX, Ordering::Relaxed);
    if !matches!(leave, Leave::End(_)) {
        fpu_switch(&mut d.fpu, true);
    }
    leave
}
