//! # PV split-driver building blocks
//!
//! The foundation for the block, network and console front- and back-ends: Xen's shared
//! ring protocol (`xen/include/public/io/ring.h`) over memory that the other domain can
//! write at any moment.
//!
//! - [`SharedMem`] is the only way to touch such memory. It copies bytes in and out and
//!   loads/stores the `u32` ring indices with acquire/release ordering; it never hands out a
//!   reference into the shared bytes, and an out-of-range access is an error, not a panic.
//!   [`MappedMem`] implements it over a raw mapping (the crate's only `unsafe` code);
//!   `VecMem` (feature `alloc`, `std` or `test-utils`) implements it over the heap.
//! - [`ring`] holds the header layout ([`ring::SringHeader`]), ring sizing
//!   ([`ring::ring_size`]), and the two ends: [`ring::FrontRing`] (produces requests,
//!   consumes responses) and [`ring::BackRing`] (consumes requests, produces responses).
//!   Every entry is copied into a private value before the caller sees it, a peer whose
//!   producer index runs ahead of what the ring can hold disables the ring with one
//!   [`ring::RingError::Overrun`], and notification decisions follow ring.h's rule.
//! - [`blkif`]: the PV block protocol's ring ends, front ([`blkif::BlkFront`]) and back
//!   ([`blkif::BlkBack`]), with request validation.
//! - [`netif`]: the PV network protocol's tx and rx ring ends, front ([`netif::NetFront`])
//!   and back ([`netif::NetBack`]), with tx chain assembly and validation.
//! - [`console`]: the PV console's byte rings, front ([`console::ConsoleFront`]) and back
//!   ([`console::ConsoleBack`]).
//! - [`xenstore`]: the xenstore page's message streams, guest end ([`xenstore::XsFront`])
//!   and store end ([`xenstore::XsBack`]); [`byte_ring`] is the index logic both share.
//! - `mock` (feature `test-utils`, and in this crate's own tests) scripts the other end of
//!   a ring, optionally as a hostile peer. See `TESTING.md`.
//!
//! ## Features
//!
//! | feature      | adds |
//! |--------------|------|
//! | (none)       | `no_std`, no allocation: [`SharedMem`], [`MappedMem`], [`ring`] and the protocol modules |
//! | `alloc`      | `VecMem`; [`SharedMem`] for `Arc<T>` and `Rc<T>` |
//! | `std`        | implies `alloc` |
//! | `test-utils` | implies `alloc`; the `mock` module |
//!
//! ## Unsafe code
//!
//! Protocol logic is `#![forbid(unsafe_code)]` module by module. The crate root denies
//! unsafe code and only [`mapped`] opts out, because dereferencing a raw mapping cannot be
//! written safely.
#![no_std]
#![deny(unsafe_code)]
#![deny(missing_docs)]

#[cfg(any(test, feature = "alloc"))]
extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod blkif;
pub mod byte_ring;
pub mod console;
#[allow(
    unsafe_code,
    reason = "raw-pointer access to a mapping; the crate's one unsafe module"
)]
pub mod mapped;
pub mod mem;
pub mod netif;
pub mod ring;
#[cfg(any(test, feature = "alloc"))]
pub mod vec_mem;
pub mod xenstore;

#[cfg(any(test, feature = "test-utils"))]
pub mod mock;

#[cfg(test)]
mod proptests;

pub use mapped::MappedMem;
pub use mem::{MemError, SharedMem};
pub use ring::{BackRing, FrontRing, RingEntry, RingError};
#[cfg(any(test, feature = "alloc"))]
pub use vec_mem::VecMem;
