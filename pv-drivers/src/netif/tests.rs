use alloc::format;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;
use shared_abi::io::netif::{
    ETH_FRAME_MAX, NET_RX_RING_SIZE, NET_TX_RING_SIZE, NETIF_RSP_ERROR, NETIF_RSP_OKAY,
    NETRXF_DATA_VALIDATED, NETTXF_CSUM_BLANK,
};

use super::*;
use crate::mock::{Hostility, MockFrontend, MockNetBackend, MockNetFrontend, tx_chain};
use crate::ring::{ENTRIES_OFFSET, REQ_EVENT_OFFSET, RSP_EVENT_OFFSET, entry_size, ring_size_for};
use crate::vec_mem::VecMem;

const PAGE: usize = 4096;

fn back(front: &MockNetFrontend) -> NetBack<crate::mock::MockMem> {
    NetBack::attach(front.tx_mem(), front.rx_mem(), ETH_FRAME_MAX).unwrap()
}

fn valid(t: Option<TxTaken>) -> TxPacket {
    match t {
        Some(TxTaken::Valid(p)) => p,
        other => panic!("expected a valid packet, got {other:?}"),
    }
}

fn invalid(t: Option<TxTaken>) -> (Vec<u16>, BadTx) {
    match t {
        Some(TxTaken::Invalid { ids, why }) => (ids.to_vec(), why),
        other => panic!("expected a refused chain, got {other:?}"),
    }
}

#[test]
fn a_page_holds_the_abi_ring_sizes() {
    assert_eq!(entry_size::<NetifTxRequest, NetifTxResponse>(), 12);
    assert_eq!(entry_size::<NetifRxRequest, NetifRxResponse>(), 8);
    assert_eq!(
        ring_size_for::<NetifTxRequest, NetifTxResponse>(PAGE),
        NET_TX_RING_SIZE
    );
    assert_eq!(
        ring_size_for::<NetifRxRequest, NetifRxResponse>(PAGE),
        NET_RX_RING_SIZE
    );
    assert_eq!(NET_TX_RING_SIZE as usize, MAX_IDS);
}

// ---- validate_tx: every BadTx variant ------------------------------------------------

#[test]
fn validate_accepts_single_and_multi_slot_packets() {
    let p = validate_tx(&tx_chain(3, &[(9, 100, 60)]), ETH_FRAME_MAX).unwrap();
    assert_eq!(p.len(), 60);
    assert!(!p.is_empty());
    assert_eq!(p.ids(), [3]);
    assert_eq!(
        p.frags(),
        [TxFrag {
            gref: 9,
            offset: 100,
            len: 60
        }]
    );
    let mut slots = tx_chain(7, &[(1, 4000, 96), (2, 0, 4096), (3, 10, 1)]);
    slots[0].flags |= NETTXF_CSUM_BLANK;
    let p = validate_tx(&slots, NETIF_MAX_PACKET).unwrap();
    assert_eq!(p.len(), 96 + 4096 + 1);
    assert_eq!(p.ids(), [7, 8, 9]);
    assert_eq!(p.flags(), NETTXF_CSUM_BLANK | NETTXF_MORE_DATA);
    let lens: Vec<u16> = p.frags().iter().map(|f| f.len).collect();
    assert_eq!(lens, [96, 4096, 1]);
    assert_eq!(p.frags()[2].gref, 3);
    // 18 slots are accepted; a zero-length first fragment too.
    let frags: Vec<(u32, u16, u16)> = (0..18).map(|i| (i, 0, 100)).collect();
    let p = validate_tx(&tx_chain(0, &frags), ETH_FRAME_MAX * 2).unwrap();
    assert_eq!((p.frags().len(), p.len()), (18, 1800));
    let p = validate_tx(&tx_chain(0, &[(1, 4096, 0), (2, 0, 5)]), 100).unwrap();
    assert_eq!(p.frags()[0].len, 0);
}

#[test]
fn validate_names_each_broken_rule() {
    let v = |s: &[NetifTxRequest]| validate_tx(s, ETH_FRAME_MAX).unwrap_err();

    let frags: Vec<(u32, u16, u16)> = (0..19).map(|i| (i, 0, 10)).collect();
    let e = v(&tx_chain(0, &frags));
    assert_eq!(e, BadTx::TooManySlots { slots: 19 });
    assert!(e.is_protocol_violation() && e.is_fatal());

    let e = v(&tx_chain(0, &[(1, 4000, 97)]));
    assert_eq!(
        e,
        BadTx::CrossesPage {
            index: 0,
            offset: 4000,
            len: 97
        }
    );
    assert!(e.is_protocol_violation() && !e.is_fatal());
    assert_eq!(
        v(&tx_chain(0, &[(1, 0, 10), (2, 4090, 7)])),
        BadTx::CrossesPage {
            index: 1,
            offset: 4090,
            len: 7
        }
    );
    // Offset alone past the page, with a zero-length fragment.
    assert_eq!(
        v(&tx_chain(0, &[(1, 0, 10), (2, 4097, 0)])),
        BadTx::CrossesPage {
            index: 1,
            offset: 4097,
            len: 0
        }
    );

    let mut s = tx_chain(0, &[(1, 0, 10), (2, 0, 20)]);
    s[0].size = 19;
    let e = v(&s);
    assert_eq!(e, BadTx::SizeMismatch { first: 19, sum: 20 });
    assert!(e.is_protocol_violation() && !e.is_fatal());

    let mut s = tx_chain(0, &[(1, 0, 10)]);
    s[0].flags |= NETTXF_EXTRA_INFO;
    let e = v(&s);
    assert_eq!(e, BadTx::ExtraInfo);
    assert!(e.is_protocol_violation() && e.is_fatal());
    // Extra info on a later slot means nothing.
    let mut s = tx_chain(0, &[(1, 0, 10), (2, 0, 10)]);
    s[1].flags |= NETTXF_EXTRA_INFO;
    assert!(validate_tx(&s, ETH_FRAME_MAX).is_ok());

    let e = v(&tx_chain(0, &[(1, 0, 0)]));
    assert_eq!(e, BadTx::Empty);
    assert!(e.is_protocol_violation() && !e.is_fatal());
    assert_eq!(v(&tx_chain(0, &[(1, 0, 0), (1, 0, 0)])), BadTx::Empty);
    assert_eq!(v(&[]), BadTx::Empty);

    let e = v(&tx_chain(0, &[(1, 0, 1000), (2, 0, 515)]));
    assert_eq!(
        e,
        BadTx::TooLarge {
            len: 1515,
            max: 1514
        }
    );
    assert!(!e.is_protocol_violation() && !e.is_fatal());
    // The maximum is capped at what the wire can say.
    assert_eq!(
        validate_tx(&tx_chain(0, &[(1, 0, 10)]), usize::MAX)
            .unwrap()
            .len(),
        10
    );

    for (e, text) in [
        (
            BadTx::TooManySlots { slots: 19 },
            "tx chain of at least 19 slots (at most 18 allowed)",
        ),
        (
            BadTx::CrossesPage {
                index: 1,
                offset: 4090,
                len: 7,
            },
            "tx fragment 1 of 7 bytes at offset 4090 crosses its page",
        ),
        (
            BadTx::SizeMismatch { first: 1, sum: 2 },
            "tx chain of 1 bytes whose later fragments hold 2 bytes",
        ),
        (BadTx::ExtraInfo, "tx extra-info slot, never negotiated"),
        (BadTx::Empty, "empty tx packet"),
        (
            BadTx::TooLarge { len: 2, max: 1 },
            "tx packet of 2 bytes exceeds the maximum of 1",
        ),
    ] {
        assert_eq!(format!("{e}"), text);
    }
}

