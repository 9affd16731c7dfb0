//! Building a PVH domain's memory: RAM, the kernel image and the boot-information page.
//!
//! Guest-physical layout of a DomU with `mem` bytes of RAM:
//!
//! ```text
//! 0x0000_0000  RAM start (page 0 left zero)
//! 0x0000_1000  boot-information page: hvm_start_info, memmap, cmdline   (BOOT_INFO_GPA)
//! 0x0000_2000  free RAM
//! p_paddr      kernel segments (typically 1 MiB), checked to lie inside RAM
//! mem          end of RAM; nothing is mapped above it
//! ```
//!
//! Portable: works on any [`PhysMemory`], so the whole build is tested on the host.

use crate::elf::PvhImage;
use crate::mm::PhysMemory;
use crate::mm::npt::{Access, MapError, Npt, Ownership, copy};
use shared_abi::pvh::{E820_RAM, HVM_START_MAGIC, HvmMemmapEntry, HvmModlistEntry, HvmStartInfo};
use zerocopy::IntoBytes;

/// Guest-physical address of the boot-information page (`EBX` at entry).
pub const BOOT_INFO_GPA: u64 = 0x1000;
const MEMMAP_OFFSET: u64 = 0x40;
/// Offset of the module list (one [`HvmModlistEntry`]) in the boot page.
pub const MODLIST_OFFSET: u64 = 0x80;
const CMDLINE_OFFSET: u64 = 0x100;
/// Longest kernel command line (without the NUL).
pub const MAX_CMDLINE: usize = 0xEFF;
/// Smallest DomU.
pub const MIN_MEM_MIB: u32 = shared_abi::control::MIN_DOMAIN_MEM_MIB;
/// Largest DomU (bounded by the guest-physical space below the 4 GiB MMIO hole).
pub const MAX_MEM_MIB: u32 = shared_abi::control::MAX_DOMAIN_MEM_MIB;

/// Why a domain could not be built. Nothing is left allocated after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// Memory size outside [`MIN_MEM_MIB`]..=[`MAX_MEM_MIB`].
    BadMemorySize(u32),
    /// A kernel segment does not fit in RAM or overlaps the boot-information page.
    SegmentOutsideRam {
        /// The segment's load address.
        paddr: u64,
        /// Its size in memory.
        size: u64,
    },
    /// The entry point is not inside a loaded segment.
    EntryOutsideImage(u32),
    /// The command line is too long.
    CmdlineTooLong,
    /// Not enough free memory.
    OutOfMemory,
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::BadMemorySize(m) => {
                write!(
                    f,
                    "memory {m} MiB is outside {MIN_MEM_MIB}..={MAX_MEM_MIB} MiB"
                )
            }
            BuildError::SegmentOutsideRam { paddr, size } => write!(
                f,
                "segment at {paddr:#x} (+{size:#x}) lies outside RAM or over the boot page"
            ),
            BuildError::EntryOutsideImage(e) => write!(f, "entry {e:#x} is not in a segment"),
            BuildError::CmdlineTooLong => write!(f, "command line longer than {MAX_CMDLINE}"),
            BuildError::OutOfMemory => write!(f, "not enough free memory"),
        }
    }
}

/// Checks that `image` fits a domain of `mem_mib` MiB before anything is allocated.
pub fn check(image: &PvhImage<'_>, mem_mib: u32, cmdline: &str) -> Result<u64, BuildError> {
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mem_mib) {
        return Err(BuildError::BadMemorySize(mem_mib));
    }
    if cmdline.len() > MAX_CMDLINE {
        return Err(BuildError::CmdlineTooLong);
    }
    let mem = u64::from(mem_mib) << 20;
    let mut entry_ok = false;
    for s in image.segments() {
        let end = s.paddr + s.mem_size; // no overflow: checked by the ELF parser
        let overlaps_boot = s.paddr < BOOT_INFO_GPA + 0x1000 && end > BOOT_INFO_GPA;
        if end > mem || overlaps_boot || s.paddr < BOOT_INFO_GPA {
            return Err(BuildError::SegmentOutsideRam {
                paddr: s.paddr,
                size: s.mem_size,
            });
        }
        entry_ok |= (s.paddr..end).contains(&u64::from(image.entry));
    }
    if !entry_ok {
        return Err(BuildError::EntryOutsideImage(image.entry));
    }
    Ok(mem)
}

/// The boot-information page: `hvm_start_info`, a one-entry memory map, the command line,
/// and, with `module` = `(paddr, size)`, a one-entry module list (a ramdisk).
pub fn boot_info_page(mem: u64, cmdline: &str, module: Option<(u64, u64)>) -> [u8; 4096] {
    let mut page = [0u8; 4096];
    let info = HvmStartInfo {
        magic: HVM_START_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: if module.is_some() {
            BOOT_INFO_GPA + MODLIST_OFFSET
        } else {
            0
        },
        cmdline_paddr: if cmdline.is_empty() {
            0
        } else {
            BOOT_INFO_GPA + CMDLINE_OFFSET
        },
        rsdp_paddr: 0,
        memmap_paddr: BOOT_INFO_GPA + MEMMAP_OFFSET,
        memmap_entries: 1,
        reserved: 0,
    };
    page[..56].copy_from_slice(info.as_bytes());
    let ram = HvmMemmapEntry {
        addr: 0,
        size: mem,
        kind: E820_RAM,
        reserved: 0,
    };
    let m = MEMMAP_OFFSET as usize;
    page[m..m + 24].copy_from_slice(ram.as_bytes());
    if let Some((paddr, size)) = module {
        let entry = HvmModlistEntry {
            paddr,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        };
        let o = MODLIST_OFFSET as usize;
        page[o..o + 32].copy_from_slice(entry.as_bytes());
    }
    let c = CMDLINE_OFFSET as usize;
    page[c..c + cmdline.len()].copy_from_slice(cmdline.as_bytes());
    page
}

