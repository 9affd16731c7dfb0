//! The PV console's two byte rings ([`shared_abi::io::console`]), for the guest's
//! front-end ([`ConsoleFront`]) and Dom0's back-end ([`ConsoleBack`]).
//!
//! Each side keeps its own index privately (the front-end's `out_prod` and `in_cons`, the
//! back-end's `out_cons` and `in_prod`) and only publishes it; it never trusts a value of its
//! own index read back from the page. The peer's index is read once per call and checked:
//! a peer that claims more bytes than the ring holds is [`ConsoleError::Overrun`], after
//! which the ring stays disabled (every later call fails the same way).
//!
//! Neither side signals the event channel itself: a call that moved bytes returns their
//! count, and the caller then notifies the peer.
#![forbid(unsafe_code)]

use core::fmt;

use shared_abi::io::console as layout;

use crate::byte_ring::{self, ByteRing, ByteRingError};
use crate::mem::{MemError, SharedMem};

/// Which of the two rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `in`: back-end to guest.
    Input,
    /// `out`: guest to back-end.
    Output,
}

/// Why a console ring call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleError {
    /// The peer's index is more than the ring size away from ours: the peer is broken or
    /// hostile, and the ring is disabled.
    Overrun {
        /// The ring.
        ring: Direction,
        /// The producer index.
        prod: u32,
        /// The consumer index.
        cons: u32,
    },
    /// The shared page is smaller than the console layout.
    Mem(MemError),
}

impl fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overrun { ring, prod, cons } => write!(
                f,
                "console {} ring overrun: producer {prod} is more than the ring size past consumer {cons}",
                match ring {
                    Direction::Input => "input",
                    Direction::Output => "output",
                }
            ),
            Self::Mem(e) => write!(f, "console page: {e}"),
        }
    }
}

impl core::error::Error for ConsoleError {}

impl From<MemError> for ConsoleError {
    fn from(e: MemError) -> Self {
        Self::Mem(e)
    }
}

const IN: ByteRing = ByteRing {
    data: layout::IN,
    size: layout::IN_SIZE,
    cons: layout::IN_CONS,
    prod: layout::IN_PROD,
};
const OUT: ByteRing = ByteRing {
    data: layout::OUT,
    size: layout::OUT_SIZE,
    cons: layout::OUT_CONS,
    prod: layout::OUT_PROD,
};

/// One side's view of one console ring, with the ring's name for errors.
#[derive(Debug, Clone, Copy)]
struct End {
    dir: Direction,
    inner: byte_ring::End,
}

impl End {
    fn new(
        dir: Direction,
        ring: ByteRing,
        mem: &impl SharedMem,
        own: usize,
    ) -> Result<Self, MemError> {
        Ok(Self {
            dir,
            inner: byte_ring::End::attach(ring, mem, own)?,
        })
    }

    fn map(&self, e: ByteRingError) -> ConsoleError {
        match e {
            ByteRingError::Overrun { prod, cons } => ConsoleError::Overrun {
                ring: self.dir,
                prod,
                cons,
            },
            ByteRingError::Mem(m) => ConsoleError::Mem(m),
        }
    }

    fn consume(&mut self, mem: &impl SharedMem, buf: &mut [u8]) -> Result<usize, ConsoleError> {
        self.inner.consume(mem, buf).map_err(|e| self.map(e))
    }

    fn produce(&mut self, mem: &impl SharedMem, data: &[u8]) -> Result<usize, ConsoleError> {
        self.inner.produce(mem, data).map_err(|e| self.map(e))
    }
}

/// The guest's side: writes output, reads input.
#[derive(Debug)]
pub struct ConsoleFront<M> {
    mem: M,
    out: End,
    input: End,
}

impl<M: SharedMem> ConsoleFront<M> {
    /// Takes over the page, continuing from the indices it holds (zero on a fresh page).
    ///
    /// # Errors
    /// [`ConsoleError::Mem`] if the page is smaller than the console layout.
    pub fn new(mem: M) -> Result<Self, ConsoleError> {
        Ok(Self {
            out: End::new(Direction::Output, OUT, &mem, layout::OUT_PROD)?,
            input: End::new(Direction::Input, IN, &mem, layout::IN_CONS)?,
            mem,
        })
    }

    /// Queues as much of `data` as fits; returns how many bytes were queued (0: the ring
    /// is full; wait for the back-end's notification).
    ///
    /// # Errors
    /// [`ConsoleError`]; after an overrun the ring stays disabled.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, ConsoleError> {
        self.out.produce(&self.mem, data)
    }

    /// Takes up to `buf.len()` bytes of input; returns how many.
    ///
    /// # Errors
    /// [`ConsoleError`]; after an overrun the ring stays disabled.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ConsoleError> {
        self.input.consume(&self.mem, buf)
    }
}

/// Dom0's side: reads output, writes input.
#[derive(Debug)]
pub struct ConsoleBack<M> {
    mem: M,
    out: End,
    input: End,
}

impl<M: SharedMem> ConsoleBack<M> {
    /// Takes over the page, continuing from the indices it holds, so a restarted back-end
    /// neither repeats nor loses output.
    ///
    /// # Errors
    /// [`ConsoleError::Mem`] if the page is smaller than the console layout.
    pub fn new(mem: M) -> Result<Self, ConsoleError> {
        Ok(Self {
            out: End::new(Direction::Output, OUT, &mem, layout::OUT_CONS)?,
            input: End::new(Direction::Input, IN, &mem, layout::IN_PROD)?,
            mem,
        })
    }

