//! Unit tests of ring layout, sizing and the two ends, one behaviour per test.

use alloc::string::ToString;
use alloc::vec::Vec;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::*;
use crate::vec_mem::VecMem;

/// Shaped like `blkif_request` (112 bytes): op, nr_segments, handle, pad, id, sector, and
/// 11 segments of {gref, first_sect, last_sect, pad}.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct BlkifRequest {
    operation: u8,
    nr_segments: u8,
    handle: u16,
    _pad: u32,
    id: u64,
    sector_number: u64,
    seg: [[u8; 8]; 11],
}

/// Shaped like `blkif_response` (16 bytes): id, op, pad, status.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct BlkifResponse {
    id: u64,
    operation: u8,
    _pad: u8,
    status: i16,
    _pad2: u32,
}

/// Shaped like `netif_tx_request` (12 bytes): gref, offset, flags, id, size.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct NetifTxRequest {
    gref: u32,
    offset: u16,
    flags: u16,
    id: u16,
    size: u16,
}

/// Shaped like `netif_tx_response` (4 bytes): id, status.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct NetifTxResponse {
    id: u16,
    status: i16,
}

/// `netif_rx_request` (8 bytes: id, pad, gref) and `netif_rx_response` (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct NetifRxRequest {
    id: u16,
    _pad: u16,
    gref: u32,
}

#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct NetifRxResponse {
    id: u16,
    offset: u16,
    flags: u16,
    status: i16,
}

const PAGE: usize = 4096;

type Front<'m> = FrontRing<u64, u64, &'m VecMem>;
type Back<'m> = BackRing<u64, u64, &'m VecMem>;

fn ring_mem(entries: usize) -> VecMem {
    VecMem::new(ENTRIES_OFFSET + entries * 8)
}

#[test]
fn header_layout_matches_ring_h() {
    assert_eq!(size_of::<SringHeader>(), 64);
    let h = SringHeader {
        req_prod: 0x0403_0201,
        req_event: 0x0807_0605,
        rsp_prod: 0x0c0b_0a09,
        rsp_event: 0x100f_0e0d,
        pvt: [0x11, 0x12, 0x13, 0x14],
        reserved: [0; 44],
    };
    let bytes = h.as_bytes();
    assert_eq!(&bytes[..20], &(1u8..=20).collect::<Vec<_>>()[..]);
    assert!(bytes[20..].iter().all(|b| *b == 0));
}

#[test]
fn entry_structs_have_the_xen_sizes() {
    assert_eq!(size_of::<BlkifRequest>(), 112);
    assert_eq!(size_of::<BlkifResponse>(), 16);
    assert_eq!(size_of::<NetifTxRequest>(), 12);
    assert_eq!(size_of::<NetifTxResponse>(), 4);
    assert_eq!(entry_size::<BlkifRequest, BlkifResponse>(), 112);
    assert_eq!(entry_size::<NetifTxRequest, NetifTxResponse>(), 12);
    assert_eq!(entry_size::<NetifRxRequest, NetifRxResponse>(), 8);
}

#[test]
fn one_page_holds_32_blkif_and_256_netif_entries() {
    assert_eq!(ring_size(PAGE, 112), 32);
    assert_eq!(ring_size(PAGE, 12), 256);
    assert_eq!(ring_size_for::<BlkifRequest, BlkifResponse>(PAGE), 32);
    assert_eq!(ring_size_for::<NetifTxRequest, NetifTxResponse>(PAGE), 256);
    assert_eq!(ring_size_for::<NetifRxRequest, NetifRxResponse>(PAGE), 256);
}

#[test]
fn ring_size_rounds_down_to_a_power_of_two() {
    assert_eq!(ring_size(64 + 8, 8), 1);
    assert_eq!(ring_size(64 + 8 * 3, 8), 2);
    assert_eq!(ring_size(64 + 8 * 4, 8), 4);
    assert_eq!(ring_size(64 + 8 * 4 + 7, 8), 4);
    assert_eq!(ring_size(64 + 8 * 7, 8), 4);
    assert_eq!(ring_size(2 * PAGE, 112), 64);
}

