//! Property tests of the ring protocol against a reference model.
//!
//! The model is a set of `VecDeque`s, one per stage an entry passes through (queued by the
//! front-end, published, taken by the back-end, answered, published, taken by the
//! front-end), plus one "asleep" flag per consumer for the notification rule. Indices start
//! anywhere, including just below `u32::MAX`, so long runs cross the wrap.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use proptest::prelude::*;

use crate::mem::SharedMem;
use crate::mock::{Hostility, MockBackend, MockFrontend};
use crate::ring::{
    BackRing, ENTRIES_OFFSET, FrontRing, REQ_PROD_OFFSET, RSP_PROD_OFFSET, RingError, need_notify,
};
use crate::vec_mem::VecMem;

/// Request: an id and a payload derived from it, so a torn or rewritten slot shows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable,
)]
#[repr(C)]
struct Req {
    id: u32,
    payload: u32,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable,
)]
#[repr(C)]
struct Rsp {
    id: u32,
    status: u32,
}

fn req(id: u32) -> Req {
    Req {
        id,
        payload: id.wrapping_mul(0x0101_0101) ^ 0x5a5a_5a5a,
    }
}

/// The response the model back-end gives to `r`.
fn answer(r: &Req) -> Rsp {
    Rsp {
        id: r.id,
        status: r.payload.rotate_left(7),
    }
}

fn ring_bytes(entries: usize) -> usize {
    ENTRIES_OFFSET + entries * 8
}

#[derive(Debug, Clone, Copy)]
enum Op {
    FrontQueue(u8),
    FrontPush,
    BackTake(u8),
    BackAnswer(u8),
    BackPush,
    FrontTake(u8),
    BackFinalCheck,
    FrontFinalCheck,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u8..6).prop_map(Op::FrontQueue),
        Just(Op::FrontPush),
        (1u8..6).prop_map(Op::BackTake),
        (1u8..6).prop_map(Op::BackAnswer),
        Just(Op::BackPush),
        (1u8..6).prop_map(Op::FrontTake),
        Just(Op::BackFinalCheck),
        Just(Op::FrontFinalCheck),
    ]
}

/// Start indices: anywhere, or within a few ring lengths below the wrap.
fn start_index() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), (0u32..64).prop_map(|d| u32::MAX - d)]
}

/// Entry counts that give rings of 1, 2, 4, 8 and 16 slots, some with spare bytes.
fn entries() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(1usize),
        Just(2),
        Just(3),
        Just(4),
        Just(8),
        Just(11),
        Just(16)
    ]
}

#[derive(Debug, Default)]
struct Model {
    next_id: u32,
    queued: VecDeque<Req>,
    published: VecDeque<Req>,
    taken: VecDeque<Req>,
    answered: VecDeque<Rsp>,
    rsp_published: VecDeque<Rsp>,
    /// Responses the front-end took, in order.
    completed: Vec<Rsp>,
    /// The back-end's event index asks for the next request (initially true: req_event
    /// starts at prod + 1).
    back_asleep: bool,
    front_asleep: bool,
}

impl Model {
    fn outstanding(&self) -> usize {
        self.queued.len()
            + self.published.len()
            + self.taken.len()
            + self.answered.len()
            + self.rsp_published.len()
    }
}