/// Makes a domain's memory: zeroed RAM at guest-physical `0..mem_mib` MiB, nothing loaded
/// (Dom0's builder fills it through the foreign window). Frees everything on failure.
pub fn build_empty(mem_phys: &mut impl PhysMemory, mem_mib: u32) -> Result<Npt, BuildError> {
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mem_mib) {
        return Err(BuildError::BadMemorySize(mem_mib));
    }
    let mem = u64::from(mem_mib) << 20;
    let npt = Npt::new(mem_phys).map_err(|_| BuildError::OutOfMemory)?;
    let populated = (0..mem).step_by(0x1000).try_for_each(|gpa| {
        let frame = mem_phys.alloc_zeroed_frame().ok_or(MapError::OutOfMemory)?;
        npt.map_4k(
            mem_phys,
            gpa,
            frame,
            Access::ReadWriteExec,
            Ownership::Owned,
        )
        .inspect_err(|_| {
            mem_phys.free_frame(frame);
        })
    });
    if populated.is_err() {
        npt.destroy(mem_phys);
        return Err(BuildError::OutOfMemory);
    }
    Ok(npt)
}

/// Allocates and maps `mem` bytes of zeroed RAM at guest-physical 0, loads the kernel
/// segments and writes the boot page. On failure everything allocated is freed again.
pub fn build(
    mem_phys: &mut impl PhysMemory,
    image: &PvhImage<'_>,
    mem_mib: u32,
    cmdline: &str,
) -> Result<Npt, BuildError> {
    let mem = check(image, mem_mib, cmdline)?;
    let npt = build_empty(mem_phys, mem_mib)?;
    // Segments and the boot page were checked against RAM, which is now fully mapped.
    let mut result = Ok(());
    for s in image.segments() {
        result = result.and(copy::to_gpa(&npt, mem_phys, s.paddr, s.data));
    }
    result = result.and(copy::to_gpa(
        &npt,
        mem_phys,
        BOOT_INFO_GPA,
        &boot_info_page(mem, cmdline, None),
    ));
    if result.is_err() {
        npt.destroy(mem_phys);
        return Err(BuildError::OutOfMemory);
    }
    Ok(npt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::tiny_pvh;
    use crate::mm::fake::FakeMem;

    #[test]
    fn builds_and_tears_down_without_leaks() {
        let f = tiny_pvh(0x10_0000);
        let img = PvhImage::parse(&f).unwrap();
        let mut mem = FakeMem::new();
        let npt = build(&mut mem, &img, 2, "attack=npf").unwrap();
        let mut buf = [0u8; 16];
        copy::from_gpa(&npt, &mem, 0x10_0000, &mut buf).unwrap();
        assert_eq!(buf, [0xAA; 16]);
        let mut info = [0u8; 56];
        copy::from_gpa(&npt, &mem, BOOT_INFO_GPA, &mut info).unwrap();
        assert_eq!(&info[..4], &HVM_START_MAGIC.to_le_bytes());
        let mut cmd = [0u8; 11];
        copy::from_gpa(&npt, &mem, BOOT_INFO_GPA + CMDLINE_OFFSET, &mut cmd).unwrap();
        assert_eq!(&cmd, b"attack=npf\0");
        assert!(copy::from_gpa(&npt, &mem, 2 << 20, &mut buf).is_err());
        assert!(copy::from_gpa(&npt, &mem, (2 << 20) - 8, &mut buf).is_err());
        assert_eq!(npt.destroy(&mut mem), 512);
        assert!(mem.frames.is_empty());
    }

    #[test]
    fn refuses_and_frees_on_failure() {
        let f = tiny_pvh(0x10_0000);
        let img = PvhImage::parse(&f).unwrap();
        let mut mem = FakeMem::new();
        assert_eq!(
            build(&mut mem, &img, 1, "").unwrap_err(),
            BuildError::BadMemorySize(1)
        );
        mem.limit = Some(100);
        assert_eq!(
            build(&mut mem, &img, 2, "").unwrap_err(),
            BuildError::OutOfMemory
        );
        assert!(mem.frames.is_empty(), "leaked after a failed build");
        let f = tiny_pvh(0x90_0000);
        let img = PvhImage::parse(&f).unwrap();
        assert_eq!(
            check(&img, 2, "").unwrap_err(),
            BuildError::EntryOutsideImage(0x90_0000)
        );
    }
}
