//! Translating guest linear addresses (hypercall pointer arguments) to guest-physical ones
//! by walking the guest's own page tables, as Xen does for HVM/PVH guests.
//!
//! Supported modes: paging off (linear = physical, 32 bits) and 4-level long-mode paging.
//! Other modes (32-bit paging, PAE without long mode, 5-level) yield a fault: hypercalls
//! from them are not supported.

/// CR0.PG.
pub const CR0_PG: u64 = 1 << 31;
/// CR0.WP.
pub const CR0_WP: u64 = 1 << 16;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57.
pub const CR4_LA57: u64 = 1 << 12;
/// EFER.LMA.
pub const EFER_LMA: u64 = 1 << 10;

/// The guest's paging registers at the time of the call.
#[derive(Clone, Copy, Debug, Default)]
pub struct PagingMode {
    /// Guest CR0.
    pub cr0: u64,
    /// Guest CR3.
    pub cr3: u64,
    /// Guest CR4.
    pub cr4: u64,
    /// Guest EFER.
    pub efer: u64,
}

/// The translation failed: the guest gets `EFAULT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkFault;

const P: u64 = 1;
const W: u64 = 2;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

/// Translates `la` for a supervisor access. `read_gpa_u64` reads a guest-physical u64 (a
/// page-table entry) and returns `None` when that address is not the guest's memory.
pub fn linear_to_gpa(
    mode: &PagingMode,
    la: u64,
    write: bool,
    read_gpa_u64: impl Fn(u64) -> Option<u64>,
) -> Result<u64, WalkFault> {
    if mode.cr0 & CR0_PG == 0 {
        return u32::try_from(la).map(u64::from).map_err(|_| WalkFault);
    }
    if mode.efer & EFER_LMA == 0 || mode.cr4 & CR4_PAE == 0 || mode.cr4 & CR4_LA57 != 0 {
        return Err(WalkFault);
    }
    // Canonical: bits 63..47 all equal.
    let top = la >> 47;
    if top != 0 && top != 0x1_FFFF {
        return Err(WalkFault);
    }
    let check_write = write && mode.cr0 & CR0_WP != 0;
    let mut table = mode.cr3 & ADDR;
    for level in (0..4u32).rev() {
        let index = (la >> (12 + 9 * level)) & 0x1FF;
        let entry = read_gpa_u64(table + index * 8).ok_or(WalkFault)?;
        if entry & P == 0 || (check_write && entry & W == 0) {
            return Err(WalkFault);
        }
        let page_bits = 12 + 9 * level;
        if level == 0 || (entry & PS != 0 && level <= 2) {
            let base = entry & ADDR & !((1u64 << page_bits) - 1);
            return Ok(base | (la & ((1u64 << page_bits) - 1)));
        }
        table = entry & ADDR;
    }
    Err(WalkFault)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn long_mode(cr3: u64) -> PagingMode {
        PagingMode {
            cr0: CR0_PG | CR0_WP | 1,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
        }
    }

    /// PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000: 2 MiB page at 0x40_0000 (read-only)
    /// for la 0, and a PT at 0x4000 for la 0x20_0000 mapping 4 KiB to 0x9000.
    fn tables() -> BTreeMap<u64, u64> {
        let mut m = BTreeMap::new();
        m.insert(0x1000, 0x2000 | P | W);
        m.insert(0x2000, 0x3000 | P | W);
        m.insert(0x3000, 0x40_0000 | P | PS);
        m.insert(0x3008, 0x4000 | P | W);
        m.insert(0x4000, 0x9000 | P | W);
        m
    }

    #[test]
    fn walks_long_mode_tables() {
        let m = tables();
        let read = |gpa: u64| Some(*m.get(&gpa).unwrap_or(&0));
        let mode = long_mode(0x1000);
        assert_eq!(linear_to_gpa(&mode, 0x1234, false, read), Ok(0x40_1234));
        assert_eq!(linear_to_gpa(&mode, 0x20_0010, true, read), Ok(0x9010));
        // Read-only large page refuses writes (CR0.WP set).
        assert_eq!(linear_to_gpa(&mode, 0x1234, true, read), Err(WalkFault));
        // Unmapped and non-canonical addresses.
        assert_eq!(
            linear_to_gpa(&mode, 0x4000_0000, false, read),
            Err(WalkFault)
        );
        assert_eq!(
            linear_to_gpa(&mode, 0x0000_8000_0000_0000, false, read),
            Err(WalkFault)
        );
        // Tables outside guest memory.
        assert_eq!(
            linear_to_gpa(&mode, 0x1234, false, |_| None),
            Err(WalkFault)
        );
    }

    #[test]
    fn paging_off_is_identity_within_4g() {
        let mode = PagingMode::default();
        assert_eq!(linear_to_gpa(&mode, 0x1234, true, |_| None), Ok(0x1234));
        assert_eq!(
            linear_to_gpa(&mode, 1 << 32, true, |_| None),
            Err(WalkFault)
        );
    }
}