fn run_interleaving(size: u32, start: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let mem = VecMem::new(ring_bytes(size as usize));
    let mut front = FrontRing::<Req, Rsp, _>::init_at(&mem, start).unwrap();
    let mut back = BackRing::<Req, Rsp, _>::attach(&mem).unwrap();
    prop_assert_eq!(front.size(), size);
    let mut m = Model {
        back_asleep: true,
        front_asleep: true,
        ..Model::default()
    };

    for &op in ops {
        match op {
            Op::FrontQueue(n) => {
                for _ in 0..n {
                    let r = req(m.next_id);
                    let res = front.queue_request(&r);
                    if m.outstanding() == size as usize {
                        prop_assert_eq!(res, Err(RingError::Full));
                        prop_assert!(front.is_full());
                    } else {
                        prop_assert_eq!(res, Ok(()));
                        m.queued.push_back(r);
                        m.next_id += 1;
                    }
                }
            }
            Op::FrontPush => {
                let notify = front.push_requests().unwrap();
                let expected = m.back_asleep && !m.queued.is_empty();
                prop_assert_eq!(notify, expected, "request notification");
                if !m.queued.is_empty() {
                    m.back_asleep = false;
                }
                m.published.extend(m.queued.drain(..));
            }
            Op::BackTake(n) => {
                for _ in 0..n {
                    let got = back.take_request().unwrap();
                    prop_assert_eq!(got, m.published.pop_front());
                    if let Some(r) = got {
                        m.taken.push_back(r);
                    }
                }
            }
            Op::BackAnswer(n) => {
                for _ in 0..n {
                    match m.taken.pop_front() {
                        Some(r) => {
                            back.queue_response(&answer(&r)).unwrap();
                            m.answered.push_back(answer(&r));
                        }
                        None => prop_assert_eq!(
                            back.queue_response(&Rsp { id: 0, status: 0 }),
                            Err(RingError::Full)
                        ),
                    }
                }
            }
            Op::BackPush => {
                let notify = back.push_responses().unwrap();
                let expected = m.front_asleep && !m.answered.is_empty();
                prop_assert_eq!(notify, expected, "response notification");
                if !m.answered.is_empty() {
                    m.front_asleep = false;
                }
                m.rsp_published.extend(m.answered.drain(..));
            }
            Op::FrontTake(n) => {
                for _ in 0..n {
                    let got = front.take_response().unwrap();
                    prop_assert_eq!(got, m.rsp_published.pop_front());
                    m.completed.extend(got);
                }
            }
            Op::BackFinalCheck => {
                let work = back.final_check_for_requests().unwrap();
                prop_assert_eq!(work, !m.published.is_empty());
                if !work {
                    m.back_asleep = true;
                }
            }
            Op::FrontFinalCheck => {
                let work = front.final_check_for_responses().unwrap();
                prop_assert_eq!(work, !m.rsp_published.is_empty());
                if !work {
                    m.front_asleep = true;
                }
            }
        }
        prop_assert_eq!(
            front.free_requests() as usize,
            size as usize - m.outstanding()
        );
        prop_assert_eq!(back.awaiting_response() as usize, m.taken.len());
    }

    // Drain: everything ever queued comes back exactly once, in order.
    front.push_requests().unwrap();
    for r in m.taken.drain(..) {
        back.queue_response(&answer(&r)).unwrap();
    }
    while let Some(r) = back.take_request().unwrap() {
        back.queue_response(&answer(&r)).unwrap();
    }
    back.push_responses().unwrap();
    while let Some(r) = front.take_response().unwrap() {
        m.completed.push(r);
    }
    let expected: Vec<Rsp> = (0..m.next_id).map(|id| answer(&req(id))).collect();
    prop_assert_eq!(m.completed, expected);
    prop_assert!(!front.is_disabled() && !back.is_disabled());
    Ok(())
}

