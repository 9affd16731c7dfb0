//! Memory management: the frame allocator and the nested page tables.

pub mod frames;
pub mod npt;

/// Access to machine-physical memory and a source of page-table frames.
///
/// On bare metal this is the identity-mapped physical memory; host tests use a map of
/// fake frames. Page tables are microvisor-private memory, never shared with a guest.
pub trait PhysMemory {
    /// Reads a naturally aligned `u64` at physical address `pa`.
    fn read_u64(&self, pa: u64) -> u64;
    /// Writes a naturally aligned `u64` at physical address `pa`.
    fn write_u64(&mut self, pa: u64, val: u64);
    /// Copies bytes out of physical memory (never crossing a 4 KiB frame).
    fn read_bytes(&self, pa: u64, buf: &mut [u8]);
    /// Copies bytes into physical memory (never crossing a 4 KiB frame).
    fn write_bytes(&mut self, pa: u64, buf: &[u8]);
    /// Allocates a zeroed 4 KiB frame.
    fn alloc_zeroed_frame(&mut self) -> Option<u64>;
    /// Returns a frame to the pool.
    fn free_frame(&mut self, pa: u64);
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake physical memory for host tests.
    use super::PhysMemory;
    use std::collections::BTreeMap;

    #[derive(Debug, Default)]
    pub(crate) struct FakeMem {
        pub(crate) frames: BTreeMap<u64, std::vec::Vec<u8>>,
        pub(crate) next: u64,
        pub(crate) limit: Option<usize>,
        pub(crate) freed: std::vec::Vec<u64>,
    }

    impl FakeMem {
        pub(crate) fn new() -> Self {
            Self {
                next: 0x10_0000,
                ..Self::default()
            }
        }
        fn frame(&self, pa: u64) -> &[u8] {
            self.frames
                .get(&(pa & !0xFFF))
                .map(|v| v.as_slice())
                .expect("access to unallocated frame")
        }
        fn frame_mut(&mut self, pa: u64) -> &mut [u8] {
            self.frames
                .get_mut(&(pa & !0xFFF))
                .map(|v| v.as_mut_slice())
                .expect("access to unallocated frame")
        }
    }

    impl PhysMemory for FakeMem {
        fn read_u64(&self, pa: u64) -> u64 {
            let off = (pa & 0xFFF) as usize;
            u64::from_le_bytes(self.frame(pa)[off..off + 8].try_into().unwrap())
        }
        fn write_u64(&mut self, pa: u64, val: u64) {
            let off = (pa & 0xFFF) as usize;
            self.frame_mut(pa)[off..off + 8].copy_from_slice(&val.to_le_bytes());
        }
        fn read_bytes(&self, pa: u64, buf: &mut [u8]) {
            let off = (pa & 0xFFF) as usize;
            buf.copy_from_slice(&self.frame(pa)[off..off + buf.len()]);
        }
        fn write_bytes(&mut self, pa: u64, buf: &[u8]) {
            let off = (pa & 0xFFF) as usize;
            self.frame_mut(pa)[off..off + buf.len()].copy_from_slice(buf);
        }
        fn alloc_zeroed_frame(&mut self) -> Option<u64> {
            if self.limit.is_some_and(|l| self.frames.len() >= l) {
                return None;
            }
            let pa = self.next;
            self.next += 0x1000;
            self.frames.insert(pa, std::vec![0; 4096]);
            Some(pa)
        }
        fn free_frame(&mut self, pa: u64) {
            assert!(self.frames.remove(&pa).is_some(), "double free of {pa:#x}");
            self.freed.push(pa);
        }
    }
}
