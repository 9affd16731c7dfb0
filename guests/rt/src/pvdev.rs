//! Pieces shared by the PV front-ends ([`crate::blkfront`], [`crate::netfront`]).
//!
//! - [`AtomicPage`]: a page of guest memory shared with a back-end, as atomics, so the
//!   rings and data pages implement [`SharedMem`] without `unsafe` code.
//! - [`Text`] / [`text`]: fixed-capacity formatting for xenstore paths and values.
//! - [`parse_decimal`]: the strict parser of decimal xenstore node values.
//! - On bare metal, [`wait_connected`]: the xenbus handshake's last wait, for the
//!   back-end's `state` to reach Connected.

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use pv_drivers::mem::{MemError, SharedMem, check_range};

/// Bytes of a page.
pub const PAGE: usize = 4096;

/// A strict decimal node value: 1..=20 ASCII digits, optionally NUL-terminated, no sign or
/// space, fitting a `u64`.
pub fn parse_decimal(raw: &[u8]) -> Option<u64> {
    let digits = raw.strip_suffix(&[0]).unwrap_or(raw);
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A page of guest memory shared with another domain, made of atomic words so that
/// [`SharedMem`] can be implemented over it without `unsafe` code. Its guest-physical
/// address is its address (the runtime identity-maps RAM).
#[repr(C, align(4096))]
#[derive(Debug)]
pub struct AtomicPage {
    words: [AtomicU32; PAGE / 4],
}

impl AtomicPage {
    /// A zeroed page.
    pub const fn new() -> Self {
        Self {
            words: [const { AtomicU32::new(0) }; PAGE / 4],
        }
    }

    /// The guest frame number of the page (its address / 4096).
    pub fn gfn(&self) -> u64 {
        (core::ptr::from_ref(self).addr() / PAGE) as u64
    }

    fn byte(&self, offset: usize) -> u8 {
        // ORDERING: Relaxed; ordering with the peer comes from the ring indices.
        self.words[offset / 4].load(Ordering::Relaxed).to_le_bytes()[offset % 4]
    }

    fn set_byte(&self, offset: usize, value: u8) {
        let shift = (offset % 4) * 8;
        let mask = !(0xFFu32 << shift);
        let bits = u32::from(value) << shift;
        // ORDERING: Relaxed read-modify-writes; only this byte of the word changes, so a
        // peer writing the word's other bytes meanwhile keeps its bytes.
        let w = &self.words[offset / 4];
        w.fetch_and(mask, Ordering::Relaxed);
        w.fetch_or(bits, Ordering::Relaxed);
    }
}

impl Default for AtomicPage {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedMem for AtomicPage {
    fn len(&self) -> usize {
        PAGE
    }

    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
        check_range(offset, buf.len(), PAGE)?;
        let mut i = 0;
        while i < buf.len() {
            let at = offset + i;
            if at.is_multiple_of(4) && buf.len() - i >= 4 {
                // ORDERING: Relaxed, as in `byte`.
                let w = self.words[at / 4].load(Ordering::Relaxed);
                buf[i..i + 4].copy_from_slice(&w.to_le_bytes());
                i += 4;
            } else {
                buf[i] = self.byte(at);
                i += 1;
            }
        }
        Ok(())
    }

    fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
        check_range(offset, data.len(), PAGE)?;
        let mut i = 0;
        while i < data.len() {
            let at = offset + i;
            if at.is_multiple_of(4) && data.len() - i >= 4 {
                let w = u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
                // ORDERING: Relaxed; published by a later release store of an index.
                self.words[at / 4].store(w, Ordering::Relaxed);
                i += 4;
            } else {
                self.set_byte(at, data[i]);
                i += 1;
            }
        }
        Ok(())
    }

    fn load_acquire_u32(&self, offset: usize) -> Result<u32, MemError> {
        check_range(offset, 4, PAGE)?;
        if !offset.is_multiple_of(4) {
            return Err(MemError::Misaligned { offset });
        }
        // ORDERING: Acquire, pairing with the peer's release of the index.
        Ok(self.words[offset / 4].load(Ordering::Acquire))
    }

    fn store_release_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
        check_range(offset, 4, PAGE)?;
        if !offset.is_multiple_of(4) {
            return Err(MemError::Misaligned { offset });
        }
        // ORDERING: Release: every earlier write to this page is visible to a peer that
        // acquires this value.
        self.words[offset / 4].store(value, Ordering::Release);
        Ok(())
    }
}

