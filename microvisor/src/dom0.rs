//! Domain 0: which machine memory it gets, the memory map it sees, its identity nested page
//! table, and its PVH boot pages.
//!
//! Dom0 is native Linux driving the machine's devices, so its guest-physical addresses
//! equal machine addresses:
//!
//! - **Dom0 RAM** (pages of the machine's e820 RAM chosen by [`plan_memory`]): mapped
//!   read-write-execute, 1:1.
//! - **Other RAM** (the microvisor's image, the boot bundle, the pool DomUs and the
//!   microvisor's own tables come from): not mapped. Dom0's e820 leaves it out, and an
//!   access gets a fault in Dom0.
//! - **Everything else** (MMIO, firmware, ACPI tables, the local APIC, PCI windows) up to
//!   the machine's physical address limit: mapped 1:1 so Linux drives the devices itself.
//!
//! The boot pages live in Dom0's low RAM: `hvm_start_info` and the module list at
//! [`START_INFO_GPA`], the command line at [`CMDLINE_GPA`], the memory map at
//! [`MEMMAP_GPA`]. Linux copies all three before it allocates memory.
//!
//! Portable and host-tested; `arch::x86_64::hv` applies it to the machine.

use crate::elf::PvhImage;
use crate::mm::PhysMemory;
use crate::mm::frames::FRAME_SIZE;
use crate::mm::npt::{Access, MapError, Npt};
use shared_abi::pvh::{E820_RAM, HVM_START_MAGIC, HvmMemmapEntry, HvmModlistEntry, HvmStartInfo};
use zerocopy::IntoBytes;

/// Guest-physical (= machine) address of Dom0's `hvm_start_info`, followed by its module
/// list at +0x40.
pub const START_INFO_GPA: u64 = 0x1000;
/// Dom0's command line (NUL-terminated, at most [`MAX_CMDLINE`] bytes).
pub const CMDLINE_GPA: u64 = 0x2000;
/// Dom0's memory map.
pub const MEMMAP_GPA: u64 = 0x3000;
/// Longest Dom0 command line.
pub const MAX_CMDLINE: usize = 2047;
/// Most e820 entries Dom0's map may hold (one page of [`HvmMemmapEntry`]).
pub const MAX_MEMMAP: usize = 128;
/// Most separate RAM ranges Dom0 may get.
pub const MAX_RANGES: usize = 16;
/// Smallest Dom0 (Debian's kernel and an initramfs need more than this).
pub const MIN_MEM_MIB: u32 = 64;
/// Pages in the foreign window.
pub const FOREIGN_WINDOW_PAGES: u64 = 4096;
/// The foreign window: guest-physical pages where other domains' frames are mapped for
/// Dom0 on request ([`shared_abi::control::ControlOp::ForeignMap`]). It lies at 64 GiB,
/// above QEMU's 64-bit PCI window, is reserved in Dom0's memory map so Linux places
/// nothing there, and is unmapped until a slot is filled.
pub const FOREIGN_WINDOW: Range = Range::new(
    0x10_0000_0000,
    0x10_0000_0000 + FOREIGN_WINDOW_PAGES * FRAME_SIZE,
);

/// A half-open machine address range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Range {
    /// `[start, end)`.
    pub const fn new(start: u64, end: u64) -> Self {
        Self { start, end }
    }

    /// Size in bytes (0 if empty).
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range is empty.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    fn contains_range(&self, other: Range) -> bool {
        other.start >= self.start && other.end <= self.end
    }

    fn overlaps(&self, other: Range) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// Why Dom0 cannot be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dom0Error {
    /// The requested memory is below [`MIN_MEM_MIB`].
    MemoryTooSmall(u32),
    /// The machine has less free RAM than requested (MiB available).
    NotEnoughRam {
        /// Requested MiB.
        wanted: u32,
        /// MiB the machine could give.
        available: u64,
    },
    /// Dom0's RAM would be split into more than [`MAX_RANGES`] pieces.
    TooFragmented,
    /// A kernel segment lies outside Dom0's RAM or over its boot pages or initramfs.
    SegmentOutsideRam {
        /// Load address.
        paddr: u64,
        /// Size in memory.
        size: u64,
    },
    /// The entry point is not inside a kernel segment.
    EntryOutsideImage(u32),
    /// The boot pages (0x1000-0x3FFF) are not Dom0 RAM.
    NoLowMemory,
    /// No Dom0 RAM range can hold the initramfs above the kernel.
    InitrdTooLarge(u64),
    /// The command line is longer than [`MAX_CMDLINE`].
    CmdlineTooLong,
    /// The machine's memory map has more entries than Dom0's map can hold.
    MemmapTooLarge,
    /// No memory for the nested page table.
    OutOfMemory,
}

