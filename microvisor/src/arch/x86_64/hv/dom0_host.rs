//! Domain 0's side of the machine: its memory plan and creation, its run loop on pCPU 0,
//! the event function behind the proxied PCI configuration ports, and the foreign window.
//!
//! A child of `hv`: it shares the domain table, records and scheduler state there.

use super::grants::grants;
use super::{
    __image_end, __image_start, ALIVE, BootInfo, CPU_CYCLES, ConsoleLine, CreateError,
    DOM0_IOPM_PA, DOM0_MSRPM_PA, DomainState, ExitAction, ExitHost, HOST_STATE, HostMem,
    HvmMemmapEntry, MAX_DOMAINS, Mutex, Npt, Ordering, PermissionMaps, PhysMemory, PvhImage, Range,
    ShutdownReason, Vcpu, Vmcb, apic, cpu, dom0, memory, mvlog, record, set_state, svm, vcpu,
};
use crate::bundle::Dom0Images;
use crate::dom0::Dom0Memory;
use crate::dom0_pci::{ConfigPorts, PortIo};
use crate::window::{MapKind, Released, Window};
use core::sync::atomic::{AtomicU32, AtomicU64};
use shared_abi::Errno;
use shared_abi::control::GrantCopySegment;

/// Ports domain 0 may not reach: the microvisor's log (COM2) and QEMU's debug-exit port,
/// which carries the microvisor's verdicts.
pub(super) const DOM0_DENIED_PORTS: [core::ops::RangeInclusive<u16>; 2] =
    [0x2F8..=0x2FF, 0xF4..=0xF7];
/// Ports of Dom0 that the microvisor proxies: PCI configuration (for the event function).
pub(super) const DOM0_PROXIED_PORTS: core::ops::RangeInclusive<u16> = 0xCF8..=0xCFF;

/// Dom0's RAM (the control hypercall's buffers must lie in it).
pub(super) static DOM0_RAM: Mutex<Option<Dom0Memory>> = Mutex::new(None);
/// Dom0's view of the PCI configuration ports, with the event function.
pub(super) static DOM0_PCI: Mutex<Option<ConfigPorts>> = Mutex::new(None);
/// Where the event function's MSI goes: `MSI_VALID | vector`, or 0 before Dom0 enables it.
pub(super) static DOM0_MSI: AtomicU32 = AtomicU32::new(0);
pub(super) const MSI_VALID: u32 = 1 << 31;
/// Dom0's pending `EVENT_*` bits.
pub(super) static DOM0_EVENTS: AtomicU64 = AtomicU64::new(0);

/// NPT root of each live DomU, by domid (0: none). Read under [`FOREIGN`].
pub(super) static DOMAIN_NPT: [AtomicU64; MAX_DOMAINS + 1] =
    [const { AtomicU64::new(0) }; MAX_DOMAINS + 1];

/// The foreign window's size, as the slot table's length.
const WINDOW_SLOTS: usize = dom0::FOREIGN_WINDOW_PAGES as usize;

/// Dom0's foreign-window slots (see `crate::window`). A domain's end, a new mapping and a
/// grant copy all hold this lock, so a frame is never handed to Dom0, or copied for it, as
/// its domain is torn down. Lock order: `FOREIGN`, then a domain's grant table, then
/// `RECORDS`.
pub(super) static FOREIGN: Mutex<Window<WINDOW_SLOTS>> = Mutex::new(Window::new());

/// The machine's real I/O ports.
pub(super) struct RealPorts;

impl PortIo for RealPorts {
    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        // SAFETY: only the PCI configuration ports reach here, on behalf of Dom0, which
        // owns the PCI bus; the access is the one Dom0 itself made.
        unsafe { cpu::port_in(port, size) }
    }

    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        // SAFETY: as for `port_in`.
        unsafe { cpu::port_out(port, size, value) }
    }
}

/// Raises Dom0 event bits and interrupts Dom0 if it has enabled the event function's MSI.
/// The interrupt always goes to Dom0's pCPU, whatever APIC id Dom0 put in the message.
pub(super) fn raise_dom0_event(bits: u64) {
    DOM0_EVENTS.fetch_or(bits, Ordering::AcqRel);
    let msi = DOM0_MSI.load(Ordering::Acquire);
    if msi & MSI_VALID != 0 {
        let dom0_apic = super::super::APIC_IDS[0].load(Ordering::Relaxed);
        apic::send_ipi(dom0_apic, msi as u8);
    }
}

