//! The hypervisor proper: boot sequence, the domain table, per-pCPU run queues and the
//! run loop that drives [`crate::vcpu::Vcpu::handle_exit`].

use super::memory::HostMem;
use super::{MAX_CPUS, apic, cpu, desc, entry, memory, svm};
use crate::bundle::Bundle;
use crate::control::LifecycleOp;
use crate::dom0::{self, Range};
use crate::domain::{self, BOOT_INFO_GPA};
use crate::elf::PvhImage;
use crate::lifecycle::{AtExit, Effect, RunState, SchedState};
use crate::mm::PhysMemory;
use crate::mm::npt::Npt;
use crate::mvlog;
use crate::policy::{self, DOM0_TRAPPED_MSRS, PASSTHROUGH_MSRS};
use crate::vcpu::{self, CrashReason, ExitAction, Host, Note, PermissionMaps, Vcpu};
use crate::vmcb::Vmcb;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use shared_abi::Errno;
use shared_abi::control::{
    CONTROL_VERSION, DOMAIN_FLAG_PRIVILEGED, DomainInfo, DomainState, EVENT_DOMAIN_STATE, HostInfo,
    fill_fixed_str,
};
use shared_abi::pvh::{E820_RAM, HVM_START_MAGIC, HvmMemmapEntry, HvmModlistEntry, HvmStartInfo};
use shared_abi::sched::ShutdownReason;
use spin::Mutex;
use zerocopy::FromBytes;

mod dom0_host;
use dom0_host::{
    DOM0_DENIED_PORTS, DOM0_EVENTS, DOM0_PROXIED_PORTS, DOMAIN_NPT, create_dom0, end_run,
    plan_dom0_memory, raise_dom0_event, release_foreign_frames, run_dom0,
};

/// Most domains at once.
pub const MAX_DOMAINS: usize = 32;
/// Log lines about denied guest actions per domain before they are suppressed.
const NOTE_BUDGET: u32 = 16;
/// Longest console line kept before it is flushed.
const LINE_MAX: usize = 200;

#[repr(C, align(64))]
struct FpuArea([u8; 4096]);

/// A domain's console output being assembled into one log line.
struct ConsoleLine {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl ConsoleLine {
    const EMPTY: Self = Self {
        buf: [0; LINE_MAX],
        len: 0,
    };

    /// Appends guest bytes, logging each complete line as `(dN) text`. Control characters
    /// are dropped or replaced so a guest cannot break the one-line-per-record log.
    fn push(&mut self, domid: u16, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'\n' => self.flush(domid),
                b'\r' => {}
                0x20..=0x7E => self.put(domid, b),
                _ => self.put(domid, b'?'),
            }
        }
    }

    fn put(&mut self, domid: u16, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
        if self.len == LINE_MAX {
            self.flush(domid);
        }
    }

    /// Logs whatever is buffered (nothing if empty).
    fn flush(&mut self, domid: u16) {
        if self.len == 0 {
            return;
        }
        let text = core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?");
        let mut log = super::serial::LOG.lock();
        let _ = core::fmt::Write::write_fmt(&mut *log, format_args!("(d{domid}) {text}\n"));
        self.len = 0;
    }
}

/// A running DomU.
struct Domain {
    id: u16,
    name: [u8; 32],
    name_len: usize,
    vcpu: Vcpu,
    vmcb_pa: u64,
    console: ConsoleLine,
    notes: u32,
    fpu: FpuArea,
}

impl Domain {
    fn name(&self) -> &str {
        core::str::from_utf8(&self.name[..self.name_len]).unwrap_or("?")
    }
}

static DOMAINS: [Mutex<Option<Domain>>; MAX_DOMAINS] = [const { Mutex::new(None) }; MAX_DOMAINS];

/// A pCPU's run queue of domain slots, round robin.
struct RunQueue {
    slots: [u8; MAX_DOMAINS],
    len: usize,
}

static RUNQ: [Mutex<RunQueue>; MAX_CPUS] = [const {
    Mutex::new(RunQueue {
        slots: [0; MAX_DOMAINS],
        len: 0,
    })
}; MAX_CPUS];

