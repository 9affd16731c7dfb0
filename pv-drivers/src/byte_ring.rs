//! Byte-stream rings with free-running `u32` indices, as used by the PV console
//! ([`crate::console`]) and xenstore ([`crate::xenstore`]) pages: a data area whose size is
//! a power of two, and a consumer and a producer index elsewhere in the page.
//!
//! Each side keeps the index it owns privately and only publishes it; it never trusts a
//! value of its own index read back from the page. The peer's index is read once per call
//! and checked: a peer that claims more bytes than the ring holds is
//! [`ByteRingError::Overrun`], after which the ring stays disabled.
#![forbid(unsafe_code)]

use crate::mem::{MemError, SharedMem};

/// Where one ring lives in its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRing {
    /// Offset of the data area.
    pub data: usize,
    /// Size of the data area, a power of two.
    pub size: u32,
    /// Offset of the consumer index.
    pub cons: usize,
    /// Offset of the producer index.
    pub prod: usize,
}

/// Why a ring call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRingError {
    /// The indices are more than the ring size apart: the peer is broken or hostile.
    Overrun {
        /// The producer index.
        prod: u32,
        /// The consumer index.
        cons: u32,
    },
    /// The page is smaller than the layout.
    Mem(MemError),
}

impl From<MemError> for ByteRingError {
    fn from(e: MemError) -> Self {
        Self::Mem(e)
    }
}

/// One side's end of one ring: its own index, and whether the ring broke.
#[derive(Debug, Clone, Copy)]
pub struct End {
    ring: ByteRing,
    ours: u32,
    broken: Option<ByteRingError>,
}

impl End {
    /// Attaches to `ring`, continuing from the index at `own_offset` (the ring's `prod` for
    /// a producer, `cons` for a consumer).
    ///
    /// # Errors
    /// [`MemError`] if the index is outside the page.
    pub fn attach(
        ring: ByteRing,
        mem: &impl SharedMem,
        own_offset: usize,
    ) -> Result<Self, MemError> {
        Ok(Self {
            ring,
            ours: mem.load_acquire_u32(own_offset)?,
            broken: None,
        })
    }

    fn used(&mut self, prod: u32, cons: u32) -> Result<u32, ByteRingError> {
        let used = prod.wrapping_sub(cons);
        if used > self.ring.size {
            let e = ByteRingError::Overrun { prod, cons };
            self.broken = Some(e);
            return Err(e);
        }
        Ok(used)
    }

    fn check(&self) -> Result<(), ByteRingError> {
        self.broken.map_or(Ok(()), Err)
    }

    /// Consumer: copies up to `buf.len()` bytes out and publishes the new consumer index.
    ///
    /// # Errors
    /// [`ByteRingError`]; after an overrun every call fails with it.
    pub fn consume(
        &mut self,
        mem: &impl SharedMem,
        buf: &mut [u8],
    ) -> Result<usize, ByteRingError> {
        self.check()?;
        let r = self.ring;
        let prod = mem.load_acquire_u32(r.prod)?;
        let avail = self.used(prod, self.ours)?;
        let n = (avail as usize).min(buf.len());
        let mut done = 0;
        while done < n {
            let idx = (self.ours.wrapping_add(done as u32) & (r.size - 1)) as usize;
            let chunk = (r.size as usize - idx).min(n - done);
            mem.read_bytes(r.data + idx, &mut buf[done..done + chunk])?;
            done += chunk;
        }
        if n > 0 {
            self.ours = self.ours.wrapping_add(n as u32);
            mem.store_release_u32(r.cons, self.ours)?;
        }
        Ok(n)
    }

    /// Producer: copies as much of `data` as fits in and publishes the new producer index.
    ///
    /// # Errors
    /// [`ByteRingError`]; after an overrun every call fails with it.
    pub fn produce(&mut self, mem: &impl SharedMem, data: &[u8]) -> Result<usize, ByteRingError> {
        self.check()?;
        let r = self.ring;
        let cons = mem.load_acquire_u32(r.cons)?;
        let used = self.used(self.ours, cons)?;
        let n = ((r.size - used) as usize).min(data.len());
        let mut done = 0;
        while done < n {
            let idx = (self.ours.wrapping_add(done as u32) & (r.size - 1)) as usize;
            let chunk = (r.size as usize - idx).min(n - done);
            mem.write_bytes(r.data + idx, &data[done..done + chunk])?;
            done += chunk;
        }
        if n > 0 {
            self.ours = self.ours.wrapping_add(n as u32);
            mem.store_release_u32(r.prod, self.ours)?;
        }
        Ok(n)
    }

    /// Producer: bytes that fit now (0 if the ring is broken or full).
    ///
    /// # Errors
    /// [`ByteRingError`].
    pub fn space(&mut self, mem: &impl SharedMem) -> Result<usize, ByteRingError> {
        self.check()?;
        let cons = mem.load_acquire_u32(self.ring.cons)?;
        let used = self.used(self.ours, cons)?;
        Ok((self.ring.size - used) as usize)
    }
}