/// An independent statement of the rules: the fragment lengths, or an error.
fn model_validate(slots: &[NetifTxRequest], max: usize) -> Result<Vec<u16>, BadTx> {
    if slots.is_empty() {
        return Err(BadTx::Empty);
    }
    if slots[0].flags & 8 != 0 {
        return Err(BadTx::ExtraInfo);
    }
    if slots.len() > 18 {
        return Err(BadTx::TooManySlots { slots: slots.len() });
    }
    let total = i64::from(slots[0].size);
    let rest: i64 = slots.iter().skip(1).map(|s| i64::from(s.size)).sum();
    if rest > total {
        return Err(BadTx::SizeMismatch {
            first: slots[0].size,
            sum: u32::try_from(rest).unwrap(),
        });
    }
    let mut lens = vec![u16::try_from(total - rest).unwrap()];
    lens.extend(slots.iter().skip(1).map(|s| s.size));
    for (i, (s, &l)) in slots.iter().zip(&lens).enumerate() {
        if u32::from(s.offset) + u32::from(l) > 4096 {
            return Err(BadTx::CrossesPage {
                index: u8::try_from(i).unwrap(),
                offset: s.offset,
                len: l,
            });
        }
    }
    if total == 0 {
        return Err(BadTx::Empty);
    }
    let max = max.min(65535);
    if usize::from(slots[0].size) > max {
        return Err(BadTx::TooLarge {
            len: usize::from(slots[0].size),
            max,
        });
    }
    Ok(lens)
}

fn arb_slot() -> impl Strategy<Value = NetifTxRequest> {
    (
        any::<u32>(),
        prop_oneof![4 => 0u16..4096, 1 => any::<u16>()],
        prop_oneof![8 => Just(0u16), 1 => Just(NETTXF_EXTRA_INFO), 1 => any::<u16>()],
        any::<u16>(),
        prop_oneof![4 => 0u16..2000, 1 => any::<u16>()],
    )
        .prop_map(|(gref, offset, flags, id, size)| tx_request(id, gref, offset, size, flags))
}