/// 512 cases per property unless `PROPTEST_CASES` asks for another number.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    ProptestConfig {
        cases: cases.unwrap_or(512),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any interleaving of produce/consume on both rings preserves FIFO order, never loses
    /// or duplicates an entry, keeps the free-slot accounting exact, and takes each
    /// notification decision the model predicts, including across the `u32` wrap.
    #[test]
    fn interleavings_match_the_model(
        entries in entries(),
        start in start_index(),
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let size = crate::ring::ring_size(ring_bytes(entries), 8);
        run_interleaving(size, start, &ops)?;
    }

    /// `need_notify` is exactly "event lies in (old, new] modulo 2^32".
    /// Offsets are biased towards the interval's edges, where off-by-one bugs live.
    #[test]
    fn notify_rule_matches_interval_definition(
        old: u32,
        new_off in prop_oneof![0u32..10, any::<u32>()],
        event_off in prop_oneof![0u32..12, (0u32..4).prop_map(|d| u32::MAX - d), any::<u32>()],
    ) {
        let new = old.wrapping_add(new_off);
        let event = old.wrapping_add(event_off);
        let batch = u64::from(new.wrapping_sub(old));
        let event_pos = u64::from(event.wrapping_sub(old));
        let in_interval = event_pos >= 1 && event_pos <= batch;
        prop_assert_eq!(need_notify(old, new, event), in_interval);
    }

    /// A request producer index at any value is either accepted (it lies within what the
    /// ring can hold) or reported once as an overrun, after which the ring stays disabled.
    #[test]
    fn request_overrun_is_detected_exactly(
        start in start_index(),
        pushed in 0u32..=4,
        answered_frac in 0u32..=4,
        bad_prod in prop_oneof![any::<u32>(), (0u32..12).prop_map(|d| d.wrapping_sub(4))],
        relative in any::<bool>(),
    ) {
        let mem = VecMem::new(ring_bytes(4));
        let mut front = FrontRing::<Req, Rsp, _>::init_at(&mem, start).unwrap();
        let mut back = BackRing::<Req, Rsp, _>::attach(&mem).unwrap();
        for id in 0..pushed {
            front.queue_request(&req(id)).unwrap();
        }
        front.push_requests().unwrap();
        let answered = answered_frac.min(pushed);
        for _ in 0..pushed {
            back.take_request().unwrap().unwrap();
        }
        for _ in 0..answered {
            back.queue_response(&Rsp { id: 0, status: 0 }).unwrap();
        }
        let req_cons = start.wrapping_add(pushed);
        let rsp_prod_pvt = start.wrapping_add(answered);
        let prod = if relative { req_cons.wrapping_add(bad_prod) } else { bad_prod };
        mem.store_release_u32(REQ_PROD_OFFSET, prod).unwrap();

        let res = back.unconsumed_requests();
        if prod.wrapping_sub(req_cons) > 4 {
            prop_assert_eq!(res, Err(RingError::Overrun { prod, cons: req_cons, size: 4 }));
        } else if prod.wrapping_sub(rsp_prod_pvt) > 4 {
            prop_assert_eq!(res, Err(RingError::Overrun { prod, cons: rsp_prod_pvt, size: 4 }));
        } else {
            prop_assert_eq!(res, Ok(prod.wrapping_sub(req_cons)));
            return Ok(());
        }
        prop_assert!(back.is_disabled());
        prop_assert_eq!(back.take_request(), Err(RingError::Disabled));
        prop_assert_eq!(back.final_check_for_requests(), Err(RingError::Disabled));
        prop_assert_eq!(back.push_responses(), Err(RingError::Disabled));
    }

    /// The same for the response producer index seen by a front-end.
    #[test]
    fn response_overrun_is_detected_exactly(
        start in start_index(),
        pushed in 0u32..=4,
        bad_prod in any::<u32>(),
        relative in any::<bool>(),
    ) {
        let mem = VecMem::new(ring_bytes(4));
        let mut front = FrontRing::<Req, Rsp, _>::init_at(&mem, start).unwrap();
        for id in 0..pushed {
            front.queue_request(&req(id)).unwrap();
        }
        front.push_requests().unwrap();
        let prod = if relative { start.wrapping_add(bad_prod % 10) } else { bad_prod };
        mem.store_release_u32(RSP_PROD_OFFSET, prod).unwrap();
        let res = front.unconsumed_responses();
        let avail = prod.wrapping_sub(start);
        if avail > 4 {
            prop_assert_eq!(res, Err(RingError::Overrun { prod, cons: start, size: 4 }));
        } else if avail > pushed {
            let req_prod = start.wrapping_add(pushed);
            prop_assert_eq!(res, Err(RingError::ResponsesAhead { rsp_prod: prod, req_prod }));
        } else {
            prop_assert_eq!(res, Ok(avail));
            return Ok(());
        }
        prop_assert_eq!(front.take_response(), Err(RingError::Disabled));
        prop_assert_eq!(front.queue_request(&req(0)), Err(RingError::Disabled));
    }

    /// A back-end driven by a hostile front-end (slots rewritten right after every read,
    /// event indices scribbled) consumes exactly what an honest one would: the copy it got
    /// is the request as submitted, whatever happened to the slot afterwards.
    #[test]
    fn hostile_front_end_cannot_change_what_the_back_end_consumed(
        start in start_index(),
        batches in proptest::collection::vec(1usize..=8, 1..20),
    ) {
        let honest = serve_batches(Hostility::NONE, start, &batches)?;
        let (hostile, rewrites) = serve_batches_counting(Hostility::ALL, start, &batches)?;
        prop_assert_eq!(&hostile, &honest);
        let total: usize = batches.iter().sum();
        prop_assert_eq!(rewrites, total as u64, "every slot read was rewritten");
        let expected: Vec<Req> = (0..total as u32).map(req).collect();
        prop_assert_eq!(honest, expected);
    }

    /// A front-end driven by a hostile back-end gets exactly the responses that were sent.
    #[test]
    fn hostile_back_end_cannot_change_what_the_front_end_consumed(
        start in start_index(),
        batches in proptest::collection::vec(1usize..=8, 1..20),
    ) {
        let mut mock = MockBackend::<Req, Rsp>::new(ring_bytes(8)).unwrap();
        mock.set_hostility(Hostility::ALL);
        let mut front = FrontRing::<Req, Rsp, _>::init_at(mock.mem(), start).unwrap();
        let mut got = Vec::new();
        let mut next = 0u32;
        for &n in &batches {
            for _ in 0..n {
                front.queue_request(&req(next)).unwrap();
                next += 1;
            }
            front.push_requests().unwrap();
            mock.serve(answer).unwrap();
            while let Some(r) = front.take_response().unwrap() {
                got.push(r);
            }
        }
        let expected: Vec<Rsp> = (0..next).map(|id| answer(&req(id))).collect();
        prop_assert_eq!(got, expected);
        prop_assert_eq!(mock.slot_rewrites(), u64::from(next));
    }
}

