//! The DomU table: creating domains (boot-time and Dom0's), their records for the
//! control operations, Dom0's lifecycle requests, and the end of a domain.

use super::{
    ALIVE, ANY_FAILED, BOOT_INFO_GPA, Bundle, CPU_CYCLES, ConsoleLine, DOMAIN_FLAG_PRIVILEGED,
    DOMAIN_NPT, DOMAIN_PCPU, DOMAINS, Domain, DomainInfo, DomainState, EVENT_DOMAIN_STATE,
    EXIT_ON_IDLE, Effect, Ending, Errno, FpuArea, HostMem, IOPM_PA, LifecycleOp, MAX_DOMAINS,
    MSRPM_PA, NEXT_PCPU, Npt, ONLINE, Ordering, PermissionMaps, PhysMemory, PvhImage, RECORDS,
    RUNQ, RunState, SCHED, SchedState, ShutdownReason, Vcpu, Vmcb, apic, cpu, desc, dom0, domain,
    events, fill_fixed_str, memory, mvlog, raise_dom0_event, release_foreign_frames, vcpu,
};
use crate::runstate::{Runstate, State as RunstateKind};
use shared_abi::control::DOMAIN_STATE_DYING;

/// Publishes a new domain's record (running) and tells Dom0.
pub(super) fn record(domid: u16, name: &str, mem_mib: u32, pcpu: usize) {
    let mut info = DomainInfo {
        domid: u32::from(domid),
        state: DomainState::Running as u32,
        flags: if domid == 0 {
            DOMAIN_FLAG_PRIVILEGED
        } else {
            0
        },
        vcpus: 1,
        pcpu: pcpu as u32,
        mem_kib: u64::from(mem_mib) * 1024,
        ..DomainInfo::default()
    };
    fill_fixed_str(&mut info.name, name);
    if let Some(slot) = RECORDS.get(usize::from(domid)) {
        *slot.lock() = Some(info);
    }
    if domid != 0 {
        raise_dom0_event(EVENT_DOMAIN_STATE);
    }
}

/// Records a domain's new state; an ended domain no longer holds memory.
pub(super) fn set_state(domid: u16, state: DomainState, shutdown_reason: u32) {
    if let Some(Some(info)) = RECORDS
        .get(usize::from(domid))
        .map(|r| r.lock())
        .as_deref_mut()
    {
        info.state = state as u32;
        info.shutdown_reason = shutdown_reason;
        if matches!(state, DomainState::Shutdown | DomainState::Crashed) {
            info.mem_kib = 0;
        }
    }
    if domid != 0 {
        raise_dom0_event(EVENT_DOMAIN_STATE);
    }
}

/// Records a DomU's switch between running and blocked, without telling Dom0: these
/// follow the guest's own pace (every idle halt, every wake-up), so an event for each
/// would flood Dom0. `DomainInfo` still shows the state.
pub(super) fn set_run_state(domid: u16, state: DomainState) {
    if let Some(Some(info)) = RECORDS
        .get(usize::from(domid))
        .map(|r| r.lock())
        .as_deref_mut()
    {
        info.state = state as u32;
    }
}

/// Shows a destroyed DomU as dying: Dom0 still holds `held` grant mappings of its memory,
/// and the record (and the domid) stays until the last goes.
pub(super) fn set_dying(domid: u16, held: usize) {
    let changed = RECORDS
        .get(usize::from(domid))
        .map(|r| r.lock())
        .as_deref_mut()
        .and_then(Option::as_mut)
        .is_some_and(|info| {
            let was = info.state;
            info.state = DOMAIN_STATE_DYING;
            info.shutdown_reason = 0;
            info.mem_kib = 0;
            was != DOMAIN_STATE_DYING
        });
    if changed {
        mvlog!("d{domid} dying: Dom0 still maps {held} of its grants");
        raise_dom0_event(EVENT_DOMAIN_STATE);
    }
}

/// The last grant mapping of the ended DomU `domid` went: a dying domain's record goes.
pub(super) fn forget_if_dying(domid: u16) {
    let dying = RECORDS
        .get(usize::from(domid))
        .is_some_and(|r| r.lock().is_some_and(|i| i.state == DOMAIN_STATE_DYING));
    if dying {
        mvlog!("d{domid} gone: Dom0 unmapped its last grant");
        forget_record(domid);
    }
}