impl core::fmt::Display for Dom0Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Dom0Error::MemoryTooSmall(m) => {
                write!(
                    f,
                    "{m} MiB is too little for Dom0 (at least {MIN_MEM_MIB} MiB)"
                )
            }
            Dom0Error::NotEnoughRam { wanted, available } => write!(
                f,
                "Dom0 wants {wanted} MiB but only {available} MiB of RAM is free; lower dom0 memory or give QEMU more (-m)"
            ),
            Dom0Error::TooFragmented => {
                write!(f, "Dom0's RAM would need more than {MAX_RANGES} ranges")
            }
            Dom0Error::SegmentOutsideRam { paddr, size } => write!(
                f,
                "kernel segment at {paddr:#x} (+{size:#x}) is not inside Dom0's RAM; raise dom0 memory"
            ),
            Dom0Error::EntryOutsideImage(e) => write!(f, "entry {e:#x} is not in a segment"),
            Dom0Error::NoLowMemory => write!(f, "the boot pages at 0x1000-0x3fff are not RAM"),
            Dom0Error::InitrdTooLarge(s) => write!(
                f,
                "no Dom0 RAM range holds the {} KiB initramfs above the kernel; raise dom0 memory",
                s / 1024
            ),
            Dom0Error::CmdlineTooLong => {
                write!(f, "command line longer than {MAX_CMDLINE} bytes")
            }
            Dom0Error::MemmapTooLarge => write!(f, "memory map has too many entries"),
            Dom0Error::OutOfMemory => write!(f, "no memory for Dom0's nested page table"),
        }
    }
}

/// The machine RAM given to Dom0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dom0Memory {
    ranges: [Range; MAX_RANGES],
    len: usize,
}

impl Dom0Memory {
    /// The ranges, ascending, page-aligned, disjoint.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges[..self.len]
    }

    /// Total bytes.
    pub fn total(&self) -> u64 {
        self.ranges().iter().map(Range::len).sum()
    }

    /// Whether `r` lies inside one Dom0 RAM range.
    pub fn holds(&self, r: Range) -> bool {
        self.ranges().iter().any(|own| own.contains_range(r))
    }

    fn push(&mut self, r: Range) -> Result<(), Dom0Error> {
        if r.is_empty() {
            return Ok(());
        }
        if let Some(last) = self.len.checked_sub(1).map(|i| &mut self.ranges[i])
            && last.end == r.start
        {
            last.end = r.end;
            return Ok(());
        }
        let slot = self
            .ranges
            .get_mut(self.len)
            .ok_or(Dom0Error::TooFragmented)?;
        *slot = r;
        self.len += 1;
        Ok(())
    }
}

/// RAM entries of the machine map, page-aligned inward (a page that is only partly RAM is
/// not RAM for anyone), in ascending order.
fn machine_ram(e820: &[HvmMemmapEntry]) -> impl Iterator<Item = Range> + '_ {
    let mut ram: [Range; MAX_MEMMAP] = [Range::default(); MAX_MEMMAP];
    let mut n = 0;
    for e in e820.iter().filter(|e| e.kind == E820_RAM) {
        let start = e.addr.checked_next_multiple_of(FRAME_SIZE);
        let end = e.addr.saturating_add(e.size) / FRAME_SIZE * FRAME_SIZE;
        if let Some(start) = start
            && start < end
            && n < MAX_MEMMAP
        {
            ram[n] = Range::new(start, end);
            n += 1;
        }
    }
    ram[..n].sort_unstable_by_key(|r| r.start);
    (0..n).map(move |i| ram[i])
}

