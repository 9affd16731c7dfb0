//! Nested page tables: a domain's guest-physical to machine-physical map (its p2m).
//!
//! Four-level tables in the long-mode format (QEMU walks NPT in the host's paging mode,
//! PLATFORM-FACTS 1.5). Every entry has U=1 at every level: nested walks are user accesses.
//! Only 4 KiB leaves are created; [`Npt::translate`] also understands large leaves.

use super::PhysMemory;
use super::frames::FRAME_SIZE;

/// Present.
pub const PTE_P: u64 = 1 << 0;
/// Writable.
pub const PTE_W: u64 = 1 << 1;
/// User (required at every level of an NPT).
pub const PTE_U: u64 = 1 << 2;
/// Large page (in a PDPT or PD entry).
pub const PTE_PS: u64 = 1 << 7;
/// No execute.
pub const PTE_NX: u64 = 1 << 63;
/// Physical address bits of an entry (QEMU's phys-bits is 40; allow the architectural 52).
pub const PTE_ADDR: u64 = 0x000F_FFFF_FFFF_F000;

/// Software bit: the leaf's frame belongs to the domain and is freed with it.
pub const PTE_OWNED: u64 = 1 << 9;

/// Flags of an intermediate entry: leaves decide the real permissions.
const TABLE_FLAGS: u64 = PTE_P | PTE_W | PTE_U;

/// Highest guest-physical address (exclusive) an NPT may map: 2^48 (four levels).
pub const GPA_LIMIT: u64 = 1 << 48;

/// Permissions of a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read and execute.
    ReadExec,
    /// Read, write and execute (ordinary guest RAM).
    ReadWriteExec,
}

impl Access {
    fn bits(self) -> u64 {
        match self {
            Access::ReadExec => PTE_P | PTE_U,
            Access::ReadWriteExec => PTE_P | PTE_W | PTE_U,
        }
    }
}

/// Whether a leaf's frame belongs to the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The domain's own memory: freed when the table is destroyed.
    Owned,
    /// Someone else's frame mapped in (a grant, a shared page): never freed here.
    Foreign,
}

/// Why a mapping failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// An address is not 4 KiB aligned or the GPA is beyond [`GPA_LIMIT`].
    BadAddress,
    /// The GPA is already mapped.
    AlreadyMapped,
    /// No frame for a table.
    OutOfMemory,
}

/// Proof that a mapping was removed or weakened: the caller must flush the domain's
/// nested TLB (TLB_CONTROL or a new ASID) before relying on the change.
#[must_use = "an NPT change needs a nested TLB flush before it takes effect"]
#[derive(Debug)]
pub struct NptFlush(());

impl NptFlush {
    /// The flush has been arranged (e.g. TLB_CONTROL set on every VMCB of the domain).
    pub fn flushed(self) {}
}

/// A domain's nested page table, identified by its root (PML4) frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Npt {
    root: u64,
}

fn index(gpa: u64, level: u32) -> u64 {
    (gpa >> (12 + 9 * level)) & 0x1FF
}

impl Npt {
    /// Allocates an empty table.
    pub fn new(mem: &mut impl PhysMemory) -> Result<Self, MapError> {
        let root = mem.alloc_zeroed_frame().ok_or(MapError::OutOfMemory)?;
        Ok(Self { root })
    }

    /// The table whose root frame is `root` (a value [`Npt::root`] returned).
    pub fn from_root(root: u64) -> Self {
        Self { root }
    }

    /// The root's physical address (for `nested_cr3`).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Maps one 4 KiB page `gpa -> hpa`.
    pub fn map_4k(
        &self,
        mem: &mut impl PhysMemory,
        gpa: u64,
        hpa: u64,
        access: Access,
        owner: Ownership,
    ) -> Result<(), MapError> {
        if !gpa.is_multiple_of(FRAME_SIZE)
            || !hpa.is_multiple_of(FRAME_SIZE)
            || gpa >= GPA_LIMIT
            || hpa & !PTE_ADDR != 0
        {
            return Err(MapError::BadAddress);
        }
        let slot = self.leaf_slot_for_map(mem, gpa, 0)?;
        if mem.read_u64(slot) & PTE_P != 0 {
            return Err(MapError::AlreadyMapped);
        }
        let owned = if owner == Ownership::Owned {
            PTE_OWNED
        } else {
            0
        };
        mem.write_u64(slot, hpa | access.bits() | owned);
        Ok(())
    }

