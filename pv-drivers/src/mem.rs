//! [`SharedMem`]: access to memory that another agent may write concurrently.
//!
//! Rules (STYLE §5.1):
//! - No `&T`, `&mut T` or `&[u8]` is ever formed over shared bytes. Everything is copied in
//!   or out through this trait, so a value the caller holds cannot change under it.
//! - Ring indices are read with [`SharedMem::load_acquire_u32`] and published with
//!   [`SharedMem::store_release_u32`]; [`SharedMem::full_fence`] separates a store from a
//!   following load where ring.h asks for `mb()`.
//! - Every offset is checked: an access that does not fit is a [`MemError`], never a panic.
#![forbid(unsafe_code)]

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Why a [`SharedMem`] access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemError {
    /// `offset..offset + len` is not inside the memory (or the sum overflows).
    OutOfBounds {
        /// First byte of the access.
        offset: usize,
        /// Length of the access in bytes.
        len: usize,
        /// Size of the memory in bytes.
        size: usize,
    },
    /// A `u32` atomic access at an address that is not 4-byte aligned.
    Misaligned {
        /// Offset of the access.
        offset: usize,
    },
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutOfBounds { offset, len, size } => write!(
                f,
                "access of {len} bytes at offset {offset:#x} is outside shared memory of {size} bytes"
            ),
            Self::Misaligned { offset } => {
                write!(
                    f,
                    "atomic u32 access at offset {offset:#x} is not 4-byte aligned"
                )
            }
        }
    }
}

impl core::error::Error for MemError {}

/// Checks that `offset..offset + len` lies inside memory of `size` bytes.
///
/// # Errors
/// [`MemError::OutOfBounds`] if it does not, including when `offset + len` overflows.
pub fn check_range(offset: usize, len: usize, size: usize) -> Result<(), MemError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(MemError::OutOfBounds { offset, len, size }),
    }
}

/// Memory shared with another agent (a guest, a driver domain, another CPU).
///
/// Every method takes `&self`: the other side writes whenever it likes, so the memory is
/// interior-mutable by nature, and holding a `SharedMem` never means holding the bytes.
///
/// Implementations must make each access a single read or write of the underlying bytes
/// (no caching, no repeated reads), must order [`Self::store_release_u32`] after every
/// earlier write through the same object, and must order [`Self::load_acquire_u32`]
/// before every later read through it.
pub trait SharedMem {
    /// Size in bytes.
    fn len(&self) -> usize;

    /// Whether the memory has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes starting at `offset` out of shared memory.
    ///
    /// # Errors
    /// [`MemError::OutOfBounds`] if the range does not fit; `buf` is then untouched.
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError>;

    /// Copies `data` into shared memory starting at `offset`.
    ///
    /// # Errors
    /// [`MemError::OutOfBounds`] if the range does not fit; nothing is written then.
    fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), MemError>;

    /// Loads the `u32` at `offset` with acquire ordering: later reads through this object
    /// see everything the peer wrote before its matching release store.
    ///
    /// # Errors
    /// [`MemError::OutOfBounds`], or [`MemError::Misaligned`] if the address is not 4-byte
    /// aligned.
    fn load_acquire_u32(&self, offset: usize) -> Result<u32, MemError>;

    /// Stores `value` at `offset` with release ordering: the peer's acquire load that sees
    /// it also sees every earlier write through this object.
    ///
    /// # Errors
    /// [`MemError::OutOfBounds`], or [`MemError::Misaligned`] if the address is not 4-byte
    /// aligned.
    fn store_release_u32(&self, offset: usize, value: u32) -> Result<(), MemError>;

    /// A full barrier (ring.h's `mb()`): no earlier store is ordered after a later load.
    fn full_fence(&self) {
        // ORDERING: SeqCst fence; pairs with the peer's own full barrier between its
        // index/event store and its re-read of ours (the Dekker pattern of ring.h's
        // push-and-notify and final-check sequences).
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }

    /// Copies a `T` out of shared memory at `offset`. The result is a private value: later
    /// writes by the peer cannot change it.
    ///
    /// `T: IntoBytes` is required as well as `FromBytes` because the copy is made through
    /// `T`'s own bytes; it also rules out implicit padding, which ring structures must spell
    /// out as named reserved fields anyway.
    ///
    /// # Errors
    /// [`MemError::OutOfBounds`] if `size_of::<T>()` bytes do not fit at `offset`.
    fn read_obj<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, MemError>
    where
        Self: Sized,
    {
        let mut value = T::new_zeroed();
        self.read_bytes(offset, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Copies `value` into shared memory at `offset`.
    ///
    /// # Errors
    /// [`MemError::OutOfBounds`] if `size_of::<T>()` bytes do not fit at `offset`.
    fn write_obj<T: IntoBytes + Immutable>(&self, offset: usize, value: &T) -> Result<(), MemError>
    where
        Self: Sized,
    {
        self.write_bytes(offset, value.as_bytes())
    }
}

impl<S: SharedMem + ?Sized> SharedMem for &S {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        (**self).read_bytes(offset, buf)
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        (**self).write_bytes(offset, data)
    }
    fn load_acquire_u32(&self, offset: usize) -> Result<u32, MemError> {
        (**self).load_acquire_u32(offset)
    }
    fn store_release_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        (**self).store_release_u32(offset, value)
    }
    fn full_fence(&self) {
        (**self).full_fence();
    }
}