/// Chooses `mem_mib` MiB of machine RAM for Dom0, lowest addresses first (Linux's kernel
/// loads at 16 MiB and needs low memory), skipping `keep_out` (the microvisor's image and
/// the boot bundle). Call it before the frame allocator hands out anything, then reserve
/// the result in the allocator.
pub fn plan_memory(
    e820: &[HvmMemmapEntry],
    keep_out: &[Range],
    mem_mib: u32,
) -> Result<Dom0Memory, Dom0Error> {
    if mem_mib < MIN_MEM_MIB {
        return Err(Dom0Error::MemoryTooSmall(mem_mib));
    }
    let mut budget = u64::from(mem_mib) << 20;
    let mut plan = Dom0Memory::default();
    let mut available = 0u64;
    for ram in machine_ram(e820) {
        // Split `ram` around every keep-out range, in address order.
        let mut cursor = ram.start;
        while cursor < ram.end {
            let blocker = keep_out
                .iter()
                .map(|k| {
                    let end = k
                        .end
                        .checked_next_multiple_of(FRAME_SIZE)
                        .unwrap_or(u64::MAX);
                    Range::new(k.start / FRAME_SIZE * FRAME_SIZE, end)
                })
                .filter(|k| k.overlaps(Range::new(cursor, ram.end)))
                .min_by_key(|k| k.start);
            let piece_end = blocker.map_or(ram.end, |k| k.start.max(cursor));
            let piece = Range::new(cursor, piece_end);
            available += piece.len();
            let take = piece.len().min(budget);
            if take > 0 {
                plan.push(Range::new(piece.start, piece.start + take))?;
                budget -= take;
            }
            cursor = blocker.map_or(ram.end, |k| k.end.max(piece_end));
        }
    }
    if budget > 0 {
        return Err(Dom0Error::NotEnoughRam {
            wanted: mem_mib,
            available: available >> 20,
        });
    }
    Ok(plan)
}

/// Dom0's memory map: the machine's, with RAM cut down to Dom0's ranges, plus the foreign
/// window as reserved. RAM that is not Dom0's becomes a hole; reserved, ACPI and other
/// entries pass unchanged.
pub fn memory_map(
    e820: &[HvmMemmapEntry],
    dom0: &Dom0Memory,
    out: &mut [HvmMemmapEntry; MAX_MEMMAP],
) -> Result<usize, Dom0Error> {
    let mut n = 0;
    let mut put = |e: HvmMemmapEntry| {
        let slot = out.get_mut(n).ok_or(Dom0Error::MemmapTooLarge)?;
        *slot = e;
        n += 1;
        Ok::<(), Dom0Error>(())
    };
    for e in e820 {
        if e.kind != E820_RAM {
            put(*e)?;
            continue;
        }
        let whole = Range::new(e.addr, e.addr.saturating_add(e.size));
        for own in dom0.ranges().iter().filter(|own| own.overlaps(whole)) {
            let start = own.start.max(whole.start);
            let end = own.end.min(whole.end);
            put(HvmMemmapEntry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
                reserved: 0,
            })?;
        }
    }
    put(HvmMemmapEntry {
        addr: FOREIGN_WINDOW.start,
        size: FOREIGN_WINDOW.len(),
        kind: shared_abi::pvh::E820_RESERVED,
        reserved: 0,
    })?;
    out[..n].sort_unstable_by_key(|e| e.addr);
    Ok(n)
}

/// How Dom0's nested page table treats a machine page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// Dom0's RAM: mapped 1:1.
    Dom0Ram,
    /// RAM that is not Dom0's, and the foreign window: unmapped.
    OtherRam,
    /// Not RAM (MMIO, firmware, ACPI): mapped 1:1.
    Io,
}

/// Classifies machine addresses for the identity map.
#[derive(Debug)]
pub struct Classifier {
    dom0: Dom0Memory,
    ram: [Range; MAX_MEMMAP],
    ram_len: usize,
}

impl Classifier {
    /// From the machine's map and Dom0's RAM.
    pub fn new(e820: &[HvmMemmapEntry], dom0: &Dom0Memory) -> Self {
        let mut c = Classifier {
            dom0: *dom0,
            ram: [Range::default(); MAX_MEMMAP],
            ram_len: 0,
        };
        for r in machine_ram(e820) {
            c.ram[c.ram_len] = r;
            c.ram_len += 1;
        }
        c
    }

