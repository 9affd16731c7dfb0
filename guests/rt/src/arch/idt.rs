//! Exception handling: 32 entry stubs, the event-channel upcall stub, the IDT, and the
//! dispatcher.
//!
//! Every stub pushes a dummy error code when the CPU does not push one, then the vector,
//! and jumps to a common path that saves all general-purpose registers, calls
//! [`dispatch`] with a pointer to the resulting [`ExceptionFrame`], restores the registers
//! (possibly modified) and returns with IRETQ. `guest_rt_isr_table` lists the stubs'
//! addresses; `guest_rt_upcall_stub` is the stub of
//! [`CALLBACK_VECTOR`](crate::events::CALLBACK_VECTOR).
//!
//! Handlers run on the interrupted stack (there is no TSS, hence no IST; the target has no
//! red zone). The IDT has 256 entries; vectors 32–255 are not present except the callback
//! vector, whose gate [`install_callback_gate`] adds when the guest opts into events.

use core::arch::global_asm;
use core::cell::UnsafeCell;

use crate::arch::entry::CODE64_SELECTOR;
use crate::events::CALLBACK_VECTOR;
use crate::exception::{ERROR_CODE_VECTORS, EXCEPTION_VECTORS};
use crate::probe::FAULT_PROBE;

global_asm!(
    // The table of stub addresses, filled in as the stubs are emitted.
    ".pushsection .rodata.guest_rt.isr_table, \"a\", @progbits",
    ".balign 8",
    ".globl guest_rt_isr_table",
    "guest_rt_isr_table:",
    ".popsection",
    //
    ".pushsection .text.guest_rt.isr, \"ax\", @progbits",
    ".code64",
    "guest_rt_isr_vector = 0",
    ".rept {vectors}",
    ".balign 16",
    ".pushsection .rodata.guest_rt.isr_table, \"a\", @progbits",
    ".quad 1f",
    ".popsection",
    "1:",
    ".if (({error_code_vectors} >> guest_rt_isr_vector) & 1) == 0",
    "pushq $0",
    ".endif",
    "pushq $guest_rt_isr_vector",
    "jmp guest_rt_isr_common",
    "guest_rt_isr_vector = guest_rt_isr_vector + 1",
    ".endr",
    //
    // The event-channel upcall: an external interrupt, so no error code.
    ".balign 16",
    ".globl guest_rt_upcall_stub",
    "guest_rt_upcall_stub:",
    "pushq $0",
    "pushq ${callback_vector}",
    "jmp guest_rt_isr_common",
    //
    "guest_rt_isr_common:",
    "pushq %r15",
    "pushq %r14",
    "pushq %r13",
    "pushq %r12",
    "pushq %r11",
    "pushq %r10",
    "pushq %r9",
    "pushq %r8",
    "pushq %rbp",
    "pushq %rdi",
    "pushq %rsi",
    "pushq %rdx",
    "pushq %rcx",
    "pushq %rbx",
    "pushq %rax",
    // 15 registers + vector + error code + the CPU's 5-word frame: RSP is 16-byte aligned
    // here (the CPU aligns it before pushing), as the call below requires.
    "movq %rsp, %rdi",
    "cld",
    "call {dispatch}",
    "popq %rax",
    "popq %rbx",
    "popq %rcx",
    "popq %rdx",
    "popq %rsi",
    "popq %rdi",
    "popq %rbp",
    "popq %r8",
    "popq %r9",
    "popq %r10",
    "popq %r11",
    "popq %r12",
    "popq %r13",
    "popq %r14",
    "popq %r15",
    "addq $16, %rsp",
    "iretq",
    ".popsection",
    vectors = const EXCEPTION_VECTORS,
    error_code_vectors = const ERROR_CODE_VECTORS,
    callback_vector = const CALLBACK_VECTOR,
    dispatch = sym dispatch,
    options(att_syntax),
);

unsafe extern "C" {
    /// Address of the stub of each vector, emitted by the assembly above.
    static guest_rt_isr_table: [u64; EXCEPTION_VECTORS];
    /// The stub of the callback vector (code; only its address is used).
    static guest_rt_upcall_stub: u8;
}