/// A chain of 1..=20 fragments, mostly well-formed, sometimes subtly not.
fn arb_chain() -> impl Strategy<Value = Vec<NetifTxRequest>> {
    (
        proptest::collection::vec((any::<u32>(), 0u16..4096, 0u16..1600), 1..=20),
        prop_oneof![6 => Just(None), 1 => any::<u16>().prop_map(Some)],
        prop_oneof![12 => Just(0u16), 1 => Just(NETTXF_EXTRA_INFO), 1 => Just(NETTXF_CSUM_BLANK)],
        prop_oneof![3 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(frags, first_size, first_flags, fit)| {
            let frags: Vec<(u32, u16, u16)> = frags
                .into_iter()
                .map(|(g, o, l)| {
                    if fit {
                        (g, o.min(4096 - l), l)
                    } else {
                        (g, o, l)
                    }
                })
                .collect();
            let mut c = tx_chain(0, &frags);
            if let Some(s) = first_size {
                c[0].size = s;
            }
            c[0].flags |= first_flags;
            c
        })
}

proptest! {
    #[test]
    fn validate_agrees_with_the_model(
        slots in prop_oneof![proptest::collection::vec(arb_slot(), 0..22), arb_chain()],
        max in prop_oneof![Just(ETH_FRAME_MAX), Just(NETIF_MAX_PACKET), 0usize..70000],
    ) {
        let got = validate_tx(&slots, max);
        match model_validate(&slots, max) {
            Ok(lens) => {
                let p = got.unwrap();
                let got_lens: Vec<u16> = p.frags().iter().map(|f| f.len).collect();
                prop_assert_eq!(got_lens, lens);
                prop_assert_eq!(p.frags().iter().map(|f| usize::from(f.len)).sum::<usize>(), p.len());
                prop_assert!(!p.is_empty() && p.len() <= max);
                for (f, s) in p.frags().iter().zip(&slots) {
                    prop_assert_eq!((f.gref, f.offset), (s.gref, s.offset));
                    prop_assert!(usize::from(f.offset) + usize::from(f.len) <= PAGE);
                }
                let ids: Vec<u16> = slots.iter().map(|s| s.id).collect();
                prop_assert_eq!(p.ids(), &ids[..]);
            }
            Err(e) => prop_assert_eq!(got.unwrap_err(), e),
        }
    }
}

// ---- NetBack tx --------------------------------------------------------------------------

#[test]
fn the_back_end_takes_multi_slot_packets_and_answers_every_slot() {
    let mut front = MockNetFrontend::new().unwrap();
    let mut b = back(&front);
    assert_eq!(b.max_packet(), ETH_FRAME_MAX);
    assert!(front.send(1, &[(10, 0, 100)]).unwrap());
    front
        .send(2, &[(11, 4000, 96), (12, 0, 1000), (13, 0, 4)])
        .unwrap();
    let p1 = valid(b.next_tx().unwrap());
    let p2 = valid(b.next_tx().unwrap());
    assert_eq!(b.next_tx().unwrap(), None);
    assert_eq!((p1.len(), p1.ids()), (100, &[1u16][..]));
    assert_eq!((p2.len(), p2.ids()), (1100, &[2u16, 3, 4][..]));
    assert_eq!(
        p2.frags()[0],
        TxFrag {
            gref: 11,
            offset: 4000,
            len: 96
        }
    );
    b.respond_tx_chain(p2.ids(), NETIF_RSP_OKAY).unwrap();
    b.respond_tx(1, NETIF_RSP_ERROR).unwrap();
    assert_eq!(b.respond_tx(9, 0), Err(RingError::Full));
    assert!(b.push_tx().unwrap());
    front.tx.expect_responses(&[
        NetifTxResponse { id: 2, status: 0 },
        NetifTxResponse { id: 3, status: 0 },
        NetifTxResponse { id: 4, status: 0 },
        NetifTxResponse { id: 1, status: -1 },
    ]);
    assert!(!b.final_check_tx().unwrap());
    assert!(!b.is_disabled());
}

#[test]
fn a_partial_chain_waits_for_its_continuation_and_is_read_once() {
    let mut front = MockNetFrontend::new().unwrap();
    front.set_hostility(Hostility {
        rewrite_slots_after_read: true,
        ..Hostility::NONE
    });
    let mut b = back(&front);
    let chain = tx_chain(5, &[(1, 0, 10), (2, 0, 20), (3, 0, 30)]);
    front.send_slots(&chain[..1]).unwrap();
    assert_eq!(b.next_tx().unwrap(), None);
    assert_eq!(b.tx_partial_slots(), 1);
    front.send_slots(&chain[1..2]).unwrap();
    assert_eq!(b.next_tx().unwrap(), None);
    assert_eq!(b.tx_partial_slots(), 2);
    // Nothing answerable yet; going idle asks for a notification at the next slot.
    assert_eq!(b.respond_tx(5, 0), Err(RingError::Full));
    assert_eq!(b.respond_tx_chain(&[5], 0), Err(RingError::Full));
    assert!(!b.final_check_tx().unwrap());
    assert_eq!(front.tx.mem().snapshot()[REQ_EVENT_OFFSET], 3);
    assert!(front.send_slots(&chain[2..]).unwrap());
    let p = valid(b.next_tx().unwrap());
    assert_eq!(p.ids(), [5, 6, 7]);
    assert_eq!(p.len(), 60);
    assert_eq!(b.tx_partial_slots(), 0);
    // Each slot was read exactly once (and rewritten right after, to no effect).
    assert_eq!(front.tx.slot_rewrites(), 3);
    b.respond_tx_chain(p.ids(), NETIF_RSP_OKAY).unwrap();
    b.push_tx().unwrap();
    assert_eq!(front.take_tx_responses().unwrap().len(), 3);
}

#[test]
fn a_chain_longer_than_allowed_is_refused_after_reading_the_limit() {
    let mut front = MockNetFrontend::new().unwrap();
    front.set_hostility(Hostility {
        rewrite_slots_after_read: true,
        ..Hostility::NONE
    });
    let mut b = back(&front);
    let frags: Vec<(u32, u16, u16)> = (0..40).map(|i| (i, 0, 10)).collect();
    front.send(100, &frags).unwrap();
    let (ids, why) = invalid(b.next_tx().unwrap());
    assert_eq!(why, BadTx::TooManySlots { slots: 19 });
    assert_eq!(ids, (100..118).collect::<Vec<u16>>());
    // Only the limit was read.
    assert_eq!(front.tx.slot_rewrites(), 18);
    assert!(b.is_disabled());
    assert_eq!(b.next_tx(), Err(RingError::Disabled));
    assert_eq!(b.final_check_tx(), Err(RingError::Disabled));
    assert_eq!(front.tx.slot_rewrites(), 18);
    // The refused ids can still be answered.
    b.respond_tx_chain(&ids, NETIF_RSP_ERROR).unwrap();
    b.push_tx().unwrap();
    let rsps = front.take_tx_responses().unwrap();
    assert_eq!(rsps.len(), 18);
    assert_eq!(
        rsps[0],
        NetifTxResponse {
            id: 100,
            status: -1
        }
    );
    // rx still works.
    front.post_rx(&[(0, 1)]).unwrap();
    assert!(b.next_rx_buffer().unwrap().is_some());
}

#[test]
fn a_chain_of_exactly_the_limit_is_accepted_even_when_published_slot_by_slot() {
    let mut front = MockNetFrontend::new().unwrap();
    let mut b = NetBack::attach(front.tx_mem(), front.rx_mem(), NETIF_MAX_PACKET).unwrap();
    let frags: Vec<(u32, u16, u16)> = (0..18).map(|i| (i, 0, 4096)).collect();
    let chain = tx_chain(0, &frags);
    for s in &chain[..17] {
        front.send_slots(core::slice::from_ref(s)).unwrap();
        assert_eq!(b.next_tx().unwrap(), None);
    }
    front.send_slots(&chain[17..]).unwrap();
    // 18 * 4096 does not fit the u16 total: the first slot says 8192 (wrapped).
    let (ids, why) = invalid(b.next_tx().unwrap());
    assert_eq!(ids.len(), 18);
    assert!(matches!(why, BadTx::SizeMismatch { .. }));
    assert!(!b.is_disabled());
    let frags: Vec<(u32, u16, u16)> = (0..18).map(|i| (i, 0, 3000)).collect();
    front.send(18, &frags).unwrap();
    let p = valid(b.next_tx().unwrap());
    assert_eq!((p.len(), p.frags().len()), (54000, 18));
}

#[test]
fn extra_info_kills_the_tx_ring_without_reading_the_extra_slot() {
    let mut front = MockNetFrontend::new().unwrap();
    front.set_hostility(Hostility {
        rewrite_slots_after_read: true,
        ..Hostility::NONE
    });
    let mut b = back(&front);
    let mut s = tx_chain(1, &[(1, 0, 10), (2, 0, 0)]);
    s[0].flags |= NETTXF_EXTRA_INFO;
    front.send_slots(&s).unwrap();
    let (ids, why) = invalid(b.next_tx().unwrap());
    assert_eq!((ids, why), (vec![1], BadTx::ExtraInfo));
    assert_eq!(front.tx.slot_rewrites(), 1);
    assert!(b.is_disabled());
    assert_eq!(b.next_tx(), Err(RingError::Disabled));
}

#[test]
fn a_refused_packet_that_is_not_fatal_leaves_the_ring_in_step() {
    let mut front = MockNetFrontend::new().unwrap();
    let mut b = back(&front);
    front.send(1, &[(1, 4090, 10)]).unwrap();
    front.send(2, &[(1, 0, 1000), (1, 0, 1000)]).unwrap();
    front.send(4, &[(1, 0, 0)]).unwrap();
    front.send(5, &[(1, 0, 14), (1, 0, 14)]).unwrap();
    let (ids, why) = invalid(b.next_tx().unwrap());
    assert_eq!(ids, [1]);
    assert!(matches!(why, BadTx::CrossesPage { index: 0, .. }));
    let (ids, why) = invalid(b.next_tx().unwrap());
    assert_eq!(ids, [2, 3]);
    assert!(matches!(why, BadTx::TooLarge { len: 2000, .. }));
    let t = b.next_tx().unwrap();
    assert_eq!(t.as_ref().map(TxTaken::ids), Some(&[4u16][..]));
    assert_eq!(invalid(t).1, BadTx::Empty);
    let p = valid(b.next_tx().unwrap());
    assert_eq!(p.ids(), [5, 6]);
    assert!(!b.is_disabled());
}

#[test]
fn an_overrunning_front_end_disables_each_ring_once() {
    let mut front = MockNetFrontend::new().unwrap();
    let mut b = back(&front);
    front.send(1, &[(1, 0, 10)]).unwrap();
    front.tx.overrun_requests().unwrap();
    assert!(matches!(b.next_tx(), Err(RingError::Overrun { .. })));
    assert_eq!(b.next_tx(), Err(RingError::Disabled));
    assert_eq!(b.final_check_tx(), Err(RingError::Disabled));
    assert!(b.is_disabled());
    assert!(b.tx_ring().is_disabled());

    let mut front = MockNetFrontend::new().unwrap();
    let mut b = back(&front);
    front.post_rx(&[(0, 1)]).unwrap();
    front.rx.overrun_requests().unwrap();
    assert!(matches!(b.next_rx_buffer(), Err(RingError::Overrun { .. })));
    assert_eq!(b.next_rx_buffer(), Err(RingError::Disabled));
    assert_eq!(b.final_check_rx(), Err(RingError::Disabled));
    assert!(b.is_disabled() && b.rx_ring().is_disabled());
}

#[test]
fn a_chain_interrupted_by_an_overrun_is_not_handed_out() {
    let mut front = MockNetFrontend::new().unwrap();
    let mut b = back(&front);
    let chain = tx_chain(1, &[(1, 0, 10), (2, 0, 5)]);
    front.send_slots(&chain[..1]).unwrap();
    assert_eq!(b.next_tx().unwrap(), None);
    front.tx.overrun_requests().unwrap();
    assert!(matches!(b.next_tx(), Err(RingError::Overrun { .. })));
    assert_eq!(b.next_tx(), Err(RingError::Disabled));
}

// ---- NetBack rx --------------------------------------------------------------------------

/// The rx response in ring slot `idx`, read from a snapshot.
fn rx_slot(mem: &[u8], idx: u32) -> NetifRxResponse {
    let off = ENTRIES_OFFSET + (idx as usize % NET_RX_RING_SIZE as usize) * 8;
    zerocopy::FromBytes::read_from_bytes(&mem[off..off + 8]).unwrap()
}

#[test]
fn rx_responses_go_in_the_slot_of_their_request_in_take_order() {
    let mut front = MockNetFrontend::new().unwrap();
    let mut b = back(&front);
    assert_eq!(b.respond_rx(&rx_response(0, 1, 0)), Err(RingError::Full));
    front.post_rx(&[(40, 400), (41, 410), (42, 420)]).unwrap();
    let r0 = b.next_rx_buffer().unwrap().unwrap();
    let r1 = b.next_rx_buffer().unwrap().unwrap();
    assert_eq!((r0.id, r0.gref, r1.id, r1.gref), (40, 400, 41, 410));
    assert_eq!(b.rx_buffers_taken(), 2);
    assert_eq!(b.oldest_rx_id(), Some(40));
    b.respond_rx(&rx_response(40, 60, NETRXF_DATA_VALIDATED))
        .unwrap();
    let r2 = b.next_rx_buffer().unwrap().unwrap();
    assert_eq!(r2.id, 42);
    assert_eq!(b.next_rx_buffer().unwrap(), None);
    assert_eq!(b.oldest_rx_id(), Some(41));
    b.respond_rx(&rx_response(41, NETIF_RSP_DROPPED_TEST, 0))
        .unwrap();
    b.respond_rx(&NetifRxResponse {
        id: 42,
        offset: 2,
        flags: 0,
        status: 1514,
    })
    .unwrap();
    assert_eq!(b.rx_buffers_taken(), 0);
    assert_eq!(b.oldest_rx_id(), None);
    assert!(b.push_rx().unwrap());
    let mem = front.rx_mem().snapshot();
    assert_eq!(rx_slot(&mem, 0), rx_response(40, 60, NETRXF_DATA_VALIDATED));
    assert_eq!(rx_slot(&mem, 1), rx_response(41, NETIF_RSP_DROPPED_TEST, 0));
    assert_eq!(rx_slot(&mem, 2).id, 42);
    assert_eq!(rx_slot(&mem, 2).offset, 2);
    assert_eq!(front.take_rx_responses().unwrap().len(), 3);
    assert!(!b.final_check_rx().unwrap());
    assert_eq!(front.rx_mem().snapshot()[REQ_EVENT_OFFSET], 4);
    front.post_rx(&[(1, 1)]).unwrap();
    assert!(b.final_check_rx().unwrap());
}

const NETIF_RSP_DROPPED_TEST: i16 = shared_abi::io::netif::NETIF_RSP_DROPPED;

#[test]
#[should_panic(expected = "rx responses must follow the take order")]
#[cfg(debug_assertions)]
fn answering_rx_out_of_take_order_is_caught_in_debug_builds() {
    let mut front = MockNetFrontend::new().unwrap();
    let mut b = back(&front);
    front.post_rx(&[(1, 1), (2, 2)]).unwrap();
    b.next_rx_buffer().unwrap();
    b.next_rx_buffer().unwrap();
    let _ = b.respond_rx(&rx_response(2, 10, 0));
}

#[test]
fn rx_slots_follow_the_take_order_across_the_wrap_and_a_hostile_front_end() {
    for h in [Hostility::NONE, Hostility::ALL] {
        let mut front = MockNetFrontend {
            tx: MockFrontend::new(PAGE).unwrap(),
            rx: MockFrontend::with_start_index(PAGE, u32::MAX - 5).unwrap(),
        };
        front.set_hostility(h);
        let mut b = back(&front);
        let mut idx = u32::MAX - 5;
        for round in 0..3u16 {
            let bufs: Vec<(u16, u32)> = (0..200u16)
                .map(|i| (i, u32::from(round) * 1000 + u32::from(i)))
                .collect();
            front.post_rx(&bufs).unwrap();
            let mut taken = Vec::new();
            while let Some(r) = b.next_rx_buffer().unwrap() {
                taken.push(r);
            }
            assert_eq!(taken.len(), 200);
            for (r, &(id, gref)) in taken.iter().zip(&bufs) {
                assert_eq!((r.id, r.gref), (id, gref));
                b.respond_rx(&rx_response(r.id, 64, 0)).unwrap();
            }
            b.push_rx().unwrap();
            let mem = front.rx_mem().snapshot();
            for &(id, _) in &bufs {
                assert_eq!(rx_slot(&mem, idx).id, id);
                idx = idx.wrapping_add(1);
            }
            let rsps = front.take_rx_responses().unwrap();
            let ids: Vec<u16> = rsps.iter().map(|r| r.id).collect();
            assert_eq!(ids, (0..200).collect::<Vec<u16>>());
        }
    }
}

// ---- NetFront ----------------------------------------------------------------------------

fn front_end(mock: &MockNetBackend) -> NetFront<crate::mock::MockMem> {
    NetFront::init(mock.tx_mem(), mock.rx_mem()).unwrap()
}

#[test]
fn the_front_end_tracks_tx_ids() {
    let mut mock = MockNetBackend::new().unwrap();
    let mut f = front_end(&mock);
    assert_eq!(f.tx_free(), 256);
    for s in tx_chain(10, &[(1, 0, 50), (2, 0, 50)]) {
        f.queue_tx(&s).unwrap();
    }
    assert_eq!(
        f.queue_tx(&tx_request(10, 1, 0, 1, 0)),
        Err(FrontError::BadId(10))
    );
    assert_eq!(
        f.queue_tx(&tx_request(256, 1, 0, 1, 0)),
        Err(FrontError::BadId(256))
    );
    assert_eq!(f.tx_in_flight(), 2);
    assert_eq!(f.tx_free(), 254);
    assert!(f.push_tx().unwrap());
    let slots = mock.take_tx().unwrap();
    assert_eq!(slots, tx_chain(10, &[(1, 0, 50), (2, 0, 50)]));
    mock.ack_tx(&slots).unwrap();
    assert_eq!(
        f.take_tx_response().unwrap(),
        Some(NetifTxResponse { id: 11, status: 0 })
    );
    assert_eq!(
        f.take_tx_response().unwrap(),
        Some(NetifTxResponse { id: 10, status: 0 })
    );
    assert_eq!(f.take_tx_response().unwrap(), None);
    assert_eq!(f.tx_in_flight(), 0);
    // The id is free again.
    f.queue_tx(&tx_request(10, 1, 0, 1, 0)).unwrap();
    f.push_tx().unwrap();
    let slots = mock.take_tx().unwrap();
    // A duplicate answer: the first is fine, the second is an unknown id.
    mock.tx
        .respond([NetifTxResponse { id: 10, status: 0 }])
        .unwrap();
    assert!(f.take_tx_response().unwrap().is_some());
    f.queue_tx(&tx_request(12, 1, 0, 1, 0)).unwrap();
    f.push_tx().unwrap();
    mock.take_tx().unwrap();
    mock.tx
        .respond([NetifTxResponse { id: 10, status: 0 }])
        .unwrap();
    assert_eq!(f.take_tx_response(), Err(FrontError::UnknownId(10)));
    assert!(f.is_disabled());
    assert_eq!(f.take_tx_response(), Err(FrontError::Disabled));
    assert_eq!(f.queue_tx(&slots[0]), Err(FrontError::Disabled));
    assert_eq!(f.final_check(), Err(FrontError::Disabled));
}

#[test]
fn the_front_end_fills_the_tx_ring_and_reuses_ids() {
    let mut mock = MockNetBackend::new().unwrap();
    let mut f = front_end(&mock);
    for id in 0..256u16 {
        f.queue_tx(&tx_request(id, 1, 0, 60, 0)).unwrap();
    }
    assert_eq!(f.tx_free(), 0);
    assert_eq!(f.tx_in_flight(), 256);
    f.push_tx().unwrap();
    let slots = mock.take_tx().unwrap();
    mock.ack_tx(&slots).unwrap();
    let mut n = 0;
    while f.take_tx_response().unwrap().is_some() {
        n += 1;
    }
    assert_eq!((n, f.tx_free(), f.tx_in_flight()), (256, 256, 0));
}

#[test]
fn the_front_end_validates_rx_responses() {
    let mut mock = MockNetBackend::new().unwrap();
    let mut f = front_end(&mock);
    assert_eq!(f.rx_free(), 256);
    f.post_rx(1, 100).unwrap();
    f.post_rx(2, 200).unwrap();
    f.post_rx(3, 300).unwrap();
    assert_eq!(f.post_rx(2, 7), Err(FrontError::BadId(2)));
    assert_eq!(f.post_rx(300, 7), Err(FrontError::BadId(300)));
    assert_eq!(f.rx_posted(), 3);
    assert!(f.push_rx().unwrap());
    let bufs = mock.take_rx_buffers().unwrap();
    assert_eq!(
        bufs.iter().map(|b| (b.id, b.gref)).collect::<Vec<_>>(),
        [(1, 100), (2, 200), (3, 300)]
    );
    mock.fill_rx([
        NetifRxResponse {
            id: 1,
            offset: 0,
            flags: 0,
            status: 4096,
        },
        NetifRxResponse {
            id: 2,
            offset: 4095,
            flags: 0,
            status: NETIF_RSP_ERROR,
        },
    ])
    .unwrap();
    assert_eq!(f.take_rx().unwrap().unwrap().status, 4096);
    assert_eq!(f.take_rx().unwrap().unwrap().status, NETIF_RSP_ERROR);
    assert_eq!(f.take_rx().unwrap(), None);
    assert_eq!(f.rx_posted(), 1);
    // The returned ids can be posted again.
    f.post_rx(1, 101).unwrap();
    f.push_rx().unwrap();
    mock.take_rx_buffers().unwrap();
    mock.fill_rx([NetifRxResponse {
        id: 3,
        offset: 4000,
        flags: 0,
        status: 97,
    }])
    .unwrap();
    assert_eq!(
        f.take_rx(),
        Err(FrontError::BadRxResponse {
            id: 3,
            offset: 4000,
            status: 97
        })
    );
    assert!(f.is_disabled());
    assert_eq!(f.take_rx(), Err(FrontError::Disabled));
    assert_eq!(f.post_rx(5, 5), Err(FrontError::Disabled));
}

#[test]
fn the_front_end_catches_an_unknown_rx_id() {
    let mut mock = MockNetBackend::new().unwrap();
    let mut f = front_end(&mock);
    f.post_rx(1, 100).unwrap();
    f.push_rx().unwrap();
    mock.take_rx_buffers().unwrap();
    mock.fill_rx([rx_response(9, 10, 0)]).unwrap();
    assert_eq!(f.take_rx(), Err(FrontError::UnknownId(9)));
    assert!(f.is_disabled());
    for (e, text) in [
        (
            FrontError::UnknownId(9),
            "the back-end answered id 9, which is not in flight or posted",
        ),
        (
            FrontError::BadRxResponse {
                id: 3,
                offset: 4000,
                status: 97,
            },
            "the back-end put 97 bytes at offset 4000 of rx buffer 3, outside the page",
        ),
        (
            FrontError::BadId(300),
            "id 300 is out of range (0..256) or already in use",
        ),
        (
            FrontError::Disabled,
            "front-end disabled after a back-end violation",
        ),
        (FrontError::Ring(RingError::Full), "no free ring slot"),
    ] {
        assert_eq!(format!("{e}"), text);
    }
}

#[test]
fn final_check_arms_both_rings() {
    let mut mock = MockNetBackend::new().unwrap();
    let mut f = front_end(&mock);
    f.queue_tx(&tx_request(0, 1, 0, 60, 0)).unwrap();
    f.push_tx().unwrap();
    f.post_rx(0, 1).unwrap();
    f.post_rx(1, 1).unwrap();
    f.push_rx().unwrap();
    // Poison both event indices so the check must rewrite them.
    mock.tx.poke_u32(RSP_EVENT_OFFSET, 77).unwrap();
    mock.rx.poke_u32(RSP_EVENT_OFFSET, 77).unwrap();
    assert!(!f.final_check().unwrap());
    let ev = |m: crate::mock::MockMem| m.load_acquire_u32(RSP_EVENT_OFFSET).unwrap();
    assert_eq!((ev(mock.tx_mem()), ev(mock.rx_mem())), (1, 1));
    let slots = mock.take_tx().unwrap();
    // A tx response waiting: true, and rx is still armed.
    assert!(mock.ack_tx(&slots).unwrap());
    mock.rx.poke_u32(RSP_EVENT_OFFSET, 77).unwrap();
    assert!(f.final_check().unwrap());
    assert_eq!(ev(mock.rx_mem()), 1);
    f.take_tx_response().unwrap().unwrap();
    // An rx response only.
    mock.take_rx_buffers().unwrap();
    assert!(mock.fill_rx([rx_response(0, 60, 0)]).unwrap());
    assert!(f.final_check().unwrap());
    f.take_rx().unwrap().unwrap();
    assert!(!f.final_check().unwrap());
    assert_eq!((ev(mock.tx_mem()), ev(mock.rx_mem())), (2, 2));
}

#[test]
fn a_hostile_back_end_cannot_overrun_the_front_end() {
    let mut mock = MockNetBackend::new().unwrap();
    let mut f = front_end(&mock);
    mock.set_hostility(Hostility::ALL);
    f.queue_tx(&tx_request(0, 1, 0, 60, 0)).unwrap();
    f.push_tx().unwrap();
    mock.tx.ring().unwrap();
    mock.tx.overrun_responses().unwrap();
    assert!(matches!(
        f.take_tx_response(),
        Err(FrontError::Ring(RingError::Overrun { .. }))
    ));
    assert!(f.is_disabled());
    assert_eq!(
        f.take_tx_response(),
        Err(FrontError::Ring(RingError::Disabled))
    );

    let mut mock = MockNetBackend::new().unwrap();
    let mut f = front_end(&mock);
    mock.rx.ring().unwrap();
    mock.rx.overrun_responses().unwrap();
    assert!(matches!(
        f.take_rx(),
        Err(FrontError::Ring(RingError::Overrun { .. }))
    ));
    assert_eq!(f.take_rx(), Err(FrontError::Ring(RingError::Disabled)));
}

#[test]
fn a_rewriting_back_end_changes_nothing_the_front_end_took() {
    let run = |h: Hostility| {
        let mut mock = MockNetBackend::new().unwrap();
        let mut f = front_end(&mock);
        mock.set_hostility(h);
        for id in 0..8u16 {
            f.queue_tx(&tx_request(id, 1, 0, 60, 0)).unwrap();
            f.post_rx(id, u32::from(id)).unwrap();
        }
        f.push_tx().unwrap();
        f.push_rx().unwrap();
        let slots = mock.take_tx().unwrap();
        mock.ack_tx(&slots).unwrap();
        let bufs = mock.take_rx_buffers().unwrap();
        mock.fill_rx(bufs.iter().map(|b| rx_response(b.id, 100 + b.id as i16, 0)))
            .unwrap();
        let mut tx = Vec::new();
        while let Some(r) = f.take_tx_response().unwrap() {
            tx.push(r);
        }
        let mut rx = Vec::new();
        while let Some(r) = f.take_rx().unwrap() {
            rx.push(r);
        }
        (tx, rx, f.tx_in_flight(), f.rx_posted())
    };
    let honest = run(Hostility::NONE);
    assert_eq!(
        (honest.0.len(), honest.1.len(), honest.2, honest.3),
        (8, 8, 0, 0)
    );
    assert_eq!(honest, run(Hostility::ALL));
}

// ---- sessions and properties -------------------------------------------------------------

/// What the back-end did with one chain, as comparable data.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Packet {
        ids: Vec<u16>,
        frags: Vec<TxFrag>,
        len: usize,
        flags: u16,
    },
    Refused {
        ids: Vec<u16>,
        why: BadTx,
    },
}