#[test]
fn ring_size_is_zero_when_nothing_fits() {
    assert_eq!(ring_size(0, 8), 0);
    assert_eq!(ring_size(63, 8), 0);
    assert_eq!(ring_size(64, 8), 0);
    assert_eq!(ring_size(64 + 7, 8), 0);
    assert_eq!(ring_size(PAGE, 0), 0);
}

#[test]
fn ring_size_is_capped() {
    assert_eq!(ring_size(usize::MAX, 1), MAX_RING_SIZE);
}

#[test]
fn entry_size_rounds_the_union_up_to_the_larger_alignment() {
    // 6 bytes (align 2) and 4 bytes (align 4): the C union is 8 bytes.
    assert_eq!(entry_size::<[u16; 3], u32>(), 8);
    assert_eq!(entry_size::<u8, u8>(), 1);
}

#[test]
fn rings_refuse_memory_without_room_for_an_entry() {
    let mem = VecMem::new(64 + 7);
    let err = RingError::TooSmall {
        bytes: 71,
        entry_size: 8,
    };
    assert_eq!(Front::init(&mem).unwrap_err(), err);
    assert_eq!(Back::attach(&mem).unwrap_err(), err);
}

#[test]
fn init_writes_the_ring_h_header() {
    let mem = ring_mem(4);
    mem.write_bytes(0, &[0xff; 64]).unwrap();
    let front = Front::init(&mem).unwrap();
    assert_eq!(front.size(), 4);
    let h: SringHeader = mem.read_obj(0).unwrap();
    assert_eq!(
        (h.req_prod, h.req_event, h.rsp_prod, h.rsp_event),
        (0, 1, 0, 1)
    );
    assert_eq!(h.pvt, [0; 4]);
    assert_eq!(h.reserved, [0; 44]);
}

#[test]
fn init_at_wraps_event_indices() {
    let mem = ring_mem(4);
    let _front = Front::init_at(&mem, u32::MAX).unwrap();
    let h: SringHeader = mem.read_obj(0).unwrap();
    assert_eq!(
        (h.req_prod, h.req_event, h.rsp_prod, h.rsp_event),
        (u32::MAX, 0, u32::MAX, 0)
    );
}

#[test]
fn requests_and_responses_round_trip_in_order() {
    let mem = ring_mem(4);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::attach(&mem).unwrap();
    for v in [7, 8, 9] {
        front.queue_request(&v).unwrap();
    }
    assert_eq!(front.unpublished_requests(), 3);
    assert_eq!(
        back.take_request().unwrap(),
        None,
        "queued requests are not yet visible"
    );
    front.push_requests().unwrap();
    assert_eq!(back.unconsumed_requests().unwrap(), 3);
    let mut seen = Vec::new();
    while let Some(r) = back.take_request().unwrap() {
        seen.push(r);
        back.queue_response(&(r + 100)).unwrap();
    }
    assert_eq!(seen, [7, 8, 9]);
    assert_eq!(
        front.take_response().unwrap(),
        None,
        "queued responses are not yet visible"
    );
    back.push_responses().unwrap();
    let got: Vec<u64> = core::iter::from_fn(|| front.take_response().unwrap()).collect();
    assert_eq!(got, [107, 108, 109]);
}

#[test]
fn front_is_full_with_size_requests_outstanding() {
    let mem = ring_mem(2);
    let mut front = Front::init(&mem).unwrap();
    assert_eq!(front.free_requests(), 2);
    front.queue_request(&1).unwrap();
    front.queue_request(&2).unwrap();
    assert!(front.is_full());
    assert_eq!(front.queue_request(&3), Err(RingError::Full));
    assert!(
        !front.is_disabled(),
        "a full ring is back-pressure, not a failure"
    );

    // A slot frees up only when its response is consumed, not when the request is.
    front.push_requests().unwrap();
    let mut back = Back::attach(&mem).unwrap();
    assert_eq!(back.take_request().unwrap(), Some(1));
    assert!(front.is_full());
    back.queue_response(&10).unwrap();
    back.push_responses().unwrap();
    assert!(front.is_full());
    assert_eq!(front.take_response().unwrap(), Some(10));
    assert_eq!(front.free_requests(), 1);
    front.queue_request(&3).unwrap();
}

