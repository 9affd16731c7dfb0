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

/// Bytes pvdemo's TCP source (port 19) sends per connection.
pub(crate) const SOURCE_BYTES: u64 = 16 << 20;

/// Bytes pvdemo sends to a peer's echo port (`peer=A.B.C.D`) and expects back.
pub(crate) const PEER_BYTES: u64 = 64 << 10;

/// The pattern as a byte stream, from byte `offset`: the bytes the disk image holds from
/// that offset (word `w` of the stream is `mix(w)`, little-endian). pvdemo's TCP source
/// and its peer test send this stream from offset 0.
pub(crate) fn fill_stream(offset: u64, out: &mut [u8]) {
    let mut at = offset;
    let mut rest = out;
    while !rest.is_empty() {
        let word = mix(at / 8).to_le_bytes();
        let start = (at % 8) as usize;
        let n = (8 - start).min(rest.len());
        let (here, tail) = rest.split_at_mut(n);
        here.copy_from_slice(&word[start..start + n]);
        rest = tail;
        at += n as u64;
    }
}

/// The index in `data` of the first byte that differs from the stream at `offset`, or
/// `None` if all match.
pub(crate) fn stream_mismatch(offset: u64, data: &[u8]) -> Option<usize> {
    let mut expected = [0u8; 256];
    let mut done = 0;
    for chunk in data.chunks(expected.len()) {
        let want = &mut expected[..chunk.len()];
        fill_stream(offset + done as u64, want);
        if let Some(i) = chunk.iter().zip(want.iter()).position(|(a, b)| a != b) {
            return Some(done + i);
        }
        done += chunk.len();
    }
    None
}

// Run by xtask's tests (xtask includes this file); the guest binary has no test harness.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_the_disk_image() {
        let mut image = [0u8; 3 * SECTOR];
        for (i, s) in image.chunks_exact_mut(SECTOR).enumerate() {
            fill_sector(i as u64, s);
        }
        for (offset, len) in [(0, 3 * SECTOR), (1, 7), (5, 700), (511, 2), (1000, 536)] {
            let mut out = [0u8; 3 * SECTOR];
            fill_stream(offset as u64, &mut out[..len]);
            assert_eq!(out[..len], image[offset..offset + len], "{offset}+{len}");
            assert_eq!(
                stream_mismatch(offset as u64, &image[offset..offset + len]),
                None
            );
        }
        let mut bad = image;
        bad[700] ^= 1;
        assert_eq!(stream_mismatch(3, &bad[3..]), Some(697));
        assert_eq!(stream_mismatch(0, &[]), None);
    }
}