fn got(t: TxTaken) -> Got {
    match t {
        TxTaken::Valid(p) => Got::Packet {
            ids: p.ids().to_vec(),
            frags: p.frags().to_vec(),
            len: p.len(),
            flags: p.flags(),
        },
        TxTaken::Invalid { ids, why } => Got::Refused {
            ids: ids.to_vec(),
            why,
        },
    }
}

/// The model back-end: splits the slot stream into chains and judges each with
/// `model_validate`; stops after a fatal chain.
fn model_stream(stream: &[NetifTxRequest], max: usize) -> Vec<Got> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < stream.len() {
        let start = i;
        let fatal = loop {
            let s = stream[i];
            i += 1;
            if i - start == 1 && s.flags & NETTXF_EXTRA_INFO != 0 {
                break Some(BadTx::ExtraInfo);
            }
            if s.flags & NETTXF_MORE_DATA == 0 {
                break None;
            }
            if i - start == 18 {
                break Some(BadTx::TooManySlots { slots: 19 });
            }
            if i == stream.len() {
                // An unfinished chain is never handed out.
                return out;
            }
        };
        let chain = &stream[start..i];
        let ids: Vec<u16> = chain.iter().map(|s| s.id).collect();
        if let Some(why) = fatal {
            out.push(Got::Refused { ids, why });
            return out;
        }
        out.push(match model_validate(chain, max) {
            Ok(lens) => Got::Packet {
                ids,
                frags: chain
                    .iter()
                    .zip(lens)
                    .map(|(s, len)| TxFrag {
                        gref: s.gref,
                        offset: s.offset,
                        len,
                    })
                    .collect(),
                len: usize::from(chain[0].size),
                flags: chain[0].flags,
            },
            Err(why) => Got::Refused { ids, why },
        });
    }
    out
}

