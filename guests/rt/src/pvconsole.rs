//! The PV console front-end: the ring page named by `HVM_PARAM_CONSOLE_PFN`, notified
//! through the port in `HVM_PARAM_CONSOLE_EVTCHN` ([`shared_abi::io::console`]).
//!
//! The ring logic is `pv_drivers::console::ConsoleFront`; [`PvConsole`] adds what a guest
//! needs around it: notify the back-end after moving bytes, wait (through a [`Waker`])
//! while the output ring is full instead of spinning, never wait on the emergency path,
//! and give up on a ring the back-end broke so the caller can fall back to `console_io`.
//! It is plain code over any [`SharedMem`], tested on the host against a scripted
//! back-end; the bare-metal glue is in [`crate::console`].

use core::fmt;

use pv_drivers::SharedMem;
use pv_drivers::console::{ConsoleError, ConsoleFront};
use shared_abi::io::console as layout;

/// What the console needs from the rest of the guest.
pub trait Waker {
    /// Signals the back-end on event channel `port`.
    fn notify(&mut self, port: u32);
    /// Blocks until an event arrives or a short while passes, so the caller can look at
    /// the ring again. Returns `false` if it cannot wait (the caller then gives up).
    fn wait(&mut self) -> bool;
}

/// The guest's end of the PV console.
#[derive(Debug)]
pub struct PvConsole<M: SharedMem + Clone> {
    front: ConsoleFront<M>,
    page: M,
    port: u32,
    error: Option<ConsoleError>,
}

impl<M: SharedMem + Clone> PvConsole<M> {
    /// Takes over the ring `page`, notified through `port`.
    ///
    /// # Errors
    /// [`ConsoleError::Mem`] if the page is smaller than the console layout.
    pub fn new(page: M, port: u32) -> Result<Self, ConsoleError> {
        Ok(Self {
            front: ConsoleFront::new(page.clone())?,
            page,
            port,
            error: None,
        })
    }

    /// The event channel port.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// The error that disabled the ring, if one did.
    pub fn error(&self) -> Option<ConsoleError> {
        self.error
    }

    fn check<T>(&mut self, r: Result<T, ConsoleError>) -> Option<T> {
        match r {
            Ok(v) if self.error.is_none() => Some(v),
            Ok(_) => None,
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }

    /// Writes all of `bytes`, waiting with `waker` whenever the ring is full. Returns how
    /// many bytes were queued: all of them, unless the ring failed ([`Self::error`]) or
    /// `waker` could not wait.
    pub fn write_all(&mut self, mut bytes: &[u8], waker: &mut impl Waker) -> usize {
        let total = bytes.len();
        while !bytes.is_empty() {
            let Some(n) = self.write_once(bytes, waker) else {
                break;
            };
            bytes = &bytes[n..];
            if n == 0 && !waker.wait() {
                break;
            }
        }
        total - bytes.len()
    }

    /// Queues what fits of `bytes` without waiting and notifies the back-end if anything
    /// was queued; returns how many bytes (0 also when the ring failed). For the emergency
    /// path.
    pub fn write_nonblocking(&mut self, bytes: &[u8], waker: &mut impl Waker) -> usize {
        self.write_once(bytes, waker).unwrap_or(0)
    }

    fn write_once(&mut self, bytes: &[u8], waker: &mut impl Waker) -> Option<usize> {
        let r = self.front.write(bytes);
        let n = self.check(r)?;
        if n != 0 {
            waker.notify(self.port);
        }
        Some(n)
    }

    /// Takes up to `buf.len()` bytes of input without waiting; notifies the back-end when
    /// it took any (so it can refill the ring). Returns 0 when there is none or the ring
    /// failed.
    pub fn read(&mut self, buf: &mut [u8], waker: &mut impl Waker) -> usize {
        let r = self.front.read(buf);
        match self.check(r) {
            Some(n) => {
                if n != 0 {
                    waker.notify(self.port);
                }
                n
            }
            None => 0,
        }
    }

    /// Output bytes the back-end has not consumed yet (`out_prod - out_cons` as published
    /// on the page), or `None` when the ring failed or the indices make no sense.
    pub fn unsent(&self) -> Option<u32> {
        if self.error.is_some() {
            return None;
        }
        let prod = self.page.load_acquire_u32(layout::OUT_PROD).ok()?;
        let cons = self.page.load_acquire_u32(layout::OUT_CONS).ok()?;
        let n = prod.wrapping_sub(cons);
        (n <= layout::OUT_SIZE).then_some(n)
    }

    /// Waits with `waker` until the back-end has consumed all output, at most `max_waits`
    /// waits. Returns whether everything was consumed.
    pub fn flush(&mut self, waker: &mut impl Waker, max_waits: u32) -> bool {
        for _ in 0..max_waits {
            match self.unsent() {
                Some(0) => return true,
                Some(_) => {}
                None => return false,
            }
            if !waker.wait() {
                return false;
            }
        }
        self.unsent() == Some(0)
    }
}

/// Why the console page named by the HVM parameters cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageError {
    /// The frame's address lies outside the identity map.
    OutsideMap(u64),
    /// The frame overlaps the guest's own image (code, data, stack, shared_info).
    InImage(u64),
    /// The event channel port is 0 or out of range.
    BadPort(u64),
}

