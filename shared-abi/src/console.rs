//! `console_io` (hypercall 18): the hypervisor console (`xen/include/public/xen.h`).
//!
//! ## `console_io(CONSOLEIO_write, count, buffer)`
//!
//! - **Arguments:** `RDI` = [`CONSOLEIO_WRITE`]; `RSI` = number of bytes; `RDX` = linear
//!   address of the bytes.
//! - **Returns:** `0` when all bytes were written.
//! - **Errors:** `EFAULT` if any byte of the buffer is not mapped or not the caller's memory;
//!   `EINVAL` if `count` exceeds [`CONSOLEIO_MAX_WRITE`].
//! - **Privilege:** any domain.
//! - **Remarks:** output goes to the microvisor log, prefixed `(dN) ` at each line start.
//!   Output is rate-limited per domain; excess bytes are dropped, never queued.
//!
//! ## `console_io(CONSOLEIO_read, ...)`
//!
//! Reading the hypervisor console is reserved for the control domain and not implemented:
//! it returns `ENOSYS`.

/// Sub-operation: write bytes to the hypervisor console.
pub const CONSOLEIO_WRITE: u64 = 0;
/// Sub-operation: read from the hypervisor console (control domain only; not implemented).
pub const CONSOLEIO_READ: u64 = 1;
/// The largest `count` accepted by one `CONSOLEIO_write`.
pub const CONSOLEIO_MAX_WRITE: u64 = 4096;
