//! [`MappedMem`]: [`SharedMem`] over a raw mapping (a granted page, a foreign mapping, an
//! `mmap` of a ring exposed by the dom0 kernel module).
//!
//! This is the crate's only module with `unsafe` code. The whole argument rests on the
//! contract of [`MappedMem::new`]; every block below only adds that its offset was checked
//! against `len` first.
//!
//! - Bytes are copied with volatile accesses, one byte at a time, so the compiler neither
//!   elides, merges nor repeats a read of memory the peer may be changing.
//! - Index words go through `AtomicU32::from_ptr`, which yields a `&AtomicU32` for the
//!   duration of one load or store. That reference is to an interior-mutable atomic, not a
//!   `&u32`, so the peer writing the word meanwhile is permitted; no plain reference into
//!   the mapping is ever formed.

use core::fmt;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, Ordering};

use crate::mem::{MemError, SharedMem, check_range};

/// Shared memory reached through a raw pointer and a length.
pub struct MappedMem {
    base: NonNull<u8>,
    len: usize,
}

impl MappedMem {
    /// Wraps the mapping `base..base + len`.
    ///
    /// # Safety
    ///
    /// For as long as the returned value exists:
    /// 1. every byte of `base..base + len` is mapped and valid for reads and writes, and the
    ///    range lies inside one allocation or mapping (so `len <= isize::MAX` and
    ///    `base + len` does not wrap);
    /// 2. nothing in this program accesses those bytes except through `SharedMem` methods
    ///    (of this or another `MappedMem`) or through other volatile or atomic raw-pointer
    ///    accesses: no `&`/`&mut` reference to them exists, and no plain load or store
    ///    races with these accesses. Agents outside the program (another domain, a device)
    ///    may write at any time;
    /// 3. the mapping is not unmapped, freed or repurposed while this value lives.
    ///
    /// Alignment is not required: `u32` accesses check the actual address and return
    /// [`MemError::Misaligned`] instead.
    #[must_use]
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self { base, len }
    }

    /// The base address of the mapping.
    #[must_use]
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Pointer to byte `offset`. Computed with `wrapping_add`, so this is safe; callers
    /// check `offset` against `len` before dereferencing.
    fn ptr_at(&self, offset: usize) -> *mut u8 {
        self.base.as_ptr().wrapping_add(offset)
    }

    /// Checks `offset..offset + 4` and the alignment of its address, and returns the
    /// address as a `*mut u32`.
    fn word_ptr(&self, offset: usize) -> Result<*mut u32, MemError> {
        check_range(offset, 4, self.len)?;
        let p = self.ptr_at(offset);
        if !p.addr().is_multiple_of(4) {
            return Err(MemError::Misaligned { offset });
        }
        Ok(p.cast::<u32>())
    }
}

// SAFETY: `MappedMem` is a pointer plus a length; every access through it is volatile or
// atomic and the constructor's contract already allows concurrent writers, so moving it to
// another thread adds no hazard.
unsafe impl Send for MappedMem {}
// SAFETY: as for `Send`: `&MappedMem` only permits volatile/atomic accesses, which the
// contract of `new` allows to overlap with any other agent's accesses.
unsafe impl Sync for MappedMem {}

