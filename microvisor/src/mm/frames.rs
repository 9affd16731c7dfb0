//! Physical frame allocator: one bit per 4 KiB frame (set = free).
//!
//! Portable: the bitmap storage is supplied by the caller (a static array on bare metal,
//! a `Vec` in host tests). Frames are handed out without zeroing; the caller that maps a
//! frame into a domain or a table zeroes it first (see `arch::x86_64::memory`).

/// Size of a frame.
pub const FRAME_SIZE: u64 = 4096;

/// Why freeing a frame failed: both mean a microvisor bug, reported instead of corrupting
/// the bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The address is not a frame this allocator manages.
    NotManaged(u64),
    /// The frame is already free.
    DoubleFree(u64),
}

/// A bitmap frame allocator over physical addresses `[0, words * 64 * 4 KiB)`.
#[derive(Debug)]
pub struct FrameAllocator<B> {
    bits: B,
    free: u64,
    hint: usize,
}

impl<B: AsRef<[u64]> + AsMut<[u64]>> FrameAllocator<B> {
    /// An allocator with no free frames; add RAM with [`Self::add_free_range`].
    pub fn new(mut bits: B) -> Self {
        bits.as_mut().fill(0);
        Self {
            bits,
            free: 0,
            hint: 0,
        }
    }

    fn frames(&self) -> u64 {
        self.bits.as_ref().len() as u64 * 64
    }

    fn is_free(&self, frame: u64) -> bool {
        self.bits.as_ref()[(frame / 64) as usize] & (1 << (frame % 64)) != 0
    }

    fn set(&mut self, frame: u64, free: bool) {
        let word = &mut self.bits.as_mut()[(frame / 64) as usize];
        if free {
            *word |= 1 << (frame % 64);
        } else {
            *word &= !(1 << (frame % 64));
        }
    }

    /// Marks the whole frames inside `[start, end)` free. Partial frames at either end and
    /// frames beyond the bitmap are ignored. Returns how many frames became free.
    pub fn add_free_range(&mut self, start: u64, end: u64) -> u64 {
        let first = start.div_ceil(FRAME_SIZE);
        let last = (end / FRAME_SIZE).min(self.frames());
        let mut added = 0;
        for f in first..last {
            if !self.is_free(f) {
                self.set(f, true);
                added += 1;
            }
        }
        self.free += added;
        added
    }

    /// Marks every frame touching `[start, end)` used (for memory the microvisor must not
    /// hand out). Returns how many free frames were taken.
    pub fn reserve_range(&mut self, start: u64, end: u64) -> u64 {
        let first = start / FRAME_SIZE;
        let last = end.div_ceil(FRAME_SIZE).min(self.frames());
        let mut taken = 0;
        for f in first..last {
            if self.is_free(f) {
                self.set(f, false);
                taken += 1;
            }
        }
        self.free -= taken;
        taken
    }

    /// Number of free frames.
    pub fn free_frames(&self) -> u64 {
        self.free
    }

    /// Allocates one frame and returns its physical address.
    pub fn alloc(&mut self) -> Option<u64> {
        let words = self.bits.as_ref().len();
        for i in 0..words {
            let w = (self.hint + i) % words;
            let word = self.bits.as_ref()[w];
            if word != 0 {
                let frame = w as u64 * 64 + u64::from(word.trailing_zeros());
                self.set(frame, false);
                self.free -= 1;
                self.hint = w;
                return Some(frame * FRAME_SIZE);
            }
        }
        None
    }

    /// Allocates `count` physically contiguous frames whose first frame is aligned to
    /// `align` frames (a power of two). Returns the physical address of the first.
    pub fn alloc_contiguous(&mut self, count: u64, align: u64) -> Option<u64> {
        if count == 0 || !align.is_power_of_two() {
            return None;
        }
        let total = self.frames();
        let mut start = 0;
        while start + count <= total {
            match (start..start + count).find(|&f| !self.is_free(f)) {
                None => {
                    for f in start..start + count {
                        self.set(f, false);
                    }
                    self.free -= count;
                    return Some(start * FRAME_SIZE);
                }
                Some(used) => start = (used + 1).next_multiple_of(align),
            }
        }
        None
    }

    /// Returns a frame to the pool.
    pub fn free(&mut self, pa: u64) -> Result<(), FreeError> {
        let frame = pa / FRAME_SIZE;
        if !pa.is_multiple_of(FRAME_SIZE) || frame >= self.frames() {
            return Err(FreeError::NotManaged(pa));
        }
        if self.is_free(frame) {
            return Err(FreeError::DoubleFree(pa));
        }
        self.set(frame, true);
        self.free += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn allocator() -> FrameAllocator<std::vec::Vec<u64>> {
        FrameAllocator::new(std::vec![0; 4])
    }

    #[test]
    fn hands_out_only_added_frames() {
        let mut a = allocator();
        assert_eq!(a.add_free_range(0x1800, 0x5000), 3); // frames 2, 3, 4
        a.reserve_range(0x3000, 0x3001);
        let mut got = BTreeSet::new();
        while let Some(pa) = a.alloc() {
            got.insert(pa);
        }
        assert_eq!(got, BTreeSet::from([0x2000, 0x4000]));
        assert_eq!(a.free(0x2000), Ok(()));
        assert_eq!(a.free(0x2000), Err(FreeError::DoubleFree(0x2000)));
        assert_eq!(a.free(0x2001), Err(FreeError::NotManaged(0x2001)));
        assert_eq!(a.free(1 << 40), Err(FreeError::NotManaged(1 << 40)));
    }

    #[test]
    fn contiguous_respects_alignment_and_holes() {
        let mut a = allocator();
        a.add_free_range(0, 256 * FRAME_SIZE);
        a.reserve_range(2 * FRAME_SIZE, 3 * FRAME_SIZE);
        let pa = a.alloc_contiguous(3, 4).unwrap();
        assert_eq!(pa, 4 * FRAME_SIZE);
        assert_eq!(a.alloc_contiguous(300, 1), None);
        assert_eq!(a.free_frames(), 256 - 1 - 3);
    }

    proptest! {
        #[test]
        fn matches_a_set_model(ops in proptest::collection::vec((0u8..3, 0u64..256), 1..200)) {
            let mut a = allocator();
            a.add_free_range(0, 256 * FRAME_SIZE);
            let mut used = BTreeSet::new();
            for (op, arg) in ops {
                match op {
                    0 => if let Some(pa) = a.alloc() { prop_assert!(used.insert(pa)); },
                    1 => {
                        let pa = arg * FRAME_SIZE;
                        let r = a.free(pa);
                        prop_assert_eq!(r.is_ok(), used.remove(&pa));
                    }
                    _ => if let Some(pa) = a.alloc_contiguous(arg % 8 + 1, 2) {
                        prop_assert_eq!(pa % (2 * FRAME_SIZE), 0);
                        for i in 0..(arg % 8 + 1) { prop_assert!(used.insert(pa + i * FRAME_SIZE)); }
                    },
                }
                prop_assert_eq!(a.free_frames(), 256 - used.len() as u64);
            }
        }
    }
}
