//! Formatting helpers: a fixed-buffer writer that flushes to a sink, byte sizes, and
//! hypercall return values.

use core::fmt;

use shared_abi::Errno;

/// A `fmt::Write` that collects output in an `N`-byte buffer and hands full buffers to
/// `sink`. Call [`BufWriter::flush`] (or drop it) to emit the rest.
///
/// The console macros use it so that one `println!` becomes one `console_io` hypercall
/// (for lines up to `N` bytes) instead of one per formatted fragment.
pub struct BufWriter<const N: usize, F: FnMut(&[u8])> {
    buf: [u8; N],
    len: usize,
    sink: F,
}

impl<const N: usize, F: FnMut(&[u8])> BufWriter<N, F> {
    /// An empty writer emitting to `sink`.
    pub fn new(sink: F) -> Self {
        const { assert!(N > 0, "BufWriter needs a non-empty buffer") };
        Self {
            buf: [0; N],
            len: 0,
            sink,
        }
    }

    /// Hands buffered bytes, if any, to the sink.
    pub fn flush(&mut self) {
        if self.len != 0 {
            (self.sink)(&self.buf[..self.len]);
            self.len = 0;
        }
    }

    /// Appends raw bytes, flushing whenever the buffer fills.
    pub fn write_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.len == N {
                self.flush();
            }
            let n = (N - self.len).min(bytes.len());
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
    }
}

impl<const N: usize, F: FnMut(&[u8])> fmt::Write for BufWriter<N, F> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

impl<const N: usize, F: FnMut(&[u8])> Drop for BufWriter<N, F> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl<const N: usize, F: FnMut(&[u8])> fmt::Debug for BufWriter<N, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufWriter")
            .field("capacity", &N)
            .field("len", &self.len)
            .finish()
    }
}

/// A byte count shown in the largest binary unit that divides it exactly:
/// `Size(64 << 20)` shows as `64 MiB`, `Size(0x9fc00)` as `639 KiB`, `Size(100)` as `100 B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
        let n = self.0;
        for (shift, unit) in UNITS {
            let unit_size = 1u64 << shift;
            if n != 0 && n.is_multiple_of(unit_size) {
                return write!(f, "{} {unit}", n >> shift);
            }
        }
        write!(f, "{n} B")
    }
}

/// A raw hypercall return value (`RAX`): a number for success, `-ENAME` for a known negated
/// errno, `-<n> (unknown errno)` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypercallRet(pub i64);

impl HypercallRet {
    /// The errno this value encodes, if it is exactly `-(errno)` for a known errno.
    pub fn errno(self) -> Option<Errno> {
        match Errno::from_ret(self.0) {
            Err(e) if e.to_ret() == self.0 => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for HypercallRet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno() {
            Some(e) => write!(f, "-{e}"),
            None if self.0 < 0 => write!(f, "{} (unknown errno)", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write as _;
    use std::string::{String, ToString};
    use std::vec::Vec;

    #[test]
    fn bufwriter_flushes_when_full_and_at_the_end() {
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        {
            let mut w = BufWriter::<4, _>::new(|b: &[u8]| chunks.push(b.to_vec()));
            write!(w, "ab{}", 12345).unwrap();
            w.flush();
            w.flush();
            w.write_bytes(b"xy");
        }
        assert_eq!(chunks, [b"ab12".to_vec(), b"345".to_vec(), b"xy".to_vec()]);
    }

    #[test]
    fn bufwriter_handles_long_input() {
        let mut out = Vec::new();
        let long = "0123456789".repeat(50);
        {
            let mut w = BufWriter::<7, _>::new(|b: &[u8]| {
                assert!(b.len() <= 7);
                out.extend_from_slice(b);
            });
            w.write_str(&long).unwrap();
        }
        assert_eq!(out, long.as_bytes());
    }

    #[test]
    fn sizes() {
        assert_eq!(Size(0).to_string(), "0 B");
        assert_eq!(Size(100).to_string(), "100 B");
        assert_eq!(Size(4096).to_string(), "4 KiB");
        assert_eq!(Size(0x9fc00).to_string(), "639 KiB");
        assert_eq!(Size(64 << 20).to_string(), "64 MiB");
        assert_eq!(Size(3 << 30).to_string(), "3 GiB");
        assert_eq!(Size(1 << 40).to_string(), "1 TiB");
        assert_eq!(Size((1 << 30) + 4096).to_string(), "1048580 KiB");
        assert_eq!(Size(u64::MAX).to_string(), "18446744073709551615 B");
    }

    #[test]
    fn hypercall_returns() {
        assert_eq!(HypercallRet(0).to_string(), "0");
        assert_eq!(HypercallRet(0x4_0013).to_string(), "262163");
        assert_eq!(HypercallRet(-38).to_string(), "-ENOSYS");
        assert_eq!(HypercallRet(-14).to_string(), "-EFAULT");
        assert_eq!(HypercallRet(-9999).to_string(), "-9999 (unknown errno)");
        assert_eq!(
            HypercallRet(i64::MIN).to_string(),
            String::from("-9223372036854775808 (unknown errno)")
        );
        assert_eq!(HypercallRet(-22).errno(), Some(Errno::EINVAL));
        assert_eq!(HypercallRet(-5).errno(), Some(Errno::EIO));
        assert_eq!(HypercallRet(-4).errno(), None);
    }
}
