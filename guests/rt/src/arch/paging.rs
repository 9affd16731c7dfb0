//! Identity page tables for guest-physical 0..4 GiB with 2 MiB pages, in `.bss`:
//! one PML4, one PDPT with four entries, and four page directories of 512 entries each.
//!
//! They are built by 32-bit code before paging is enabled and never change afterwards.
//! Linear address == guest-physical address for everything below 4 GiB; above 4 GiB
//! nothing is mapped (a #PF).

use core::arch::global_asm;

/// End (exclusive) of the identity map.
pub(crate) const IDENTITY_MAP_END: u64 = 4 << 30;

const PRESENT_WRITABLE: u32 = 0x3;
/// Present, writable, page size (a 2 MiB leaf).
const LARGE_LEAF: u32 = 0x83;
const LARGE_PAGE: u32 = 2 << 20;
const PAGE_DIRECTORIES: u32 = 4;
const ENTRIES: u32 = 512;

global_asm!(
    ".pushsection .bss.guest_rt.page_tables, \"aw\", @nobits",
    ".balign 4096",
    ".globl guest_rt_pml4",
    "guest_rt_pml4: .skip 4096",
    "guest_rt_pdpt: .skip 4096",
    "guest_rt_pd: .skip 4096 * {dirs}",
    ".popsection",
    //
    // void guest_rt_build_page_tables(void), 32-bit, paging off. Clobbers EAX, ECX;
    // preserves everything else (ESI holds the hvm_start_info address).
    ".pushsection .text.guest_rt.paging, \"ax\", @progbits",
    ".code32",
    ".globl guest_rt_build_page_tables",
    "guest_rt_build_page_tables:",
    // PML4[0] -> PDPT. Every entry is written in full (low and high dword).
    "movl $guest_rt_pdpt + {pw}, %eax",
    "movl %eax, guest_rt_pml4",
    "movl $0, guest_rt_pml4 + 4",
    // PDPT[i] -> PD i, i < 4.
    "movl $guest_rt_pd + {pw}, %eax",
    "xorl %ecx, %ecx",
    ".Lguest_rt_pdpt_loop:",
    "movl %eax, guest_rt_pdpt(,%ecx,8)",
    "movl $0, guest_rt_pdpt + 4(,%ecx,8)",
    "addl $4096, %eax",
    "incl %ecx",
    "cmpl ${dirs}, %ecx",
    "jb .Lguest_rt_pdpt_loop",
    // PD entry n maps n * 2 MiB, n < 2048.
    "movl ${leaf}, %eax",
    "xorl %ecx, %ecx",
    ".Lguest_rt_pd_loop:",
    "movl %eax, guest_rt_pd(,%ecx,8)",
    "movl $0, guest_rt_pd + 4(,%ecx,8)",
    "addl ${large}, %eax",
    "incl %ecx",
    "cmpl ${total}, %ecx",
    "jb .Lguest_rt_pd_loop",
    "ret",
    ".code64",
    ".popsection",
    dirs = const PAGE_DIRECTORIES,
    pw = const PRESENT_WRITABLE,
    leaf = const LARGE_LEAF,
    large = const LARGE_PAGE,
    total = const PAGE_DIRECTORIES * ENTRIES,
    options(att_syntax),
);

const _: () = assert!(
    PAGE_DIRECTORIES as u64 * ENTRIES as u64 * LARGE_PAGE as u64 == IDENTITY_MAP_END,
    "the page directories must cover exactly the identity map"
);
