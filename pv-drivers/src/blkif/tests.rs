use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;
use shared_abi::io::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_WRITE_BARRIER, BLKIF_RING_SIZE, BLKIF_RSP_OKAY,
};

use super::*;
use crate::mock::{Hostility, MockBackend, MockFrontend};
use crate::ring::ring_size_for;

const PAGE: usize = 4096;

#[test]
fn a_page_holds_the_abi_ring_size() {
    assert_eq!(
        ring_size_for::<BlkifRequest, BlkifResponse>(PAGE),
        BLKIF_RING_SIZE
    );
}

#[test]
fn validate_accepts_reads_writes_and_flushes() {
    let r = validate(
        &request(BLKIF_OP_READ, 7, 10, &[segment(9, 0, 7), segment(10, 2, 2)]),
        20,
        false,
    )
    .unwrap();
    assert_eq!(
        (r.id, r.op, r.sector, r.bytes()),
        (7, BlkOp::Read, 10, 4096 + 512)
    );
    assert_eq!(
        r.segments()[1],
        Segment {
            gref: 10,
            offset: 1024,
            len: 512
        }
    );
    assert_eq!(r.disk_offset(), 5120);
    // Exactly to the end of the disk.
    assert!(
        validate(
            &request(BLKIF_OP_WRITE, 1, 11, &[segment(1, 0, 7), segment(2, 7, 7)]),
            20,
            false
        )
        .is_ok()
    );
    let f = validate(
        &request(BLKIF_OP_FLUSH_DISKCACHE, 3, u64::MAX, &[]),
        20,
        true,
    )
    .unwrap();
    assert_eq!((f.op, f.bytes(), f.sector), (BlkOp::Flush, 0, 0));
    let all = [segment(1, 0, 7); 11];
    assert_eq!(
        validate(&request(BLKIF_OP_READ, 1, 0, &all), 88, false)
            .unwrap()
            .bytes(),
        11 * 4096
    );
}

#[test]
fn validate_names_each_broken_rule() {
    let seg = [segment(1, 0, 0)];
    let v = |r: &BlkifRequest| validate(r, 16, false).unwrap_err();
    for op in [BLKIF_OP_WRITE_BARRIER, BLKIF_OP_DISCARD, 4, 255] {
        let e = v(&request(op, 1, 0, &seg));
        assert_eq!(e, BadRequest::Unsupported { op });
        assert!(!e.is_protocol_violation());
        assert_eq!(e.status(), BLKIF_RSP_EOPNOTSUPP);
    }
    let e = validate(&request(BLKIF_OP_WRITE, 1, 0, &seg), 16, true).unwrap_err();
    assert_eq!(e, BadRequest::ReadOnly);
    assert!(!e.is_protocol_violation());
    assert_eq!(e.status(), BLKIF_RSP_ERROR);
    assert!(validate(&request(BLKIF_OP_READ, 1, 0, &seg), 16, true).is_ok());

    assert_eq!(
        v(&request(BLKIF_OP_READ, 1, 0, &[])),
        BadRequest::SegmentCount { op: 0, nr: 0 }
    );
    let mut twelve = request(BLKIF_OP_WRITE, 1, 0, &seg);
    twelve.nr_segments = 12;
    assert_eq!(v(&twelve), BadRequest::SegmentCount { op: 1, nr: 12 });
    assert_eq!(
        v(&request(BLKIF_OP_FLUSH_DISKCACHE, 1, 0, &seg)),
        BadRequest::SegmentCount { op: 3, nr: 1 }
    );
    assert_eq!(
        v(&request(
            BLKIF_OP_READ,
            1,
            0,
            &[segment(1, 0, 0), segment(2, 3, 2)]
        )),
        BadRequest::SegmentSectors {
            index: 1,
            first: 3,
            last: 2
        }
    );
    assert_eq!(
        v(&request(BLKIF_OP_READ, 1, 0, &[segment(1, 0, 8)])),
        BadRequest::SegmentSectors {
            index: 0,
            first: 0,
            last: 8
        }
    );
    assert_eq!(
        v(&request(BLKIF_OP_READ, 1, 15, &[segment(1, 0, 1)])),
        BadRequest::OutOfRange {
            sector: 15,
            count: 2,
            disk_sectors: 16
        }
    );
    let e = v(&request(BLKIF_OP_READ, 1, u64::MAX, &seg));
    assert!(e.is_protocol_violation());
    assert_eq!(
        alloc::format!("{e}"),
        "1 sectors from sector 18446744073709551615 do not fit a disk of 16 sectors"
    );
    // Segments past nr_segments are ignored, whatever they hold.
    let mut r = request(BLKIF_OP_READ, 1, 0, &seg);
    r.seg[5] = segment(0, 9, 1);
    assert!(validate(&r, 16, false).is_ok());
}