fn serve_batches(h: Hostility, start: u32, batches: &[usize]) -> Result<Vec<Req>, TestCaseError> {
    serve_batches_counting(h, start, batches).map(|(r, _)| r)
}

/// Submits `batches` through a `MockFrontend` with hostility `h`; a real `BackRing` takes
/// each request (the copy is what it acts on) and answers it. Returns what the back-end
/// consumed and how many slot rewrites happened.
fn serve_batches_counting(
    h: Hostility,
    start: u32,
    batches: &[usize],
) -> Result<(Vec<Req>, u64), TestCaseError> {
    let mut mock = MockFrontend::<Req, Rsp>::with_start_index(ring_bytes(8), start).unwrap();
    mock.set_hostility(h);
    let mut back = BackRing::<Req, Rsp, _>::attach(mock.mem()).unwrap();
    let mut consumed = Vec::new();
    let mut next = 0u32;
    for &n in batches {
        let batch: Vec<Req> = (next..next + n as u32).map(req).collect();
        next += n as u32;
        mock.submit(batch).unwrap();
        while let Some(r) = back.take_request().unwrap() {
            back.queue_response(&answer(&r)).unwrap();
            consumed.push(r);
        }
        if back.push_responses().unwrap() {
            mock.notify();
        }
        let expected: Vec<Rsp> = consumed[consumed.len() - n..].iter().map(answer).collect();
        prop_assert_eq!(mock.take_responses().unwrap(), expected);
    }
    Ok((consumed, mock.slot_rewrites()))
}

/// The hostile mode is a real test: a consumer that fetches a slot twice (checks a field,
/// then re-reads the slot to act) is caught.
#[test]
fn hostile_mode_catches_a_double_fetch() {
    let mock = {
        let mut m = MockFrontend::<Req, Rsp>::new(ring_bytes(4)).unwrap();
        m.set_hostility(Hostility {
            rewrite_slots_after_read: true,
            ..Hostility::NONE
        });
        m.submit([req(7)]).unwrap();
        m
    };
    let mem = mock.mem();
    // A broken back-end: validate from one read, then act on a second read.
    let checked: Req = mem.read_obj(ENTRIES_OFFSET).unwrap();
    assert_eq!(checked, req(7));
    let acted_on: Req = mem.read_obj(ENTRIES_OFFSET).unwrap();
    assert_ne!(
        acted_on, checked,
        "the second fetch sees the hostile rewrite"
    );
}
