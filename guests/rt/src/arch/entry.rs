//! The PVH entry point: the Xen ELF note, the GDT, the stack, and the switch from 32-bit
//! protected mode to 64-bit long mode.
//!
//! Entry state (PVH): 32-bit protected mode, paging off, interrupts off, flat CS and data
//! segments with unspecified selectors, `EBX` = guest-physical address of `hvm_start_info`.
//! Nothing else is relied on: not the stack pointer, not TR, not the IDT, not zeroed memory.
//!
//! Steps: save `EBX` in `ESI`; load our GDT and reload every segment register; zero `.bss`;
//! set a stack; build the identity page tables ([`super::paging`]); enable CR4.PAE, load
//! CR3, set EFER.LME, enable CR0.PG; far-jump to 64-bit code; call `guest_rt_main64` (the
//! symbol defined by [`crate::entry!`]) with the `hvm_start_info` address in `RDI`.

use core::arch::global_asm;

use shared_abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY;

/// GDT selector of the flat 32-bit code segment used before long mode.
pub(crate) const CODE32_SELECTOR: u16 = 0x08;
/// GDT selector of the 64-bit code segment.
pub(crate) const CODE64_SELECTOR: u16 = 0x10;
/// GDT selector of the flat data segment.
pub(crate) const DATA_SELECTOR: u16 = 0x18;

/// Size of the boot stack, the only stack (exceptions run on it too).
pub(crate) const STACK_SIZE: usize = 64 * 1024;

const CR0_PE: u32 = 1 << 0;
const CR0_PG: u32 = 1 << 31;
const CR4_PAE: u32 = 1 << 5;
const MSR_EFER: u32 = 0xC000_0080;
const EFER_LME: u32 = 1 << 8;

global_asm!(
    // The PVH note: namesz 4 ("Xen\0"), descsz 8, type 18; the descriptor is the 8-byte
    // physical entry address (QEMU keeps the low 32 bits).
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 8",
    ".long {note_type}",
    ".asciz \"Xen\"",
    ".balign 4",
    ".quad pvh_start32",
    ".balign 4",
    ".popsection",
    //
    // GDT: null, 32-bit code, 64-bit code, data. Accessed bits preset so the CPU never
    // writes to the table.
    ".pushsection .data.guest_rt.gdt, \"aw\", @progbits",
    ".balign 16",
    "guest_rt_gdt:",
    ".quad 0",
    ".quad 0x00cf9b000000ffff",
    ".quad 0x00af9b000000ffff",
    ".quad 0x00cf93000000ffff",
    "guest_rt_gdt_end:",
    ".balign 8",
    "guest_rt_gdt_ptr:",
    ".word guest_rt_gdt_end - guest_rt_gdt - 1",
    ".quad guest_rt_gdt",
    ".popsection",
    //
    // The stack.
    ".pushsection .bss.guest_rt.stack, \"aw\", @nobits",
    ".balign 4096",
    "guest_rt_stack_bottom:",
    ".skip {stack_size}",
    "guest_rt_stack_top:",
    ".popsection",
    //
    ".pushsection .text.guest_rt.entry, \"ax\", @progbits",
    ".code32",
    ".globl pvh_start32",
    ".type pvh_start32, @function",
    "pvh_start32:",
    "cli",
    "cld",
    "movl %ebx, %esi",
    "lgdtl guest_rt_gdt_ptr",
    "ljmpl ${code32}, $.Lguest_rt_reload_cs",
    ".Lguest_rt_reload_cs:",
    "movl ${data}, %eax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "movw %ax, %fs",
    "movw %ax, %gs",
    // Zero .bss (page tables and stack included); ESI is preserved.
    "movl $__guest_rt_bss_start, %edi",
    "movl $__guest_rt_bss_end, %ecx",
    "subl %edi, %ecx",
    "xorl %eax, %eax",
    "rep stosb",
    "movl $guest_rt_stack_top, %esp",
    "call guest_rt_build_page_tables",
    "movl $guest_rt_pml4, %eax",
    "movl %eax, %cr3",
    "movl %cr4, %eax",
    "orl ${cr4_pae}, %eax",
    "movl %eax, %cr4",
    "movl ${msr_efer}, %ecx",
    "rdmsr",
    "orl ${efer_lme}, %eax",
    "wrmsr",
    "movl %cr0, %eax",
    "orl ${cr0_pg_pe}, %eax",
    "movl %eax, %cr0",
    "ljmpl ${code64}, $.Lguest_rt_long_mode",
    ".code64",
    ".Lguest_rt_long_mode:",
    "movl ${data}, %eax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "movw %ax, %fs",
    "movw %ax, %gs",
    "movq $guest_rt_stack_top, %rsp",
    "xorl %ebp, %ebp",
    "movl %esi, %edi",
    "call guest_rt_main64",
    ".Lguest_rt_hang:",
    "cli",
    "hlt",
    "jmp .Lguest_rt_hang",
    ".size pvh_start32, . - pvh_start32",
    ".popsection",
    note_type = const XEN_ELFNOTE_PHYS32_ENTRY,
    stack_size = const STACK_SIZE,
    code32 = const CODE32_SELECTOR,
    code64 = const CODE64_SELECTOR,
    data = const DATA_SELECTOR,
    cr4_pae = const CR4_PAE,
    msr_efer = const MSR_EFER,
    efer_lme = const EFER_LME,
    cr0_pg_pe = const CR0_PG | CR0_PE,
    options(att_syntax),
);