/// Runs `stream` through a `NetBack`, published in batches of `batches` slots (cycled),
/// answering each chain as it is taken; returns what it took, the tx responses the
/// front-end got, and how often the back-end read a slot.
fn tx_session(
    stream: &[NetifTxRequest],
    batches: &[usize],
    start: u32,
    h: Hostility,
) -> (Vec<Got>, Vec<NetifTxResponse>, u64) {
    let mut front = MockNetFrontend {
        tx: MockFrontend::with_start_index(PAGE, start).unwrap(),
        rx: MockFrontend::new(PAGE).unwrap(),
    };
    front.set_hostility(h);
    let mut b = back(&front);
    let mut out = Vec::new();
    let mut rsps = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < stream.len() {
        let n = batches[k % batches.len()].min(stream.len() - at);
        k += 1;
        front.send_slots(&stream[at..at + n]).unwrap();
        at += n;
        loop {
            match b.next_tx() {
                Ok(Some(t)) => {
                    let status = if matches!(t, TxTaken::Valid(_)) {
                        NETIF_RSP_OKAY
                    } else {
                        NETIF_RSP_ERROR
                    };
                    b.respond_tx_chain(t.ids(), status).unwrap();
                    out.push(got(t));
                }
                Ok(None) => break,
                Err(RingError::Disabled) => {
                    assert!(b.is_disabled());
                    break;
                }
                Err(e) => panic!("unexpected ring error {e}"),
            }
        }
        b.push_tx().unwrap();
        rsps.extend(front.take_tx_responses().unwrap());
        if b.is_disabled() {
            break;
        }
    }
    (out, rsps, front.tx.slot_rewrites())
}

