//! The raw instructions hostile executes, each written as explicit bytes so that its
//! length (needed by [`guest_rt::expect_fault`] to skip it) is evident.
//!
//! All `asm!` of this guest is in this module.

use core::arch::asm;

/// Length of `ud2` (0F 0B).
pub(crate) const UD2_LEN: u8 = 2;
/// Length of `rdmsr` (0F 32) and `wrmsr` (0F 30).
pub(crate) const MSR_INSN_LEN: u8 = 2;
/// Length of every SVM instruction probed here (0F 01 D8..DD).
pub(crate) const SVM_INSN_LEN: u8 = 3;

/// Executes `ud2`, which always raises #UD.
pub(crate) fn ud2() {
    // SAFETY: UD2 touches no memory or registers; it raises #UD, after which the runtime
    // either resumes after it (an armed probe) or crashes the domain.
    unsafe { asm!(".byte 0x0f, 0x0b", options(nomem, nostack)) };
}

/// Executes `rdmsr` of `msr`.
///
/// # Safety
///
/// Reading `msr` must have no side effects that matter; it is expected to raise #GP.
pub(crate) unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR writes only EDX:EAX; the read itself is harmless (caller's contract).
    unsafe {
        asm!(".byte 0x0f, 0x32", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Executes `wrmsr` of `value` to `msr`.
///
/// # Safety
///
/// The write is expected to raise #GP; if it does not, its effect must not break the
/// runtime (e.g. EFER keeping LME and LMA).
pub(crate) unsafe fn wrmsr(msr: u32, value: u64) {
    let (lo, hi) = (value as u32, (value >> 32) as u32);
    // SAFETY: WRMSR reads ECX and EDX:EAX; its effect is the caller's contract.
    unsafe {
        asm!(".byte 0x0f, 0x30", in("ecx") msr, in("eax") lo, in("edx") hi, options(nostack, preserves_flags));
    }
}

/// An SVM instruction a guest must not be able to execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SvmInsn {
    Vmrun,
    Vmload,
    Vmsave,
    Stgi,
    Clgi,
}

impl SvmInsn {
    pub(crate) const ALL: [SvmInsn; 5] = [
        SvmInsn::Vmrun,
        SvmInsn::Vmload,
        SvmInsn::Vmsave,
        SvmInsn::Stgi,
        SvmInsn::Clgi,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            SvmInsn::Vmrun => "vmrun",
            SvmInsn::Vmload => "vmload",
            SvmInsn::Vmsave => "vmsave",
            SvmInsn::Stgi => "stgi",
            SvmInsn::Clgi => "clgi",
        }
    }
}

/// Executes `insn` with `RAX = 0` (the VMCB address operand of vmrun/vmload/vmsave).
///
/// # Safety
///
/// The instruction is expected to raise #UD. If the hypervisor let it run, vmsave would
/// write guest-physical page 0 (not used by Rust code) and vmrun/vmload would use page 0
/// as a VMCB; the caller accepts that the domain may then be in any state.
pub(crate) unsafe fn svm(insn: SvmInsn) {
    match insn {
        SvmInsn::Vmrun => {
            // SAFETY: VMRUN reads RAX (0); #UD is expected, the rest is the caller's contract.
            unsafe { asm!(".byte 0x0f, 0x01, 0xd8", in("rax") 0u64, options(nostack)) }
        }
        SvmInsn::Vmload => {
            // SAFETY: VMLOAD reads RAX (0); #UD is expected, the rest is the caller's contract.
            unsafe { asm!(".byte 0x0f, 0x01, 0xda", in("rax") 0u64, options(nostack)) }
        }
        SvmInsn::Vmsave => {
            // SAFETY: VMSAVE reads RAX (0); #UD is expected, the rest is the caller's contract.
            unsafe { asm!(".byte 0x0f, 0x01, 0xdb", in("rax") 0u64, options(nostack)) }
        }
        SvmInsn::Stgi => {
            // SAFETY: STGI touches no memory or registers; #UD is expected. Setting GIF in
            // a guest with interrupts disabled would change nothing for this guest.
            unsafe { asm!(".byte 0x0f, 0x01, 0xdc", options(nomem, nostack)) }
        }
        SvmInsn::Clgi => {
            // SAFETY: CLGI touches no memory or registers; #UD is expected.
            unsafe { asm!(".byte 0x0f, 0x01, 0xdd", options(nomem, nostack)) }
        }
    }
}

/// Writes to linear (= guest-physical, identity-mapped) address `addr`.
///
/// # Safety
///
/// `addr` must not hold any Rust object: it is meant to lie beyond guest RAM, where the
/// write is a nested page fault and the microvisor crashes the domain.
pub(crate) unsafe fn write_u64(addr: u64, value: u64) {
    let ptr = core::ptr::with_exposed_provenance_mut::<u64>(addr as usize);
    // SAFETY: the caller guarantees `addr` holds no Rust object; it is 8-aligned by the
    // caller (a page boundary plus 1 MiB) and non-null.
    unsafe { ptr.write_volatile(value) };
}

/// Loads an IDT with limit 0 and executes `ud2`: #UD cannot be delivered, nor the #GP
/// and #DF that follow, so the CPU triple-faults (a shutdown event for the hypervisor).
///
/// # Safety
///
/// Destroys the guest's exception handling. Returns only if the hypervisor somehow lets
/// the guest survive, and then with an unusable IDT.
pub(crate) unsafe fn triple_fault() {
    #[repr(C, packed)]
    struct Dtr {
        limit: u16,
        base: u64,
    }
    let empty = Dtr { limit: 0, base: 0 };
    // SAFETY: LIDT reads the 10-byte operand `empty`, valid for the duration of the asm.
    // The following UD2 is the attack: the caller accepts that the domain dies.
    unsafe {
        asm!("lidt [{}]", ".byte 0x0f, 0x0b", in(reg) &raw const empty, options(readonly, nostack));
    }
}