impl fmt::Display for PageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PageError::OutsideMap(a) => write!(f, "console page {a:#x} is not identity-mapped"),
            PageError::InImage(a) => write!(f, "console page {a:#x} overlaps the guest image"),
            PageError::BadPort(p) => write!(f, "console event channel {p} is not a valid port"),
        }
    }
}

/// Checks the console parameters: frame `pfn` (non-zero) must lie below `map_end` and
/// outside `image` (`start..end` guest-physical), and `port` must be a valid port.
/// Returns the page's guest-physical address and the port.
pub fn check_page(
    pfn: u64,
    port: u64,
    map_end: u64,
    image: (u64, u64),
) -> Result<(u64, u32), PageError> {
    let page = shared_abi::PAGE_SIZE as u64;
    let paddr = pfn
        .checked_mul(page)
        .ok_or(PageError::OutsideMap(u64::MAX))?;
    if paddr == 0 || paddr.checked_add(page).is_none_or(|end| end > map_end) {
        return Err(PageError::OutsideMap(paddr));
    }
    if paddr < image.1 && image.0 < paddr + page {
        return Err(PageError::InImage(paddr));
    }
    let port = u32::try_from(port)
        .ok()
        .filter(|&p| p != 0 && p < shared_abi::event_channel::MAX_PORTS)
        .ok_or(PageError::BadPort(port))?;
    Ok((paddr, port))
}