    /// Maps one large page `gpa -> hpa` of `2 MiB << (9 * (level - 1))` bytes (level 1:
    /// 2 MiB, level 2: 1 GiB) with [`Ownership::Foreign`]: large leaves describe memory
    /// the table never frees (domain 0's identity map).
    pub fn map_large(
        &self,
        mem: &mut impl PhysMemory,
        gpa: u64,
        hpa: u64,
        level: u32,
        access: Access,
    ) -> Result<(), MapError> {
        if !(1..=2).contains(&level) {
            return Err(MapError::BadAddress);
        }
        let size = 1u64 << (12 + 9 * level);
        if !gpa.is_multiple_of(size)
            || !hpa.is_multiple_of(size)
            || gpa >= GPA_LIMIT
            || hpa & !PTE_ADDR != 0
        {
            return Err(MapError::BadAddress);
        }
        let slot = self.leaf_slot_for_map(mem, gpa, level)?;
        if mem.read_u64(slot) & PTE_P != 0 {
            return Err(MapError::AlreadyMapped);
        }
        mem.write_u64(slot, hpa | access.bits() | PTE_PS);
        Ok(())
    }

    /// Creates the tables that 4 KiB mappings in `[start, end)` will need, without mapping
    /// anything, so that later mappings there allocate no memory.
    pub fn prepare_tables(
        &self,
        mem: &mut impl PhysMemory,
        start: u64,
        end: u64,
    ) -> Result<(), MapError> {
        let mut at = start & !0x1F_FFFF;
        while at < end {
            self.leaf_slot_for_map(mem, at, 0)?;
            at += 0x20_0000;
        }
        Ok(())
    }

    /// The address of the entry for `gpa` at `level` (0: 4 KiB leaf), creating the tables
    /// above it. Fails if a large page already covers `gpa`.
    fn leaf_slot_for_map(
        &self,
        mem: &mut impl PhysMemory,
        gpa: u64,
        level: u32,
    ) -> Result<u64, MapError> {
        let mut table = self.root;
        for l in (level + 1..4).rev() {
            let slot = table + index(gpa, l) * 8;
            let entry = mem.read_u64(slot);
            table = if entry & PTE_P == 0 {
                let next = mem.alloc_zeroed_frame().ok_or(MapError::OutOfMemory)?;
                mem.write_u64(slot, next | TABLE_FLAGS);
                next
            } else if entry & PTE_PS != 0 {
                return Err(MapError::AlreadyMapped);
            } else {
                entry & PTE_ADDR
            };
        }
        Ok(table + index(gpa, level) * 8)
    }

    /// Removes the 4 KiB mapping of `gpa`, returning the frame it mapped.
    pub fn unmap_4k(&self, mem: &mut impl PhysMemory, gpa: u64) -> Option<(u64, NptFlush)> {
        let slot = self.leaf_slot(mem, gpa)?;
        let entry = mem.read_u64(slot);
        mem.write_u64(slot, 0);
        Some((entry & PTE_ADDR, NptFlush(())))
    }

    /// The machine address of the 4 KiB frame that `gpa` lies in if it is the domain's own
    /// writable RAM: a present, writable leaf of 4 KiB marked [`Ownership::Owned`] (not a
    /// large or foreign mapping). Intermediate entries are always writable.
    pub fn ram_page(&self, mem: &impl PhysMemory, gpa: u64) -> Option<u64> {
        let entry = mem.read_u64(self.leaf_slot(mem, gpa)?);
        let need = PTE_P | PTE_W | PTE_OWNED;
        (entry & need == need).then_some(entry & PTE_ADDR)
    }

    fn leaf_slot(&self, mem: &impl PhysMemory, gpa: u64) -> Option<u64> {
        if gpa >= GPA_LIMIT {
            return None;
        }
        let mut table = self.root;
        for level in (1..4).rev() {
            let entry = mem.read_u64(table + index(gpa, level) * 8);
            if entry & PTE_P == 0 || entry & PTE_PS != 0 {
                return None;
            }
            table = entry & PTE_ADDR;
        }
        let slot = table + index(gpa, 0) * 8;
        (mem.read_u64(slot) & PTE_P != 0).then_some(slot)
    }

    /// Translates `gpa` to a machine-physical address and whether it is writable.
    pub fn translate(&self, mem: &impl PhysMemory, gpa: u64) -> Option<(u64, bool)> {
        if gpa >= GPA_LIMIT {
            return None;
        }
        let mut table = self.root;
        let mut writable = true;
        for level in (0..4).rev() {
            let entry = mem.read_u64(table + index(gpa, level) * 8);
            if entry & PTE_P == 0 {
                return None;
            }
            writable &= entry & PTE_W != 0;
            let page_bits = 12 + 9 * level;
            if level == 0 || (entry & PTE_PS != 0 && level <= 2) {
                let base = entry & PTE_ADDR & !((1u64 << page_bits) - 1);
                return Some((base | (gpa & ((1u64 << page_bits) - 1)), writable));
            }
            table = entry & PTE_ADDR;
        }
        None
    }

