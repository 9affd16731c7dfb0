//! netif mocks: a front-end and a back-end that each own a tx and an rx ring (one page
//! each), built from [`MockFrontend`] and [`MockBackend`], with packet-level helpers.
//!
//! - [`MockNetFrontend`] plays a netfront against a back-end under test (attach the latter
//!   to [`tx_mem`](MockNetFrontend::tx_mem) and [`rx_mem`](MockNetFrontend::rx_mem)).
//! - [`MockNetBackend`] plays a netback against a front-end under test (initialise the
//!   latter on [`tx_mem`](MockNetBackend::tx_mem) and [`rx_mem`](MockNetBackend::rx_mem)
//!   first).
//!
//! Both fields are public, so everything the generic mocks offer (hostility per ring,
//! overruns, pokes, notification counters) stays available.

use alloc::vec::Vec;

use shared_abi::io::netif::{
    NETIF_PAGE_SIZE, NETIF_RSP_OKAY, NETTXF_MORE_DATA, NetifRxRequest, NetifRxResponse,
    NetifTxRequest, NetifTxResponse,
};

use super::{Hostility, MockBackend, MockFrontend, MockMem};
use crate::ring::RingError;

/// The tx slots of one packet made of `frags` (`(gref, offset, len)` each), with ids
/// `first_id`, `first_id + 1`, …: the first slot's `size` is the total, every slot but the
/// last has `NETTXF_MORE_DATA`. Lengths are truncated to `u16` as the wire does.
#[must_use]
pub fn tx_chain(first_id: u16, frags: &[(u32, u16, u16)]) -> Vec<NetifTxRequest> {
    let total: u32 = frags.iter().map(|f| u32::from(f.2)).sum();
    let last = frags.len().saturating_sub(1);
    frags
        .iter()
        .enumerate()
        .map(|(i, &(gref, offset, len))| NetifTxRequest {
            gref,
            offset,
            flags: if i < last { NETTXF_MORE_DATA } else { 0 },
            // Truncation intended: ids wrap as u16s.
            id: first_id.wrapping_add(i as u16),
            // Truncation intended: a too-long packet is what some tests want to send.
            size: if i == 0 { total as u16 } else { len },
        })
        .collect()
}

/// A scripted netif front-end. See the [module docs](self).
#[derive(Debug)]
pub struct MockNetFrontend {
    /// The tx ring's mock front-end.
    pub tx: MockFrontend<NetifTxRequest, NetifTxResponse>,
    /// The rx ring's mock front-end.
    pub rx: MockFrontend<NetifRxRequest, NetifRxResponse>,
}

impl MockNetFrontend {
    /// Two fresh one-page rings, initialised as a front-end does.
    ///
    /// # Errors
    /// Never for page-sized rings.
    pub fn new() -> Result<Self, RingError> {
        Ok(Self {
            tx: MockFrontend::new(NETIF_PAGE_SIZE)?,
            rx: MockFrontend::new(NETIF_PAGE_SIZE)?,
        })
    }

    /// The tx ring memory, for the back-end under test.
    #[must_use]
    pub fn tx_mem(&self) -> MockMem {
        self.tx.mem()
    }

    /// The rx ring memory, for the back-end under test.
    #[must_use]
    pub fn rx_mem(&self) -> MockMem {
        self.rx.mem()
    }

    /// Switches hostile behaviours on or off for both rings.
    pub fn set_hostility(&self, hostility: Hostility) {
        self.tx.set_hostility(hostility);
        self.rx.set_hostility(hostility);
    }

    /// Entry reads by the code under test that were followed by a rewrite, both rings.
    #[must_use]
    pub fn slot_rewrites(&self) -> u64 {
        self.tx.slot_rewrites() + self.rx.slot_rewrites()
    }

