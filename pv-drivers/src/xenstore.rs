//! The xenstore page ([`shared_abi::io::xenstore`]): two byte streams of
//! [`MsgHeader`]-framed messages. [`XsFront`] is the guest's end (writes requests, reads
//! responses and watch events); [`XsBack`] is the store's end in Dom0.
//!
//! Messages are reassembled by [`Assembler`] from however the bytes arrive. A header that
//! announces more than [`PAYLOAD_MAX`] bytes is [`XsError::TooLong`]: the stream cannot be
//! resynchronised after that, so the connection is broken, as is one whose indices
//! overrun ([`XsError::Overrun`]).
#![forbid(unsafe_code)]

use core::fmt;

use shared_abi::io::xenstore::{self as layout, MsgHeader, PAYLOAD_MAX};
use zerocopy::FromBytes;

use crate::byte_ring::{ByteRing, ByteRingError, End};
use crate::mem::{MemError, SharedMem};

const HEADER: usize = core::mem::size_of::<MsgHeader>();

const REQ: ByteRing = ByteRing {
    data: layout::REQ,
    size: layout::RING_SIZE,
    cons: layout::REQ_CONS,
    prod: layout::REQ_PROD,
};
const RSP: ByteRing = ByteRing {
    data: layout::RSP,
    size: layout::RING_SIZE,
    cons: layout::RSP_CONS,
    prod: layout::RSP_PROD,
};

/// Why a xenstore ring call failed. Every variant means the connection is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XsError {
    /// The peer moved an index more than the ring size past the other.
    Overrun {
        /// The producer index.
        prod: u32,
        /// The consumer index.
        cons: u32,
    },
    /// A header announced a payload longer than [`PAYLOAD_MAX`].
    TooLong(u32),
    /// The page is smaller than the layout.
    Mem(MemError),
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overrun { prod, cons } => write!(
                f,
                "xenstore ring overrun: producer {prod} is more than the ring size past consumer {cons}"
            ),
            Self::TooLong(n) => write!(
                f,
                "xenstore message announces {n} payload bytes, more than the {PAYLOAD_MAX} allowed"
            ),
            Self::Mem(e) => write!(f, "xenstore page: {e}"),
        }
    }
}

impl core::error::Error for XsError {}

impl From<ByteRingError> for XsError {
    fn from(e: ByteRingError) -> Self {
        match e {
            ByteRingError::Overrun { prod, cons } => Self::Overrun { prod, cons },
            ByteRingError::Mem(m) => Self::Mem(m),
        }
    }
}

impl From<MemError> for XsError {
    fn from(e: MemError) -> Self {
        Self::Mem(e)
    }
}

/// Reassembles messages from a byte stream, with no allocation.
#[derive(Debug)]
pub struct Assembler {
    buf: [u8; HEADER + PAYLOAD_MAX as usize],
    have: usize,
    broken: Option<XsError>,
}

impl Default for Assembler {
    fn default() -> Self {
        Self {
            buf: [0; HEADER + PAYLOAD_MAX as usize],
            have: 0,
            broken: None,
        }
    }
}

impl Assembler {
    fn want(&self) -> Result<usize, XsError> {
        if self.have < HEADER {
            return Ok(HEADER);
        }
        let h = self.header();
        if h.len > PAYLOAD_MAX {
            return Err(XsError::TooLong(h.len));
        }
        Ok(HEADER + h.len as usize)
    }

    fn header(&self) -> MsgHeader {
        MsgHeader::read_from_bytes(&self.buf[..HEADER]).unwrap_or_default()
    }

    /// Pulls bytes from `end` until one message is complete; `None` if the ring ran dry
    /// first (what arrived is kept for the next call).
    ///
    /// # Errors
    /// [`XsError`]; after one, every call fails with it.
    fn next(
        &mut self,
        end: &mut End,
        mem: &impl SharedMem,
    ) -> Result<Option<(MsgHeader, &[u8])>, XsError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        if self.have > 0 && self.have == self.want().unwrap_or(0) {
            // The previous message was handed out: start the next one.
            self.have = 0;
        }
        loop {
            let want = match self.want() {
                Ok(w) => w,
                Err(e) => {
                    self.broken = Some(e);
                    return Err(e);
                }
            };
            if self.have == want {
                // `want` covers the header and, once the header is in, its payload.
                return Ok(Some((self.header(), &self.buf[HEADER..want])));
            }
            let n = end
                .consume(mem, &mut self.buf[self.have..want])
                .map_err(|e| {
                    let e = XsError::from(e);
                    self.broken = Some(e);
                    e
                })?;
            if n == 0 {
                return Ok(None);
            }
            self.have += n;
        }
    }
}

