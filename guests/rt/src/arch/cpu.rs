//! CPU instructions: CPUID, the TSC, MSRs, CR2, interrupts, halting.

use core::arch::asm;

/// The registers returned by CPUID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidResult {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

impl CpuidResult {
    /// `[eax, ebx, ecx, edx]`.
    pub fn to_array(self) -> [u32; 4] {
        [self.eax, self.ebx, self.ecx, self.edx]
    }
}

/// Executes CPUID for `leaf`/`subleaf`. Under the microvisor this is an intercepted exit.
#[inline(always)]
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let (eax, ebx, ecx, edx): (u32, u64, u32, u32);
    // SAFETY: CPUID reads no memory and writes only EAX, EBX, ECX, EDX. LLVM reserves RBX,
    // so it is saved in a scratch register and swapped back, leaving the result there.
    unsafe {
        asm!(
            "mov {rbx_save}, rbx",
            "cpuid",
            "xchg {rbx_save}, rbx",
            rbx_save = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nostack, preserves_flags),
        );
    }
    CpuidResult {
        eax,
        ebx: ebx as u32,
        ecx,
        edx,
    }
}

/// Reads the TSC between two `lfence`s, so that earlier instructions have completed before
/// the read and later ones do not start before it.
#[inline(always)]
pub fn rdtsc_fenced() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: LFENCE and RDTSC read no memory and write only EDX:EAX. RDTSC is allowed at
    // CPL 0 whatever CR4.TSD says.
    unsafe {
        asm!("lfence", "rdtsc", "lfence", out("eax") lo, out("edx") hi, options(nostack, preserves_flags));
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Reads model-specific register `msr`.
///
/// # Safety
///
/// `msr` must exist (else #GP, fatal unless a [`crate::expect_fault`] probe for #GP with
/// length 2 is armed), and reading it must have no side effect that breaks the runtime.
#[inline(always)]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the read is harmless (see `# Safety`); RDMSR (0F 32)
    // writes only EDX:EAX and touches no memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack, preserves_flags, nomem));
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Writes model-specific register `msr`.
///
/// # Safety
///
/// The write must not break the runtime's assumptions (long mode, paging, the identity
/// map, interrupts off) and `msr` must accept `value` (else #GP, fatal unless a probe for
/// #GP with length 2 is armed).
#[inline(always)]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    let (lo, hi) = (value as u32, (value >> 32) as u32);
    // SAFETY: the caller guarantees the write is harmless (see `# Safety`); WRMSR (0F 30)
    // reads ECX, EDX:EAX.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") lo, in("edx") hi, options(nostack, preserves_flags));
    }
}

/// Reads CR2: the linear address of the last page fault.
pub fn read_cr2() -> u64 {
    let cr2: u64;
    // SAFETY: reading CR2 at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    cr2
}

/// Stops this vCPU for good: interrupts off, then HLT in a loop.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CLI and HLT at CPL 0 only stop the vCPU; with interrupts off, HLT never
        // returns except on NMI/SMI, and the loop halts again.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Sets `RFLAGS.IF` (`sti`). Only [`crate::events`] enables interrupts, once the upcall
/// vector's gate is installed; every vector that can then be raised has a handler.
///
/// A `nop` follows the `sti`, so an interrupt that is already pending is taken before this
/// function returns (`sti` delays interrupts by one instruction).
#[inline(always)]
pub(crate) fn enable_interrupts() {
    // SAFETY: STI at CPL 0 only sets IF. The runtime's IDT has a gate for every vector
    // that can be raised once events are set up (exceptions and the callback vector), and
    // the handlers preserve every register; the asm is a compiler barrier (no `nomem`),
    // so memory the handler writes is re-read afterwards.
    unsafe { asm!("sti", "nop", options(nostack)) };
}

/// Clears `RFLAGS.IF` (`cli`): the upcall handler cannot run until the next
/// [`enable_interrupts`].
#[inline(always)]
pub(crate) fn disable_interrupts() {
    // SAFETY: CLI at CPL 0 only clears IF; it is a compiler barrier (no `nomem`) so no
    // memory access moves across it.
    unsafe { asm!("cli", options(nostack)) };
}

/// `sti; hlt`: enables interrupts and halts until the next one, with no window between
/// the two (`sti` holds off interrupts for exactly one instruction, the `hlt`). A caller
/// that checked for work with interrupts disabled therefore cannot miss a wakeup.
#[inline(always)]
pub(crate) fn enable_interrupts_and_halt() {
    // SAFETY: as for `enable_interrupts`; HLT at CPL 0 only stops the vCPU until the next
    // interrupt, whose handler runs and returns here.
    unsafe { asm!("sti", "hlt", options(nostack)) };
}

/// Whether `RFLAGS.IF` is set.
#[inline(always)]
pub fn interrupts_enabled() -> bool {
    let rflags: u64;
    // SAFETY: PUSHFQ; POP reads RFLAGS through the stack slot it pushes and pops; no other
    // memory is touched.
    unsafe { asm!("pushfq", "pop {}", out(reg) rflags, options(nomem, preserves_flags)) };
    rflags & (1 << 9) != 0
}