/// A reference model of the rules, written independently of `validate`'s structure.
fn model(req: &BlkifRequest, disk: u64, ro: bool) -> Result<u64, ()> {
    let n = usize::from(req.nr_segments);
    match req.operation {
        3 => return if n == 0 { Ok(0) } else { Err(()) },
        0 | 1 if (1..=11).contains(&n) => {}
        _ => return Err(()),
    }
    if req.operation == 1 && ro {
        return Err(());
    }
    let mut total = 0u64;
    for s in &req.seg[..n] {
        if s.first_sect > s.last_sect || s.last_sect > 7 {
            return Err(());
        }
        total += u64::from(s.last_sect - s.first_sect + 1) * 512;
    }
    let end = u128::from(req.sector_number) + u128::from(total / 512);
    if end > u128::from(disk) {
        Err(())
    } else {
        Ok(total)
    }
}

fn arb_request() -> impl Strategy<Value = BlkifRequest> {
    (
        prop_oneof![Just(0u8), Just(1), Just(3), any::<u8>()],
        prop_oneof![0u8..=12, any::<u8>()],
        prop_oneof![0u64..64, any::<u64>()],
        proptest::collection::vec((any::<u32>(), 0u8..=9, 0u8..=9), 11),
    )
        .prop_map(|(op, nr, sector, segs)| {
            let mut r = request(op, 5, sector, &[]);
            r.nr_segments = nr;
            for (d, (g, f, l)) in r.seg.iter_mut().zip(segs) {
                *d = segment(g, f, l);
            }
            r
        })
}

proptest! {
    #[test]
    fn validate_agrees_with_the_model(req in arb_request(), disk in 0u64..128, ro in any::<bool>()) {
        let got = validate(&req, disk, ro);
        match model(&req, disk, ro) {
            Ok(bytes) => {
                let r = got.unwrap();
                prop_assert_eq!(r.bytes(), bytes);
                for s in r.segments() {
                    prop_assert!(usize::from(s.offset) + usize::from(s.len) <= PAGE);
                }
                prop_assert!(r.op == BlkOp::Flush || r.disk_offset() + r.bytes() <= disk * 512);
            }
            Err(()) => prop_assert!(got.is_err()),
        }
    }

    #[test]
    fn validate_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 112), disk in any::<u64>()) {
        let req: BlkifRequest = zerocopy::FromBytes::read_from_bytes(&bytes[..]).unwrap();
        let _ = validate(&req, disk, false);
    }
}

/// A toy back-end over `BlkBack`: a RAM disk and a "grant table" of pages by gref.
struct ToyBack {
    disk: Vec<u8>,
    pages: BTreeMap<u32, Vec<u8>>,
    violations: u32,
}