/// The guest's end of the xenstore page.
#[derive(Debug)]
pub struct XsFront<M> {
    mem: M,
    req: End,
    rsp: End,
    asm: Assembler,
}

impl<M: SharedMem> XsFront<M> {
    /// Takes over the page, continuing from its indices.
    ///
    /// # Errors
    /// [`XsError::Mem`] if the page is smaller than the layout.
    pub fn new(mem: M) -> Result<Self, XsError> {
        Ok(Self {
            req: End::attach(REQ, &mem, layout::REQ_PROD)?,
            rsp: End::attach(RSP, &mem, layout::RSP_CONS)?,
            mem,
            asm: Assembler::default(),
        })
    }

    /// Queues as much of `bytes` (part of a request stream) as fits; returns how many.
    /// The caller notifies the store's port when this is non-zero.
    ///
    /// # Errors
    /// [`XsError`].
    pub fn write(&mut self, bytes: &[u8]) -> Result<usize, XsError> {
        Ok(self.req.produce(&self.mem, bytes)?)
    }

    /// The next complete response or watch event, if one has fully arrived.
    ///
    /// # Errors
    /// [`XsError`].
    pub fn next_message(&mut self) -> Result<Option<(MsgHeader, &[u8])>, XsError> {
        self.asm.next(&mut self.rsp, &self.mem)
    }
}

/// The store's end of a guest's xenstore page.
#[derive(Debug)]
pub struct XsBack<M> {
    mem: M,
    req: End,
    rsp: End,
    asm: Assembler,
}

impl<M: SharedMem> XsBack<M> {
    /// Takes over the page, continuing from its indices (a restarted store resumes).
    ///
    /// # Errors
    /// [`XsError::Mem`] if the page is smaller than the layout.
    pub fn new(mem: M) -> Result<Self, XsError> {
        Ok(Self {
            req: End::attach(REQ, &mem, layout::REQ_CONS)?,
            rsp: End::attach(RSP, &mem, layout::RSP_PROD)?,
            mem,
            asm: Assembler::default(),
        })
    }

    /// [`Self::new`] for a store that restarts: `partial` is what [`Self::partial`] returned
    /// before (the bytes of a request taken from the ring whose end had not arrived), so
    /// the request stream goes on where it was.
    ///
    /// # Errors
    /// [`XsError::Mem`] as for [`Self::new`]; [`XsError::TooLong`] if `partial` is longer
    /// than a whole message.
    pub fn resume(mem: M, partial: &[u8]) -> Result<Self, XsError> {
        let mut back = Self::new(mem)?;
        let buf = back
            .asm
            .buf
            .get_mut(..partial.len())
            .ok_or(XsError::TooLong(
                u32::try_from(partial.len()).unwrap_or(u32::MAX),
            ))?;
        buf.copy_from_slice(partial);
        back.asm.have = partial.len();
        Ok(back)
    }

    /// The bytes of a request taken from the ring whose end has not arrived yet (empty
    /// between requests), for a store that will [`Self::resume`].
    pub fn partial(&self) -> &[u8] {
        let a = &self.asm;
        match a.want() {
            Ok(want) if a.have < want => &a.buf[..a.have],
            _ => &[],
        }
    }

    /// The next complete request, if one has fully arrived.
    ///
    /// # Errors
    /// [`XsError`].
    pub fn next_request(&mut self) -> Result<Option<(MsgHeader, &[u8])>, XsError> {
        self.asm.next(&mut self.req, &self.mem)
    }

    /// Gives the page back (for unmapping).
    pub fn into_mem(self) -> M {
        self.mem
    }