    /// Publishes raw tx slots (any chain, well-formed or not); whether to notify.
    ///
    /// # Errors
    /// As [`MockFrontend::submit`].
    pub fn send_slots(&mut self, slots: &[NetifTxRequest]) -> Result<bool, RingError> {
        self.tx.submit(slots.iter().copied())
    }

    /// Publishes one packet of `frags` with ids from `first_id` (see [`tx_chain`]).
    ///
    /// # Errors
    /// As [`MockFrontend::submit`].
    pub fn send(&mut self, first_id: u16, frags: &[(u32, u16, u16)]) -> Result<bool, RingError> {
        self.send_slots(&tx_chain(first_id, frags))
    }

    /// Posts rx buffers `(id, gref)` and publishes them; whether to notify.
    ///
    /// # Errors
    /// As [`MockFrontend::submit`].
    pub fn post_rx(&mut self, buffers: &[(u16, u32)]) -> Result<bool, RingError> {
        self.rx.submit(
            buffers
                .iter()
                .map(|&(id, gref)| NetifRxRequest { id, pad: 0, gref }),
        )
    }

    /// Takes every published tx response.
    ///
    /// # Errors
    /// As [`MockFrontend::take_responses`].
    pub fn take_tx_responses(&mut self) -> Result<Vec<NetifTxResponse>, RingError> {
        self.tx.take_responses()
    }

    /// Takes every published rx response.
    ///
    /// # Errors
    /// As [`MockFrontend::take_responses`].
    pub fn take_rx_responses(&mut self) -> Result<Vec<NetifRxResponse>, RingError> {
        self.rx.take_responses()
    }
}

/// A scripted netif back-end. See the [module docs](self).
#[derive(Debug)]
pub struct MockNetBackend {
    /// The tx ring's mock back-end.
    pub tx: MockBackend<NetifTxRequest, NetifTxResponse>,
    /// The rx ring's mock back-end.
    pub rx: MockBackend<NetifRxRequest, NetifRxResponse>,
}

impl MockNetBackend {
    /// Two zeroed pages for the front-end under test to initialise.
    ///
    /// # Errors
    /// Never for page-sized rings.
    pub fn new() -> Result<Self, RingError> {
        Ok(Self {
            tx: MockBackend::new(NETIF_PAGE_SIZE)?,
            rx: MockBackend::new(NETIF_PAGE_SIZE)?,
        })
    }

    /// The tx ring memory, for the front-end under test.
    #[must_use]
    pub fn tx_mem(&self) -> MockMem {
        self.tx.mem()
    }

    /// The rx ring memory, for the front-end under test.
    #[must_use]
    pub fn rx_mem(&self) -> MockMem {
        self.rx.mem()
    }

    /// Switches hostile behaviours on or off for both rings.
    pub fn set_hostility(&self, hostility: Hostility) {
        self.tx.set_hostility(hostility);
        self.rx.set_hostility(hostility);
    }

    /// Takes every published tx slot.
    ///
    /// # Errors
    /// As [`MockBackend::take_requests`].
    pub fn take_tx(&mut self) -> Result<Vec<NetifTxRequest>, RingError> {
        self.tx.take_requests()
    }

    /// Answers `slots` (as taken) the way a netback does — `OKAY` for each data slot — in
    /// reverse order (responses may come in any order), and publishes; whether to notify.
    ///
    /// # Errors
    /// As [`MockBackend::respond`].
    pub fn ack_tx(&mut self, slots: &[NetifTxRequest]) -> Result<bool, RingError> {
        let mut rsps: Vec<NetifTxResponse> = slots
            .iter()
            .map(|s| NetifTxResponse {
                id: s.id,
                status: NETIF_RSP_OKAY,
            })
            .collect();
        rsps.reverse();
        self.tx.respond(rsps)
    }

    /// Takes every posted rx buffer.
    ///
    /// # Errors
    /// As [`MockBackend::take_requests`].
    pub fn take_rx_buffers(&mut self) -> Result<Vec<NetifRxRequest>, RingError> {
        self.rx.take_requests()
    }