/// Live domains plus one reference held by the boot sequence.
static ALIVE: AtomicUsize = AtomicUsize::new(1);
static ANY_FAILED: AtomicBool = AtomicBool::new(false);
static EXIT_ON_IDLE: AtomicBool = AtomicBool::new(false);
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static ONLINE: AtomicUsize = AtomicUsize::new(1);
static HOST_STATE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static LAST_SLOT: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];
static IOPM_PA: AtomicU64 = AtomicU64::new(0);
static MSRPM_PA: AtomicU64 = AtomicU64::new(0);
static DOM0_IOPM_PA: AtomicU64 = AtomicU64::new(0);
static DOM0_MSRPM_PA: AtomicU64 = AtomicU64::new(0);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static MEM_TOTAL_KIB: AtomicU64 = AtomicU64::new(0);

/// What the control operations report about each domain, indexed by domid (0 is Dom0).
/// Locked only briefly, never while a guest runs, so Dom0 can read it at any time.
static RECORDS: [Mutex<Option<DomainInfo>>; MAX_DOMAINS + 1] =
    [const { Mutex::new(None) }; MAX_DOMAINS + 1];
/// Each DomU's scheduling state (see `crate::lifecycle`), by domid. Lock order: SCHED,
/// then RECORDS; never held across a guest run.
static SCHED: [Mutex<SchedState>; MAX_DOMAINS + 1] =
    [const { Mutex::new(SchedState::new()) }; MAX_DOMAINS + 1];
/// The pCPU each DomU runs on, by domid.
static DOMAIN_PCPU: [AtomicUsize; MAX_DOMAINS + 1] =
    [const { AtomicUsize::new(0) }; MAX_DOMAINS + 1];
/// Local APIC timer ticks (divided by 16) per millisecond.
static APIC_TICKS_PER_MS: AtomicU64 = AtomicU64::new(0);
/// Round-robin cursor for the pCPU of the next domain Dom0 creates.
static NEXT_PCPU: AtomicUsize = AtomicUsize::new(0);
/// A DomU's time slice when others wait on its pCPU.
const SLICE_MS: u64 = 10;

/// TSC cycles each domain's vCPU spent in guest mode, indexed by domid.
static CPU_CYCLES: [AtomicU64; MAX_DOMAINS + 1] = [const { AtomicU64::new(0) }; MAX_DOMAINS + 1];

fn record(domid: u16, name: &str, mem_mib: u32, pcpu: usize) {
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
fn set_state(domid: u16, state: DomainState, shutdown_reason: u32) {
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

/// Drops a destroyed domain's record: it no longer exists for Dom0.
fn forget_record(domid: u16) {
    if let Some(r) = RECORDS.get(usize::from(domid)) {
        *r.lock() = None;
    }
    CPU_CYCLES[usize::from(domid)].store(0, Ordering::Relaxed);
    raise_dom0_event(EVENT_DOMAIN_STATE);
}

/// Interrupts pCPU `pcpu` so that it looks at its run queue and its vCPU's requests.
fn kick(pcpu: usize) {
    if let Some(id) = super::APIC_IDS.get(pcpu).map(|a| a.load(Ordering::Relaxed)) {
        apic::send_ipi(id, desc::WAKEUP_VECTOR);
    }
}

/// Domain 0's lifecycle request on DomU `domid` (see `crate::lifecycle`).
fn lifecycle(op: LifecycleOp, domid: u32) -> Result<(), Errno> {
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
            (LifecycleOp::Unpause, Effect::Requeue) => set_state(domid, DomainState::Running, 0),
            _ => {}
        }
        effect
    };
    let pcpu = DOMAIN_PCPU[id].load(Ordering::Relaxed);
    match effect {
        Effect::None => {}
        Effect::Kick => kick(pcpu),
        Effect::Requeue => {
            {
                let mut q = RUNQ[pcpu].lock();
                let len = q.len;
                q.slots[len] = (id - 1) as u8;
                q.len += 1;
            }
            kick(pcpu);
        }
        Effect::DestroyNow => {
            // Off every run queue: nothing runs it. Its pCPU may still be leaving its run
            // loop with the lock held; that takes moments.
            end_domain(&mut DOMAINS[id - 1].lock(), Ending::Destroyed);
        }
        Effect::Forget => forget_record(domid),
    }
    Ok(())
}

