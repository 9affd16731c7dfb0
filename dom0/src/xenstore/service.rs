//! The store's side of every DomU's xenstore page: requests in, replies and watch events
//! out, with a bounded queue per domain for what does not fit in its ring yet.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};

use pv_drivers::SharedMem;
use pv_drivers::xenstore::XsBack;

use super::store::{ConnId, Store};

/// Reply and event bytes queued for one domain before it is cut off as not reading them.
pub const MAX_QUEUED: usize = 64 * 1024;

/// Requests served per pump of one domain: a guest that refills its ring as fast as dom0d
/// empties it cannot hold dom0d in a loop; the rest waits for its next signal (or the
/// poll).
pub const REQUESTS_PER_PUMP: usize = 256;

/// One DomU's connection.
#[derive(Debug)]
struct Ring<M> {
    back: XsBack<M>,
    out: VecDeque<u8>,
    broken: Option<String>,
}

/// What a pump did for the caller to act on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pumped {
    /// Domains whose ring received bytes: signal their store port.
    pub notify: Vec<u32>,
    /// Domains whose connection just broke, with why, e.g. `broke its xenstore ring
    /// (...)` (log it once, after the domain's name).
    pub broke: Vec<(u32, String)>,
    /// Whether a request was served or output queued or written (what dom0d's state
    /// file keeps changed).
    pub changed: bool,
}

/// The store and the DomU connections it serves.
#[derive(Debug, Default)]
pub struct Service<M> {
    store: Store,
    rings: BTreeMap<u32, Ring<M>>,
}

fn conn(domid: u32) -> ConnId {
    ConnId { domid, index: 0 }
}

impl<M: SharedMem> Service<M> {
    /// An empty store with no connections.
    #[must_use]
    pub fn new() -> Self {
        Self {
            store: Store::new(),
            rings: BTreeMap::new(),
        }
    }

    /// The store, for dom0d's own reads and writes; call [`Self::flush`] after writes so
    /// the watch events they cause are delivered.
    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// The store, for reading.
    #[must_use]
    pub fn store_ref(&self) -> &Store {
        &self.store
    }

    /// Introduces DomU `domid` named `name`, served over its store page `page`.
    ///
    /// # Errors
    /// The page is too small for the layout.
    pub fn add_domain(
        &mut self,
        domid: u32,
        name: &str,
        page: M,
    ) -> Result<(), pv_drivers::xenstore::XsError> {
        let back = XsBack::new(page)?;
        self.store.introduce_domain(domid, name);
        self.attach(domid, back);
        Ok(())
    }

    /// Serves `page` for DomU `domid`, whose home the store already has (introduced
    /// earlier with [`Store::introduce_domain`]); the home is kept.
    ///
    /// # Errors
    /// The page is not a usable xenstore page.
    pub fn connect_domain(
        &mut self,
        domid: u32,
        page: M,
    ) -> Result<(), pv_drivers::xenstore::XsError> {
        let back = XsBack::new(page)?;
        self.attach(domid, back);
        Ok(())
    }

    fn attach(&mut self, domid: u32, back: XsBack<M>) {
        self.store.connect(conn(domid));
        self.rings.insert(
            domid,
            Ring {
                back,
                out: VecDeque::new(),
                broken: None,
            },
        );
    }

    /// Replaces the store (dom0d's restart, [`crate::state`]); connections stay.
    pub fn set_store(&mut self, store: Store) {
        self.store = store;
    }

    /// Where DomU `domid`'s connection stands, for dom0d's state file: the part of a
    /// request taken from the ring, the output queued for it, and why it broke.
    #[must_use]
    pub fn ring_image(&self, domid: u32) -> Option<crate::state::StoreConnRecord> {
        self.rings
            .get(&domid)
            .map(|r| crate::state::StoreConnRecord {
                partial: crate::state::Bytes(r.back.partial().to_vec()),
                queued: crate::state::Bytes(r.out.iter().copied().collect()),
                broken: r.broken.clone(),
            })
    }