    /// Queues as much of `bytes` (part of the response stream) as fits; returns how many.
    ///
    /// # Errors
    /// [`XsError`].
    pub fn write(&mut self, bytes: &[u8]) -> Result<usize, XsError> {
        Ok(self.rsp.produce(&self.mem, bytes)?)
    }
}

/// What a [`XsClient`] needs from its environment.
pub trait XsIo {
    /// Signals the store's event channel.
    fn notify(&mut self);
    /// Waits until the store may have answered (an event arrived, or a short while passed).
    fn wait(&mut self);
}

/// Why a [`XsClient`] call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XsCallError {
    /// The store answered with this errno name (as sent, e.g. `ENOENT`), truncated to 16
    /// bytes.
    Store([u8; 16]),
    /// The reply does not fit the caller's buffer.
    TooLong,
    /// The request is larger than [`PAYLOAD_MAX`].
    RequestTooLong,
    /// The connection broke.
    Ring(XsError),
}

/// A synchronous xenstore client for guests: one request at a time; watch events that
/// arrive meanwhile are counted, the latest one's token kept.
#[derive(Debug)]
pub struct XsClient<M> {
    front: XsFront<M>,
    next_id: u32,
    watch_events: u32,
    last_token: [u8; 32],
    last_token_len: usize,
}

impl<M: SharedMem> XsClient<M> {
    /// Connects over the store page.
    ///
    /// # Errors
    /// [`XsError::Mem`] if the page is smaller than the layout.
    pub fn new(mem: M) -> Result<Self, XsError> {
        Ok(Self {
            front: XsFront::new(mem)?,
            next_id: 1,
            watch_events: 0,
            last_token: [0; 32],
            last_token_len: 0,
        })
    }

    /// Watch events seen so far (the store sends one when a watch is registered).
    pub fn watch_events(&self) -> u32 {
        self.watch_events
    }

    /// The token of the latest watch event (truncated to 32 bytes).
    pub fn last_token(&self) -> &[u8] {
        &self.last_token[..self.last_token_len]
    }

    /// Takes any messages that have arrived, counting watch events; returns the reply to
    /// `req_id` if it came, copied into `out`.
    fn drain(&mut self, req_id: Option<u32>, out: &mut [u8]) -> Result<Option<usize>, XsCallError> {
        loop {
            let Some((h, payload)) = self.front.next_message().map_err(XsCallError::Ring)? else {
                return Ok(None);
            };
            if h.msg_type == layout::XS_WATCH_EVENT {
                self.watch_events = self.watch_events.wrapping_add(1);
                let token = payload.split(|b| *b == 0).nth(1).unwrap_or(&[]);
                let n = token.len().min(self.last_token.len());
                self.last_token[..n].copy_from_slice(&token[..n]);
                self.last_token_len = n;
                continue;
            }
            if Some(h.req_id) != req_id {
                continue; // a stale reply: not ours
            }
            if h.msg_type == layout::XS_ERROR {
                let mut name = [0u8; 16];
                let text = payload.split(|b| *b == 0).next().unwrap_or(&[]);
                let n = text.len().min(16);
                name[..n].copy_from_slice(&text[..n]);
                return Err(XsCallError::Store(name));
            }
            let dst = out.get_mut(..payload.len()).ok_or(XsCallError::TooLong)?;
            dst.copy_from_slice(payload);
            return Ok(Some(payload.len()));
        }
    }

    /// Processes messages that arrived without waiting (watch events).
    ///
    /// # Errors
    /// The connection broke.
    pub fn poll(&mut self) -> Result<(), XsCallError> {
        self.drain(None, &mut []).map(|_| ())
    }