fn cycles_to_ns(cycles: u64) -> u64 {
    let khz = TSC_KHZ.load(Ordering::Relaxed).max(1);
    u64::try_from(u128::from(cycles) * 1_000_000 / u128::from(khz)).unwrap_or(u64::MAX)
}
static XSAVE: AtomicBool = AtomicBool::new(false);

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// Boot facts copied out of `hvm_start_info` before low memory is reused.
struct BootInfo {
    memmap: [HvmMemmapEntry; 128],
    memmap_len: usize,
    module: Option<(u64, u64)>,
    cmdline: [u8; 256],
    cmdline_len: usize,
    rsdp: u64,
}

fn read_phys<T: FromBytes>(pa: u64) -> T {
    let mut buf = [0u8; 64];
    let n = core::mem::size_of::<T>();
    HostMem.read_bytes(pa, &mut buf[..n]);
    match T::read_from_bytes(&buf[..n]) {
        Ok(v) => v,
        Err(_) => super::fatal(format_args!("unreadable boot structure at {pa:#x}")),
    }
}

fn copy_boot_info(start_info_pa: u64) -> BootInfo {
    let si: HvmStartInfo = read_phys(start_info_pa);
    if si.magic != HVM_START_MAGIC {
        super::fatal(format_args!(
            "bad hvm_start_info magic {:#x}: not booted through PVH",
            si.magic
        ));
    }
    let mut info = BootInfo {
        memmap: [HvmMemmapEntry::default(); 128],
        memmap_len: (si.memmap_entries as usize).min(128),
        module: None,
        cmdline: [0; 256],
        cmdline_len: 0,
        rsdp: si.rsdp_paddr,
    };
    for i in 0..info.memmap_len {
        info.memmap[i] = read_phys(si.memmap_paddr + 24 * i as u64);
    }
    if si.nr_modules >= 1 {
        let m: HvmModlistEntry = read_phys(si.modlist_paddr);
        info.module = Some((m.paddr, m.size));
    }
    if si.cmdline_paddr != 0 {
        while info.cmdline_len < info.cmdline.len() {
            let mut b = [0u8];
            HostMem.read_bytes(si.cmdline_paddr + info.cmdline_len as u64, &mut b);
            if b[0] == 0 {
                break;
            }
            info.cmdline[info.cmdline_len] = b[0];
            info.cmdline_len += 1;
        }
    }
    info
}

/// Sets CR4 bits for FPU/SSE state handling (and XSAVE when present).
fn enable_fpu_state_switching() {
    let has_xsave = cpu::cpuid(1, 0).ecx & (1 << 26) != 0;
    let mut cr4 = cpu::read_cr4() | (1 << 9) | (1 << 10); // OSFXSR | OSXMMEXCPT
    if has_xsave {
        cr4 |= 1 << 18; // OSXSAVE
    }
    // SAFETY: enabling FXSAVE/XSAVE support only; the microvisor itself is soft-float.
    unsafe { cpu::write_cr4(cr4) };
    XSAVE.store(has_xsave, Ordering::Relaxed);
}