    /// Serves `page` for DomU `domid` again where a [`ring_image`](Self::ring_image) left
    /// it (dom0d's restart); its home, watches and transactions are the store's already.
    ///
    /// # Errors
    /// The page is not a usable xenstore page, or the image is impossible.
    pub fn resume_domain(
        &mut self,
        domid: u32,
        page: M,
        image: &crate::state::StoreConnRecord,
    ) -> Result<(), pv_drivers::xenstore::XsError> {
        let back = XsBack::resume(page, &image.partial.0)?;
        self.store.connect(conn(domid));
        self.rings.insert(
            domid,
            Ring {
                back,
                out: image.queued.0.iter().copied().collect(),
                broken: image.broken.clone(),
            },
        );
        Ok(())
    }

    /// Forgets DomU `domid`: its subtree, watches and connection (`@releaseDomain` fires).
    /// Returns its page so the caller can unmap it (`None` if it was disconnected).
    pub fn remove_domain(&mut self, domid: u32) -> Option<M> {
        self.store.release_domain(domid);
        self.rings.remove(&domid).map(|r| r.back.into_mem())
    }

    /// Drops DomU `domid`'s connection (its watches, open transactions and queued
    /// output) but keeps its subtree until [`Self::remove_domain`]. Returns its page so
    /// the caller can unmap it.
    pub fn disconnect_domain(&mut self, domid: u32) -> Option<M> {
        self.store.disconnect(conn(domid));
        self.rings.remove(&domid).map(|r| r.back.into_mem())
    }

    /// Whether `domid` has a working connection.
    #[must_use]
    pub fn is_connected(&self, domid: u32) -> bool {
        self.rings.get(&domid).is_some_and(|r| r.broken.is_none())
    }

    /// Serves the complete requests in `domid`'s ring (at most [`REQUESTS_PER_PUMP`], and
    /// none once [`MAX_QUEUED`] bytes of output wait for it), then delivers queued output
    /// to every domain.
    pub fn pump(&mut self, domid: u32) -> Pumped {
        let mut broke = Vec::new();
        let mut served = false;
        if let Some(ring) = self.rings.get_mut(&domid).filter(|r| r.broken.is_none()) {
            for _ in 0..REQUESTS_PER_PUMP {
                if ring.out.len() > MAX_QUEUED {
                    break;
                }
                match ring.back.next_request() {
                    Ok(Some((h, payload))) => {
                        served = true;
                        let payload = payload.to_vec();
                        let reply = self.store.handle(conn(domid), &h, &payload);
                        ring.out.extend(reply);
                    }
                    Ok(None) => {
                        // Part of a request taken is a change too.
                        served |= !ring.back.partial().is_empty();
                        break;
                    }
                    Err(e) => {
                        let why = format!("broke its xenstore ring ({e})");
                        ring.broken = Some(why.clone());
                        self.store.disconnect(conn(domid));
                        broke.push((domid, why));
                        break;
                    }
                }
            }
        }
        let mut p = self.flush();
        p.changed |= served || !broke.is_empty();
        p.broke.extend(broke);
        p
    }

