//! The console behind `print!`/`println!`.
//!
//! With the Xen CPUID signature present, output goes to the hypervisor console through
//! `console_io(CONSOLEIO_write)`; without it (bare QEMU), to QEMU's debug console port
//! 0xE9 (`-debugcon stdio`). Each `print!` is formatted into a 256-byte stack buffer, so a
//! typical line is one hypercall.

use core::fmt::{self, Write as _};

use shared_abi::console::CONSOLEIO_MAX_WRITE;
use shared_abi::guest::console_write;

use crate::arch::port;
use crate::fmt::BufWriter;

const LINE_BUFFER: usize = 256;

/// Writes raw bytes to the console. Errors (e.g. rate limiting) are ignored: there is
/// nowhere to report them.
pub fn write_bytes(bytes: &[u8]) {
    if crate::rt::hypervisor_present() {
        for chunk in bytes.chunks(CONSOLEIO_MAX_WRITE as usize) {
            let _ = console_write(chunk);
        }
    } else {
        port::debugcon_write(bytes);
    }
}

/// Formats `args` to the console. Used by [`crate::print!`] and [`crate::println!`].
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut w = BufWriter::<LINE_BUFFER, _>::new(write_bytes);
    // Our writer never fails; a failing Display impl only cuts the output short.
    let _ = w.write_fmt(args);
}