#[test]
fn back_cannot_answer_requests_it_has_not_taken() {
    let mem = ring_mem(2);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::attach(&mem).unwrap();
    assert_eq!(back.queue_response(&1), Err(RingError::Full));
    front.queue_request(&1).unwrap();
    front.push_requests().unwrap();
    assert_eq!(
        back.queue_response(&1),
        Err(RingError::Full),
        "published but not taken"
    );
    back.take_request().unwrap();
    assert_eq!(back.awaiting_response(), 1);
    back.queue_response(&1).unwrap();
    assert_eq!(back.awaiting_response(), 0);
    assert_eq!(back.unpublished_responses(), 1);
}

#[test]
fn first_push_notifies_later_pushes_only_after_final_check() {
    let mem = ring_mem(8);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::attach(&mem).unwrap();
    front.queue_request(&1).unwrap();
    assert!(front.push_requests().unwrap(), "req_event starts at 1");
    front.queue_request(&2).unwrap();
    assert!(
        !front.push_requests().unwrap(),
        "back-end has not asked again"
    );
    assert!(
        back.final_check_for_requests().unwrap(),
        "work pending, no sleep"
    );
    back.take_request().unwrap();
    back.take_request().unwrap();
    assert!(!back.final_check_for_requests().unwrap());
    assert_eq!(mem.load_acquire_u32(REQ_EVENT_OFFSET).unwrap(), 3);
    assert!(!front.push_requests().unwrap(), "nothing new to publish");
    front.queue_request(&3).unwrap();
    assert!(front.push_requests().unwrap(), "back-end went to sleep");
}

#[test]
fn response_notifications_follow_the_same_rule() {
    let mem = ring_mem(8);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::attach(&mem).unwrap();
    for v in 0..3 {
        front.queue_request(&v).unwrap();
    }
    front.push_requests().unwrap();
    for _ in 0..3 {
        back.take_request().unwrap();
    }
    back.queue_response(&0).unwrap();
    assert!(back.push_responses().unwrap(), "rsp_event starts at 1");
    back.queue_response(&1).unwrap();
    assert!(!back.push_responses().unwrap());
    front.take_response().unwrap();
    front.take_response().unwrap();
    assert!(!front.final_check_for_responses().unwrap());
    back.queue_response(&2).unwrap();
    assert!(back.push_responses().unwrap());
    assert!(front.final_check_for_responses().unwrap());
}

#[test]
fn need_notify_matches_ring_h_examples() {
    assert!(need_notify(0, 1, 1));
    assert!(!need_notify(1, 2, 1), "event already passed");
    assert!(need_notify(0, 5, 3), "event inside the published batch");
    assert!(!need_notify(0, 5, 6), "event beyond the batch");
    assert!(!need_notify(4, 4, 5), "nothing published");
    assert!(need_notify(u32::MAX, 1, 0), "across the wrap");
    assert!(need_notify(u32::MAX - 1, 0, u32::MAX));
}

#[test]
fn back_attaches_at_the_current_response_index() {
    let mem = ring_mem(4);
    let mut front = Front::init_at(&mem, u32::MAX - 1).unwrap();
    let mut back = Back::attach(&mem).unwrap();
    for v in 0..4 {
        front.queue_request(&v).unwrap();
    }
    front.push_requests().unwrap();
    assert_eq!(back.unconsumed_requests().unwrap(), 4);
    for v in 0..4 {
        assert_eq!(back.take_request().unwrap(), Some(v));
        back.queue_response(&v).unwrap();
    }
    back.push_responses().unwrap();
    assert_eq!(mem.load_acquire_u32(RSP_PROD_OFFSET).unwrap(), 2);
    for v in 0..4 {
        assert_eq!(front.take_response().unwrap(), Some(v));
    }
}

/// Every public operation of a disabled back ring fails with `Disabled`.
fn assert_back_disabled(back: &mut Back<'_>) {
    assert!(back.is_disabled());
    assert_eq!(back.take_request(), Err(RingError::Disabled));
    assert_eq!(back.unconsumed_requests(), Err(RingError::Disabled));
    assert_eq!(back.final_check_for_requests(), Err(RingError::Disabled));
    assert_eq!(back.queue_response(&0), Err(RingError::Disabled));
    assert_eq!(back.push_responses(), Err(RingError::Disabled));
}