    /// Queues pending watch events and writes what fits into each ring.
    pub fn flush(&mut self) -> Pumped {
        let mut p = Pumped::default();
        for (id, msg) in self.store.take_events() {
            if let Some(ring) = self.rings.get_mut(&id.domid).filter(|_| id.index == 0) {
                ring.out.extend(msg);
                p.changed = true;
            }
        }
        for (&domid, ring) in &mut self.rings {
            if ring.broken.is_some() {
                ring.out.clear();
                continue;
            }
            let mut wrote = false;
            while !ring.out.is_empty() {
                let (a, _) = ring.out.as_slices();
                match ring.back.write(a) {
                    Ok(0) => break,
                    Ok(n) => {
                        ring.out.drain(..n);
                        wrote = true;
                    }
                    Err(e) => {
                        ring.broken = Some(format!("broke its xenstore ring ({e})"));
                        break;
                    }
                }
            }
            if ring.broken.is_none() && ring.out.len() > MAX_QUEUED {
                ring.broken = Some(format!(
                    "left more than {MAX_QUEUED} bytes of xenstore replies unread"
                ));
            }
            if let Some(why) = ring.broken.as_ref() {
                ring.out.clear();
                p.broke.push((domid, why.clone()));
                p.changed = true;
                self.store.disconnect(conn(domid));
            } else if wrote {
                p.notify.push(domid);
                p.changed = true;
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pv_drivers::VecMem;
    use pv_drivers::xenstore::{XsFront, header_bytes};
    use shared_abi::io::xenstore::{MsgHeader, XS_READ, XS_WATCH, XS_WATCH_EVENT, XS_WRITE};
    use std::sync::Arc;

    fn send(front: &mut XsFront<Arc<VecMem>>, t: u32, id: u32, payload: &[u8]) {
        let mut m = header_bytes(&MsgHeader {
            msg_type: t,
            req_id: id,
            tx_id: 0,
            len: payload.len() as u32,
        })
        .to_vec();
        m.extend_from_slice(payload);
        assert_eq!(front.write(&m).unwrap(), m.len());
    }

    fn recv(front: &mut XsFront<Arc<VecMem>>) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some((h, p)) = front.next_message().unwrap() {
            v.push((h.msg_type, h.req_id, p.to_vec()));
        }
        v
    }

    #[test]
    fn guest_request_reply_and_watch_event() {
        let page = Arc::new(VecMem::new(4096));
        let mut svc = Service::new();
        svc.add_domain(5, "vm5", Arc::clone(&page)).unwrap();
        let mut front = XsFront::new(Arc::clone(&page)).unwrap();
        send(&mut front, XS_READ, 1, b"name\0");
        send(&mut front, XS_WATCH, 2, b"control/shutdown\0t\0");
        let p = svc.pump(5);
        assert_eq!(p.notify, [5]);
        let got = recv(&mut front);
        assert_eq!(got[0], (XS_READ, 1, b"vm5".to_vec()));
        assert_eq!(got[1], (XS_WATCH, 2, b"OK\0".to_vec()));
        assert_eq!(
            got[2],
            (XS_WATCH_EVENT, 0, b"control/shutdown\0t\0".to_vec())
        );
        // Dom0 asks it to power off: the event reaches the guest on flush.
        svc.store()
            .write(0, "/local/domain/5/control/shutdown", b"poweroff")
            .unwrap();
        assert_eq!(svc.flush().notify, [5]);
        assert_eq!(recv(&mut front)[0].0, XS_WATCH_EVENT);
        assert!(svc.remove_domain(5).is_some());
        assert!(!svc.is_connected(5));
    }

    #[test]
    fn a_guest_that_never_reads_is_cut_off_alone() {
        let bad = Arc::new(VecMem::new(4096));
        let good = Arc::new(VecMem::new(4096));
        let mut svc = Service::new();
        svc.add_domain(6, "bad", Arc::clone(&bad)).unwrap();
        svc.add_domain(7, "good", Arc::clone(&good)).unwrap();
        let mut fb = XsFront::new(Arc::clone(&bad)).unwrap();
        let mut fg = XsFront::new(Arc::clone(&good)).unwrap();
        let mut broke = Vec::new();
        // Keep asking for a 900-byte value and never read the replies.
        send(
            &mut fb,
            XS_WRITE,
            1,
            &[b"v\0".as_slice(), &[b'x'; 900]].concat(),
        );
        svc.pump(6);
        for i in 0..200 {
            send(&mut fb, XS_READ, i, b"v\0");
            broke.extend(svc.pump(6).broke);
            if !svc.is_connected(6) {
                break;
            }
        }
        assert!(!svc.is_connected(6));
        assert!(
            broke
                .iter()
                .any(|(d, why)| *d == 6 && why.contains("replies unread")),
            "{broke:?}"
        );
        send(&mut fg, XS_READ, 9, b"name\0");
        svc.pump(7);
        assert_eq!(recv(&mut fg)[0], (XS_READ, 9, b"good".to_vec()));
    }

    #[test]
    fn a_hostile_ring_breaks_only_its_connection() {
        let page = Arc::new(VecMem::new(4096));
        let mut svc = Service::new();
        svc.add_domain(8, "h", Arc::clone(&page)).unwrap();
        page.store_release_u32(shared_abi::io::xenstore::REQ_PROD, 9999)
            .unwrap();
        let p = svc.pump(8);
        assert_eq!(p.broke.len(), 1);
        assert!(!svc.is_connected(8));
    }
}

#[cfg(test)]
mod endless {
    use std::sync::Arc;

    use pv_drivers::xenstore::header_bytes;
    use pv_drivers::{MemError, SharedMem, VecMem};
    use shared_abi::io::xenstore::{MsgHeader, REQ, REQ_CONS, REQ_PROD, RING_SIZE, XS_READ};

    use super::*;

    /// A guest that refills its request ring as fast as the store empties it: the ring
    /// always holds 32 whole 32-byte requests, whatever the consumer index says.
    #[derive(Debug)]
    struct Endless(VecMem);

    impl SharedMem for Endless {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), MemError> {
            self.0.read_bytes(offset, buf)
        }
        fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), MemError> {
            self.0.write_bytes(offset, data)
        }
        fn load_acquire_u32(&self, offset: usize) -> Result<u32, MemError> {
            if offset == REQ_PROD {
                let cons = self.0.load_acquire_u32(REQ_CONS)?;
                return Ok(cons.wrapping_add(RING_SIZE));
            }
            self.0.load_acquire_u32(offset)
        }
        fn store_release_u32(&self, offset: usize, value: u32) -> Result<(), MemError> {
            self.0.store_release_u32(offset, value)
        }
    }

