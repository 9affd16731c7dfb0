//! The microvisor log on COM2 (0x2F8); COM1 stays free for Dom0.

use super::cpu::{inb, outb};
use core::fmt::Write;
use spin::Mutex;

const COM2: u16 = 0x2F8;

/// The log port.
#[derive(Debug)]
pub struct Serial(());

/// The log, shared by all CPUs.
pub static LOG: Mutex<Serial> = Mutex::new(Serial(()));

impl Serial {
    /// Programs the UART: 115200 8N1, FIFOs on, interrupts off.
    pub fn init(&mut self) {
        for (off, val) in [
            (1, 0x00),
            (3, 0x80),
            (0, 0x01),
            (1, 0x00),
            (3, 0x03),
            (2, 0xC7),
            (4, 0x03),
        ] {
            // SAFETY: COM2 is the microvisor's own log UART; these are its init registers.
            unsafe { outb(COM2 + off, val) };
        }
    }

    fn put(&mut self, b: u8) {
        // SAFETY: reading the line-status register of our UART has no side effects.
        while unsafe { inb(COM2 + 5) } & 0x20 == 0 {
            super::cpu::pause();
        }
        // SAFETY: the transmit holding register is empty; writing sends one byte.
        unsafe { outb(COM2, b) };
    }

    /// Writes raw bytes, turning `\n` into `\r\n`.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Writes one formatted log line, `mv: ` prefixed.
pub fn log_line(args: core::fmt::Arguments<'_>) {
    let mut log = LOG.lock();
    let _ = log.write_str("mv: ");
    let _ = log.write_fmt(args);
    let _ = log.write_str("\n");
}

/// Writes a line even if the log lock is held (by a CPU that faulted while logging).
pub fn emergency_line(args: core::fmt::Arguments<'_>) {
    let mut log = match LOG.try_lock() {
        Some(guard) => guard,
        None => {
            // SAFETY: only used on the fatal path, where this CPU never returns to the
            // holder; interleaved bytes are preferable to losing the epitaph.
            unsafe { LOG.force_unlock() };
            LOG.lock()
        }
    };
    let _ = log.write_str("mv: ");
    let _ = log.write_fmt(args);
    let _ = log.write_str("\n");
}

/// `mvlog!("...")`: one line on the microvisor log.
#[macro_export]
macro_rules! mvlog {
    ($($arg:tt)*) => { $crate::arch::x86_64::serial::log_line(format_args!($($arg)*)) };
}