/// Forwards every method to the pointee, for smart pointers (`Arc`, `Rc`).
#[cfg(any(test, feature = "alloc"))]
macro_rules! forward_shared_mem {
    ($ptr:ty) => {
        impl<S: SharedMem + ?Sized> SharedMem for $ptr {
            fn len(&self) -> usize {
                (**self).len()
            }
            fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
                (**self).read_bytes(offset, buf)
            }
            fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
                (**self).write_bytes(offset, data)
            }
            fn load_acquire_u32(&self, offset: usize) -> Result<u32, MemError> {
                (**self).load_acquire_u32(offset)
            }
            fn store_release_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
                (**self).store_release_u32(offset, value)
            }
            fn full_fence(&self) {
                (**self).full_fence();
            }
        }
    };
}

#[cfg(any(test, feature = "alloc"))]
forward_shared_mem!(alloc::sync::Arc<S>);
#[cfg(any(test, feature = "alloc"))]
forward_shared_mem!(alloc::rc::Rc<S>);

/// A conformance suite that every [`SharedMem`] implementation must pass. `mem` must be
/// at least 16 bytes, start 4-byte aligned, and be zeroed.
#[cfg(test)]
pub(crate) fn conformance<M: SharedMem>(mem: &M) {
    let len = mem.len();
    assert!(len >= 16);
    assert!(!mem.is_empty());

    // Byte copies round-trip, at any alignment and across word boundaries.
    mem.write_bytes(3, &[1, 2, 3, 4, 5, 6]).unwrap();
    let mut buf = [0u8; 8];
    mem.read_bytes(2, &mut buf).unwrap();
    assert_eq!(buf, [0, 1, 2, 3, 4, 5, 6, 0]);

    // u32 atomics and byte views agree (native endianness).
    mem.store_release_u32(8, 0xdead_beef).unwrap();
    assert_eq!(mem.load_acquire_u32(8).unwrap(), 0xdead_beef);
    assert_eq!(mem.read_obj::<u32>(8).unwrap(), 0xdead_beef);
    mem.write_obj(8, &0x0102_0304u32).unwrap();
    assert_eq!(mem.load_acquire_u32(8).unwrap(), 0x0102_0304);
    let mut word = [0u8; 4];
    mem.read_bytes(8, &mut word).unwrap();
    assert_eq!(word, 0x0102_0304u32.to_ne_bytes());

    // The last byte is reachable, one past it is not.
    mem.write_bytes(len - 1, &[0x7f]).unwrap();
    let mut one = [0u8; 1];
    mem.read_bytes(len - 1, &mut one).unwrap();
    assert_eq!(one, [0x7f]);
    let oob = MemError::OutOfBounds {
        offset: len,
        len: 1,
        size: len,
    };
    assert_eq!(mem.read_bytes(len, &mut one), Err(oob));
    assert_eq!(mem.write_bytes(len, &[0]), Err(oob));
    // Empty accesses at the end are fine, past it are not.
    mem.read_bytes(len, &mut []).unwrap();
    assert!(mem.read_bytes(len + 1, &mut []).is_err());

    // Overflowing offsets are errors, not panics or wraps.
    assert_eq!(
        mem.read_bytes(usize::MAX, &mut buf),
        Err(MemError::OutOfBounds {
            offset: usize::MAX,
            len: 8,
            size: len
        })
    );
    assert!(mem.write_bytes(usize::MAX - 2, &[0; 4]).is_err());
    assert!(mem.read_obj::<u64>(len - 7).is_err());
    assert!(mem.write_obj(len - 3, &0u32).is_err());

    // Atomics: bounds and alignment.
    assert_eq!(
        mem.load_acquire_u32(1),
        Err(MemError::Misaligned { offset: 1 })
    );
    assert_eq!(
        mem.store_release_u32(6, 0),
        Err(MemError::Misaligned { offset: 6 })
    );
    let last_word = (len - 4) & !3;
    mem.store_release_u32(last_word, 7).unwrap();
    assert_eq!(mem.load_acquire_u32(last_word).unwrap(), 7);
    assert!(mem.load_acquire_u32(last_word + 4).is_err());
    assert!(mem.store_release_u32(usize::MAX - 3, 0).is_err());

    // A failed write leaves memory untouched.
    mem.write_bytes(len - 1, &[0x7f]).unwrap();
    assert!(mem.write_bytes(len - 2, &[0x55; 4]).is_err());
    let mut tail = [0u8; 2];
    mem.read_bytes(len - 2, &mut tail).unwrap();
    assert_eq!(tail[1], 0x7f);

    mem.full_fence();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_range_edges() {
        assert_eq!(check_range(0, 0, 0), Ok(()));
        assert_eq!(check_range(4, 4, 8), Ok(()));
        assert!(check_range(5, 4, 8).is_err());
        assert!(check_range(usize::MAX, 1, usize::MAX).is_err());
        assert_eq!(check_range(usize::MAX, 0, usize::MAX), Ok(()));
    }

    #[test]
    fn errors_display_without_debug_noise() {
        let e = MemError::OutOfBounds {
            offset: 0x40,
            len: 8,
            size: 64,
        };
        assert_eq!(
            std::format!("{e}"),
            "access of 8 bytes at offset 0x40 is outside shared memory of 64 bytes"
        );
        let e = MemError::Misaligned { offset: 2 };
        assert_eq!(
            std::format!("{e}"),
            "atomic u32 access at offset 0x2 is not 4-byte aligned"
        );
    }
}