    /// Answers the oldest taken rx buffers with `responses` (in slot order, as a netback
    /// must) and publishes; whether to notify.
    ///
    /// # Errors
    /// As [`MockBackend::respond`].
    pub fn fill_rx<I: IntoIterator<Item = NetifRxResponse>>(
        &mut self,
        responses: I,
    ) -> Result<bool, RingError> {
        self.rx.respond(responses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{BackRing, FrontRing};

    #[test]
    fn tx_chain_builds_xen_style_chains() {
        let c = tx_chain(u16::MAX, &[(1, 2, 10), (3, 4, 20)]);
        assert_eq!(
            c,
            [
                NetifTxRequest {
                    gref: 1,
                    offset: 2,
                    flags: NETTXF_MORE_DATA,
                    id: u16::MAX,
                    size: 30
                },
                NetifTxRequest {
                    gref: 3,
                    offset: 4,
                    flags: 0,
                    id: 0,
                    size: 20
                },
            ]
        );
        assert!(tx_chain(0, &[]).is_empty());
    }

    #[test]
    fn the_net_mocks_talk_to_raw_rings() {
        let mut front = MockNetFrontend::new().unwrap();
        let mut tx =
            BackRing::<NetifTxRequest, NetifTxResponse, _>::attach(front.tx_mem()).unwrap();
        let mut rx =
            BackRing::<NetifRxRequest, NetifRxResponse, _>::attach(front.rx_mem()).unwrap();
        front.set_hostility(Hostility::ALL);
        assert!(front.send(7, &[(1, 0, 10)]).unwrap());
        assert!(front.post_rx(&[(3, 30)]).unwrap());
        assert_eq!(tx.take_request().unwrap().unwrap().id, 7);
        assert_eq!(rx.take_request().unwrap().unwrap().gref, 30);
        assert_eq!(front.slot_rewrites(), 2);
        tx.queue_response(&NetifTxResponse { id: 7, status: 0 })
            .unwrap();
        tx.push_responses().unwrap();
        rx.queue_response(&NetifRxResponse {
            id: 3,
            offset: 0,
            flags: 0,
            status: 5,
        })
        .unwrap();
        rx.push_responses().unwrap();
        assert_eq!(front.take_tx_responses().unwrap().len(), 1);
        assert_eq!(front.take_rx_responses().unwrap()[0].status, 5);

        let mut back = MockNetBackend::new().unwrap();
        let mut ftx = FrontRing::<NetifTxRequest, NetifTxResponse, _>::init(back.tx_mem()).unwrap();
        let mut frx = FrontRing::<NetifRxRequest, NetifRxResponse, _>::init(back.rx_mem()).unwrap();
        back.set_hostility(Hostility::NONE);
        for s in tx_chain(1, &[(1, 0, 10), (2, 0, 5)]) {
            ftx.queue_request(&s).unwrap();
        }
        ftx.push_requests().unwrap();
        frx.queue_request(&NetifRxRequest {
            id: 4,
            pad: 0,
            gref: 40,
        })
        .unwrap();
        frx.push_requests().unwrap();
        let slots = back.take_tx().unwrap();
        assert!(back.ack_tx(&slots).unwrap());
        assert_eq!(
            ftx.take_response().unwrap(),
            Some(NetifTxResponse {
                id: 2,
                status: NETIF_RSP_OKAY
            })
        );
        assert_eq!(
            ftx.take_response().unwrap(),
            Some(NetifTxResponse {
                id: 1,
                status: NETIF_RSP_OKAY
            })
        );
        assert_eq!(back.take_rx_buffers().unwrap()[0].id, 4);
        back.fill_rx([NetifRxResponse {
            id: 4,
            offset: 0,
            flags: 0,
            status: 9,
        }])
        .unwrap();
        assert_eq!(frx.take_response().unwrap().unwrap().status, 9);
    }
}