/// Chooses Dom0's RAM and takes it out of the frame allocator.
pub(super) fn plan_dom0_memory(boot: &BootInfo, mem_mib: u32) -> Option<Dom0Memory> {
    let image = Range::new(
        (&raw const __image_start) as u64,
        (&raw const __image_end) as u64,
    );
    let module = boot.module.map_or(Range::default(), |(pa, size)| {
        Range::new(pa, pa.saturating_add(size))
    });
    let memmap = &boot.memmap[..boot.memmap_len];
    match dom0::plan_memory(memmap, &[image, module], mem_mib) {
        Ok(ram) => {
            let mut frames = memory::FRAMES.lock();
            if let Some(f) = frames.as_mut() {
                for r in ram.ranges() {
                    f.reserve_range(r.start, r.end);
                }
            }
            Some(ram)
        }
        Err(why) => {
            mvlog!("d0 (dom0) not created: {why}");
            None
        }
    }
}

/// Domain 0 and its exit-handling state; lives on pCPU 0's stack for the whole run.
pub(super) struct Dom0 {
    vcpu: Vcpu,
    vmcb_pa: u64,
    console: ConsoleLine,
    notes: u32,
}

/// Builds domain 0: identity NPT, kernel, initramfs and boot pages in its RAM, VMCB.
pub(super) fn create_dom0(
    boot: &BootInfo,
    images: Dom0Images<'_>,
    ram: &Dom0Memory,
) -> Result<Dom0, CreateError> {
    let kernel = PvhImage::parse(images.kernel.payload).map_err(CreateError::Elf)?;
    let cmdline = images.kernel.cmdline;
    let initrd = images.initrd.map(|i| i.payload);
    let placement = dom0::place(ram, &kernel, initrd.map(|i| i.len() as u64), cmdline)
        .map_err(CreateError::Dom0)?;
    let machine_map = &boot.memmap[..boot.memmap_len];
    let mut memmap = [HvmMemmapEntry::default(); dom0::MAX_MEMMAP];
    let entries = dom0::memory_map(machine_map, ram, &mut memmap).map_err(CreateError::Dom0)?;
    let phys_bits = cpu::cpuid(0x8000_0008, 0).eax & 0xFF;
    let phys_limit = 1u64 << phys_bits.clamp(32, 48);
    let classes = dom0::Classifier::new(machine_map, ram);
    let npt = dom0::build_npt(&mut HostMem, &classes, phys_limit).map_err(CreateError::Dom0)?;
    dom0::load(
        &mut HostMem,
        &kernel,
        initrd.zip(placement.initrd),
        cmdline,
        &memmap[..entries],
        boot.rsdp,
    );
    let Some(vmcb_pa) = HostMem.alloc_zeroed_frame() else {
        npt.destroy(&mut HostMem);
        return Err(CreateError::NoMemory);
    };
    // SAFETY: `vmcb_pa` is a fresh zeroed frame, identity-mapped, owned by Dom0.
    let vmcb = unsafe { &mut *(vmcb_pa as *mut Vmcb) };
    let maps = PermissionMaps {
        iopm: DOM0_IOPM_PA.load(Ordering::Relaxed),
        msrpm: DOM0_MSRPM_PA.load(Ordering::Relaxed),
    };
    let regs = vcpu::init_pvh_vmcb(
        vmcb,
        &npt,
        1,
        maps,
        kernel.entry,
        dom0::START_INFO_GPA,
        true,
    );
    match crate::dom0_pci::free_slot(&mut RealPorts) {
        Some(device) => {
            *DOM0_PCI.lock() = Some(ConfigPorts::new(device));
            mvlog!("d0: event function at PCI 00:{device:02x}.0");
        }
        None => mvlog!("d0: no free PCI slot on bus 0: Dom0 gets no event interrupts"),
    }
    let mem_mib = u32::try_from(ram.total() >> 20).unwrap_or(u32::MAX);
    mvlog!(
        "d0 (dom0) created: {mem_mib} MiB in {} ranges, pCPU 0, initramfs {} KiB, cmdline {:?}",
        ram.ranges().len(),
        initrd.map_or(0, |i| i.len() / 1024),
        cmdline
    );
    // Its event channels: ports served by the control operations, no shared_info.
    super::events::hub().open_dom0();
    record(0, "Domain-0", mem_mib, 0);
    *DOM0_RAM.lock() = Some(*ram);
    ALIVE.fetch_add(1, Ordering::AcqRel);
    Ok(Dom0 {
        vcpu: Vcpu::new(0, true, npt, regs),
        vmcb_pa,
        console: ConsoleLine::EMPTY,
        notes: 0,
    })
}

