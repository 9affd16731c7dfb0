//! [`VecMem`]: heap-backed [`SharedMem`] for tests and host tools.
#![forbid(unsafe_code)]

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::mem::{MemError, SharedMem, check_range};

/// Shared memory on the heap, built from `AtomicU32` words.
///
/// Every byte access is a relaxed atomic operation on the containing word, so a `VecMem`
/// behind an `Arc` may be used from several threads at once (a front-end on one, a
/// back-end on another) without undefined behaviour, and the release/acquire index
/// accesses give the same guarantees as on real shared memory. Bytes within a word are in
/// native order, so byte views and `u32` views agree as they would on mapped memory.
/// Offsets are 4-byte aligned exactly when the offset is a multiple of 4.
pub struct VecMem {
    words: Box<[AtomicU32]>,
    len: usize,
}

impl VecMem {
    /// Zeroed memory of `len` bytes.
    #[must_use]
    pub fn new(len: usize) -> Self {
        let words: Vec<AtomicU32> = (0..len.div_ceil(4)).map(|_| AtomicU32::new(0)).collect();
        Self {
            words: words.into_boxed_slice(),
            len,
        }
    }

    /// Memory holding a copy of `bytes`.
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mem = Self::new(bytes.len());
        for (i, b) in bytes.iter().enumerate() {
            mem.store_byte(i, *b);
        }
        mem
    }

    /// A copy of every byte, for assertions in tests.
    #[must_use]
    pub fn snapshot(&self) -> Vec<u8> {
        (0..self.len).map(|i| self.load_byte(i)).collect()
    }

    fn load_byte(&self, index: usize) -> u8 {
        // ORDERING: Relaxed; ordering against the peer comes from the acquire load of the
        // index word that told the caller this byte was ready.
        let word = self.words[index / 4].load(Ordering::Relaxed);
        word.to_ne_bytes()[index % 4]
    }

    fn store_byte(&self, index: usize, byte: u8) {
        let set = |word: u32| {
            let mut bytes = word.to_ne_bytes();
            bytes[index % 4] = byte;
            Some(u32::from_ne_bytes(bytes))
        };
        // ORDERING: Relaxed read-modify-write, so the other three bytes of the word are
        // never lost; publication to the peer is the later release store of an index.
        // The closure always returns `Some`, so the update cannot fail.
        let _ = self.words[index / 4].fetch_update(Ordering::Relaxed, Ordering::Relaxed, set);
    }

    fn word_index(&self, offset: usize) -> Result<usize, MemError> {
        check_range(offset, 4, self.len)?;
        if !offset.is_multiple_of(4) {
            return Err(MemError::Misaligned { offset });
        }
        Ok(offset / 4)
    }
}

impl SharedMem for VecMem {
    fn len(&self) -> usize {
        self.len
    }

    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        check_range(offset, buf.len(), self.len)?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.load_byte(offset + i);
        }
        Ok(())
    }

    fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        check_range(offset, data.len(), self.len)?;
        for (i, b) in data.iter().enumerate() {
            self.store_byte(offset + i, *b);
        }
        Ok(())
    }

    fn load_acquire_u32(&self, offset: usize) -> Result<u32, MemError> {
        let word = self.word_index(offset)?;
        // ORDERING: Acquire; pairs with the peer's release store of the same index in
        // `store_release_u32`, so the entries it wrote before are visible to our reads.
        Ok(self.words[word].load(Ordering::Acquire))
    }

    fn store_release_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        let word = self.word_index(offset)?;
        // ORDERING: Release; pairs with the peer's acquire load in `load_acquire_u32`, so
        // every entry we wrote before publishing this index is visible to it.
        self.words[word].store(value, Ordering::Release);
        Ok(())
    }
}

impl fmt::Debug for VecMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VecMem")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_conformance() {
        crate::mem::conformance(&VecMem::new(64));
        // A length that is not a multiple of 4.
        crate::mem::conformance(&VecMem::new(27));
    }

    #[test]
    fn from_bytes_and_snapshot_round_trip() {
        let bytes: Vec<u8> = (0..=10).collect();
        let mem = VecMem::from_bytes(&bytes);
        assert_eq!(mem.len(), 11);
        assert_eq!(mem.snapshot(), bytes);
    }

    #[test]
    fn empty_memory_refuses_everything() {
        let mem = VecMem::new(0);
        assert!(mem.is_empty());
        assert!(mem.read_bytes(0, &mut [0]).is_err());
        assert!(mem.load_acquire_u32(0).is_err());
        assert!(mem.write_obj(0, &0u8).is_err());
    }

    #[test]
    fn shared_through_arc_and_reference() {
        let mem = alloc::sync::Arc::new(VecMem::new(8));
        let other = alloc::sync::Arc::clone(&mem);
        other.store_release_u32(4, 9).unwrap();
        assert_eq!(mem.load_acquire_u32(4).unwrap(), 9);
        let by_ref: &dyn SharedMem = &*mem;
        assert_eq!((&by_ref).load_acquire_u32(4).unwrap(), 9);
    }
}