/// Rust entry of the bootstrap processor (from `entry.rs`).
#[unsafe(no_mangle)]
extern "C" fn bsp_main(start_info_pa: u64) -> ! {
    super::serial::LOG.lock().init();
    mvlog!("microvisor {} booting", env!("CARGO_PKG_VERSION"));
    let boot = copy_boot_info(start_info_pa);
    let cmdline = core::str::from_utf8(&boot.cmdline[..boot.cmdline_len]).unwrap_or("");
    EXIT_ON_IDLE.store(
        cmdline.split_whitespace().any(|w| w == "exit_on_idle"),
        Ordering::Relaxed,
    );

    apic::disable_legacy_pic();
    desc::init_idt();
    desc::load(0);
    super::set_apic_id(0, apic::id());
    apic::enable();
    enable_fpu_state_switching();

    memory::init();
    {
        let mut frames = memory::FRAMES.lock();
        let Some(f) = frames.as_mut() else {
            super::fatal(format_args!("no frame allocator"))
        };
        for e in &boot.memmap[..boot.memmap_len] {
            if e.kind == E820_RAM {
                // Below 1 MiB belongs to firmware and the AP trampoline.
                let start = e.addr.max(1 << 20);
                let end = e.addr.saturating_add(e.size).min(memory::MANAGED_LIMIT);
                if start < end {
                    f.add_free_range(start, end);
                }
            }
        }
        MEM_TOTAL_KIB.store(f.free_frames() * 4, Ordering::Relaxed);
        let image = (&raw const __image_start) as u64..(&raw const __image_end) as u64;
        f.reserve_range(image.start, image.end);
        if let Some((pa, size)) = boot.module {
            f.reserve_range(pa, pa + size);
        }
        mvlog!(
            "memory: {} MiB free, image {:#x}-{:#x}",
            f.free_frames() / 256,
            image.start,
            image.end
        );
    }
    BOOT_TSC.store(cpu::rdtsc(), Ordering::Relaxed);
    let bundle = boot_bundle(boot.module);
    // Dom0's RAM is chosen before the allocator hands out a single frame, so the kernel's
    // fixed load address (16 MiB) is still free.
    let dom0_mem = bundle
        .as_ref()
        .and_then(Bundle::dom0)
        .and_then(|d| plan_dom0_memory(&boot, d.kernel.mem_mib));

    let khz = apic::calibrate_tsc_khz();
    TSC_KHZ.store(khz, Ordering::Relaxed);
    APIC_TICKS_PER_MS.store(apic::calibrate_timer(khz), Ordering::Relaxed);
    match svm::enable() {
        Ok(host_state) => HOST_STATE[0].store(host_state, Ordering::Relaxed),
        Err(e) => super::fatal(format_args!("pCPU 0 cannot run guests: {e:?}")),
    }
    setup_permission_maps();
    start_application_processors(boot.rsdp, khz);
    mvlog!(
        "{} pCPUs online, TSC {} MHz, SVM with nested paging",
        ONLINE.load(Ordering::Acquire),
        khz / 1000
    );

    let dom0 = match (bundle.as_ref().and_then(Bundle::dom0), dom0_mem) {
        (Some(images), Some(ram)) => match create_dom0(&boot, images, &ram) {
            Ok(d) => Some(d),
            Err(why) => {
                mvlog!("d0 (dom0) not created: {why}");
                end_run(false);
            }
        },
        (Some(_), None) => end_run(false),
        (None, _) => None,
    };
    if let Some(bundle) = &bundle {
        create_boot_domains(bundle, dom0.is_some());
    }
    if let Some((pa, size)) = boot.module {
        // Every image has been copied out: the bundle's memory joins the free pool.
        if let Some(f) = memory::FRAMES.lock().as_mut() {
            f.add_free_range(pa, pa + size);
        }
    }
    // Drop the boot reference: from now on the last domain to finish ends the run.
    release_alive();
    match dom0 {
        Some(d) => run_dom0(d),
        None => loop {
            // Without a Dom0, pCPU 0 idles.
            cpu::wait_for_interrupt();
        },
    }
}

/// Parses the boot bundle QEMU loaded as the PVH module.
fn boot_bundle(module: Option<(u64, u64)>) -> Option<Bundle<'static>> {
    let Some((pa, size)) = module else {
        mvlog!("no boot bundle (-initrd): no domains to start");
        return None;
    };
    let len = usize::try_from(size).ok()?;
    // SAFETY: QEMU placed the module at [pa, pa + size) in RAM that the frame allocator
    // reserved; it is only read, and stays untouched until the domains have been built
    // (its frames are freed only after the last `Bundle` use in `bsp_main`).
    let bytes = unsafe { core::slice::from_raw_parts(pa as *const u8, len) };
    match Bundle::parse(bytes) {
        Ok(b) => Some(b),
        Err(e) => {
            mvlog!("boot bundle rejected: {e}");
            ANY_FAILED.store(true, Ordering::Relaxed);
            None
        }
    }
}