/// Runs domain 0 on pCPU 0 for the rest of the machine's life. Its end ends the run.
pub(super) fn run_dom0(mut d: Dom0) -> ! {
    let host_state = HOST_STATE[0].load(Ordering::Relaxed);
    // SAFETY: the VMCB frame belongs to Dom0, which only this pCPU runs.
    let vmcb = unsafe { &mut *(d.vmcb_pa as *mut Vmcb) };
    loop {
        let start = cpu::rdtsc();
        // SAFETY: VMCB, NPT and permission maps are Dom0's and valid; `regs` is its vCPU's;
        // `host_state` is this CPU's VMSAVE page.
        unsafe { svm::run(d.vmcb_pa, &raw mut d.vcpu.regs, host_state) };
        CPU_CYCLES[0].fetch_add(cpu::rdtsc().wrapping_sub(start), Ordering::Relaxed);
        vmcb.control.tlb_control = 0;
        vmcb.control.event_inj = 0;
        let mut host = ExitHost {
            mem: HostMem,
            domid: 0,
            console: &mut d.console,
            notes: &mut d.notes,
        };
        match d.vcpu.handle_exit(vmcb, &mut host) {
            // Dom0 has its pCPU to itself: yielding or blocking just resumes it.
            ExitAction::Resume | ExitAction::Yield | ExitAction::Block(_) => {}
            ExitAction::HostInterrupt => cpu::take_pending_interrupt(),
            ExitAction::Shutdown(reason) => {
                d.console.flush(0);
                mvlog!("d0 (dom0) shut down: {}", reason.name());
                set_state(0, DomainState::Shutdown, reason as u32);
                end_run(reason == ShutdownReason::Poweroff);
            }
            ExitAction::Crash(why) => {
                d.console.flush(0);
                mvlog!("d0 (dom0) crashed: {why}");
                set_state(0, DomainState::Crashed, 0);
                end_run(false);
            }
        }
    }
}

/// Ends the machine's run with a verdict (Dom0 is gone, or could not start). Under QEMU
/// this leaves through the debug-exit port; the equivalent of a host reset.
pub(super) fn end_run(pass: bool) -> ! {
    mvlog!("machine stops: {}", if pass { "pass" } else { "fail" });
    // SAFETY: the debug-exit port belongs to the microvisor.
    unsafe {
        cpu::outl(
            super::super::DEBUG_EXIT_PORT,
            if pass { 0x10 } else { 0x11 },
        )
    };
    cpu::halt_forever()
}

/// Frame `gfn` of the live domain `domid`: its machine address, `ESRCH` no such domain,
/// `EINVAL` not its RAM. Called under [`FOREIGN`], which keeps the domain's memory alive.
fn resolve(domid: u16, gfn: u64) -> Result<u64, Errno> {
    let root = DOMAIN_NPT
        .get(usize::from(domid))
        .map(|r| r.load(Ordering::Acquire))
        .filter(|&r| r != 0)
        .ok_or(Errno::ESRCH)?;
    let gpa = gfn.checked_mul(4096).ok_or(Errno::EINVAL)?;
    let (hpa, _) = Npt::from_root(root)
        .translate(&HostMem, gpa)
        .ok_or(Errno::EINVAL)?;
    Ok(hpa & !0xFFF)
}

/// Hands the frames of `domid` that Dom0 has mapped (foreign or grant mappings) to Dom0
/// (they are freed when it unmaps them) by taking them out of the domain's NPT, and
/// forgets the domain for new mappings. A `destroyed` domain's record goes now, or, while
/// Dom0 still holds grant mappings of it, shows it dying until the last goes. Returns the
/// slots handed over: (foreign, grant).
pub(super) fn release_foreign_frames(domid: u16, npt: Npt, destroyed: bool) -> (u64, u64) {
    let mut window = FOREIGN.lock();
    DOMAIN_NPT[usize::from(domid)].store(0, Ordering::Release);
    let handed = window.orphan_domain(domid, |gfn| {
        // The domain never runs again: no flush is needed.
        if let Some((_, flush)) = npt.unmap_4k(&mut HostMem, gfn * 4096) {
            flush.flushed();
        }
    });
    if destroyed {
        settle_record(&window, domid);
    }
    handed
}