    /// Tears the table down: frees every frame the domain owns (leaves mapped with
    /// [`Ownership::Owned`]) and every table frame including the root. Returns how many
    /// owned frames were freed. Foreign leaves (grants, shared frames) are left alone.
    pub fn destroy(self, mem: &mut impl PhysMemory) -> u64 {
        fn walk(mem: &mut impl PhysMemory, table: u64, level: u32) -> u64 {
            let mut freed = 0;
            for i in 0..512 {
                let entry = mem.read_u64(table + i * 8);
                if entry & PTE_P == 0 {
                    continue;
                }
                if level == 0 || entry & PTE_PS != 0 {
                    // Large leaves are never owned (see `map_large`).
                    if level == 0 && entry & PTE_OWNED != 0 {
                        mem.free_frame(entry & PTE_ADDR);
                        freed += 1;
                    }
                } else {
                    freed += walk(mem, entry & PTE_ADDR, level - 1);
                    mem.free_frame(entry & PTE_ADDR);
                }
            }
            freed
        }
        let freed = walk(mem, self.root, 3);
        mem.free_frame(self.root);
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::fake::FakeMem;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn large_pages_translate_and_are_never_freed() {
        let mut mem = FakeMem::new();
        let npt = Npt::new(&mut mem).unwrap();
        npt.map_large(&mut mem, 0x4000_0000, 0x4000_0000, 2, Access::ReadWriteExec)
            .unwrap();
        npt.map_large(&mut mem, 0x20_0000, 0x20_0000, 1, Access::ReadExec)
            .unwrap();
        assert_eq!(npt.translate(&mem, 0x4012_3456), Some((0x4012_3456, true)));
        assert_eq!(npt.translate(&mem, 0x2F_F000), Some((0x2F_F000, false)));
        assert_eq!(npt.translate(&mem, 0x40_0000), None);
        // Overlaps, misalignment and bad levels are refused.
        assert_eq!(
            npt.map_4k(&mut mem, 0x20_1000, 0, Access::ReadExec, Ownership::Owned),
            Err(MapError::AlreadyMapped)
        );
        assert_eq!(
            npt.map_large(&mut mem, 0x4020_0000, 0, 1, Access::ReadExec),
            Err(MapError::AlreadyMapped)
        );
        assert_eq!(
            npt.map_large(&mut mem, 0x1000, 0x1000, 1, Access::ReadExec),
            Err(MapError::BadAddress)
        );
        assert_eq!(
            npt.map_large(&mut mem, 0, 0, 3, Access::ReadExec),
            Err(MapError::BadAddress)
        );
        let tables = mem.frames.len() as u64;
        assert_eq!(npt.destroy(&mut mem), 0);
        assert_eq!(mem.freed.len() as u64, tables);
        assert!(mem.frames.is_empty());
    }

    #[test]
    fn maps_translates_unmaps() {
        let mut mem = FakeMem::new();
        let npt = Npt::new(&mut mem).unwrap();
        npt.map_4k(
            &mut mem,
            0x20_0000,
            0x5000_0000,
            Access::ReadWriteExec,
            Ownership::Owned,
        )
        .unwrap();
        npt.map_4k(
            &mut mem,
            0x20_1000,
            0x6000_0000,
            Access::ReadExec,
            Ownership::Foreign,
        )
        .unwrap();
        assert_eq!(npt.translate(&mem, 0x20_0123), Some((0x5000_0123, true)));
        assert_eq!(npt.translate(&mem, 0x20_1008), Some((0x6000_0008, false)));
        assert_eq!(npt.translate(&mem, 0x20_2000), None);
        assert_eq!(
            npt.map_4k(
                &mut mem,
                0x20_0000,
                0x7000_0000,
                Access::ReadExec,
                Ownership::Owned
            ),
            Err(MapError::AlreadyMapped)
        );
        assert_eq!(
            npt.map_4k(&mut mem, 0x20_0001, 0, Access::ReadExec, Ownership::Owned),
            Err(MapError::BadAddress)
        );
        assert_eq!(
            npt.map_4k(&mut mem, GPA_LIMIT, 0, Access::ReadExec, Ownership::Owned),
            Err(MapError::BadAddress)
        );
        let (hpa, flush) = npt.unmap_4k(&mut mem, 0x20_0000).unwrap();
        flush.flushed();
        assert_eq!(hpa, 0x5000_0000);
        assert_eq!(npt.translate(&mem, 0x20_0000), None);
        assert!(npt.unmap_4k(&mut mem, 0x20_0000).is_none());
    }

    #[test]
    fn every_level_has_user_bit() {
        let mut mem = FakeMem::new();
        let npt = Npt::new(&mut mem).unwrap();
        npt.map_4k(
            &mut mem,
            0x1234_5000,
            0x9000,
            Access::ReadExec,
            Ownership::Owned,
        )
        .unwrap();
        let mut table = npt.root();
        for level in (0..4).rev() {
            let e = mem.read_u64(table + index(0x1234_5000, level) * 8);
            assert_ne!(e & PTE_U, 0, "level {level}");
            table = e & PTE_ADDR;
        }
    }

    #[test]
    fn out_of_memory_is_an_error() {
        let mut mem = FakeMem::new();
        mem.limit = Some(2);
        let npt = Npt::new(&mut mem).unwrap();
        assert_eq!(
            npt.map_4k(&mut mem, 0, 0x1000, Access::ReadExec, Ownership::Owned),
            Err(MapError::OutOfMemory)
        );
    }

    proptest! {
        #[test]
        fn agrees_with_a_map_and_frees_everything(
            ops in proptest::collection::vec((any::<bool>(), 0u64..64, 0u64..1024), 1..100)
        ) {
            let mut mem = FakeMem::new();
            let npt = Npt::new(&mut mem).unwrap();
            let mut model = BTreeMap::new();
            // Owned leaves point at frames the fake allocator handed out.
            for (map, page, spread) in ops {
                let gpa = page * 0x1000 + (spread << 21);
                if map {
                    let frame = mem.alloc_zeroed_frame().unwrap();
                    let r = npt.map_4k(&mut mem, gpa, frame, Access::ReadWriteExec, Ownership::Owned);
                    match model.entry(gpa) {
                        std::collections::btree_map::Entry::Occupied(_) => {
                            prop_assert_eq!(r, Err(MapError::AlreadyMapped));
                            mem.free_frame(frame);
                        }
                        std::collections::btree_map::Entry::Vacant(slot) => {
                            prop_assert_eq!(r, Ok(()));
                            slot.insert(frame);
                        }
                    }
                } else {
                    let got = npt.unmap_4k(&mut mem, gpa).map(|(hpa, f)| { f.flushed(); hpa });
                    if let Some(hpa) = got { mem.free_frame(hpa); }
                    prop_assert_eq!(got, model.remove(&gpa));
                }
            }
            for (gpa, hpa) in &model {
                prop_assert_eq!(npt.translate(&mem, *gpa), Some((*hpa, true)));
            }
            let freed = npt.destroy(&mut mem);
            prop_assert_eq!(freed, model.len() as u64);
            prop_assert!(mem.frames.is_empty(), "leaked {} frames", mem.frames.len());
        }
    }
}

/// Copies between a domain's guest-physical memory and a buffer, page by page, through
/// its NPT. Fails (copying nothing further) at the first page that is not mapped, or not
/// writable for a write.
pub mod copy {
    use super::{Npt, PhysMemory};