    /// The kind of the page at `pa`.
    pub fn kind(&self, pa: u64) -> PageKind {
        let page = Range::new(pa, pa + 1);
        if self.dom0.ranges().iter().any(|r| r.overlaps(page)) {
            PageKind::Dom0Ram
        } else if FOREIGN_WINDOW.overlaps(page)
            || self.ram[..self.ram_len].iter().any(|r| r.overlaps(page))
        {
            PageKind::OtherRam
        } else {
            PageKind::Io
        }
    }

    /// Whether every page of `r` has the same kind.
    fn uniform(&self, r: Range) -> bool {
        let inside = |b: u64| r.start < b && b < r.end;
        self.dom0
            .ranges()
            .iter()
            .chain(&self.ram[..self.ram_len])
            .chain(core::iter::once(&FOREIGN_WINDOW))
            .all(|x| !inside(x.start) && !inside(x.end))
    }
}

/// Builds Dom0's identity nested page table up to `phys_limit` (the CPU's physical address
/// width), with 1 GiB and 2 MiB pages wherever a whole block has one kind.
pub fn build_npt(
    mem: &mut impl PhysMemory,
    classes: &Classifier,
    phys_limit: u64,
) -> Result<Npt, Dom0Error> {
    let npt = Npt::new(mem).map_err(|_| Dom0Error::OutOfMemory)?;
    // The foreign window's tables are made now, so that filling its slots later never
    // allocates (and free memory does not move the first time Dom0 maps a frame).
    let result = map_block(mem, &npt, classes, 0, phys_limit, 2)
        .and_then(|()| npt.prepare_tables(mem, FOREIGN_WINDOW.start, FOREIGN_WINDOW.end));
    match result {
        Ok(()) => Ok(npt),
        Err(_) => {
            npt.destroy(mem);
            Err(Dom0Error::OutOfMemory)
        }
    }
}

fn map_block(
    mem: &mut impl PhysMemory,
    npt: &Npt,
    classes: &Classifier,
    start: u64,
    end: u64,
    level: u32,
) -> Result<(), MapError> {
    let size = 1u64 << (12 + 9 * level);
    let mut at = start;
    while at < end {
        let block = Range::new(at, (at + size).min(end));
        let whole = block.len() == size;
        if whole && classes.uniform(block) || level == 0 {
            if classes.kind(at) != PageKind::OtherRam {
                if level == 0 {
                    npt.map_4k(
                        mem,
                        at,
                        at,
                        Access::ReadWriteExec,
                        crate::mm::npt::Ownership::Foreign,
                    )?;
                } else {
                    npt.map_large(mem, at, at, level, Access::ReadWriteExec)?;
                }
            }
        } else {
            map_block(mem, npt, classes, block.start, block.end, level - 1)?;
        }
        at = block.end;
    }
    Ok(())
}

/// Where Dom0's images go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The initramfs's machine range, if there is one.
    pub initrd: Option<Range>,
}

/// Checks the kernel against Dom0's RAM and places the initramfs of `initrd_size` bytes at
/// the top of the highest Dom0 range that holds it above the kernel.
pub fn place(
    dom0: &Dom0Memory,
    kernel: &PvhImage<'_>,
    initrd_size: Option<u64>,
    cmdline: &str,
) -> Result<Placement, Dom0Error> {
    if cmdline.len() > MAX_CMDLINE {
        return Err(Dom0Error::CmdlineTooLong);
    }
    let boot_pages = Range::new(START_INFO_GPA, MEMMAP_GPA + FRAME_SIZE);
    if !dom0.holds(boot_pages) {
        return Err(Dom0Error::NoLowMemory);
    }
    let mut kernel_end = 0;
    let mut entry_ok = false;
    for s in kernel.segments() {
        let seg = Range::new(s.paddr, s.paddr + s.mem_size); // no overflow: checked by the parser
        if !dom0.holds(seg) || seg.overlaps(boot_pages) {
            return Err(Dom0Error::SegmentOutsideRam {
                paddr: s.paddr,
                size: s.mem_size,
            });
        }
        kernel_end = kernel_end.max(seg.end);
        entry_ok |= (seg.start..seg.end).contains(&u64::from(kernel.entry));
    }
    if !entry_ok {
        return Err(Dom0Error::EntryOutsideImage(kernel.entry));
    }
    let initrd = match initrd_size {
        None => None,
        Some(size) => {
            let pages = size.div_ceil(FRAME_SIZE) * FRAME_SIZE;
            let spot = dom0.ranges().iter().rev().find_map(|r| {
                let start = r.end.checked_sub(pages)?;
                (start >= r.start.max(kernel_end)).then_some(Range::new(start, start + size))
            });
            Some(spot.ok_or(Dom0Error::InitrdTooLarge(size))?)
        }
    };
    Ok(Placement { initrd })
}

