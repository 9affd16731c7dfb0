//! x86_64 with AMD SVM: boot, CPUs, the world switch and the hypervisor's run loop.

pub mod apic;
pub mod cpu;
pub mod desc;
pub mod entry;
pub mod hv;
pub mod memory;
pub mod serial;
pub mod svm;

use core::sync::atomic::{AtomicU32, Ordering};

/// Most CPUs the microvisor brings up.
pub const MAX_CPUS: usize = 8;

/// APIC id of each started CPU, by CPU index; `u32::MAX` for none.
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];

/// This CPU's index (0 = bootstrap processor).
pub fn cpu_index() -> usize {
    let id = apic::id();
    APIC_IDS
        .iter()
        .position(|a| a.load(Ordering::Relaxed) == id)
        .unwrap_or(0)
}

pub(crate) fn set_apic_id(index: usize, id: u32) {
    APIC_IDS[index].store(id, Ordering::Relaxed);
}

/// Verdict port (QEMU isa-debug-exit); see `hv::finish`.
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
/// Verdict: the microvisor itself failed.
pub const VERDICT_HYPERVISOR_FAULT: u32 = 0x12;

/// Reports a broken microvisor invariant or an exception in the microvisor, tells the
/// test harness (writes the fault verdict) and stops this CPU.
pub fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    serial::emergency_line(format_args!("FATAL: {args}"));
    // SAFETY: the debug-exit port belongs to the microvisor; on a machine without the
    // device the write is ignored.
    unsafe { cpu::outl(DEBUG_EXIT_PORT, VERDICT_HYPERVISOR_FAULT) };
    cpu::halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    serial::emergency_line(format_args!("PANIC on pCPU {}: {info}", cpu_index()));
    // SAFETY: as in `fatal`.
    unsafe { cpu::outl(DEBUG_EXIT_PORT, VERDICT_HYPERVISOR_FAULT) };
    cpu::halt_forever()
}