impl SharedMem for MappedMem {
    fn len(&self) -> usize {
        self.len
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "this is the SharedMem implementation the lint points everyone else to"
    )]
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        check_range(offset, buf.len(), self.len)?;
        for (i, b) in buf.iter_mut().enumerate() {
            let p = self.ptr_at(offset + i);
            // SAFETY: `offset + i < offset + buf.len() <= len` (checked above, no overflow),
            // so `p` is inside the mapping, which contract 1 and 3 of `new` make valid for
            // reads; a `u8` needs no alignment; contract 2 rules out racing plain accesses.
            *b = unsafe { ptr::read_volatile(p) };
        }
        Ok(())
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "this is the SharedMem implementation the lint points everyone else to"
    )]
    fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        check_range(offset, data.len(), self.len)?;
        for (i, b) in data.iter().enumerate() {
            let p = self.ptr_at(offset + i);
            // SAFETY: `offset + i < len` (checked above), so `p` is inside the mapping,
            // valid for writes by contract 1 and 3 of `new`; a `u8` needs no alignment;
            // contract 2 rules out racing plain accesses.
            unsafe { ptr::write_volatile(p, *b) };
        }
        Ok(())
    }

    fn load_acquire_u32(&self, offset: usize) -> Result<u32, MemError> {
        let p = self.word_ptr(offset)?;
        // SAFETY: `word_ptr` checked that the four bytes lie inside the mapping and that `p`
        // is 4-byte aligned; the mapping stays valid while `self` lives (contract 1, 3) and
        // the returned `&AtomicU32` does not outlive this statement; contract 2 says every
        // other access to the word is atomic or from outside the program.
        let word = unsafe { AtomicU32::from_ptr(p) };
        // ORDERING: Acquire; pairs with the peer's release store (or `wmb()` + store) of
        // the same index, so the entries it wrote before it are visible to later reads.
        Ok(word.load(Ordering::Acquire))
    }

    fn store_release_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        let p = self.word_ptr(offset)?;
        // SAFETY: as in `load_acquire_u32`: in bounds, aligned, valid while `self` lives,
        // and only accessed atomically or from outside the program.
        let word = unsafe { AtomicU32::from_ptr(p) };
        // ORDERING: Release; pairs with the peer's acquire load (or load + `rmb()`) of this
        // index, publishing every entry we wrote before it.
        word.store(value, Ordering::Release);
        Ok(())
    }
}

impl fmt::Debug for MappedMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedMem")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;

    /// Heap storage aligned to 8 bytes; its contents are only reached through the raw
    /// pointer while a `MappedMem` over it exists.
    struct Backing {
        words: Vec<u64>,
    }

    impl Backing {
        fn new(bytes: usize) -> Self {
            Self {
                words: vec![0; bytes.div_ceil(8)],
            }
        }

        /// A `MappedMem` over `len` bytes starting `skew` bytes into the storage.
        fn map(&mut self, skew: usize, len: usize) -> MappedMem {
            assert!(skew + len <= self.words.len() * 8);
            let base = NonNull::new(self.words.as_mut_ptr().cast::<u8>().wrapping_add(skew))
                .expect("vec pointers are non-null");
            // SAFETY: the range is inside `words` (asserted above); `words` is neither
            // touched nor dropped while the returned value is in use (each test keeps the
            // `Backing` alive and does not read `words` until it has dropped the mapping).
            unsafe { MappedMem::new(base, len) }
        }
    }

    #[test]
    fn passes_conformance() {
        let mut backing = Backing::new(64);
        crate::mem::conformance(&backing.map(0, 64));
        let mut backing = Backing::new(32);
        crate::mem::conformance(&backing.map(0, 27));
    }

    #[test]
    fn misalignment_follows_the_address_not_the_offset() {
        let mut backing = Backing::new(16);
        let mem = backing.map(1, 12);
        assert_eq!(
            mem.load_acquire_u32(0),
            Err(MemError::Misaligned { offset: 0 })
        );
        mem.store_release_u32(3, 0x1122_3344).unwrap();
        assert_eq!(mem.load_acquire_u32(3).unwrap(), 0x1122_3344);
        assert_eq!(mem.read_obj::<u32>(3).unwrap(), 0x1122_3344);
    }

    #[test]
    fn writes_reach_the_backing_memory() {
        let mut backing = Backing::new(16);
        {
            let mem = backing.map(0, 16);
            mem.write_obj(8, &0x0807_0605_0403_0201u64).unwrap();
            mem.store_release_u32(0, 0xffff_ffff).unwrap();
        }
        assert_eq!(backing.words, [0xffff_ffff, 0x0807_0605_0403_0201]);
    }

    #[test]
    fn ring_works_over_mapped_memory() {
        use crate::ring::{BackRing, FrontRing};
        let mut backing = Backing::new(64 + 8 * 4);
        let mem = backing.map(0, 64 + 8 * 4);
        let mut front = FrontRing::<u64, u64, _>::init(&mem).unwrap();
        let mut back = BackRing::<u64, u64, _>::attach(&mem).unwrap();
        assert_eq!(front.size(), 4);
        for v in 1..=3u64 {
            front.queue_request(&v).unwrap();
        }
        assert!(front.push_requests().unwrap());
        while let Some(req) = back.take_request().unwrap() {
            back.queue_response(&(req * 10)).unwrap();
        }
        assert!(back.push_responses().unwrap());
        let mut got = Vec::new();
        while let Some(rsp) = front.take_response().unwrap() {
            got.push(rsp);
        }
        assert_eq!(got, [10, 20, 30]);
    }
}