/// Drops a destroyed domain's record: it no longer exists for Dom0.
pub(super) fn forget_record(domid: u16) {
    if let Some(r) = RECORDS.get(usize::from(domid)) {
        *r.lock() = None;
    }
    CPU_CYCLES[usize::from(domid)].store(0, Ordering::Relaxed);
    raise_dom0_event(EVENT_DOMAIN_STATE);
}

/// Interrupts pCPU `pcpu` so that it looks at its run queue and its vCPU's requests.
pub(super) fn kick(pcpu: usize) {
    if let Some(id) = super::super::APIC_IDS
        .get(pcpu)
        .map(|a| a.load(Ordering::Relaxed))
    {
        apic::send_ipi(id, desc::WAKEUP_VECTOR);
    }
}

/// Puts slot `id - 1` (domid `id`) back on pCPU `pcpu`'s run queue and interrupts that
/// pCPU if it is another one (it may be halted).
pub(super) fn requeue(id: usize, pcpu: usize) {
    {
        let mut q = RUNQ[pcpu].lock();
        let len = q.len;
        q.slots[len] = (id - 1) as u8;
        q.len += 1;
    }
    if pcpu != super::super::cpu_index() {
        kick(pcpu);
    }
}

/// Domain 0's lifecycle request on DomU `domid` (see `crate::lifecycle`).
pub(super) fn lifecycle(op: LifecycleOp, domid: u32) -> Result<(), Errno> {
    let id = usize::try_from(domid)
        .ok()
        .filter(|d| (1..=MAX_DOMAINS).contains(d))
        .ok_or(Errno::ESRCH)?;
    let domid = id as u16;
    let effect = {
        let mut sched = SCHED[id].lock();
        let effect = match op {
            LifecycleOp::Pause => sched.pause()?,
            LifecycleOp::Unpause => sched.unpause()?,
            LifecycleOp::Destroy => sched.destroy()?,
        };
        // Effects that are complete now show in the record at once, under the same lock
        // as the pCPU's own updates.
        match (op, effect) {
            (LifecycleOp::Pause, Effect::None) => set_state(domid, DomainState::Paused, 0),
            (LifecycleOp::Unpause, Effect::None) if sched.run == RunState::Blocked => {
                set_state(domid, DomainState::Blocked, 0)
            }
            (LifecycleOp::Unpause, Effect::Requeue) => {
                events::note_runnable(domid);
                set_state(domid, DomainState::Running, 0)
            }
            _ => {}
        }
        effect
    };
    let pcpu = DOMAIN_PCPU[id].load(Ordering::Relaxed);
    match effect {
        Effect::None => {}
        Effect::Kick => kick(pcpu),
        Effect::Requeue => requeue(id, pcpu),
        Effect::DestroyNow => {
            // Off every run queue: nothing runs it. Its pCPU may still be leaving its run
            // loop with the lock held; that takes moments.
            end_domain(&mut DOMAINS[id - 1].lock(), Ending::Destroyed);
        }
        Effect::Forget => super::dom0_host::forget_ended(domid),
    }
    Ok(())
}

pub(super) fn create_boot_domains(bundle: &Bundle<'_>, have_dom0: bool) {
    let online = ONLINE.load(Ordering::Acquire);
    let mut next_pcpu = 0;
    for (i, image) in bundle.domus().enumerate() {
        // DomUs run on pCPUs 1..N; pCPU 0 belongs to Dom0 unless it is the only one.
        let pcpu = if online > 1 {
            1 + next_pcpu % (online - 1)
        } else if have_dom0 {
            mvlog!(
                "domain {:?} not created: the only pCPU belongs to Dom0",
                image.name
            );
            ANY_FAILED.store(true, Ordering::Relaxed);
            continue;
        } else {
            0
        };
        next_pcpu += 1;
        if let Err(why) = create_domain(
            i,
            image.name,
            image.cmdline,
            image.mem_mib,
            image.payload,
            pcpu,
        ) {
            mvlog!("domain {:?} not created: {why}", image.name);
            ANY_FAILED.store(true, Ordering::Relaxed);
        }
    }
    for pcpu in 1..online {
        if let Some(id) = super::super::APIC_IDS
            .get(pcpu)
            .map(|a| a.load(Ordering::Relaxed))
        {
            apic::send_ipi(id, desc::WAKEUP_VECTOR);
        }
    }
}