/// The state saved on exception entry, in stack order (lowest address first).
#[derive(Debug)]
#[repr(C)]
pub(crate) struct ExceptionFrame {
    /// General-purpose registers, as pushed by the common stub.
    pub(crate) rax: u64,
    /// RBX.
    pub(crate) rbx: u64,
    /// RCX.
    pub(crate) rcx: u64,
    /// RDX.
    pub(crate) rdx: u64,
    /// RSI.
    pub(crate) rsi: u64,
    /// RDI.
    pub(crate) rdi: u64,
    /// RBP.
    pub(crate) rbp: u64,
    /// R8.
    pub(crate) r8: u64,
    /// R9.
    pub(crate) r9: u64,
    /// R10.
    pub(crate) r10: u64,
    /// R11.
    pub(crate) r11: u64,
    /// R12.
    pub(crate) r12: u64,
    /// R13.
    pub(crate) r13: u64,
    /// R14.
    pub(crate) r14: u64,
    /// R15.
    pub(crate) r15: u64,
    /// The exception vector, pushed by the stub.
    pub(crate) vector: u64,
    /// The CPU's error code, or 0 pushed by the stub.
    pub(crate) error_code: u64,
    /// Interrupted RIP (IRETQ resumes here).
    pub(crate) rip: u64,
    /// Interrupted CS.
    pub(crate) cs: u64,
    /// Interrupted RFLAGS.
    pub(crate) rflags: u64,
    /// Interrupted RSP.
    pub(crate) rsp: u64,
    /// Interrupted SS.
    pub(crate) ss: u64,
}
const _: () = assert!(core::mem::size_of::<ExceptionFrame>() == 22 * 8);
const _: () = assert!(core::mem::offset_of!(ExceptionFrame, vector) == 15 * 8);
const _: () = assert!(core::mem::offset_of!(ExceptionFrame, rip) == 17 * 8);

/// Called by the common stub with the saved frame, on the interrupted stack.
extern "C" fn dispatch(frame: &mut ExceptionFrame) {
    if frame.vector == u64::from(CALLBACK_VECTOR) {
        crate::events::upcall();
        return;
    }
    let vector = u8::try_from(frame.vector).unwrap_or(u8::MAX);
    if let Some(len) = FAULT_PROBE.on_exception(vector, frame.error_code, frame.rip) {
        frame.rip = frame.rip.wrapping_add(u64::from(len));
        return;
    }
    crate::rt::fatal_exception(frame);
}

/// A 64-bit IDT gate descriptor.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}
const _: () = assert!(core::mem::size_of::<IdtEntry>() == 16);

impl IdtEntry {
    const MISSING: IdtEntry = IdtEntry {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present, DPL 0, 64-bit interrupt gate (IF cleared on entry) to `handler`.
    fn interrupt_gate(handler: u64) -> Self {
        IdtEntry {
            offset_low: handler as u16,
            selector: CODE64_SELECTOR,
            ist: 0,
            type_attr: 0x8E,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

/// The operand of LIDT.
#[repr(C, packed)]
struct DescriptorTablePointer {
    limit: u16,
    base: u64,
}

/// Number of IDT entries: every vector.
const IDT_ENTRIES: usize = 256;

type Idt = [IdtEntry; IDT_ENTRIES];

/// The IDT's storage.
struct IdtStorage(UnsafeCell<Idt>);

// SAFETY: there is one vCPU. The table is written only by `install` (once at boot, with
// interrupts disabled and no handler active) and by `install_callback_gate` (with
// interrupts disabled, writing only the callback vector's entry, which no handler reads;
// exception handlers never touch the table). No Rust reference to it is ever formed.
unsafe impl Sync for IdtStorage {}

static IDT: IdtStorage = IdtStorage(UnsafeCell::new([IdtEntry::MISSING; IDT_ENTRIES]));

/// Fills the IDT with the 32 exception stubs and loads it.
pub(crate) fn install() {
    // SAFETY: the assembly above defines `guest_rt_isr_table` in .rodata with exactly
    // one 8-byte address per vector (the `.rept` runs EXCEPTION_VECTORS times); it is
    // never written.
    let stubs = unsafe { guest_rt_isr_table };
    let mut table = [IdtEntry::MISSING; IDT_ENTRIES];
    for (entry, stub) in table.iter_mut().zip(stubs) {
        *entry = IdtEntry::interrupt_gate(stub);
    }
    let idt = IDT.0.get();
    // SAFETY: `idt` points to the static table, valid for writes; see `IdtStorage`'s Sync
    // argument for why no other reference to it exists while we write.
    unsafe { idt.write(table) };
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: idt as u64,
    };
    // SAFETY: `pointer` describes the static IDT just filled with gates to the stubs
    // above, which stays valid for the life of the guest.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &raw const pointer, options(readonly, nostack, preserves_flags));
    }
}

/// Adds the interrupt gate of `vector` (the event-channel callback vector) to the loaded
/// IDT. Call it with interrupts disabled, before the vector can be raised.
pub(crate) fn install_callback_gate(vector: u8) {
    debug_assert!(!crate::arch::cpu::interrupts_enabled());
    let stub = (&raw const guest_rt_upcall_stub).addr() as u64;
    let idt = IDT.0.get().cast::<IdtEntry>();
    let entry = idt.wrapping_add(usize::from(vector));
    // SAFETY: `vector < 256 = IDT_ENTRIES`, so `entry` is inside the static table, valid
    // and aligned for writes; interrupts are off and only this entry is written (see
    // `IdtStorage`'s Sync argument). The table is already loaded, so the gate takes effect
    // at once.
    unsafe { entry.write(IdtEntry::interrupt_gate(stub)) };
}