    fn endless_page() -> Arc<Endless> {
        let mem = VecMem::new(4096);
        let mut msg = header_bytes(&MsgHeader {
            msg_type: XS_READ,
            req_id: 1,
            tx_id: 0,
            len: 16,
        })
        .to_vec();
        msg.extend_from_slice(b"nothing-here-xx\0");
        assert_eq!(msg.len(), 32);
        for i in 0..(RING_SIZE as usize / 32) {
            mem.write_bytes(REQ + i * 32, &msg).unwrap();
        }
        Arc::new(Endless(mem))
    }

    #[test]
    fn a_guest_that_never_stops_asking_cannot_hold_the_store_in_a_loop() {
        let page = endless_page();
        let mut svc: Service<Arc<Endless>> = Service::new();
        svc.add_domain(9, "greedy", Arc::clone(&page)).unwrap();
        // One pump serves a bounded number of requests and returns.
        svc.pump(9);
        let served = page.0.load_acquire_u32(REQ_CONS).unwrap() as usize / 32;
        assert_eq!(served, REQUESTS_PER_PUMP);
        assert!(svc.is_connected(9));
        // It never reads the replies: once they pile up, it is cut off.
        let mut broke = Vec::new();
        for _ in 0..100 {
            broke.extend(svc.pump(9).broke);
            if !svc.is_connected(9) {
                break;
            }
        }
        assert!(!svc.is_connected(9));
        assert!(
            broke
                .iter()
                .any(|(d, why)| *d == 9 && why.contains("replies unread")),
            "{broke:?}"
        );
        // Cut off, it is not served any more.
        let before = page.0.load_acquire_u32(REQ_CONS).unwrap();
        svc.pump(9);
        assert_eq!(page.0.load_acquire_u32(REQ_CONS).unwrap(), before);
    }
}
