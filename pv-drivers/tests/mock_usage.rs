//! Uses the mocks exactly as a dependent crate does (through the `test-utils` feature, see
//! TESTING.md): a toy back-end is written against the public API and tested against an
//! honest and a hostile `MockFrontend`.

use pv_drivers::mock::{Hostility, MockFrontend};
use pv_drivers::ring::{BackRing, ENTRIES_OFFSET, RingError};
use pv_drivers::{RingEntry, SharedMem};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A request in the style of a block ring: an id, an operation and a length to validate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable)]
struct ToyReq {
    id: u32,
    op: u16,
    len: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable)]
struct ToyRsp {
    id: u32,
    status: i32,
}

const MAX_LEN: u16 = 4096;

/// A toy back-end: copy, then validate, then act, on the copy only.
struct ToyBackend<M> {
    ring: BackRing<ToyReq, ToyRsp, M>,
    bytes_served: u64,
}

impl<M: SharedMem> ToyBackend<M> {
    fn handle(&mut self, req: &ToyReq) -> ToyRsp {
        let status = if req.op > 1 || req.len > MAX_LEN {
            -1
        } else {
            self.bytes_served += u64::from(req.len);
            0
        };
        ToyRsp { id: req.id, status }
    }

    /// Serves everything pending; returns whether to notify the front-end.
    fn poll(&mut self) -> Result<bool, RingError> {
        while let Some(req) = self.ring.take_request()? {
            let rsp = self.handle(&req);
            self.ring.queue_response(&rsp)?;
        }
        self.ring.push_responses()
    }
}

fn workload() -> Vec<ToyReq> {
    (0..100u32)
        .map(|i| ToyReq {
            id: i,
            op: (i % 3) as u16,
            len: (i * 97 % 5000) as u16,
        })
        .collect()
}

fn run(hostility: Hostility) -> Result<(Vec<ToyRsp>, u64, u64), RingError> {
    let mut front = MockFrontend::<ToyReq, ToyRsp>::with_start_index(4096, u32::MAX - 50)?;
    front.set_hostility(hostility);
    let mut backend = ToyBackend {
        ring: BackRing::attach(front.mem())?,
        bytes_served: 0,
    };
    let mut responses = Vec::new();
    for chunk in workload().chunks(7) {
        front.submit(chunk.iter().copied())?;
        if backend.poll()? {
            front.notify();
        }
        responses.extend(front.take_responses()?);
    }
    Ok((responses, backend.bytes_served, front.slot_rewrites()))
}

#[test]
fn toy_backend_results_do_not_depend_on_hostility() {
    let (honest, honest_bytes, no_rewrites) = run(Hostility::NONE).unwrap();
    let (hostile, hostile_bytes, rewrites) = run(Hostility::ALL).unwrap();
    assert_eq!(no_rewrites, 0);
    assert_eq!(
        rewrites, 100,
        "every request slot was rewritten after the back-end read it"
    );
    assert_eq!(honest, hostile);
    assert_eq!(honest_bytes, hostile_bytes);
    assert_eq!(honest.len(), 100);
    assert!(honest.iter().enumerate().all(|(i, r)| r.id == i as u32));
}

#[test]
fn toy_backend_stops_once_on_a_broken_front_end() {
    let mut front = MockFrontend::<ToyReq, ToyRsp>::new(ENTRIES_OFFSET + 8 * 4).unwrap();
    let mut backend = ToyBackend {
        ring: BackRing::attach(front.mem()).unwrap(),
        bytes_served: 0,
    };
    front
        .submit([ToyReq {
            id: 1,
            op: 0,
            len: 1,
        }])
        .unwrap();
    backend.poll().unwrap();
    front.overrun_requests().unwrap();
    assert!(matches!(backend.poll(), Err(RingError::Overrun { .. })));
    assert_eq!(backend.poll(), Err(RingError::Disabled));
    assert_eq!(backend.bytes_served, 1);
}

/// `RingEntry` is implemented for any plain-data type with the zerocopy derives.
#[test]
fn ring_entry_is_blanket_implemented() {
    fn is_entry<T: RingEntry>() {}
    is_entry::<ToyReq>();
    is_entry::<[u8; 112]>();
}