/// Writes Dom0's kernel, initramfs and boot pages into its (identity-mapped) RAM.
/// `place` must have accepted the same inputs.
pub fn load(
    mem: &mut impl PhysMemory,
    kernel: &PvhImage<'_>,
    initrd: Option<(&[u8], Range)>,
    cmdline: &str,
    memmap: &[HvmMemmapEntry],
    rsdp: u64,
) {
    for s in kernel.segments() {
        write_zero_padded(mem, s.paddr, s.data, s.mem_size);
    }
    if let Some((bytes, at)) = initrd {
        write_zero_padded(
            mem,
            at.start,
            bytes,
            (bytes.len() as u64).next_multiple_of(FRAME_SIZE),
        );
    }
    let info = HvmStartInfo {
        magic: HVM_START_MAGIC,
        version: 1,
        // Not SIF_INITDOMAIN: Dom0 is native Linux, not a Xen initial domain.
        flags: 0,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() {
            START_INFO_GPA + 0x40
        } else {
            0
        },
        cmdline_paddr: CMDLINE_GPA,
        rsdp_paddr: rsdp,
        memmap_paddr: MEMMAP_GPA,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    let mut page = [0u8; 4096];
    page[..56].copy_from_slice(info.as_bytes());
    if let Some((bytes, at)) = initrd {
        let m = HvmModlistEntry {
            paddr: at.start,
            size: bytes.len() as u64,
            cmdline_paddr: 0,
            reserved: 0,
        };
        page[0x40..0x60].copy_from_slice(m.as_bytes());
    }
    mem.write_bytes(START_INFO_GPA, &page);
    page.fill(0);
    page[..cmdline.len()].copy_from_slice(cmdline.as_bytes());
    mem.write_bytes(CMDLINE_GPA, &page);
    page.fill(0);
    for (i, e) in memmap.iter().enumerate() {
        page[24 * i..24 * (i + 1)].copy_from_slice(e.as_bytes());
    }
    mem.write_bytes(MEMMAP_GPA, &page);
}

/// Writes `data` at `pa` page by page and zero-fills up to `total` bytes.
fn write_zero_padded(mem: &mut impl PhysMemory, pa: u64, data: &[u8], total: u64) {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut done = 0u64;
    while done < total {
        let at = pa + done;
        let n = (FRAME_SIZE - (at & 0xFFF)).min(total - done);
        let from = usize::try_from(done).unwrap_or(usize::MAX);
        let chunk = data.get(from..).unwrap_or(&[]);
        let k = (n as usize).min(chunk.len());
        mem.write_bytes(at, &chunk[..k]);
        if k < n as usize {
            mem.write_bytes(at + k as u64, &ZEROS[..n as usize - k]);
        }
        done += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::fake::FakeMem;
    use shared_abi::pvh::E820_RESERVED;

    fn e(addr: u64, size: u64, kind: u32) -> HvmMemmapEntry {
        HvmMemmapEntry {
            addr,
            size,
            kind,
            reserved: 0,
        }
    }

    /// QEMU q35 with 2 GiB.
    fn q35() -> std::vec::Vec<HvmMemmapEntry> {
        std::vec![
            e(0, 0x9_FC00, E820_RAM),
            e(0x9_FC00, 0x400, E820_RESERVED),
            e(0xF_0000, 0x1_0000, E820_RESERVED),
            e(0x10_0000, 0x7FEE_0000, E820_RAM),
            e(0x7FFE_0000, 0x2_0000, E820_RESERVED),
            e(0xB000_0000, 0x1000_0000, E820_RESERVED),
            e(0xFEFF_C000, 0x4000, E820_RESERVED),
        ]
    }

    const IMAGE: Range = Range::new(0x20_0000, 0x2F_3000);
    const BUNDLE: Range = Range::new(0x7A00_0000, 0x7FFD_F000);

    #[test]
    fn plan_takes_low_ram_first_and_skips_the_microvisor() {
        let plan = plan_memory(&q35(), &[IMAGE, BUNDLE], 512).unwrap();
        assert_eq!(
            plan.ranges(),
            &[
                Range::new(0, 0x9_F000),
                Range::new(0x10_0000, 0x20_0000),
                Range::new(0x2F_3000, 0x2F_3000 + (512 << 20) - 0x9_F000 - 0x10_0000),
            ]
        );
        assert_eq!(plan.total(), 512 << 20);
        assert!(plan.holds(Range::new(0x100_0000, 0x500_0000)));
        assert!(!plan.holds(Range::new(0x1F_F000, 0x20_1000)));
    }

    #[test]
    fn plan_refuses_what_does_not_fit() {
        assert_eq!(
            plan_memory(&q35(), &[], 16),
            Err(Dom0Error::MemoryTooSmall(16))
        );
        assert!(matches!(
            plan_memory(&q35(), &[IMAGE, BUNDLE], 4096),
            Err(Dom0Error::NotEnoughRam { wanted: 4096, .. })
        ));
        // Hostile maps: overlapping, unsorted, huge entries must not panic.
        let weird = [
            e(u64::MAX - 5, 100, E820_RAM),
            e(0x10_0000, 0x1000_0000, E820_RAM),
            e(0x10_0000, 0x1000_0000, E820_RAM),
            e(0x0, 0x10_0000, E820_RAM),
        ];
        let _ = plan_memory(&weird, &[Range::new(0, u64::MAX)], 64);
        let _ = plan_memory(&weird, &[], 64);
    }

    #[test]
    fn memory_map_keeps_reserved_entries_and_cuts_ram() {
        let plan = plan_memory(&q35(), &[IMAGE, BUNDLE], 256).unwrap();
        let mut out = [HvmMemmapEntry::default(); MAX_MEMMAP];
        let n = memory_map(&q35(), &plan, &mut out).unwrap();
        let ram: u64 = out[..n]
            .iter()
            .filter(|m| m.kind == E820_RAM)
            .map(|m| m.size)
            .sum();
        assert_eq!(ram, 256 << 20);
        assert_eq!(
            out[..n].iter().filter(|m| m.kind == E820_RESERVED).count(),
            6
        );
        assert!(out[..n].iter().any(|m| m.addr == FOREIGN_WINDOW.start));
        assert!(out[..n].windows(2).all(|w| w[0].addr < w[1].addr));
    }

    #[test]
    fn identity_npt_maps_dom0_and_io_but_not_other_ram() {
        let map = q35();
        let plan = plan_memory(&map, &[IMAGE, BUNDLE], 128).unwrap();
        let classes = Classifier::new(&map, &plan);
        let mut mem = FakeMem::new();
        let npt = build_npt(&mut mem, &classes, 1 << 40).unwrap();
        let mapped = |gpa: u64| npt.translate(&mem, gpa).map(|(hpa, w)| (hpa == gpa, w));
        for gpa in [0x0, 0x9_E000, 0xB_8000, 0x10_0000, 0x100_0000, 0x80F_F000] {
            assert_eq!(mapped(gpa), Some((true, true)), "{gpa:#x} should be mapped");
        }
        // The partial RAM page under the EBDA, the APIC, PCI windows and high MMIO: I/O.
        for gpa in [
            0x9_F000,
            0xFEE0_0000,
            0xC000_0000,
            0x80_0000_0000,
            0xFF_FFFF_F000,
        ] {
            assert_eq!(mapped(gpa), Some((true, true)), "{gpa:#x} should be mapped");
        }
        // The microvisor, the bundle and the DomU pool: not mapped.
        for gpa in [
            0x20_0000,
            0x2F_2000,
            0x900_0000,
            0x7A00_0000,
            0x7FFD_E000,
            FOREIGN_WINDOW.start,
            FOREIGN_WINDOW.end - 1,
        ] {
            assert_eq!(mapped(gpa), None, "{gpa:#x} must not be mapped");
        }
        assert_eq!(mapped(1 << 40), None);
        assert_eq!(mapped(FOREIGN_WINDOW.end), Some((true, true)));
        // Filling a window slot allocates nothing: its tables exist already.
        let frames = mem.frames.len();
        npt.map_4k(
            &mut mem,
            FOREIGN_WINDOW.start + 0x5000,
            0x9000,
            crate::mm::npt::Access::ReadWriteExec,
            crate::mm::npt::Ownership::Foreign,
        )
        .unwrap();
        assert_eq!(mem.frames.len(), frames);
        // Large pages keep the table small.
        assert!(mem.frames.len() < 32, "{} table frames", mem.frames.len());
        assert_eq!(npt.destroy(&mut mem), 0);
        assert!(mem.frames.is_empty());
    }

    #[test]
    fn placement_and_load() {
        let map = q35();
        let plan = plan_memory(&map, &[IMAGE, BUNDLE], 128).unwrap();
        let kernel = crate::elf::tests::tiny_pvh_at(0x100_0000, 0x100_0000);
        let img = PvhImage::parse(&kernel).unwrap();
        let p = place(&plan, &img, Some(5000), "console=ttyS0").unwrap();
        let initrd = p.initrd.unwrap();
        assert_eq!(initrd.end, plan.ranges().last().unwrap().end - 8192 + 5000);
        assert!(plan.holds(Range::new(initrd.start, initrd.start + 8192)));
        assert_eq!(
            place(&plan, &img, Some(1 << 40), ""),
            Err(Dom0Error::InitrdTooLarge(1 << 40))
        );
        assert_eq!(
            place(&plan, &img, None, &"x".repeat(MAX_CMDLINE + 1)),
            Err(Dom0Error::CmdlineTooLong)
        );
        let low = crate::elf::tests::tiny_pvh_at(0x20_0000, 0x20_0000);
        assert!(matches!(
            place(&plan, &PvhImage::parse(&low).unwrap(), None, ""),
            Err(Dom0Error::SegmentOutsideRam {
                paddr: 0x20_0000,
                ..
            })
        ));

        // Load into fake frames at the identity addresses the loader writes.
        let mut mem = FakeMem::new();
        for pa in [
            START_INFO_GPA,
            CMDLINE_GPA,
            MEMMAP_GPA,
            0x100_0000,
            0x100_1000,
            initrd.start,
            initrd.start + 4096,
        ] {
            mem.frames.insert(pa, std::vec![0xEE; 4096]);
        }
        let mut mm = [HvmMemmapEntry::default(); MAX_MEMMAP];
        let n = memory_map(&map, &plan, &mut mm).unwrap();
        let data = std::vec![7u8; 5000];
        load(
            &mut mem,
            &img,
            Some((&data, initrd)),
            "console=ttyS0",
            &mm[..n],
            0xF_5A40,
        );
        let mut info = [0u8; 56];
        mem.read_bytes(START_INFO_GPA, &mut info);
        let info = <HvmStartInfo as zerocopy::FromBytes>::read_from_bytes(&info).unwrap();
        assert_eq!(info.magic, HVM_START_MAGIC);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.memmap_entries, n as u32);
        assert_eq!(info.rsdp_paddr, 0xF_5A40);
        let mut cmd = [0u8; 14];
        mem.read_bytes(CMDLINE_GPA, &mut cmd);
        assert_eq!(&cmd, b"console=ttyS0\0");
        let mut tail = [0u8; 4];
        mem.read_bytes(initrd.start + 4996, &mut tail);
        assert_eq!(tail, [7; 4]);
        mem.read_bytes(initrd.start + 5000, &mut tail);
        assert_eq!(tail, [0; 4], "the initramfs's last page is zero-padded");
    }
}