/// Why a boot domain could not be created.
pub(super) enum CreateError {
    Slots,
    Elf(crate::elf::ElfError),
    Build(domain::BuildError),
    Dom0(dom0::Dom0Error),
    NoMemory,
}

impl core::fmt::Display for CreateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CreateError::Slots => write!(f, "more than {} domains", MAX_DOMAINS),
            CreateError::Elf(e) => write!(f, "kernel image: {e}"),
            CreateError::Build(e) => write!(f, "{e}"),
            CreateError::Dom0(e) => write!(f, "{e}"),
            CreateError::NoMemory => write!(f, "not enough free memory"),
        }
    }
}

pub(super) fn create_domain(
    slot: usize,
    name: &str,
    cmdline: &str,
    mem_mib: u32,
    elf: &[u8],
    pcpu: usize,
) -> Result<(), CreateError> {
    if slot >= MAX_DOMAINS {
        return Err(CreateError::Slots);
    }
    let image = PvhImage::parse(elf).map_err(CreateError::Elf)?;
    let npt = domain::build(&mut HostMem, &image, mem_mib, cmdline).map_err(CreateError::Build)?;
    let new = NewDomain {
        domid: (slot + 1) as u16,
        name,
        mem_mib,
        pcpu,
        entry: u64::from(image.entry),
        start_info: BOOT_INFO_GPA,
    };
    install_domain(&new, npt, SchedState::new())
}

/// A DomU about to be installed.
pub(super) struct NewDomain<'a> {
    domid: u16,
    name: &'a str,
    mem_mib: u32,
    pcpu: usize,
    entry: u64,
    start_info: u64,
}