fn assert_front_disabled(front: &mut Front<'_>) {
    assert!(front.is_disabled());
    assert_eq!(front.take_response(), Err(RingError::Disabled));
    assert_eq!(front.unconsumed_responses(), Err(RingError::Disabled));
    assert_eq!(front.final_check_for_responses(), Err(RingError::Disabled));
    assert_eq!(front.queue_request(&0), Err(RingError::Disabled));
    assert_eq!(front.push_requests(), Err(RingError::Disabled));
}

#[test]
fn request_overrun_is_reported_once_then_the_ring_stays_disabled() {
    let mem = ring_mem(4);
    let _front = Front::init_at(&mem, u32::MAX - 2).unwrap();
    let mut back = Back::attach(&mem).unwrap();
    // Five requests "published" on a ring of four, across the wrap.
    mem.store_release_u32(REQ_PROD_OFFSET, 2).unwrap();
    assert_eq!(
        back.take_request(),
        Err(RingError::Overrun {
            prod: 2,
            cons: u32::MAX - 2,
            size: 4
        })
    );
    assert_back_disabled(&mut back);
    // Repairing the index does not revive the ring.
    mem.store_release_u32(REQ_PROD_OFFSET, u32::MAX - 2)
        .unwrap();
    assert_back_disabled(&mut back);
}

#[test]
fn a_rewound_request_index_is_an_overrun() {
    let mem = ring_mem(4);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::attach(&mem).unwrap();
    front.queue_request(&1).unwrap();
    front.push_requests().unwrap();
    back.take_request().unwrap();
    mem.store_release_u32(REQ_PROD_OFFSET, 0).unwrap();
    assert_eq!(
        back.final_check_for_requests(),
        Err(RingError::Overrun {
            prod: 0,
            cons: 1,
            size: 4
        })
    );
    assert_back_disabled(&mut back);
}

#[test]
fn requests_overwriting_unanswered_slots_are_an_overrun() {
    let mem = ring_mem(4);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::attach(&mem).unwrap();
    for v in 0..4 {
        front.queue_request(&v).unwrap();
    }
    front.push_requests().unwrap();
    for _ in 0..4 {
        back.take_request().unwrap();
    }
    back.queue_response(&0).unwrap();
    // Only one slot has been answered, yet the front-end claims two more requests: the
    // second would overwrite a slot whose request still awaits its response.
    mem.store_release_u32(REQ_PROD_OFFSET, 6).unwrap();
    assert_eq!(
        back.take_request(),
        Err(RingError::Overrun {
            prod: 6,
            cons: 1,
            size: 4
        })
    );
    assert_back_disabled(&mut back);
}

#[test]
fn a_full_ring_is_not_an_overrun() {
    let mem = ring_mem(4);
    let _front = Front::init(&mem).unwrap();
    let mut back = Back::attach(&mem).unwrap();
    mem.store_release_u32(REQ_PROD_OFFSET, 4).unwrap();
    assert_eq!(back.unconsumed_requests(), Ok(4));
}

#[test]
fn response_overrun_disables_the_front() {
    let mem = ring_mem(4);
    let mut front = Front::init(&mem).unwrap();
    mem.store_release_u32(RSP_PROD_OFFSET, 5).unwrap();
    assert_eq!(
        front.take_response(),
        Err(RingError::Overrun {
            prod: 5,
            cons: 0,
            size: 4
        })
    );
    assert_front_disabled(&mut front);
}

#[test]
fn responses_to_unsent_requests_disable_the_front() {
    let mem = ring_mem(4);
    let mut front = Front::init(&mem).unwrap();
    front.queue_request(&1).unwrap();
    front.push_requests().unwrap();
    front.queue_request(&2).unwrap(); // queued, not published
    mem.store_release_u32(RSP_PROD_OFFSET, 2).unwrap();
    assert_eq!(
        front.unconsumed_responses(),
        Err(RingError::ResponsesAhead {
            rsp_prod: 2,
            req_prod: 1
        })
    );
    assert_front_disabled(&mut front);
}