    /// The guest-physical range is not (writable) guest memory.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct NotMapped(pub u64);

    fn chunks(gpa: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let mut done = 0usize;
        core::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let at = gpa.wrapping_add(done as u64);
            let n = ((0x1000 - (at & 0xFFF)) as usize).min(len - done);
            let item = (at, done, n);
            done += n;
            Some(item)
        })
    }

    /// Reads `buf.len()` bytes at `gpa`.
    pub fn from_gpa(
        npt: &Npt,
        mem: &impl PhysMemory,
        gpa: u64,
        buf: &mut [u8],
    ) -> Result<(), NotMapped> {
        gpa.checked_add(buf.len() as u64).ok_or(NotMapped(gpa))?;
        for (at, off, n) in chunks(gpa, buf.len()) {
            let (hpa, _) = npt.translate(mem, at).ok_or(NotMapped(at))?;
            mem.read_bytes(hpa, &mut buf[off..off + n]);
        }
        Ok(())
    }

    /// Writes `buf` at `gpa`.
    pub fn to_gpa(
        npt: &Npt,
        mem: &mut impl PhysMemory,
        gpa: u64,
        buf: &[u8],
    ) -> Result<(), NotMapped> {
        gpa.checked_add(buf.len() as u64).ok_or(NotMapped(gpa))?;
        for (at, off, n) in chunks(gpa, buf.len()) {
            match npt.translate(mem, at) {
                Some((hpa, true)) => mem.write_bytes(hpa, &buf[off..off + n]),
                _ => return Err(NotMapped(at)),
            }
        }
        Ok(())
    }
}