/// Makes a DomU whose memory `npt` is built: VMCB, records, and a place on its pCPU's run
/// queue unless `sched` says it starts paused. Frees `npt` on failure.
pub(super) fn install_domain(
    new: &NewDomain<'_>,
    npt: Npt,
    sched: SchedState,
) -> Result<(), CreateError> {
    let Some(vmcb_pa) = HostMem.alloc_zeroed_frame() else {
        npt.destroy(&mut HostMem);
        return Err(CreateError::NoMemory);
    };
    // Holds the domain's shared_info until the guest places it in its RAM.
    let Some(shared_info) = HostMem.alloc_zeroed_frame() else {
        HostMem.free_frame(vmcb_pa);
        npt.destroy(&mut HostMem);
        return Err(CreateError::NoMemory);
    };
    let (domid, name, mem_mib, pcpu) = (new.domid, new.name, new.mem_mib, new.pcpu);
    // SAFETY: `vmcb_pa` is a fresh zeroed frame, identity-mapped, owned by this domain.
    let vmcb = unsafe { &mut *(vmcb_pa as *mut Vmcb) };
    // Guest TCG provides 16 ASIDs; ASID 0 is the host's. The TLB is flushed whenever a
    // pCPU switches domains, so sharing an ASID between domains is safe.
    let asid = 1 + (u32::from(domid) - 1) % 15;
    let maps = PermissionMaps {
        iopm: IOPM_PA.load(Ordering::Relaxed),
        msrpm: MSRPM_PA.load(Ordering::Relaxed),
    };
    // PVH entry points are 32-bit: the builder checked the entry lies in guest RAM.
    let regs = vcpu::init_pvh_vmcb(
        vmcb,
        &npt,
        asid,
        maps,
        new.entry as u32,
        new.start_info,
        false,
    );
    let mut d = Domain {
        id: domid,
        name: [0; 32],
        name_len: name.len().min(31),
        vcpu: Vcpu::new(domid, false, npt, regs),
        vmcb_pa,
        console: ConsoleLine::EMPTY,
        notes: 0,
        fpu: FpuArea([0; 4096]),
    };
    d.name[..d.name_len].copy_from_slice(&name.as_bytes()[..d.name_len]);
    // MXCSR power-on value (the XRSTOR/FXRSTOR image loads it verbatim).
    d.fpu.0[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
    let paused = sched.paused();
    mvlog!(
        "d{domid} ({name}) created: {mem_mib} MiB, pCPU {pcpu}{}",
        if paused { ", paused" } else { "" }
    );
    let id = usize::from(domid);
    // Runstate accounting starts now: offline while paused, otherwise waiting for its pCPU.
    let _ = events::take_runnable_since(domid);
    d.vcpu.runstate = Runstate::new(
        if paused {
            RunstateKind::Offline
        } else {
            RunstateKind::Runnable
        },
        events::now_ns(),
    );
    // Event channels exist from creation: Dom0's builder may allocate ports at once.
    events::cancel_timers(domid);
    events::hub().open_domu(domid, shared_info, u64::from(mem_mib) * 256);
    super::grants::grants().open(domid, u64::from(mem_mib) * 256);
    DOMAIN_NPT[id].store(d.vcpu.npt.root(), Ordering::Release);
    DOMAIN_PCPU[id].store(pcpu, Ordering::Relaxed);
    ALIVE.fetch_add(1, Ordering::AcqRel);
    *DOMAINS[id - 1].lock() = Some(d);
    {
        let mut s = SCHED[id].lock();
        *s = sched;
        record(domid, name, mem_mib, pcpu);
        if paused {
            set_state(domid, DomainState::Paused, 0);
        }
    }
    if !paused {
        let mut q = RUNQ[pcpu].lock();
        let len = q.len;
        q.slots[len] = (id - 1) as u8;
        q.len += 1;
    }
    Ok(())
}

/// The domid Dom0's last `DomainCreate` got (creates run one at a time, in Dom0's
/// hypercalls on pCPU 0).
static LAST_DOMID: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Dom0's `DomainCreate`: an empty, paused DomU (Dom0's builder fills it).
pub(super) fn create_empty_domain(mem_mib: u32, name: &str) -> Result<u32, Errno> {
    if RECORDS.iter().any(|r| {
        r.lock()
            .is_some_and(|d| shared_abi::control::fixed_str(&d.name) == Some(name))
    }) {
        return Err(Errno::EEXIST);
    }
    // Domids go round (as in Xen) rather than reusing the lowest free one, so a domid a
    // client still holds names a gone domain for as long as possible: `dom0 reboot --wait`
    // and stale event-channel peers cannot mistake the next domain for the old one.
    let last = LAST_DOMID.load(Ordering::Relaxed);
    let domid = (0..MAX_DOMAINS)
        .map(|i| 1 + (last + i) % MAX_DOMAINS)
        .find(|&d| RECORDS[d].lock().is_none() && DOMAINS[d - 1].lock().is_none())
        .ok_or(Errno::ENOSPC)?;
    let online = ONLINE.load(Ordering::Acquire);
    if online < 2 {
        // pCPU 0 belongs to Dom0.
        return Err(Errno::ENOSPC);
    }
    // Refuse before touching anything: zeroing frames only to free them again would stall
    // Dom0 (this runs in its hypercall) for a request that cannot succeed. The NPT needs
    // about one table frame per 512 pages, plus the VMCB and the frame that holds its
    // shared_info until the guest places it (all within the margin of 8).
    let pages = u64::from(mem_mib) * 256;
    if memory::free_frames() < pages + pages / 512 + 8 {
        return Err(Errno::ENOMEM);
    }
    let pcpu = 1 + NEXT_PCPU.fetch_add(1, Ordering::Relaxed) % (online - 1);
    let npt = domain::build_empty(&mut HostMem, mem_mib).map_err(|e| match e {
        domain::BuildError::BadMemorySize(_) => Errno::EINVAL,
        _ => Errno::ENOMEM,
    })?;
    let new = NewDomain {
        domid: domid as u16,
        name,
        mem_mib,
        pcpu,
        entry: 0,
        start_info: 0,
    };
    install_domain(&new, npt, SchedState::created_paused()).map_err(|_| Errno::ENOMEM)?;
    LAST_DOMID.store(domid, Ordering::Relaxed);
    Ok(domid as u32)
}