/// A small fixed-capacity text buffer for xenstore paths and values.
#[derive(Debug)]
pub struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for Text<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let dst = self
            .buf
            .get_mut(self.len..self.len + s.len())
            .ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

/// `format_args` into a [`Text`]; `None` if it does not fit.
pub fn text<const N: usize>(args: fmt::Arguments<'_>) -> Option<Text<N>> {
    let mut t = Text::new();
    fmt::write(&mut t, args).ok()?;
    Some(t)
}

#[cfg(target_os = "none")]
pub use bare::wait_connected;

#[cfg(target_os = "none")]
mod bare {
    use shared_abi::io::xenbus::XenbusState;

    use crate::control::{store_read, store_watch};
    use crate::time;

    /// Waits until the back-end's state node `state_path` reads Connected (4).
    ///
    /// Watches the node (token `token`), so the store signals each change, and re-reads
    /// it at every wakeup and at least every 100 ms, for at most `timeout_ns`.
    ///
    /// # Errors
    /// The state last seen, when the back-end went Closing/Closed or the time ran out.
    pub fn wait_connected(
        state_path: &str,
        token: &str,
        timeout_ns: u64,
    ) -> Result<(), XenbusState> {
        // A watch makes the store signal us when the state changes; without one we
        // still look every 100 ms.
        let _ = store_watch(state_path, token);
        let deadline = time::now_ns().saturating_add(timeout_ns);
        loop {
            let mut s = [0u8; 16];
            let state = store_read(state_path, &mut s)
                .ok()
                .and_then(|n| XenbusState::parse(&s[..n]))
                .unwrap_or(XenbusState::Unknown);
            match state {
                XenbusState::Connected => return Ok(()),
                XenbusState::Closing | XenbusState::Closed => return Err(state),
                _ => {}
            }
            let now = time::now_ns();
            if now >= deadline {
                return Err(state);
            }
            if time::wait_event_until(now.saturating_add(100_000_000).min(deadline)).is_none() {
                // No timer events: look again after a short spin.
                time::sleep_ns(1_000_000);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    #[test]
    fn decimal_nodes_parse_strictly() {
        assert_eq!(parse_decimal(b"147456"), Some(147_456));
        assert_eq!(parse_decimal(b"512\0"), Some(512));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"\0",
            b"-1",
            b" 1",
            b"1 ",
            b"0x10",
            b"18446744073709551616",
            b"123456789012345678901",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn atomic_page_is_shared_memory() {
        let p = Box::new(AtomicPage::new());
        assert_eq!(p.gfn() * 4096, core::ptr::from_ref(&*p).addr() as u64);
        let data: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        p.write_bytes(3, &data).unwrap();
        let mut back = std::vec![0u8; 300];
        p.read_bytes(3, &mut back).unwrap();
        assert_eq!(back, data);
        let mut edge = [0u8; 4];
        p.read_bytes(0, &mut edge).unwrap();
        assert_eq!(edge, [0, 0, 0, 0], "bytes before the write are untouched");
        assert!(p.write_bytes(4095, &[1, 2]).is_err());
        assert!(p.read_bytes(4097, &mut []).is_err());
        p.store_release_u32(8, 0xdead_beef).unwrap();
        assert_eq!(p.load_acquire_u32(8), Ok(0xdead_beef));
        assert_eq!(
            p.load_acquire_u32(6),
            Err(MemError::Misaligned { offset: 6 })
        );
        assert!(p.store_release_u32(4096, 0).is_err());
    }

    #[test]
    fn text_buffers_format_paths() {
        let t: Text<32> = text(format_args!("device/vbd/{}/state", 51712)).unwrap();
        assert_eq!(t.as_str(), "device/vbd/51712/state");
        assert!(text::<4>(format_args!("too long")).is_none());
    }
}