fn arb_stream() -> impl Strategy<Value = Vec<NetifTxRequest>> {
    proptest::collection::vec(arb_chain(), 0..30).prop_map(|chains| {
        let mut id = 0u16;
        let mut out = Vec::new();
        for mut c in chains {
            for s in &mut c {
                s.id = id;
                id = id.wrapping_add(1);
            }
            out.extend(c);
        }
        out
    })
}

proptest! {
    /// Random packets in (split across publications anywhere, crossing the index wrap),
    /// the same packets out, judged as the model judges them; every taken slot is read
    /// exactly once and answered exactly once; a hostile front-end changes nothing.
    #[test]
    fn the_back_end_agrees_with_the_model(
        stream in arb_stream(),
        batches in proptest::collection::vec(1usize..40, 1..6),
        start in prop_oneof![Just(0u32), (u32::MAX - 300)..=u32::MAX, any::<u32>()],
    ) {
        let expected = model_stream(&stream, ETH_FRAME_MAX);
        let (out, rsps, reads) = tx_session(&stream, &batches, start, Hostility::NONE);
        prop_assert_eq!(&out, &expected);
        let taken: Vec<u16> = out.iter().flat_map(|g| match g {
            Got::Packet { ids, .. } | Got::Refused { ids, .. } => ids.clone(),
        }).collect();
        let answered: Vec<u16> = rsps.iter().map(|r| r.id).collect();
        prop_assert_eq!(&answered, &taken);
        for g in &out {
            if let Got::Packet { frags, len, .. } = g {
                prop_assert_eq!(frags.iter().map(|f| usize::from(f.len)).sum::<usize>(), *len);
            }
        }
        let (h_out, h_rsps, h_reads) = tx_session(&stream, &batches, start, Hostility::ALL);
        prop_assert_eq!(&h_out, &out);
        prop_assert_eq!(&h_rsps, &rsps);
        prop_assert_eq!(reads, 0);
        // Each slot the back-end consumed was read once: the published slots, minus those
        // left unread after a fatal chain.
        let consumed = taken.len() as u64 + partial_tail(&stream, &expected);
        prop_assert_eq!(h_reads, consumed);
    }
}

