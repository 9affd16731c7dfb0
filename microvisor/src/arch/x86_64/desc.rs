//! Per-CPU GDT and TSS, the shared IDT, and the exception path: every exception is
//! reported with its registers on the log, then the machine stops with a verdict
//! (never a silent triple fault).

use super::MAX_CPUS;
use core::arch::{asm, global_asm};

/// Vector of the wake-up IPI that kicks an idle pCPU.
pub const WAKEUP_VECTOR: u8 = 0xF0;
/// Spurious-interrupt vector programmed into the LAPIC.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

const IST_SIZE: usize = 16 * 1024;

#[repr(C, packed(4))]
struct Tss {
    _rsvd0: u32,
    rsp: [u64; 3],
    _rsvd1: u64,
    ist: [u64; 7],
    _rsvd2: u64,
    _rsvd3: u16,
    iomap_base: u16,
}
const _: () = assert!(core::mem::size_of::<Tss>() == 104);

#[repr(C, align(16))]
struct PerCpuTables {
    gdt: [u64; 5],
    tss: Tss,
}

#[repr(C, align(4096))]
struct IstStacks([[u8; IST_SIZE]; MAX_CPUS]);

static mut TABLES: [PerCpuTables; MAX_CPUS] = [const {
    PerCpuTables {
        gdt: [0; 5],
        tss: Tss {
            _rsvd0: 0,
            rsp: [0; 3],
            _rsvd1: 0,
            ist: [0; 7],
            _rsvd2: 0,
            _rsvd3: 0,
            iomap_base: 104,
        },
    }
}; MAX_CPUS];
static mut IST_STACKS: IstStacks = IstStacks([[0; IST_SIZE]; MAX_CPUS]);

#[repr(C, align(16))]
struct Idt([u128; 256]);
static mut IDT: Idt = Idt([0; 256]);

/// Kernel code selector in the per-CPU GDT.
pub const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const TSS_SEL: u16 = 0x18;

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Loads this CPU's GDT and TSS (with an IST stack for #DF, NMI and #MC) and the IDT.
pub fn load(cpu: usize) {
    // SAFETY: each CPU touches only its own slot of TABLES/IST_STACKS, once, during its
    // bring-up, before anything else can refer to them.
    let all = &raw mut TABLES;
    // SAFETY: as above.
    let tables = unsafe { &mut (*all)[cpu] };
    let stacks = &raw mut IST_STACKS;
    // SAFETY: as above; only the address of this CPU's own stack slot is taken.
    let slot = unsafe { &raw mut (*stacks).0[cpu] };
    let ist_top = slot.cast::<u8>().wrapping_add(IST_SIZE) as u64;
    tables.tss.ist[0] = ist_top;
    let tss_base = (&raw const tables.tss) as u64;
    tables.gdt = [
        0,
        0x00AF_9A00_0000_FFFF, // 64-bit code
        0x00CF_9200_0000_FFFF, // data
        // 64-bit available TSS, limit 103.
        103 | ((tss_base & 0xFF_FFFF) << 16) | (0x89 << 40) | (((tss_base >> 24) & 0xFF) << 56),
        tss_base >> 32,
    ];
    let gdtr = DescriptorPointer {
        limit: 5 * 8 - 1,
        base: (&raw const tables.gdt) as u64,
    };
    let idtr = DescriptorPointer {
        limit: 256 * 16 - 1,
        base: (&raw const IDT) as u64,
    };
    // SAFETY: the GDT above has valid code/data descriptors at the selectors loaded here;
    // the far return reloads CS; the TSS descriptor is available (not busy); the IDT is
    // filled by `init_idt` before any CPU loads it.
    unsafe {
        asm!(
            "lgdt [{gdtr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:e}",
            "mov es, {ds:e}",
            "mov ss, {ds:e}",
            "ltr {tss:x}",
            "lidt [{idtr}]",
            gdtr = in(reg) &raw const gdtr,
            idtr = in(reg) &raw const idtr,
            cs = in(reg) u64::from(KERNEL_CS),
            ds = in(reg) u32::from(KERNEL_DS),
            tss = in(reg) TSS_SEL,
            tmp = out(reg) _,
        );
    }
}