/// IOPM (every port intercepted) and MSRPM (every MSR intercepted except the ones
/// VMLOAD/VMSAVE switch), shared read-only by all DomUs.
fn setup_permission_maps() {
    let (Some(iopm), Some(msrpm)) = (
        memory::alloc_zeroed_contiguous(3),
        memory::alloc_zeroed_contiguous(2),
    ) else {
        super::fatal(format_args!("no memory for the permission maps"));
    };
    for off in (0..3 * 4096).step_by(8) {
        HostMem.write_u64(iopm + off, u64::MAX);
    }
    for off in (0..2 * 4096).step_by(8) {
        HostMem.write_u64(msrpm + off, u64::MAX);
    }
    for msr in PASSTHROUGH_MSRS {
        if let Some((byte, bit)) = policy::msrpm_position(msr) {
            let word = msrpm + (byte as u64 & !7);
            let shift = (byte as u64 % 8) * 8 + u64::from(bit);
            let v = HostMem.read_u64(word) & !(0b11 << shift);
            HostMem.write_u64(word, v);
        }
    }
    IOPM_PA.store(iopm, Ordering::Relaxed);
    MSRPM_PA.store(msrpm, Ordering::Relaxed);

    // Dom0: every port and MSR is its own except the few listed.
    let (Some(iopm), Some(msrpm)) = (
        memory::alloc_zeroed_contiguous(3),
        memory::alloc_zeroed_contiguous(2),
    ) else {
        super::fatal(format_args!("no memory for Dom0's permission maps"));
    };
    for port in DOM0_DENIED_PORTS
        .into_iter()
        .flatten()
        .chain(DOM0_PROXIED_PORTS)
    {
        let byte = iopm + u64::from(port / 8);
        let mut b = [0u8];
        HostMem.read_bytes(byte, &mut b);
        b[0] |= 1 << (port % 8);
        HostMem.write_bytes(byte, &b);
    }
    for (msr, read, write) in DOM0_TRAPPED_MSRS {
        if let Some((byte, bit)) = policy::msrpm_position(msr) {
            let mut b = [0u8];
            HostMem.read_bytes(msrpm + byte as u64, &mut b);
            b[0] |= (u8::from(read) << bit) | (u8::from(write) << (bit + 1));
            HostMem.write_bytes(msrpm + byte as u64, &b);
        }
    }
    DOM0_IOPM_PA.store(iopm, Ordering::Relaxed);
    DOM0_MSRPM_PA.store(msrpm, Ordering::Relaxed);
}

fn start_application_processors(rsdp: u64, tsc_khz: u64) {
    let mut ids = [0u32; MAX_CPUS];
    let read = |pa: u64, buf: &mut [u8]| {
        // ACPI tables live in identity-mapped low memory; read byte-wise across frames.
        for (i, b) in buf.iter_mut().enumerate() {
            let mut one = [0u8];
            HostMem.read_bytes(pa + i as u64, &mut one);
            *b = one[0];
        }
    };
    let count = match crate::acpi::local_apic_ids(read, rsdp, &mut ids) {
        Ok(n) => n,
        Err(e) => {
            mvlog!("no usable MADT ({e:?}): running on the bootstrap processor only");
            return;
        }
    };
    let trampoline = entry::ap_trampoline();
    HostMem.write_bytes(entry::AP_TRAMPOLINE_PA, trampoline);
    let me = apic::id();
    let mut index = 1;
    for &id in ids[..count].iter().filter(|&&id| id != me) {
        if index >= MAX_CPUS {
            break;
        }
        super::set_apic_id(index, id);
        let stacks = &raw mut entry::STACKS;
        // SAFETY: only the address of AP `index`'s stack slot is taken.
        let slot = unsafe { &raw mut (*stacks).0[index] };
        let top = slot.cast::<u8>().wrapping_add(entry::STACK_SIZE) as u64;
        // SAFETY: single writer (the BSP); the AP reads it only after the SIPI below, and
        // the BSP waits for it to come online before starting the next AP.
        unsafe { entry::AP_STACK_TOP = top };
        let before = ONLINE.load(Ordering::Acquire);
        apic::start_ap(id, entry::AP_TRAMPOLINE_PA, tsc_khz);
        let deadline = cpu::rdtsc() + tsc_khz * 1000; // one second
        while ONLINE.load(Ordering::Acquire) == before && cpu::rdtsc() < deadline {
            cpu::pause();
        }
        if ONLINE.load(Ordering::Acquire) == before {
            mvlog!("pCPU with APIC id {id} did not come up");
            super::set_apic_id(index, u32::MAX);
            continue;
        }
        index += 1;
    }
}

