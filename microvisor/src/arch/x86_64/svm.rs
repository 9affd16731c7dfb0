//! Enabling SVM and the world switch.

use super::cpu;
use crate::vcpu::GuestRegs;
use core::arch::naked_asm;

const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;
const EFER_SVME: u64 = 1 << 12;

/// Why this CPU cannot run guests.
#[derive(Clone, Copy, Debug)]
pub enum SvmError {
    /// CPUID says no SVM.
    NoSvm,
    /// SVM without nested paging.
    NoNpt,
    /// SVM disabled by firmware (VM_CR.SVMDIS).
    Disabled,
    /// No memory for the host save area.
    OutOfMemory,
}

/// Enables SVM on this CPU. Returns the physical address of the host state page that the
/// world switch VMLOADs after every exit.
pub fn enable() -> Result<u64, SvmError> {
    if cpu::cpuid(0x8000_0001, 0).ecx & (1 << 2) == 0 {
        return Err(SvmError::NoSvm);
    }
    if cpu::cpuid(0x8000_000A, 0).edx & 1 == 0 {
        return Err(SvmError::NoNpt);
    }
    if cpu::rdmsr(0xC001_0114) & (1 << 4) != 0 {
        return Err(SvmError::Disabled);
    }
    let hsave = super::memory::alloc_zeroed_contiguous(1).ok_or(SvmError::OutOfMemory)?;
    let host_state = super::memory::alloc_zeroed_contiguous(1).ok_or(SvmError::OutOfMemory)?;
    // SAFETY: setting EFER.SVME only enables the SVM instructions; the other bits are kept.
    unsafe { cpu::wrmsr(0xC000_0080, cpu::rdmsr(0xC000_0080) | EFER_SVME) };
    // SAFETY: `hsave` is a fresh page owned by this CPU for the rest of the run.
    unsafe { cpu::wrmsr(MSR_VM_HSAVE_PA, hsave) };
    // SAFETY: `host_state` is a fresh page; VMSAVE stores this CPU's FS/GS/TR/LDTR and
    // syscall MSRs there (TR was loaded by `desc::load`).
    unsafe { core::arch::asm!("vmsave rax", in("rax") host_state, options(nostack)) };
    Ok(host_state)
}

/// Runs the guest until the next #VMEXIT.
///
/// Saves the host's callee-saved registers, loads the guest's from `regs`, and runs
/// `CLGI; VMLOAD; STI; VMRUN; VMSAVE; VMLOAD host; CLI; STGI` (the order PLATFORM-FACTS 1.6
/// measured to let physical interrupts exit the guest). Returns with interrupts disabled.
///
/// # Safety
///
/// `vmcb_pa` must be the physical address of a valid, exclusively owned VMCB whose NPT,
/// IOPM and MSRPM are valid; `regs` must point to this vCPU's `GuestRegs`;
/// `host_state_pa` must be this CPU's page filled by [`enable`]. EFER.SVME is set.
#[unsafe(naked)]
pub unsafe extern "sysv64" fn run(vmcb_pa: u64, regs: *mut GuestRegs, host_state_pa: u64) {
    naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdx", // [rsp + 8]: host state page
        "push rsi", // [rsp]: &mut GuestRegs
        "mov rax, rdi",
        "mov rbx, [rsi + 0]",
        "mov rcx, [rsi + 8]",
        "mov rdx, [rsi + 16]",
        "mov rdi, [rsi + 32]",
        "mov rbp, [rsi + 40]",
        "mov r8, [rsi + 48]",
        "mov r9, [rsi + 56]",
        "mov r10, [rsi + 64]",
        "mov r11, [rsi + 72]",
        "mov r12, [rsi + 80]",
        "mov r13, [rsi + 88]",
        "mov r14, [rsi + 96]",
        "mov r15, [rsi + 104]",
        "mov rsi, [rsi + 24]",
        "clgi",
        "vmload rax",
        "sti",
        "vmrun rax",
        // #VMEXIT: GIF = 0; RAX, RSP, RIP are the host's again; other GPRs are the guest's.
        "vmsave rax",
        "push rsi",
        "mov rsi, [rsp + 8]",
        "mov [rsi + 0], rbx",
        "mov [rsi + 8], rcx",
        "mov [rsi + 16], rdx",
        "mov [rsi + 32], rdi",
        "mov [rsi + 40], rbp",
        "mov [rsi + 48], r8",
        "mov [rsi + 56], r9",
        "mov [rsi + 64], r10",
        "mov [rsi + 72], r11",
        "mov [rsi + 80], r12",
        "mov [rsi + 88], r13",
        "mov [rsi + 96], r14",
        "mov [rsi + 104], r15",
        "pop rbx",
        "mov [rsi + 24], rbx",
        "mov rax, [rsp + 8]",
        "vmload rax",
        "cli",
        "stgi",
        "add rsp, 16",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
    )
}