    /// Sends request `msg_type` with the payload made of `parts` concatenated, waits for
    /// its reply and copies the reply payload into `out`; returns its length.
    ///
    /// # Errors
    /// [`XsCallError`].
    pub fn call(
        &mut self,
        io: &mut impl XsIo,
        msg_type: u32,
        parts: &[&[u8]],
        out: &mut [u8],
    ) -> Result<usize, XsCallError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len)
            .ok()
            .filter(|l| *l <= PAYLOAD_MAX)
            .ok_or(XsCallError::RequestTooLong)?;
        let req_id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let header = header_bytes(&MsgHeader {
            msg_type,
            req_id,
            tx_id: 0,
            len,
        });
        for part in core::iter::once(&header[..]).chain(parts.iter().copied()) {
            let mut sent = 0;
            while sent < part.len() {
                let n = self.front.write(&part[sent..]).map_err(XsCallError::Ring)?;
                if n > 0 {
                    io.notify();
                    sent += n;
                } else {
                    io.wait();
                    self.poll()?;
                }
            }
        }
        loop {
            if let Some(n) = self.drain(Some(req_id), out)? {
                return Ok(n);
            }
            io.wait();
        }
    }
}

/// The 16 header bytes of a message.
pub fn header_bytes(h: &MsgHeader) -> [u8; HEADER] {
    let mut out = [0u8; HEADER];
    out[..4].copy_from_slice(&h.msg_type.to_le_bytes());
    out[4..8].copy_from_slice(&h.req_id.to_le_bytes());
    out[8..12].copy_from_slice(&h.tx_id.to_le_bytes());
    out[12..].copy_from_slice(&h.len.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VecMem;
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use shared_abi::io::xenstore::{XS_READ, XS_WRITE};

    fn msg(t: u32, id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = header_bytes(&MsgHeader {
            msg_type: t,
            req_id: id,
            tx_id: 0,
            len: payload.len() as u32,
        })
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn messages_cross_the_ring_in_pieces_and_wrap() {
        let page = Arc::new(VecMem::new(4096));
        let mut front = XsFront::new(Arc::clone(&page)).unwrap();
        let mut back = XsBack::new(Arc::clone(&page)).unwrap();
        // 3000 bytes of payload: more than the ring, so it goes over in several writes.
        let big: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let stream = [
            msg(XS_WRITE, 1, &big),
            msg(XS_READ, 2, b"name\0"),
            msg(XS_READ, 3, b""),
        ]
        .concat();
        let mut sent = 0;
        let mut got = Vec::new();
        while got.len() < 3 {
            sent += front.write(&stream[sent..]).unwrap();
            while let Some((h, p)) = back.next_request().unwrap() {
                got.push((h.req_id, p.to_vec()));
            }
        }
        assert_eq!(got[0], (1, big));
        assert_eq!(got[1], (2, b"name\0".to_vec()));
        assert_eq!(got[2], (3, Vec::new()));
        assert_eq!(back.next_request().unwrap(), None);
        // Responses the other way.
        back.write(&msg(XS_READ, 2, b"vm1")).unwrap();
        let (h, p) = front.next_message().unwrap().unwrap();
        assert_eq!((h.req_id, p), (2, &b"vm1"[..]));
    }

    #[test]
    fn a_restarted_store_resumes_a_half_taken_request() {
        let page = Arc::new(VecMem::new(4096));
        let mut front = XsFront::new(Arc::clone(&page)).unwrap();
        let mut back = XsBack::new(Arc::clone(&page)).unwrap();
        let big: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
        let stream = [msg(XS_WRITE, 1, &big), msg(XS_READ, 2, b"name\0")].concat();
        // The first 1024 bytes fit the ring; the store takes them and has no request yet.
        let mut sent = front.write(&stream).unwrap();
        assert_eq!(back.next_request().unwrap(), None);
        assert_eq!(back.partial().len(), sent);
        // The store dies; a new one resumes with what the old one had taken.
        let partial = back.partial().to_vec();
        drop(back);
        let mut back = XsBack::resume(Arc::clone(&page), &partial).unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            sent += front.write(&stream[sent..]).unwrap();
            while let Some((h, p)) = back.next_request().unwrap() {
                got.push((h.req_id, p.to_vec()));
            }
        }
        assert_eq!(got, [(1, big), (2, b"name\0".to_vec())]);
        assert!(back.partial().is_empty(), "between requests");
        // Nothing longer than a message can be resumed.
        let too_long = alloc::vec![0u8; HEADER + PAYLOAD_MAX as usize + 1];
        assert!(XsBack::resume(Arc::clone(&page), &too_long).is_err());
    }

    #[test]
    fn oversized_header_breaks_the_connection() {
        let page = Arc::new(VecMem::new(4096));
        let mut front = XsFront::new(Arc::clone(&page)).unwrap();
        let mut back = XsBack::new(Arc::clone(&page)).unwrap();
        front
            .write(&header_bytes(&MsgHeader {
                msg_type: XS_READ,
                req_id: 1,
                tx_id: 0,
                len: 5000,
            }))
            .unwrap();
        assert_eq!(back.next_request(), Err(XsError::TooLong(5000)));
        assert_eq!(back.next_request(), Err(XsError::TooLong(5000)));
    }

    #[test]
    fn overrun_is_caught() {
        let page = Arc::new(VecMem::new(4096));
        let mut back = XsBack::new(Arc::clone(&page)).unwrap();
        page.store_release_u32(layout::REQ_PROD, 2000).unwrap();
        assert!(matches!(back.next_request(), Err(XsError::Overrun { .. })));
    }

    /// A store scripted in the test: answers each request with `reply(header, payload)`.
    struct Scripted<F> {
        back: XsBack<Arc<VecMem>>,
        reply: F,
        notified: u32,
    }

    impl<F: FnMut(MsgHeader, &[u8]) -> Vec<u8>> XsIo for Scripted<F> {
        fn notify(&mut self) {
            self.notified += 1;
        }
        fn wait(&mut self) {
            while let Some((h, p)) = self.back.next_request().unwrap() {
                let p = p.to_vec();
                let r = (self.reply)(h, &p);
                assert_eq!(self.back.write(&r).unwrap(), r.len());
            }
        }
    }

    #[test]
    fn client_calls_and_counts_watch_events() {
        let page = Arc::new(VecMem::new(4096));
        let mut client = XsClient::new(Arc::clone(&page)).unwrap();
        let mut io = Scripted {
            back: XsBack::new(Arc::clone(&page)).unwrap(),
            notified: 0,
            reply: |h: MsgHeader, p: &[u8]| -> Vec<u8> {
                let mut out = Vec::new();
                if h.msg_type == layout::XS_WATCH {
                    out.extend(msg(layout::XS_WATCH, h.req_id, b"OK\0"));
                    out.extend(msg(layout::XS_WATCH_EVENT, 0, b"control/shutdown\0tok\0"));
                } else if p == b"missing\0" {
                    out.extend(msg(layout::XS_ERROR, h.req_id, b"ENOENT\0"));
                } else {
                    // A stale reply first, which the client must skip.
                    out.extend(msg(XS_READ, h.req_id.wrapping_add(100), b"stale"));
                    out.extend(msg(XS_READ, h.req_id, b"poweroff"));
                }
                out
            },
        };
        let mut buf = [0u8; 64];
        let n = client
            .call(
                &mut io,
                layout::XS_WATCH,
                &[b"control/shutdown\0", b"tok\0"],
                &mut buf,
            )
            .unwrap();
        assert_eq!(&buf[..n], b"OK\0");
        client.poll().unwrap();
        assert_eq!(client.watch_events(), 1);
        assert_eq!(client.last_token(), b"tok");
        let n = client
            .call(&mut io, XS_READ, &[b"control/shutdown\0"], &mut buf)
            .unwrap();
        assert_eq!(&buf[..n], b"poweroff");
        let e = client
            .call(&mut io, XS_READ, &[b"missing\0"], &mut buf)
            .unwrap_err();
        assert!(matches!(e, XsCallError::Store(name) if name.starts_with(b"ENOENT")));
        assert!(matches!(
            client.call(&mut io, XS_READ, &[b"control/shutdown\0"], &mut [0u8; 2]),
            Err(XsCallError::TooLong)
        ));
        assert!(io.notified >= 4);
        let big = [b'x'; 5000];
        assert_eq!(
            client.call(&mut io, XS_WRITE, &[&big], &mut buf),
            Err(XsCallError::RequestTooLong)
        );
    }

    proptest::proptest! {
        #[test]
        fn garbage_page_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 4096)) {
            let mut back = XsBack::new(VecMem::from_bytes(&bytes)).unwrap();
            for _ in 0..4 {
                let _ = back.next_request();
            }
            let _ = back.write(&bytes);
        }
    }
}