/// Rust entry of an application processor (from `entry.rs`).
#[unsafe(no_mangle)]
extern "C" fn ap_main() -> ! {
    let me = super::cpu_index();
    desc::load(me);
    apic::enable();
    enable_fpu_state_switching();
    match svm::enable() {
        Ok(host_state) => HOST_STATE[me].store(host_state, Ordering::Relaxed),
        Err(e) => super::fatal(format_args!("pCPU {me} cannot run guests: {e:?}")),
    }
    ONLINE.fetch_add(1, Ordering::AcqRel);
    schedule(me)
}

fn create_boot_domains(bundle: &Bundle<'_>, have_dom0: bool) {
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
        if let Some(id) = super::APIC_IDS.get(pcpu).map(|a| a.load(Ordering::Relaxed)) {
            apic::send_ipi(id, desc::WAKEUP_VECTOR);
        }
    }
}

/// Why a boot domain could not be created.
enum CreateError {
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

fn create_domain(
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
struct NewDomain<'a> {
    domid: u16,
    name: &'a str,
    mem_mib: u32,
    pcpu: usize,
    entry: u64,
    start_info: u64,
}

/// Makes a DomU whose memory `npt` is built: VMCB, records, and a place on its pCPU's run
/// queue unless `sched` says it starts paused. Frees `npt` on failure.
fn install_domain(new: &NewDomain<'_>, npt: Npt, sched: SchedState) -> Result<(), CreateError> {
    let Some(vmcb_pa) = HostMem.alloc_zeroed_frame() else {
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

/// Dom0's `DomainCreate`: an empty, paused DomU (Dom0's builder fills it).
fn create_empty_domain(mem_mib: u32, name: &str) -> Result<u32, Errno> {
    if RECORDS.iter().any(|r| {
        r.lock()
            .is_some_and(|d| shared_abi::control::fixed_str(&d.name) == Some(name))
    }) {
        return Err(Errno::EEXIST);
    }
    let domid = (1..=MAX_DOMAINS)
        .find(|&d| RECORDS[d].lock().is_none() && DOMAINS[d - 1].lock().is_none())
        .ok_or(Errno::ENOSPC)?;
    let online = ONLINE.load(Ordering::Acquire);
    if online < 2 {
        // pCPU 0 belongs to Dom0.
        return Err(Errno::ENOSPC);
    }
    // Refuse before touching anything: zeroing frames only to free them again would stall
    // Dom0 (this runs in its hypercall) for a request that cannot succeed. The NPT needs
    // about one table frame per 512 pages, plus the VMCB.
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
    Ok(domid as u32)
}

/// Dom0's `DomainSetEntry`: the PVH entry state of a built domain that has not run.
fn set_domain_entry(domid: u32, entry: u64, start_info: u64) -> Result<(), Errno> {
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

fn release_alive() {
    if ALIVE.fetch_sub(1, Ordering::AcqRel) == 1 {
        finish();
    }
}

/// Every domain has finished: report, and with `exit_on_idle` end the run through the
/// debug-exit port (0x10 all shut down cleanly with poweroff, 0x11 otherwise).
fn finish() {
    let failed = ANY_FAILED.load(Ordering::Acquire);
    mvlog!(
        "all domains finished: {}",
        if failed { "fail" } else { "pass" }
    );
    if EXIT_ON_IDLE.load(Ordering::Relaxed) {
        // SAFETY: the debug-exit port belongs to the microvisor.
        unsafe { cpu::outl(super::DEBUG_EXIT_PORT, if failed { 0x11 } else { 0x10 }) };
    }
}

fn schedule(me: usize) -> ! {
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

/// The machine services for one domain's exits.
struct ExitHost<'a> {
    mem: HostMem,
    domid: u16,
    console: &'a mut ConsoleLine,
    notes: &'a mut u32,
}

impl crate::control::ControlSource for ExitHost<'_> {
    fn host_info(&self) -> HostInfo {
        let mut info = HostInfo {
            control_version: CONTROL_VERSION as u32,
            pcpus: ONLINE.load(Ordering::Acquire) as u32,
            dom0_pcpu: 0,
            reserved0: 0,
            mem_total_kib: MEM_TOTAL_KIB.load(Ordering::Relaxed),
            mem_free_kib: memory::free_frames() * 4,
            tsc_khz: TSC_KHZ.load(Ordering::Relaxed),
            uptime_ns: cycles_to_ns(cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed))),
            version: [0; 32],
            foreign_window_gpa: dom0::FOREIGN_WINDOW.start,
            foreign_window_pages: dom0::FOREIGN_WINDOW_PAGES,
        };
        fill_fixed_str(&mut info.version, env!("CARGO_PKG_VERSION"));
        info
    }

    fn take_events(&self) -> u64 {
        DOM0_EVENTS.swap(0, Ordering::AcqRel)
    }

    fn domain_from(&self, from: u32) -> Option<DomainInfo> {
        let start = usize::try_from(from).ok()?;
        RECORDS
            .iter()
            .enumerate()
            .skip(start)
            .find_map(|(domid, r)| {
                let mut info = (*r.lock())?;
                info.cpu_time_ns = cycles_to_ns(CPU_CYCLES[domid].load(Ordering::Relaxed));
                Some(info)
            })
    }
}

impl Host for ExitHost<'_> {
    type Mem = HostMem;

