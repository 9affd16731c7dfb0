//! Port I/O.
//!
//! Under the microvisor a DomU has no devices: reads return all ones and writes are
//! dropped. On bare QEMU (no hypervisor), the runtime falls back to two test devices:
//! `-debugcon stdio` at [`DEBUGCON_PORT`] for output, and `isa-debug-exit` at
//! [`ISA_DEBUG_EXIT_PORT`] to end the run.

use core::arch::asm;

/// QEMU's debug console (`-debugcon`): every byte written is printed.
pub const DEBUGCON_PORT: u16 = 0xE9;
/// QEMU's `isa-debug-exit,iobase=0xf4`: writing `v` exits QEMU with status `(v << 1) | 1`.
pub const ISA_DEBUG_EXIT_PORT: u16 = 0xF4;
/// `isa-debug-exit` value for a pass / clean poweroff (QEMU status 33).
pub const EXIT_SUCCESS: u8 = 0x10;
/// `isa-debug-exit` value for a failure (QEMU status 35).
pub const EXIT_FAILURE: u8 = 0x11;

/// Reads a byte from I/O port `port` (`in al, dx`).
///
/// # Safety
///
/// Reading the port must have no side effect that breaks the runtime's assumptions. Device
/// reads may change device state; under the microvisor no device exists.
#[inline(always)]
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller guarantees the read is harmless (see `# Safety`); IN touches no
    // memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to I/O port `port` (`out dx, al`).
///
/// # Safety
///
/// Writing the port must have no side effect that breaks the runtime's assumptions (a
/// device doing DMA, for example). Under the microvisor no device exists.
#[inline(always)]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller guarantees the write is harmless (see `# Safety`); OUT touches no
    // memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes `bytes` to the debug console port.
pub(crate) fn debugcon_write(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: port 0xE9 is QEMU's debug console or nothing; a write has no other effect.
        unsafe { outb(DEBUGCON_PORT, b) };
    }
}

/// Asks `isa-debug-exit` to end the run with `value`. Returns if the device is absent.
pub(crate) fn debug_exit(value: u8) {
    // SAFETY: port 0xF4 is QEMU's isa-debug-exit or nothing: the write either ends the
    // machine or has no effect.
    unsafe { outb(ISA_DEBUG_EXIT_PORT, value) };
}