impl ToyBack {
    fn serve<M: SharedMem>(&mut self, back: &mut BlkBack<M>) -> Result<bool, RingError> {
        while let Some(t) = back.next_request()? {
            let rsp = match t {
                Taken::Valid(r) => {
                    let mut at = usize::try_from(r.disk_offset()).unwrap();
                    let mut status = BLKIF_RSP_OKAY;
                    for s in r.segments() {
                        let (o, l) = (usize::from(s.offset), usize::from(s.len));
                        let Some(page) = self.pages.get_mut(&s.gref) else {
                            status = BLKIF_RSP_ERROR;
                            break;
                        };
                        match r.op {
                            BlkOp::Read => page[o..o + l].copy_from_slice(&self.disk[at..at + l]),
                            BlkOp::Write => self.disk[at..at + l].copy_from_slice(&page[o..o + l]),
                            BlkOp::Flush => {}
                        }
                        at += l;
                    }
                    r.response(status)
                }
                Taken::Invalid { id, op, why } => {
                    if why.is_protocol_violation() {
                        self.violations += 1;
                    }
                    response(id, op, why.status())
                }
            };
            back.respond(&rsp)?;
        }
        back.push()
    }
}

fn toy() -> ToyBack {
    let mut pages = BTreeMap::new();
    for g in 8..12u32 {
        pages.insert(g, vec![g as u8; PAGE]);
    }
    ToyBack {
        disk: (0..16 * 512).map(|i| (i / 512) as u8).collect(),
        pages,
        violations: 0,
    }
}

/// One scripted session; returns the responses and the toy's final state.
fn session(h: Hostility) -> (Vec<BlkifResponse>, Vec<u8>, BTreeMap<u32, Vec<u8>>, u32) {
    let mut front = MockFrontend::<BlkifRequest, BlkifResponse>::new(PAGE).unwrap();
    front.set_hostility(h);
    let mut back = BlkBack::attach(front.mem(), 16, false).unwrap();
    let mut t = toy();
    front
        .submit([
            request(BLKIF_OP_READ, 1, 2, &[segment(8, 0, 0), segment(9, 4, 7)]),
            request(BLKIF_OP_WRITE, 2, 0, &[segment(10, 0, 1)]),
            request(BLKIF_OP_FLUSH_DISKCACHE, 3, 0, &[]),
            request(BLKIF_OP_DISCARD, 4, 0, &[]),
            request(BLKIF_OP_READ, 5, 16, &[segment(8, 0, 0)]),
            request(BLKIF_OP_READ, 6, 0, &[segment(99, 0, 0)]),
        ])
        .unwrap();
    let notify = t.serve(&mut back).unwrap();
    // Scribbled event indices may change whether a notification is due, nothing else.
    assert!(notify || h.scribble_event_indices);
    let rsps = front.take_responses().unwrap();
    (rsps, t.disk, t.pages, t.violations)
}

#[test]
fn the_back_end_serves_a_scripted_front_end() {
    let (rsps, disk, pages, violations) = session(Hostility::NONE);
    let st: Vec<(u64, u8, i16)> = rsps.iter().map(|r| (r.id, r.operation, r.status)).collect();
    assert_eq!(
        st,
        [
            (1, 0, 0),
            (2, 1, 0),
            (3, 3, 0),
            (4, 5, BLKIF_RSP_EOPNOTSUPP),
            (5, 0, BLKIF_RSP_ERROR),
            (6, 0, BLKIF_RSP_ERROR)
        ]
    );
    assert_eq!(violations, 1);
    // Read: sector 2 into page 8 sector 0, sectors 3..=6 into page 9 sectors 4..=7.
    assert!(pages[&8][..512].iter().all(|&b| b == 2));
    assert!(pages[&8][512..].iter().all(|&b| b == 8));
    for k in 0..4 {
        assert!(
            pages[&9][2048 + k * 512..2048 + (k + 1) * 512]
                .iter()
                .all(|&b| b == 3 + k as u8)
        );
    }
    // Write: page 10 sectors 0..=1 onto disk sectors 0..=1.
    assert!(disk[..1024].iter().all(|&b| b == 10));
    assert!(disk[1024..1536].iter().all(|&b| b == 2));
}