#[test]
fn own_indices_are_never_read_back_from_shared_memory() {
    let mem = ring_mem(4);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::attach(&mem).unwrap();
    front.queue_request(&1).unwrap();
    front.push_requests().unwrap();
    // The peer of each end scribbles over the index that end owns.
    mem.store_release_u32(RSP_PROD_OFFSET, 0xdead).unwrap();
    assert_eq!(back.take_request().unwrap(), Some(1));
    back.queue_response(&2).unwrap();
    mem.store_release_u32(REQ_PROD_OFFSET, 0xbeef).unwrap();
    back.push_responses().unwrap();
    front.queue_request(&3).unwrap();
    front.push_requests().unwrap();
    assert_eq!(mem.load_acquire_u32(REQ_PROD_OFFSET).unwrap(), 2);
    assert_eq!(front.take_response().unwrap(), Some(2));
    assert_eq!(back.take_request().unwrap(), Some(3));
}

#[test]
fn consumers_reread_the_index_only_when_caught_up() {
    let mem = ring_mem(4);
    let mut front = Front::init(&mem).unwrap();
    let mut back = Back::attach(&mem).unwrap();
    front.queue_request(&1).unwrap();
    front.queue_request(&2).unwrap();
    front.push_requests().unwrap();
    assert_eq!(back.unconsumed_requests().unwrap(), 2);
    // An impossible index is not looked at while validated work remains.
    mem.store_release_u32(REQ_PROD_OFFSET, 100).unwrap();
    assert_eq!(back.take_request().unwrap(), Some(1));
    assert_eq!(back.take_request().unwrap(), Some(2));
    assert!(matches!(
        back.take_request(),
        Err(RingError::Overrun { prod: 100, .. })
    ));
}

#[test]
fn errors_display_as_lowercase_fragments() {
    let msgs = [
        RingError::TooSmall {
            bytes: 64,
            entry_size: 8,
        }
        .to_string(),
        RingError::Full.to_string(),
        RingError::Overrun {
            prod: 9,
            cons: 1,
            size: 4,
        }
        .to_string(),
        RingError::ResponsesAhead {
            rsp_prod: 3,
            req_prod: 1,
        }
        .to_string(),
        RingError::Disabled.to_string(),
        RingError::Mem(MemError::Misaligned { offset: 1 }).to_string(),
    ];
    for m in &msgs {
        assert!(!m.ends_with('.'), "{m}");
        assert!(m.chars().next().is_some_and(|c| !c.is_uppercase()), "{m}");
    }
    assert_eq!(
        msgs[2],
        "peer producer index 9 is more than 4 entries ahead of 1; ring disabled"
    );
    let with_source = RingError::Mem(MemError::Misaligned { offset: 1 });
    assert!(core::error::Error::source(&with_source).is_some());
}

#[test]
fn front_and_back_on_separate_threads() {
    use std::sync::Arc;
    use std::thread;

    const N: u64 = 20_000;
    let mem = Arc::new(VecMem::new(ENTRIES_OFFSET + 8 * 8));
    let mut front = FrontRing::<u64, u64, _>::init_at(Arc::clone(&mem), u32::MAX - 5_000).unwrap();
    let back_mem = Arc::clone(&mem);
    let backend = thread::spawn(move || {
        let mut back = BackRing::<u64, u64, _>::attach(back_mem).unwrap();
        let mut handled = 0;
        while handled < N {
            while let Some(req) = back.take_request().unwrap() {
                back.queue_response(&(req ^ 0xffff)).unwrap();
                handled += 1;
            }
            back.push_responses().unwrap();
            if !back.final_check_for_requests().unwrap() {
                thread::yield_now();
            }
        }
    });
    let (mut sent, mut received) = (0, 0);
    while received < N {
        while sent < N && !front.is_full() {
            front.queue_request(&sent).unwrap();
            sent += 1;
        }
        front.push_requests().unwrap();
        while let Some(rsp) = front.take_response().unwrap() {
            assert_eq!(rsp, received ^ 0xffff, "responses arrive in order");
            received += 1;
        }
        if !front.final_check_for_responses().unwrap() {
            thread::yield_now();
        }
    }
    backend.join().unwrap();
}
