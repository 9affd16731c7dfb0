//! The disk pattern pvdemo writes, shared with xtask (which includes this file with
//! `#[path]` to compute the expected digest of the image): keep it dependency-free and
//! `no_std`-compatible.
//!
//! Sector `i` (512 bytes) holds 64 little-endian words; word `j` is
//! `mix(i * 64 + j)`, where `mix` is the SplitMix64 finaliser. So every sector differs,
//! and a sector written at the wrong place, a stale or a zero sector are all caught.

/// Bytes of the pattern pvdemo writes from sector 0.
pub(crate) const PATTERN_BYTES: u64 = 64 << 20;

/// Bytes of one sector.
pub(crate) const SECTOR: usize = 512;

/// SplitMix64's finaliser: a cheap bijective mix of a 64-bit value.
pub(crate) const fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `out` (the first 512 bytes are used) with the content of sector `index`.
pub(crate) fn fill_sector(index: u64, out: &mut [u8]) {
    for (j, word) in out.chunks_exact_mut(8).take(SECTOR / 8).enumerate() {
        word.copy_from_slice(&mix(index.wrapping_mul(64).wrapping_add(j as u64)).to_le_bytes());
    }
}

/// Whether `data` (the first 512 bytes) is the content of sector `index`.
pub(crate) fn sector_matches(index: u64, data: &[u8]) -> bool {
    data.len() >= SECTOR
        && data
            .chunks_exact(8)
            .take(SECTOR / 8)
            .enumerate()
            .all(|(j, w)| w == mix(index.wrapping_mul(64).wrapping_add(j as u64)).to_le_bytes())
}