/// Dom0's `DomainSetEntry`: the PVH entry state of a built domain that has not run.
pub(super) fn set_domain_entry(domid: u32, entry: u64, start_info: u64) -> Result<(), Errno> {
    let id = usize::try_from(domid)
        .ok()
        .filter(|d| (1..=MAX_DOMAINS).contains(d))
        .ok_or(Errno::ESRCH)?;
    let mem = RECORDS[id]
        .lock()
        .map(|d| d.mem_kib * 1024)
        .ok_or(Errno::ESRCH)?;
    if entry >= mem.min(1 << 32) || start_info.saturating_add(56) > mem {
        return Err(Errno::EINVAL);
    }
    if !SCHED[id].lock().entry_settable() {
        return Err(Errno::EBUSY);
    }
    // Paused and never queued: no pCPU holds the domain's lock, and only Dom0 (this pCPU)
    // can queue it.
    let mut guard = DOMAINS[id - 1].lock();
    let d = guard.as_mut().ok_or(Errno::ESRCH)?;
    // SAFETY: the VMCB frame belongs to this domain, whose lock we hold; it is not running.
    let vmcb = unsafe { &mut *(d.vmcb_pa as *mut Vmcb) };
    vmcb.save.rip = entry;
    d.vcpu.regs.rbx = start_info;
    Ok(())
}

pub(super) fn release_alive() {
    if ALIVE.fetch_sub(1, Ordering::AcqRel) == 1 {
        finish();
    }
}

/// Every domain has finished: report, and with `exit_on_idle` end the run through the
/// debug-exit port (0x10 all shut down cleanly with poweroff, 0x11 otherwise).
pub(super) fn finish() {
    let failed = ANY_FAILED.load(Ordering::Acquire);
    mvlog!(
        "all domains finished: {}",
        if failed { "fail" } else { "pass" }
    );
    if EXIT_ON_IDLE.load(Ordering::Relaxed) {
        // SAFETY: the debug-exit port belongs to the microvisor.
        unsafe {
            cpu::outl(
                super::super::DEBUG_EXIT_PORT,
                if failed { 0x11 } else { 0x10 },
            )
        };
    }
}

/// Logs the end of a domain, frees all its memory and drops it. A destroyed domain's
/// record goes too; a domain that shut down or crashed keeps its record until destroyed.
pub(super) fn end_domain(slot: &mut Option<Domain>, how: Ending) {
    let Some(mut d) = slot.take() else { return };
    d.console.flush(d.id);
    {
        let mut sched = SCHED[usize::from(d.id)].lock();
        sched.end();
        match how {
            Ending::Shutdown(reason) => {
                mvlog!("d{} ({}) shut down: {}", d.id, d.name(), reason.name());
                set_state(d.id, DomainState::Shutdown, reason as u32);
                if reason != ShutdownReason::Poweroff {
                    ANY_FAILED.store(true, Ordering::Relaxed);
                }
            }
            Ending::Crash(why) => {
                mvlog!("d{} ({}) crashed: {why}", d.id, d.name());
                set_state(d.id, DomainState::Crashed, 0);
                ANY_FAILED.store(true, Ordering::Relaxed);
            }
            // Its record goes once its memory is settled (below): it stays while Dom0
            // still holds grant mappings of it.
            Ending::Destroyed => mvlog!("d{} ({}) destroyed", d.id, d.name()),
        }
    }
    // No event, timer, shared_info or grant-table access reaches the domain from here on,
    // so its frames (those its shared_info and grant table live in among them) can go.
    events::cancel_timers(d.id);
    if let Some(frame) = events::hub().teardown(d.id) {
        HostMem.free_frame(frame);
    }
    super::grants::grants().teardown(d.id);
    let destroyed = matches!(how, Ending::Destroyed);
    let (foreign, grant) = release_foreign_frames(d.id, d.vcpu.npt, destroyed);
    if foreign + grant > 0 {
        mvlog!(
            "d{}: {} frames stay mapped in Dom0 until it unmaps them ({grant} grant mappings)",
            d.id,
            foreign + grant
        );
    }
    let freed = d.vcpu.npt.destroy(&mut HostMem);
    HostMem.free_frame(d.vmcb_pa);
    mvlog!(
        "d{} memory released: {} MiB, {} MiB free",
        d.id,
        freed / 256,
        memory::free_frames() / 256
    );
    release_alive();
}