global_asm!(
    r#"
    .macro isr_noerr n
    isr_\n:
        push 0
        push \n
        jmp isr_common
    .endm
    .macro isr_err n
    isr_\n:
        push \n
        jmp isr_common
    .endm

    .section .text
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31,240,255
    isr_noerr \n
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    isr_err \n
    .endr

    isr_common:
        push rax
        push rbx
        push rcx
        push rdx
        push rsi
        push rdi
        push rbp
        push r8
        push r9
        push r10
        push r11
        push r12
        push r13
        push r14
        push r15
        mov rdi, rsp
        cld
        call trap_dispatch
        pop r15
        pop r14
        pop r13
        pop r12
        pop r11
        pop r10
        pop r9
        pop r8
        pop rbp
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rbx
        pop rax
        add rsp, 16
        iretq

    .section .rodata
    .balign 8
    .global isr_table
    isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad isr_\n
    .endr
    .quad isr_240
    .quad isr_255
    "#
);

unsafe extern "C" {
    static isr_table: [u64; 34];
}

/// Registers pushed by `isr_common`, then by the CPU.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Fills the IDT (once, on the BSP, before any CPU loads it).
pub fn init_idt() {
    // SAFETY: isr_table is an immutable table of stub addresses emitted above.
    let table = &raw const isr_table;
    // SAFETY: as above.
    let table = unsafe { &*table };
    let gate = |handler: u64, ist: u8| -> u128 {
        let low = (handler & 0xFFFF)
            | (u64::from(KERNEL_CS) << 16)
            | (u64::from(ist) << 32)
            | (0x8E << 40) // present, DPL 0, 64-bit interrupt gate
            | (((handler >> 16) & 0xFFFF) << 48);
        u128::from(low) | (u128::from(handler >> 32) << 64)
    };
    // SAFETY: runs on the BSP before any other CPU is started or any IDT is loaded.
    let idt = &raw mut IDT;
    // SAFETY: as above.
    let idt = unsafe { &mut *idt };
    for (vector, &handler) in table[..32].iter().enumerate() {
        // #DF, NMI and #MC run on the IST stack: the current stack may be the problem.
        let ist = u8::from(matches!(vector, 2 | 8 | 18));
        idt.0[vector] = gate(handler, ist);
    }
    idt.0[usize::from(WAKEUP_VECTOR)] = gate(table[32], 0);
    idt.0[usize::from(SPURIOUS_VECTOR)] = gate(table[33], 0);
}

const NAMES: [&str; 32] = [
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
    "#GP", "#PF", "15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "22", "23", "24", "25", "26",
    "27", "28", "#VC", "#SX", "31",
];

#[unsafe(no_mangle)]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    match frame.vector {
        v if v == u64::from(WAKEUP_VECTOR) => super::apic::eoi(),
        v if v == u64::from(SPURIOUS_VECTOR) => {}
        v => {
            let name = NAMES.get(v as usize).copied().unwrap_or("?");
            let f = &*frame;
            super::fatal(format_args!(
                "exception {name} (vector {v}) on pCPU {}: error {:#x} rip {:#x} rsp {:#x} rflags {:#x} cr2 {:#x}\n\
                 rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x}\n\
                 r8 {:#x} r9 {:#x} r10 {:#x} r11 {:#x} r12 {:#x} r13 {:#x} r14 {:#x} r15 {:#x}",
                super::cpu_index(),
                f.error,
                f.rip,
                f.rsp,
                f.rflags,
                super::cpu::read_cr2(),
                f.rax,
                f.rbx,
                f.rcx,
                f.rdx,
                f.rsi,
                f.rdi,
                f.rbp,
                f.r8,
                f.r9,
                f.r10,
                f.r11,
                f.r12,
                f.r13,
                f.r14,
                f.r15,
            ));
        }
    }
}
