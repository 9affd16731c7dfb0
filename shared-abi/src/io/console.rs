//! The PV console ring page (`xen/include/public/io/console.h`).
//!
//! One page per domain, in the guest's RAM at `HVM_PARAM_CONSOLE_PFN`, notified through
//! the port in `HVM_PARAM_CONSOLE_EVTCHN` ([`crate::hvm`]). Two byte rings with
//! free-running `u32` indices, masked by the ring size:
//!
//! | offset | field |
//! |--------|-------|
//! | 0    | `in[1024]`: bytes to the guest (keyboard input) |
//! | 1024 | `out[2048]`: bytes from the guest (output) |
//! | 3072 | `in_cons` (guest), 3076 `in_prod` (back-end) |
//! | 3080 | `out_cons` (back-end), 3084 `out_prod` (guest) |
//! | 3088 | `connection` u8: 1 while the back-end is disconnected |
//!
//! A producer writes its bytes, issues a write barrier, publishes the new producer index,
//! then signals the event channel. A consumer reads the producer index, issues a read
//! barrier, copies the bytes, then publishes the new consumer index. Anything that would
//! put more than the ring size between the indices is a broken peer.

/// Offset of the input ring (back-end to guest).
pub const IN: usize = 0;
/// Size of the input ring.
pub const IN_SIZE: u32 = 1024;
/// Offset of the output ring (guest to back-end).
pub const OUT: usize = 1024;
/// Size of the output ring.
pub const OUT_SIZE: u32 = 2048;
/// Offset of `in_cons`.
pub const IN_CONS: usize = 3072;
/// Offset of `in_prod`.
pub const IN_PROD: usize = 3076;
/// Offset of `out_cons`.
pub const OUT_CONS: usize = 3080;
/// Offset of `out_prod`.
pub const OUT_PROD: usize = 3084;
/// Offset of the `connection` byte.
pub const CONNECTION: usize = 3088;