/// Feeds `input` to `emit` with every `\r` turned into `\r\n` (what a terminal's Enter
/// key needs echoed), in as few pieces as possible.
pub fn expand_cr(input: &[u8], mut emit: impl FnMut(&[u8])) {
    let mut rest = input;
    while let Some(i) = rest.iter().position(|&b| b == b'\r') {
        if i != 0 {
            emit(&rest[..i]);
        }
        emit(b"\r\n");
        rest = &rest[i + 1..];
    }
    if !rest.is_empty() {
        emit(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pv_drivers::VecMem;
    use pv_drivers::console::ConsoleBack;
    use std::string::ToString;
    use std::sync::Arc;
    use std::vec::Vec;

    /// A waker whose `wait` lets the scripted back-end drain `per_wait` bytes of output.
    struct Script {
        back: ConsoleBack<Arc<VecMem>>,
        notified: u32,
        waits: u32,
        per_wait: usize,
        max_waits: u32,
        got: Vec<u8>,
    }

    impl Waker for Script {
        fn notify(&mut self, port: u32) {
            assert_eq!(port, 7);
            self.notified += 1;
        }
        fn wait(&mut self) -> bool {
            if self.waits == self.max_waits {
                return false;
            }
            self.waits += 1;
            let mut buf = std::vec![0u8; self.per_wait];
            let n = self.back.read_output(&mut buf).unwrap();
            self.got.extend_from_slice(&buf[..n]);
            true
        }
    }

    fn setup(per_wait: usize, max_waits: u32) -> (PvConsole<Arc<VecMem>>, Script, Arc<VecMem>) {
        let page = Arc::new(VecMem::new(4096));
        let con = PvConsole::new(Arc::clone(&page), 7).unwrap();
        let back = ConsoleBack::new(Arc::clone(&page)).unwrap();
        let script = Script {
            back,
            notified: 0,
            waits: 0,
            per_wait,
            max_waits,
            got: Vec::new(),
        };
        (con, script, page)
    }

    #[test]
    fn small_write_notifies_once_and_never_waits() {
        let (mut con, mut s, _) = setup(100, 10);
        assert_eq!(con.write_all(b"hello\n", &mut s), 6);
        assert_eq!((s.notified, s.waits), (1, 0));
        assert_eq!(con.unsent(), Some(6));
        assert!(con.flush(&mut s, 10));
        assert_eq!(s.got, b"hello\n");
        assert_eq!(con.unsent(), Some(0));
    }

    #[test]
    fn full_ring_waits_for_the_back_end() {
        let (mut con, mut s, _) = setup(1000, 100);
        let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        assert_eq!(con.write_all(&big, &mut s), big.len());
        assert!(s.waits >= 7, "waited while full: {}", s.waits);
        assert!(con.flush(&mut s, 100));
        assert_eq!(s.got, big);
    }

    #[test]
    fn write_gives_up_when_it_cannot_wait() {
        let (mut con, mut s, _) = setup(0, 0);
        let big = [1u8; 5000];
        assert_eq!(con.write_all(&big, &mut s), 2048);
        assert_eq!(con.write_nonblocking(b"x", &mut s), 0, "still full");
        assert!(!con.flush(&mut s, 3));
        assert!(con.error().is_none());
    }

    #[test]
    fn broken_back_end_disables_the_ring() {
        let (mut con, mut s, page) = setup(10, 10);
        page.store_release_u32(layout::OUT_CONS, 0u32.wrapping_sub(5000))
            .unwrap();
        assert_eq!(con.write_all(b"abc", &mut s), 0);
        assert!(con.error().is_some());
        assert_eq!(con.unsent(), None);
        assert!(!con.flush(&mut s, 10));
        // Even a repaired index does not bring it back.
        page.store_release_u32(layout::OUT_CONS, 0).unwrap();
        assert_eq!(con.write_nonblocking(b"abc", &mut s), 0);
        let mut buf = [0u8; 4];
        assert_eq!(
            con.read(&mut buf, &mut s),
            0,
            "input too: the console is off"
        );
    }

    #[test]
    fn reads_input_and_notifies() {
        let (mut con, mut s, _) = setup(10, 10);
        let mut buf = [0u8; 8];
        assert_eq!(con.read(&mut buf, &mut s), 0);
        assert_eq!(s.notified, 0);
        assert_eq!(s.back.write_input(b"ab\rc").unwrap(), 4);
        assert_eq!(con.read(&mut buf[..3], &mut s), 3);
        assert_eq!(&buf[..3], b"ab\r");
        assert_eq!(con.read(&mut buf, &mut s), 1);
        assert_eq!(s.notified, 2);
        assert_eq!(con.port(), 7);
    }

    #[test]
    fn page_checks() {
        const GIB4: u64 = 4 << 30;
        let image = (0x10_0000, 0x12_0000);
        assert_eq!(check_page(0xfff, 2, GIB4, image), Ok((0xff_f000, 2)));
        assert_eq!(
            check_page(0x100, 2, GIB4, image),
            Err(PageError::InImage(0x10_0000))
        );
        assert_eq!(
            check_page(0x11f, 2, GIB4, image),
            Err(PageError::InImage(0x11_f000))
        );
        assert!(check_page(0x120, 2, GIB4, image).is_ok());
        assert!(check_page(0xff, 2, GIB4, image).is_ok());
        assert_eq!(
            check_page(0x10_0000, 2, GIB4, image),
            Err(PageError::OutsideMap(GIB4))
        );
        assert!(check_page(0xf_ffff, 2, GIB4, image).is_ok());
        assert!(matches!(
            check_page(u64::MAX, 2, GIB4, image),
            Err(PageError::OutsideMap(_))
        ));
        assert_eq!(
            check_page(0xfff, 0, GIB4, image),
            Err(PageError::BadPort(0))
        );
        assert_eq!(
            check_page(0xfff, 1024, GIB4, image),
            Err(PageError::BadPort(1024))
        );
        assert_eq!(
            check_page(0xfff, 1 << 40, GIB4, image),
            Err(PageError::BadPort(1 << 40))
        );
        assert!(PageError::InImage(0x1000).to_string().contains("0x1000"));
    }

    #[test]
    fn cr_becomes_crlf() {
        let run = |input: &[u8]| {
            let mut out = Vec::new();
            let mut pieces = 0;
            expand_cr(input, |p| {
                assert!(!p.is_empty());
                pieces += 1;
                out.extend_from_slice(p);
            });
            (out, pieces)
        };
        assert_eq!(run(b""), (Vec::new(), 0));
        assert_eq!(run(b"abc"), (b"abc".to_vec(), 1));
        assert_eq!(run(b"\r"), (b"\r\n".to_vec(), 1));
        assert_eq!(run(b"ab\rcd\r\r"), (b"ab\r\ncd\r\n\r\n".to_vec(), 5));
        assert_eq!(run(b"x\n"), (b"x\n".to_vec(), 1));
    }
}
