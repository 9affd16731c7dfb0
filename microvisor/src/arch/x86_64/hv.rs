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
    CONTROL_VERSION, DOMAIN_FLAG_PRIVILEGED, DomainInfo, DomainState, EVENT_DOMAIN_STATE,
    EVENT_EVTCHN, HostInfo, fill_fixed_str,
};
use shared_abi::pvh::{E820_RAM, HVM_START_MAGIC, HvmMemmapEntry, HvmModlistEntry, HvmStartInfo};
use shared_abi::sched::ShutdownReason;
use spin::Mutex;
use zerocopy::FromBytes;

mod dom0_host;
mod domains;
mod events;
mod grants;
mod run;
use dom0_host::{
    DOM0_DENIED_PORTS, DOM0_EVENTS, DOM0_PROXIED_PORTS, DOMAIN_NPT, create_dom0, end_run,
    plan_dom0_memory, raise_dom0_event, release_foreign_frames, run_dom0,
};
use domains::{
    CreateError, create_boot_domains, create_empty_domain, end_domain, lifecycle, record,
    release_alive, set_domain_entry, set_state,
};
use run::{Ending, schedule};

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
    events::init_clock(khz);
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
    type Events = events::HvPlatform;

    fn hub(&self) -> crate::evtchn::Hub<'_, events::HvPlatform> {
        events::hub()
    }

    type Table = grants::PhysTable;

    fn grants(&self) -> crate::grant::Grants<'_, grants::PhysTable> {
        grants::grants()
    }

    fn now_ns(&self) -> u64 {
        events::now_ns()
    }

    fn time_info(&self) -> shared_abi::shared_info::VcpuTimeInfo {
        events::time_info()
    }

    fn event_seq(&self) -> u64 {
        events::EVENT_SEQ
            .get(usize::from(self.domid))
            .map_or(0, |s| s.load(Ordering::SeqCst))
    }

    fn set_timer(&mut self, deadline_ns: Option<u64>) {
        events::set_timer(self.domid, deadline_ns);
    }

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

    fn window_kind(&self, slot: u64) -> Option<crate::window::MapKind> {
        dom0_host::window_kind(slot)
    }

    fn grant_acquire(
        &mut self,
        slot: u64,
        domid: u16,
        gref: u32,
        write: bool,
    ) -> Result<u64, Errno> {
        if self.domid != 0 {
            return Err(Errno::EPERM);
        }
        dom0_host::grant_acquire(slot, domid, gref, write)
    }

    fn grant_release(&mut self, slot: u64) {
        dom0_host::grant_release(slot);
    }

    fn grant_copy(
        &mut self,
        seg: &shared_abi::control::GrantCopySegment,
        buf: &mut [u8],
        data_start: usize,
    ) -> i16 {
        if self.domid != 0 {
            return shared_abi::grant_table::GNTST_PERMISSION_DENIED;
        }
        dom0_host::grant_copy(seg, buf, data_start)
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