/// A destroyed domain's record: dying while Dom0 holds grant mappings of it, else gone.
fn settle_record(window: &Window<WINDOW_SLOTS>, domid: u16) {
    let held = window.grant_orphans(domid);
    if held > 0 {
        super::domains::set_dying(domid, held);
    } else {
        super::domains::forget_record(domid);
    }
}

/// Dom0 destroyed a domain that had already ended: drop its record, unless Dom0 still
/// holds grant mappings of it (then it is dying until they go).
pub(super) fn forget_ended(domid: u16) {
    settle_record(&FOREIGN.lock(), domid);
}

/// Acts on what a release left to do: free an ended domain's last-held frame, drop a
/// dying domain's record with its last grant mapping. Under [`FOREIGN`].
fn finish_release(r: Released) {
    if let Some(hpa) = r.free {
        HostMem.free_frame(hpa);
    }
    if let Some(domid) = r.last_grant_of {
        super::domains::forget_if_dying(domid);
    }
}

/// Pins frame `gfn` of `domid` for foreign-window `slot` (see `Host::foreign_acquire`).
pub(super) fn foreign_acquire(slot: u64, domid: u32, gfn: u64) -> Result<u64, Errno> {
    FOREIGN.lock().map_foreign(slot, domid, gfn, resolve)
}

/// Releases foreign-window `slot` (see `Host::foreign_release`).
pub(super) fn foreign_release(slot: u64) {
    let mut window = FOREIGN.lock();
    if let Ok(r) = window.release(slot, MapKind::Foreign, &grants()) {
        finish_release(r);
    }
}

/// What foreign-window `slot` holds.
pub(super) fn window_kind(slot: u64) -> Option<MapKind> {
    FOREIGN.lock().kind(slot)
}

/// Pins grant `gref` of `domid` for foreign-window `slot` (see `Host::grant_acquire`).
pub(super) fn grant_acquire(slot: u64, domid: u16, gref: u32, write: bool) -> Result<u64, Errno> {
    FOREIGN
        .lock()
        .map_grant(slot, u32::from(domid), gref, write, &grants(), resolve)
}

/// Releases the grant mapping in foreign-window `slot` (see `Host::grant_release`).
pub(super) fn grant_release(slot: u64) {
    let mut window = FOREIGN.lock();
    if let Ok(r) = window.release(slot, MapKind::Grant, &grants()) {
        finish_release(r);
    }
}

/// One `GrantCopy` segment (see `Host::grant_copy`), under [`FOREIGN`] so that neither
/// granter's memory is freed during the copy.
pub(super) fn grant_copy(seg: &GrantCopySegment, buf: &mut [u8], data_start: usize) -> i16 {
    FOREIGN.lock().copy_segment(
        seg,
        buf,
        data_start,
        &grants(),
        |_: &HostMem, d, gfn| resolve(d, gfn),
        &mut HostMem,
    )
}

/// Whether `[gpa, gpa + len)` is Dom0 RAM.
pub(super) fn is_dom0_ram(gpa: u64, len: u64) -> bool {
    let Some(end) = gpa.checked_add(len) else {
        return false;
    };
    DOM0_RAM
        .lock()
        .as_ref()
        .is_some_and(|ram| len == 0 || ram.holds(Range::new(gpa, end)))
}

/// Dom0's access to a proxied port; `None` to deny it.
pub(super) fn port_access(port: u16, size: u8, is_in: bool, value: u32) -> Option<u32> {
    if !DOM0_PROXIED_PORTS.contains(&port) {
        return None;
    }
    let mut pci = DOM0_PCI.lock();
    let ports = pci.as_mut()?;
    let v = ports.access(&mut RealPorts, port, size, is_in, value);
    let msi = ports
        .function
        .msi_target()
        .map_or(0, |t| MSI_VALID | u32::from(t.vector));
    DOM0_MSI.store(msi, Ordering::Release);
    Some(v)
}