    /// Takes up to `buf.len()` bytes of the guest's output; returns how many.
    ///
    /// # Errors
    /// [`ConsoleError`]; after an overrun the ring stays disabled.
    pub fn read_output(&mut self, buf: &mut [u8]) -> Result<usize, ConsoleError> {
        self.out.consume(&self.mem, buf)
    }

    /// Queues as much of `data` as fits as input to the guest; returns how many bytes.
    ///
    /// # Errors
    /// [`ConsoleError`]; after an overrun the ring stays disabled.
    pub fn write_input(&mut self, data: &[u8]) -> Result<usize, ConsoleError> {
        self.input.produce(&self.mem, data)
    }

    /// The memory (for the caller's own bookkeeping, e.g. unmapping).
    pub fn mem(&self) -> &M {
        &self.mem
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VecMem;
    use alloc::sync::Arc;
    use alloc::vec::Vec;

    fn pair() -> (
        ConsoleFront<Arc<VecMem>>,
        ConsoleBack<Arc<VecMem>>,
        Arc<VecMem>,
    ) {
        let page = Arc::new(VecMem::new(4096));
        let front = ConsoleFront::new(Arc::clone(&page)).unwrap();
        let back = ConsoleBack::new(Arc::clone(&page)).unwrap();
        (front, back, page)
    }

    #[test]
    fn output_and_input_round_trip_across_wrap() {
        let (mut front, mut back, _) = pair();
        let mut got = Vec::new();
        let mut buf = [0u8; 700];
        for round in 0..20u8 {
            let msg: Vec<u8> = (0..300).map(|i| round.wrapping_add(i as u8)).collect();
            assert_eq!(front.write(&msg).unwrap(), 300);
            let n = back.read_output(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            assert_eq!(&buf[..n], &msg[..]);
            assert_eq!(back.write_input(&msg[..100]).unwrap(), 100);
            let mut inb = [0u8; 200];
            assert_eq!(front.read(&mut inb).unwrap(), 100);
            assert_eq!(&inb[..100], &msg[..100]);
        }
        assert_eq!(got.len(), 20 * 300);
    }

    #[test]
    fn full_ring_takes_what_fits() {
        let (mut front, mut back, _) = pair();
        let big = [7u8; 5000];
        assert_eq!(front.write(&big).unwrap(), 2048);
        assert_eq!(front.write(&big).unwrap(), 0);
        let mut buf = [0u8; 10];
        assert_eq!(back.read_output(&mut buf).unwrap(), 10);
        assert_eq!(front.write(&big).unwrap(), 10);
        assert_eq!(back.write_input(&big).unwrap(), 1024);
    }

    #[test]
    fn restarted_back_end_continues() {
        let (mut front, mut back, page) = pair();
        front.write(b"abcdef").unwrap();
        let mut buf = [0u8; 3];
        back.read_output(&mut buf).unwrap();
        let mut again = ConsoleBack::new(page).unwrap();
        let mut rest = [0u8; 16];
        let n = again.read_output(&mut rest).unwrap();
        assert_eq!(&rest[..n], b"def");
    }

    #[test]
    fn hostile_producer_disables_the_ring() {
        let (_, mut back, page) = pair();
        page.store_release_u32(layout::OUT_PROD, 4096).unwrap();
        let mut buf = [0u8; 16];
        let e = back.read_output(&mut buf).unwrap_err();
        assert!(matches!(
            e,
            ConsoleError::Overrun {
                ring: Direction::Output,
                prod: 4096,
                cons: 0
            }
        ));
        // Even if the guest puts the index back, the ring stays off.
        page.store_release_u32(layout::OUT_PROD, 0).unwrap();
        assert_eq!(back.read_output(&mut buf).unwrap_err(), e);
        // Input is a separate ring and still works.
        assert_eq!(back.write_input(b"x").unwrap(), 1);
    }

    #[test]
    fn hostile_consumer_index_is_caught() {
        let (mut front, mut back, page) = pair();
        // The guest claims to have consumed input that was never produced.
        page.store_release_u32(layout::IN_CONS, 5000).unwrap();
        assert!(matches!(
            back.write_input(b"x"),
            Err(ConsoleError::Overrun {
                ring: Direction::Input,
                ..
            })
        ));
        // The back-end rewriting out_cons backwards is caught by the front-end.
        front.write(b"hi").unwrap();
        page.store_release_u32(layout::OUT_CONS, 0u32.wrapping_sub(4000))
            .unwrap();
        assert!(front.write(b"x").is_err());
    }

    #[test]
    fn small_page_is_an_error_not_a_panic() {
        assert!(ConsoleBack::new(VecMem::new(100)).is_err());
        assert!(ConsoleFront::new(VecMem::new(3072)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn garbage_page_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 4096)) {
            let page = VecMem::from_bytes(&bytes);
            let mut back = ConsoleBack::new(page).unwrap();
            let mut buf = [0u8; 4096];
            let _ = back.read_output(&mut buf);
            let _ = back.write_input(&buf);
        }
    }
}