#[test]
fn a_rewriting_front_end_changes_nothing_the_back_end_does() {
    let honest = session(Hostility::NONE);
    let hostile = session(Hostility::ALL);
    assert_eq!(honest.0, hostile.0);
    assert_eq!(honest.1, hostile.1);
    assert_eq!(honest.2, hostile.2);
}

#[test]
fn an_overrunning_front_end_disables_the_ring_once() {
    let mut front = MockFrontend::<BlkifRequest, BlkifResponse>::new(PAGE).unwrap();
    let mut back = BlkBack::attach(front.mem(), 16, false).unwrap();
    front
        .submit([request(BLKIF_OP_FLUSH_DISKCACHE, 1, 0, &[])])
        .unwrap();
    front.overrun_requests().unwrap();
    assert!(matches!(
        back.next_request(),
        Err(RingError::Overrun { .. })
    ));
    assert_eq!(back.next_request(), Err(RingError::Disabled));
    assert!(back.ring().is_disabled());
}

#[test]
fn the_front_end_against_a_scripted_back_end() {
    let mut mock = MockBackend::<BlkifRequest, BlkifResponse>::new(PAGE).unwrap();
    let mut front = BlkFront::init(mock.mem()).unwrap();
    for id in 0..BLKIF_RING_SIZE {
        front
            .queue(&request(
                BLKIF_OP_READ,
                u64::from(id),
                u64::from(id),
                &[segment(id, 0, 7)],
            ))
            .unwrap();
    }
    assert!(matches!(
        front.queue(&request(BLKIF_OP_READ, 99, 0, &[segment(1, 0, 7)])),
        Err(FrontError::Ring(RingError::Full))
    ));
    assert!(front.push().unwrap());
    assert_eq!(front.in_flight(), 32);
    // The back-end answers out of order: the front-end matches by id.
    let reqs = mock.take_requests().unwrap();
    assert_eq!(reqs.len(), 32);
    assert_eq!(reqs[5].seg[0].gref, 5);
    mock.respond(
        reqs.iter()
            .rev()
            .map(|r| response(r.id, r.operation, BLKIF_RSP_OKAY)),
    )
    .unwrap();
    let mut ids = Vec::new();
    while let Some(r) = front.take().unwrap() {
        ids.push(r.id);
    }
    assert_eq!(ids, (0..32u64).rev().collect::<Vec<_>>());
    assert_eq!(front.in_flight(), 0);

    // A duplicate id in flight is refused; a response to an unknown id disables.
    front
        .queue(&request(BLKIF_OP_FLUSH_DISKCACHE, 7, 0, &[]))
        .unwrap();
    assert_eq!(
        front.queue(&request(BLKIF_OP_FLUSH_DISKCACHE, 7, 0, &[])),
        Err(FrontError::DuplicateId(7))
    );
    front.push().unwrap();
    mock.take_requests().unwrap();
    mock.respond([response(8, 3, 0)]).unwrap();
    assert_eq!(front.take(), Err(FrontError::UnknownId(8)));
    assert_eq!(front.take(), Err(FrontError::Disabled));
}

#[test]
fn a_hostile_back_end_cannot_overrun_the_front_end() {
    let mut mock = MockBackend::<BlkifRequest, BlkifResponse>::new(PAGE).unwrap();
    let mut front = BlkFront::init(mock.mem()).unwrap();
    mock.set_hostility(Hostility::ALL);
    front
        .queue(&request(BLKIF_OP_FLUSH_DISKCACHE, 1, 0, &[]))
        .unwrap();
    front.push().unwrap();
    mock.ring().unwrap();
    mock.overrun_responses().unwrap();
    assert!(matches!(
        front.take(),
        Err(FrontError::Ring(RingError::Overrun { .. }))
    ));
}
