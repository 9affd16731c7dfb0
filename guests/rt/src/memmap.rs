//! Helpers over the E820-style memory map of `hvm_start_info`.
//!
//! All arithmetic saturates: entries come from the domain builder and are not trusted to be
//! sane (an entry may claim to end beyond `u64::MAX`).

use shared_abi::pvh::{E820_RAM, E820_RESERVED, HvmMemmapEntry};

/// End (exclusive) of `entry`, saturating at `u64::MAX`.
pub fn entry_end(entry: &HvmMemmapEntry) -> u64 {
    entry.addr.saturating_add(entry.size)
}

/// The RAM entries of `map`, skipping empty ones.
pub fn ram_entries(map: &[HvmMemmapEntry]) -> impl Iterator<Item = &HvmMemmapEntry> {
    map.iter().filter(|e| e.kind == E820_RAM && e.size != 0)
}

/// End (exclusive) of the highest RAM entry, or 0 when there is none.
pub fn ram_end(map: &[HvmMemmapEntry]) -> u64 {
    ram_entries(map).map(entry_end).max().unwrap_or(0)
}

/// End of the highest entry of any type: where the domain's guest-physical memory ends
/// (RAM plus the reserved pages a builder puts at its top, such as the console page).
pub fn map_end(map: &[HvmMemmapEntry]) -> u64 {
    map.iter().map(entry_end).max().unwrap_or(0)
}

/// Total bytes of RAM (sum of RAM entries; overlaps are counted twice).
pub fn ram_size(map: &[HvmMemmapEntry]) -> u64 {
    ram_entries(map).fold(0u64, |acc, e| acc.saturating_add(e.size))
}

/// How many bytes starting at `paddr` lie in one RAM entry (0 if `paddr` is not RAM).
pub fn ram_bytes_from(map: &[HvmMemmapEntry], paddr: u64) -> u64 {
    ram_entries(map)
        .filter(|e| e.addr <= paddr && paddr < entry_end(e))
        .map(|e| entry_end(e) - paddr)
        .max()
        .unwrap_or(0)
}

/// Whether `[paddr, paddr + len)` lies inside a single RAM entry. An empty range is RAM
/// only if `paddr` itself is.
pub fn is_ram(map: &[HvmMemmapEntry], paddr: u64, len: u64) -> bool {
    let avail = ram_bytes_from(map, paddr);
    avail != 0 && len <= avail
}

/// A short name for an E820 type.
pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        E820_RAM => "ram",
        E820_RESERVED => "reserved",
        3 => "acpi",
        4 => "nvs",
        5 => "unusable",
        6 => "disabled",
        7 => "pmem",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(addr: u64, size: u64, kind: u32) -> HvmMemmapEntry {
        HvmMemmapEntry {
            addr,
            size,
            kind,
            reserved: 0,
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn map_end_counts_reserved_pages_above_ram() {
        let map = [e(0, 0xffe000, E820_RAM), e(0xffe000, 0x2000, E820_RESERVED)];
        assert_eq!(ram_end(&map), 0xffe000);
        assert_eq!(map_end(&map), 0x100_0000);
        assert_eq!(map_end(&[]), 0);
        assert_eq!(map_end(&[e(u64::MAX, 2, E820_RESERVED)]), u64::MAX);
    }

    #[test]
    fn single_ram_entry() {
        let map = [e(0, 64 * MIB, E820_RAM)];
        assert_eq!(ram_end(&map), 64 * MIB);
        assert_eq!(ram_size(&map), 64 * MIB);
        assert!(is_ram(&map, 0x1000, 56));
        assert!(is_ram(&map, 64 * MIB - 8, 8));
        assert!(!is_ram(&map, 64 * MIB - 8, 9));
        assert!(!is_ram(&map, 64 * MIB, 1));
        assert!(!is_ram(&map, 64 * MIB, 0));
    }

    #[test]
    fn qemu_like_map_with_holes() {
        let map = [
            e(0, 0x9fc00, E820_RAM),
            e(0x9fc00, 0x400, E820_RESERVED),
            e(0xf0000, 0x10000, E820_RESERVED),
            e(0x100000, 255 * MIB, E820_RAM),
            e(0xb000_0000, 256 * MIB, E820_RESERVED),
        ];
        assert_eq!(ram_end(&map), 256 * MIB);
        assert_eq!(ram_size(&map), 0x9fc00 + 255 * MIB);
        assert_eq!(ram_bytes_from(&map, 0x11c0), 0x9fc00 - 0x11c0);
        assert_eq!(ram_bytes_from(&map, 0xa0000), 0);
        assert!(!is_ram(&map, 0x9fc00 - 4, 8), "ranges may not span entries");
        assert!(!is_ram(&map, 0xb000_0000, 1));
    }

    #[test]
    fn empty_and_zero_sized_entries() {
        assert_eq!(ram_end(&[]), 0);
        assert_eq!(ram_size(&[]), 0);
        let map = [e(0x1000, 0, E820_RAM)];
        assert_eq!(ram_end(&map), 0);
        assert!(!is_ram(&map, 0x1000, 0));
    }

    #[test]
    fn hostile_entries_saturate() {
        let map = [e(u64::MAX - 10, 100, E820_RAM), e(0, u64::MAX, E820_RAM)];
        assert_eq!(ram_end(&map), u64::MAX);
        assert_eq!(ram_size(&map), u64::MAX);
        assert_eq!(ram_bytes_from(&map, u64::MAX - 1), 1);
    }

    #[test]
    fn names() {
        assert_eq!(kind_name(E820_RAM), "ram");
        assert_eq!(kind_name(2), "reserved");
        assert_eq!(kind_name(99), "unknown");
    }
}