    fn mem(&mut self) -> &mut HostMem {
        &mut self.mem
    }

    fn phys(&self) -> &HostMem {
        &self.mem
    }

    fn cpuid(&self, leaf: u32, subleaf: u32) -> policy::CpuidRegs {
        cpu::cpuid(leaf, subleaf)
    }

    fn rdtsc(&self) -> u64 {
        cpu::rdtsc()
    }

    fn tsc_khz(&self) -> u32 {
        u32::try_from(TSC_KHZ.load(Ordering::Relaxed)).unwrap_or(u32::MAX)
    }

    fn console(&mut self, bytes: &[u8]) {
        self.console.push(self.domid, bytes);
    }

    fn foreign_acquire(&mut self, slot: u64, domid: u32, gfn: u64) -> Result<u64, Errno> {
        dom0_host::foreign_acquire(slot, domid, gfn)
    }

    fn foreign_release(&mut self, slot: u64) {
        dom0_host::foreign_release(slot);
    }

    fn is_dom0_ram(&self, gpa: u64, len: u64) -> bool {
        dom0_host::is_dom0_ram(gpa, len)
    }

    fn dom0_port(&mut self, port: u16, size: u8, is_in: bool, value: u32) -> Option<u32> {
        if self.domid != 0 {
            return None;
        }
        dom0_host::port_access(port, size, is_in, value)
    }

    fn lifecycle(&mut self, op: LifecycleOp, domid: u32) -> Result<(), Errno> {
        if self.domid != 0 {
            return Err(Errno::EPERM);
        }
        lifecycle(op, domid)
    }

    fn create_domain(&mut self, mem_mib: u32, name: &str) -> Result<u32, Errno> {
        if self.domid != 0 {
            return Err(Errno::EPERM);
        }
        create_empty_domain(mem_mib, name)
    }