/// Slots of an unfinished chain at the end of `stream` that the back-end copied (0 when the
/// stream ended on a fatal chain, since nothing after it is read).
fn partial_tail(stream: &[NetifTxRequest], expected: &[Got]) -> u64 {
    let taken: usize = expected
        .iter()
        .map(|g| match g {
            Got::Packet { ids, .. } | Got::Refused { ids, .. } => ids.len(),
        })
        .sum();
    let fatal = matches!(
        expected.last(),
        Some(Got::Refused { why, .. }) if why.is_fatal()
    );
    if fatal {
        0
    } else {
        (stream.len() - taken) as u64
    }
}

// ---- end to end: NetFront against NetBack ------------------------------------------------

proptest! {
    /// A real front-end and back-end over shared memory: every packet sent arrives intact,
    /// every slot is answered, every posted buffer comes back with the length the back-end
    /// put in it, and neither end reports a violation.
    #[test]
    fn front_and_back_end_agree(
        packets in proptest::collection::vec(proptest::collection::vec(1u16..1000, 1..4), 1..80),
        rx_lens in proptest::collection::vec(1i16..=1514, 1..300),
    ) {
        let tx_mem = Arc::new(VecMem::new(PAGE));
        let rx_mem = Arc::new(VecMem::new(PAGE));
        let mut f = NetFront::init(Arc::clone(&tx_mem), Arc::clone(&rx_mem)).unwrap();
        let mut b = NetBack::attach(tx_mem, rx_mem, NETIF_MAX_PACKET).unwrap();
        let mut next_id = 0u16;
        let mut sent = Vec::new();
        let mut received = Vec::new();
        for lens in &packets {
            prop_assert!(f.tx_free() >= lens.len() as u32);
            let frags: Vec<(u32, u16, u16)> =
                lens.iter().enumerate().map(|(i, &l)| (u32::from(next_id) + i as u32, 0, l)).collect();
            let mut chain = tx_chain(0, &frags);
            for s in &mut chain {
                s.id = next_id;
                next_id = (next_id + 1) % 256;
            }
            for s in &chain {
                f.queue_tx(s).unwrap();
            }
            f.push_tx().unwrap();
            sent.push(frags);
            while let Some(t) = b.next_tx().unwrap() {
                let TxTaken::Valid(p) = t else { panic!("refused {t:?}") };
                received.push(p.frags().iter().map(|x| (x.gref, x.offset, x.len)).collect::<Vec<_>>());
                b.respond_tx_chain(p.ids(), NETIF_RSP_OKAY).unwrap();
            }
            b.push_tx().unwrap();
            while let Some(r) = f.take_tx_response().unwrap() {
                prop_assert_eq!(r.status, NETIF_RSP_OKAY);
            }
        }
        prop_assert_eq!(&received, &sent);
        prop_assert_eq!(f.tx_in_flight(), 0);

        // rx: keep 64 buffers posted; the back-end fills them in take order.
        let mut posted = 0u16;
        let mut got_lens = Vec::new();
        let mut pending = rx_lens.iter().copied();
        let mut next_len = pending.next();
        while next_len.is_some() || f.rx_posted() > 0 {
            while f.rx_posted() < 64 {
                f.post_rx(posted % 256, u32::from(posted)).unwrap_or_else(|e| panic!("{e}"));
                posted = posted.wrapping_add(1);
            }
            f.push_rx().unwrap();
            while let Some(buf) = b.next_rx_buffer().unwrap() {
                let rsp = match next_len {
                    Some(l) => { next_len = pending.next(); rx_response(buf.id, l, 0) }
                    None => rx_response(buf.id, shared_abi::io::netif::NETIF_RSP_DROPPED, 0),
                };
                b.respond_rx(&rsp).unwrap();
            }
            b.push_rx().unwrap();
            while let Some(r) = f.take_rx().unwrap() {
                if r.status > 0 { got_lens.push(r.status); }
            }
            if next_len.is_none() { break; }
        }
        prop_assert_eq!(&got_lens, &rx_lens);
        prop_assert!(!f.is_disabled() && !b.is_disabled());
    }
}
