//! PVH boot: the ELF note and `hvm_start_info` (`xen/include/public/elfnote.h`,
//! `arch-x86/hvm/start_info.h`).
//!
//! A PVH kernel is an ELF file whose `PT_NOTE` segment holds a note with owner `"Xen"`, type
//! [`XEN_ELFNOTE_PHYS32_ENTRY`] and an 8-byte descriptor holding the 32-bit physical entry
//! address. The entry state is:
//!
//! - 32-bit protected mode, paging off, interrupts off (`RFLAGS = 0x2`);
//! - `CS` a flat 32-bit code segment, `DS`/`ES`/`SS`/`FS`/`GS` flat 32-bit data segments,
//!   `TR` a 32-bit busy TSS with base 0 and limit 0x67; selector values are unspecified,
//!   so the guest loads its own GDT before touching segment registers;
//! - `CR0 = PE | ET`, `CR4 = 0`, `EFER = 0`;
//! - `EBX` = guest-physical address of an [`HvmStartInfo`], all other GPRs 0.
//!
//! The memory map lists the domain's RAM as type [`E820_RAM`]; everything else in the
//! guest-physical space is unbacked and faults (the domain is crashed) when touched.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// ELF note type of the 32-bit physical entry point (owner `"Xen"`).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// `hvm_start_info.magic`.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// E820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// `struct hvm_start_info` (version 1), placed by the domain builder.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HvmStartInfo {
    /// [`HVM_START_MAGIC`].
    pub magic: u32,
    /// Structure version (1).
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Number of [`HvmModlistEntry`] at `modlist_paddr`.
    pub nr_modules: u32,
    /// Guest-physical address of the module list.
    pub modlist_paddr: u64,
    /// Guest-physical address of the NUL-terminated command line, or 0.
    pub cmdline_paddr: u64,
    /// Guest-physical address of the ACPI RSDP, or 0 (DomUs have no ACPI).
    pub rsdp_paddr: u64,
    /// Guest-physical address of the memory map (version 1).
    pub memmap_paddr: u64,
    /// Number of [`HvmMemmapEntry`] at `memmap_paddr`.
    pub memmap_entries: u32,
    /// Reserved, 0.
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<HvmStartInfo>() == 56);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, modlist_paddr) == 16);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, cmdline_paddr) == 24);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, rsdp_paddr) == 32);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, memmap_paddr) == 40);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, memmap_entries) == 48);

/// `struct hvm_modlist_entry`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HvmModlistEntry {
    /// Guest-physical address of the module.
    pub paddr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Guest-physical address of the module's command line, or 0.
    pub cmdline_paddr: u64,
    /// Reserved, 0.
    pub reserved: u64,
}
const _: () = assert!(core::mem::size_of::<HvmModlistEntry>() == 32);

/// `struct hvm_memmap_table_entry` (E820 style).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HvmMemmapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`], [`E820_RESERVED`], ...
    pub kind: u32,
    /// Reserved, 0.
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<HvmMemmapEntry>() == 24);
