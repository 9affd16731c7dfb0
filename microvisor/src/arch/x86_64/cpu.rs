//! Single instructions, each wrapped once with its safety argument.

use core::arch::asm;

/// Reads an MSR.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the microvisor runs at CPL 0; callers only pass MSRs that exist on every
    // SVM-capable CPU (EFER, VM_HSAVE_PA, APIC_BASE, PAT), so RDMSR cannot fault.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
///
/// Writing an MSR changes machine state; the caller must know the value is valid for that
/// MSR and that the change does not break the microvisor's own execution.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller upholds the contract above.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack));
    }
}

/// Executes CPUID.
pub fn cpuid(leaf: u32, subleaf: u32) -> crate::policy::CpuidRegs {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    crate::policy::CpuidRegs {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is unprivileged and side-effect free (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Writes a byte to an I/O port.
///
/// # Safety
///
/// The port must belong to a device the microvisor owns, and the write must be valid for it.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller upholds the contract above.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
}

/// Writes a doubleword to an I/O port.
///
/// # Safety
///
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller upholds the contract above.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) };
}

/// Reads `size` (1, 2 or 4) bytes from an I/O port.
///
/// # Safety
///
/// As for [`inb`].
pub unsafe fn port_in(port: u16, size: u8) -> u32 {
    let v: u32;
    match size {
        // SAFETY: the caller upholds the contract of `inb`.
        1 => unsafe { asm!("in al, dx", in("dx") port, out("eax") v, options(nomem, nostack)) },
        // SAFETY: as above.
        2 => unsafe { asm!("in ax, dx", in("dx") port, out("eax") v, options(nomem, nostack)) },
        // SAFETY: as above.
        _ => unsafe { asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack)) },
    }
    match size {
        1 => v & 0xFF,
        2 => v & 0xFFFF,
        _ => v,
    }
}

/// Writes `size` (1, 2 or 4) bytes to an I/O port.
///
/// # Safety
///
/// As for [`outb`].
pub unsafe fn port_out(port: u16, size: u8, value: u32) {
    match size {
        // SAFETY: the caller upholds the contract of `outb`.
        1 => unsafe {
            asm!("out dx, al", in("dx") port, in("al") value as u8, options(nomem, nostack))
        },
        // SAFETY: as above.
        2 => unsafe {
            asm!("out dx, ax", in("dx") port, in("ax") value as u16, options(nomem, nostack))
        },
        // SAFETY: as above.
        _ => unsafe {
            asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack))
        },
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
///
/// The port must belong to a device the microvisor owns; reads may have side effects.
pub unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: the caller upholds the contract above.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
    v
}

/// Reads CR0.
pub fn read_cr0() -> u64 {
    let v;
    // SAFETY: reading a control register has no side effects at CPL 0.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Reads CR4.
pub fn read_cr4() -> u64 {
    let v;
    // SAFETY: reading a control register has no side effects at CPL 0.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) };
    v
}

/// Writes CR4.
///
/// # Safety
///
/// The value must keep the bits the microvisor relies on (PAE) and only set supported bits.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: the caller upholds the contract above.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack)) };
}

/// Reads CR2 (the faulting address of the last #PF).
pub fn read_cr2() -> u64 {
    let v;
    // SAFETY: reading a control register has no side effects at CPL 0.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack)) };
    v
}

/// Reads XCR0. Requires CR4.OSXSAVE (set at boot when XSAVE exists).
pub fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: CR4.OSXSAVE is set by `percpu_init` before any caller runs.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes XCR0.
///
/// # Safety
///
/// The value must be a valid XCR0 for this CPU (x87 set, only supported components).
pub unsafe fn xsetbv0(v: u64) {
    // SAFETY: the caller upholds the contract above.
    unsafe {
        asm!("xsetbv", in("ecx") 0, in("eax") v as u32, in("edx") (v >> 32) as u32,
             options(nomem, nostack));
    }
}

/// Spin-wait hint.
pub fn pause() {
    core::hint::spin_loop();
}

/// Halts with interrupts disabled forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CLI; HLT only stops this CPU; nothing else depends on it afterwards.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Enables interrupts, waits for one, and disables them again. An interrupt pending
/// before the call is taken immediately (STI's shadow covers the HLT).
pub fn wait_for_interrupt() {
    // SAFETY: the IDT is loaded and every vector that can arrive has a handler.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// Lets one pending interrupt in, then masks again.
pub fn take_pending_interrupt() {
    // SAFETY: as for `wait_for_interrupt`, without the halt.
    unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) };
}