    fn set_entry(&mut self, domid: u32, entry: u64, start_info: u64) -> Result<(), Errno> {
        if self.domid != 0 {
            return Err(Errno::EPERM);
        }
        set_domain_entry(domid, entry, start_info)
    }

    fn note(&mut self, what: Note) {
        *self.notes += 1;
        if *self.notes < NOTE_BUDGET {
            match what {
                Note::PortDenied { port, is_in } => {
                    mvlog!(
                        "d{}: denied port {} {port:#x}",
                        self.domid,
                        if is_in { "read" } else { "write" }
                    )
                }
                Note::MsrDenied { msr, write } => {
                    mvlog!(
                        "d{}: #GP on {} of MSR {msr:#x}",
                        self.domid,
                        if write { "write" } else { "read" }
                    )
                }
                Note::InstructionDenied(exit) => mvlog!("d{}: #UD for {exit:?}", self.domid),
                Note::Dom0Fault { info, rip } => {
                    mvlog!("d{}: #GP for {info} at rip {rip:#x}", self.domid)
                }
            }
        } else if *self.notes == NOTE_BUDGET {
            mvlog!("d{}: further denied-access notes suppressed", self.domid);
        }
    }
}

/// Saves (`save = true`) or restores this vCPU's FPU/SSE/AVX state.
fn fpu_switch(area: &mut FpuArea, save: bool) {
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
enum Leave {
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
enum Ending {
    Shutdown(ShutdownReason),
    Crash(CrashReason),
    Destroyed,
}

/// Applies Dom0's pending request, if any, at an exit (or before a run).
fn requested_leave(domid: u16) -> Option<Leave> {
    let mut sched = SCHED[usize::from(domid)].lock();
    match sched.at_exit() {
        AtExit::Continue => None,
        AtExit::Destroy => Some(Leave::End(Ending::Destroyed)),
        AtExit::Pause => {
            set_state(domid, DomainState::Paused, 0);
            Some(Leave::Pause)
        }
    }
}

/// As [`requested_leave`], before a run: a vCPU that runs counts as started.
fn begin_run(domid: u16) -> Option<Leave> {
    let mut sched = SCHED[usize::from(domid)].lock();
    match sched.begin_run() {
        AtExit::Continue => None,
        AtExit::Destroy => Some(Leave::End(Ending::Destroyed)),
        AtExit::Pause => {
            set_state(domid, DomainState::Paused, 0);
            Some(Leave::Pause)
        }
    }
}

/// TSC cycles in one time slice.
fn slice_cycles() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed) * SLICE_MS
}

/// Arms this pCPU's timer for the rest of the slice ending at `deadline` (TSC).
fn arm_slice_timer(deadline: u64) {
    let left = deadline.saturating_sub(cpu::rdtsc());
    let khz = TSC_KHZ.load(Ordering::Relaxed).max(1);
    let ticks =
        u128::from(left) * u128::from(APIC_TICKS_PER_MS.load(Ordering::Relaxed)) / u128::from(khz);
    apic::timer_oneshot(u64::try_from(ticks).unwrap_or(u64::MAX));
}

/// Runs `slot`'s vCPU until its slice ends with others waiting, it yields, blocks, is
/// paused or ends. Returns whether it goes back on the run queue.
fn run_domain(me: usize, slot: usize) -> bool {
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
fn run_vcpu(me: usize, slot: usize, d: &mut Domain) -> Leave {
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

/// Logs the end of a domain, frees all its memory and drops it. A destroyed domain's
/// record goes too; a domain that shut down or crashed keeps its record until destroyed.
fn end_domain(slot: &mut Option<Domain>, how: Ending) {
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
            Ending::Destroyed => {
                mvlog!("d{} ({}) destroyed", d.id, d.name());
                forget_record(d.id);
            }
        }
    }
    let pinned = release_foreign_frames(d.id, d.vcpu.npt);
    if pinned > 0 {
        mvlog!(
            "d{}: {pinned} frames stay mapped in Dom0 until it unmaps them",
            d.id
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
