//! Boot code: the PVH ELF note, the 32-bit PVH entry of the bootstrap processor, the
//! real-mode trampoline of the application processors, and the common switch to long mode.
//!
//! Both paths build nothing at run time: the boot page tables are static and identity-map
//! the low 4 GiB with 2 MiB pages (the top GiB, which holds the LAPIC and other MMIO, is
//! mapped uncached).

use core::arch::global_asm;

/// Physical address the AP trampoline is copied to (SIPI vector 0x08).
pub const AP_TRAMPOLINE_PA: u64 = 0x8000;

/// Size of each CPU's stack.
pub const STACK_SIZE: usize = 64 * 1024;

/// Bytes of boot stack per CPU, in .bss.
#[repr(C, align(4096))]
pub struct Stacks(pub [[u8; STACK_SIZE]; super::MAX_CPUS]);

impl core::fmt::Debug for Stacks {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Stacks({} x {} KiB)", super::MAX_CPUS, STACK_SIZE / 1024)
    }
}

/// Every CPU's stack; CPU `n` uses `STACKS.0[n]`.
#[unsafe(no_mangle)]
pub static mut STACKS: Stacks = Stacks([[0; STACK_SIZE]; super::MAX_CPUS]);

/// Top of the stack the next AP starts on; written by the BSP before each SIPI.
#[unsafe(no_mangle)]
pub static mut AP_STACK_TOP: u64 = 0;

global_asm!(
    r#"
    .section .note.pvh, "a"
    .balign 4
    .long 4            /* namesz: "Xen\0" */
    .long 8            /* descsz: 8-byte descriptor, low 32 bits are the entry */
    .long 18           /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .data
    .balign 4096
    .global boot_pml4
boot_pml4:
    .quad boot_pdpt + 0x3      /* P | W */
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + 0x3
    .quad boot_pd + 0x1000 + 0x3
    .quad boot_pd + 0x2000 + 0x3
    .quad boot_pd + 0x3000 + 0x3
    .fill 508, 8, 0
boot_pd:
    /* 2048 entries of 2 MiB: P | W | PS; the last 512 (3-4 GiB) also PWT | PCD. */
    .set i, 0
    .rept 1536
    .quad (i << 21) + 0x83
    .set i, i + 1
    .endr
    .rept 512
    .quad (i << 21) + 0x9B
    .set i, i + 1
    .endr

    .balign 16
boot_gdt:
    .quad 0                     /* 0x00 null */
    .quad 0x00CF9A000000FFFF    /* 0x08 32-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10 data */
    .quad 0x00AF9A000000FFFF    /* 0x18 64-bit code */
boot_gdt_end:
    .balign 8
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    /* PVH: 32-bit flat protected mode, paging off, EBX = hvm_start_info. */
    cli
    cld
    mov %ebx, %edi                      /* keep start_info across the switch */
    lgdt boot_gdtr
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $(STACKS + 65536), %esp         /* CPU 0's stack */
    mov $0, %esi                        /* 0 = bootstrap processor */
    jmp long_mode_switch

    .global ap_start32
ap_start32:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $1, %esi                        /* 1 = application processor */
    /* fall through */

long_mode_switch:
    mov %cr4, %eax
    or $(1 << 5), %eax                  /* PAE */
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx               /* EFER */
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax    /* LME | NXE */
    wrmsr
    mov %cr0, %eax
    or $((1 << 31) | (1 << 16) | 1), %eax   /* PG | WP | PE */
    mov %eax, %cr0
    ljmp $0x18, $long_mode_entry

    .code64
long_mode_entry:
    xor %eax, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    test %esi, %esi
    jnz 1f
    mov %edi, %edi                      /* zero-extend start_info */
    mov $(STACKS + 65536), %rsp
    xor %ebp, %ebp
    call bsp_main
    ud2
1:
    mov AP_STACK_TOP(%rip), %rsp
    xor %ebp, %ebp
    call ap_main
    ud2

    /* Real-mode trampoline, copied to 0x8000; CS = 0x0800 at SIPI. */
    .code16
    .global ap_trampoline_start
ap_trampoline_start:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl (0x8000 + ap_tramp_gdtr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $ap_start32
    .balign 8
ap_tramp_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
    .global ap_trampoline_end
ap_trampoline_end:
    .code64
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// The trampoline's bytes (to be copied to [`AP_TRAMPOLINE_PA`]).
pub fn ap_trampoline() -> &'static [u8] {
    let start = &raw const ap_trampoline_start;
    let end = &raw const ap_trampoline_end;
    let len = end as usize - start as usize;
    // SAFETY: both symbols delimit the trampoline code in .text.boot, which is mapped,
    // immutable and lives for the whole run.
    unsafe { core::slice::from_raw_parts(start, len) }
}
