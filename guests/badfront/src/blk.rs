//! The block attacks, one per vbd (see the crate docs).

use guest_rt::blkfront::AtomicPage;
use guest_rt::{grants, println, time};
use pv_drivers::FrontRing;
use pv_drivers::SharedMem;
use pv_drivers::blkif::{request, segment};
use pv_drivers::ring::{ENTRIES_OFFSET, REQ_PROD_OFFSET, entry_size};
use shared_abi::DomId;
use shared_abi::guest::evtchn_send;
use shared_abi::io::blkif::{
    BLKIF_OP_WRITE, BLKIF_RING_SIZE, BLKIF_RSP_OKAY, BlkifRequest, BlkifResponse, BlkifSegment,
};
use shared_abi::io::xenbus::XenbusState;
use zerocopy::IntoBytes;

use crate::front::{self, Conn, Fail, TIMEOUT_NS};
use crate::{BAD_REF_OUT_OF_TABLE, BAD_REF_UNGRANTED};

/// The disks attacked, in order: (vdev, device id).
const DISKS: [(&str, u32); 4] = [
    ("xvda", 202 << 8),
    ("xvdb", (202 << 8) | 16),
    ("xvdc", (202 << 8) | 32),
    ("xvdd", (202 << 8) | 48),
];

/// Grant references: disk `k`'s ring page is `RING_REF + 4k`, its data page the next.
const RING_REF: u32 = 200;

/// Ring pages and data pages, one each per disk.
static RINGS: [AtomicPage; 4] = [const { AtomicPage::new() }; 4];
static DATA: [AtomicPage; 4] = [const { AtomicPage::new() }; 4];

/// Requests of the rewrite attack (a full ring).
const BATCH: u32 = BLKIF_RING_SIZE;
/// How long the rewrite attack keeps rewriting.
const REWRITE_NS: u64 = 1_000_000_000;

type Ring = FrontRing<BlkifRequest, BlkifResponse, &'static AtomicPage>;

const fn ring_ref(k: usize) -> u32 {
    RING_REF + 4 * k as u32
}

const fn data_ref(k: usize) -> u32 {
    ring_ref(k) + 1
}

/// A connected vbd.
struct Vbd {
    k: usize,
    conn: Conn,
    ring: Ring,
    sectors: u64,
}

impl Vbd {
    /// Grants disk `k`'s pages and connects it.
    fn connect(k: usize) -> Result<Vbd, Fail> {
        let dom0 = DomId::DOM0.0;
        grants::init().map_err(Fail::Hypercall)?;
        grants::grant_access(ring_ref(k), dom0, RINGS[k].gfn(), false)?;
        grants::grant_access(data_ref(k), dom0, DATA[k].gfn(), false)?;
        // xtask's dom0-hostile-front expects xvda's image to hold 4 KiB of 0xB0 at sector 0
        // (its one valid write) and nothing past the first 32 pages of xvdd's.
        let fill = [0xB0u8 | k as u8; 4096];
        let _ = DATA[k].write_bytes(0, &fill);
        let ring = Ring::init(&RINGS[k])?;
        let conn = front::connect(
            "vbd",
            DISKS[k].1,
            &[("ring-ref", ring_ref(k))],
            &[("protocol", "x86_64-abi")],
        )?;
        let sectors = conn.backend_u64("sectors")?;
        Ok(Vbd {
            k,
            conn,
            ring,
            sectors,
        })
    }

    fn vdev(&self) -> &'static str {
        DISKS[self.k].0
    }

    /// A valid write of the data page's 8 sectors at `sector`, id `id`.
    fn write_req(&self, id: u64, sector: u64) -> BlkifRequest {
        request(
            BLKIF_OP_WRITE,
            id,
            sector,
            &[segment(data_ref(self.k), 0, 7)],
        )
    }

    /// Publishes what is queued and signals the back-end, whatever ring.h's rule says.
    fn push(&mut self) -> Result<(), Fail> {
        self.ring.push_requests()?;
        self.kick();
        Ok(())
    }

    fn kick(&self) {
        let _ = evtchn_send(self.conn.port);
    }

    /// Writes `req` into the slot of index `idx` directly (after publication too), unless
    /// the slot's first 16 bytes (where a response goes) no longer are those of `last`,
    /// what we wrote there last: then the back-end has answered in it, and the slot is left
    /// alone (`false`). A response written between the look and the write is clobbered;
    /// a hostile front-end only hurts itself that way.
    fn scribble(&self, idx: u32, last: &BlkifRequest, req: &BlkifRequest) -> bool {
        let stride = entry_size::<BlkifRequest, BlkifResponse>();
        let at = ENTRIES_OFFSET + (idx % BLKIF_RING_SIZE) as usize * stride;
        let mut head = [0u8; 16];
        if RINGS[self.k].read_bytes(at, &mut head).is_err() || head != last.as_bytes()[..16] {
            return false;
        }
        let _ = RINGS[self.k].write_bytes(at, req.as_bytes());
        true
    }

    /// Waits for the next response, at most [`TIMEOUT_NS`].
    fn response(&mut self) -> Result<BlkifResponse, Fail> {
        let deadline = time::now_ns().saturating_add(TIMEOUT_NS);
        loop {
            if let Some(rsp) = self.ring.take_response()? {
                return Ok(rsp);
            }
            if self.ring.final_check_for_responses()? {
                continue;
            }
            let now = time::now_ns();
            if now >= deadline {
                return Err(Fail::NoResponse);
            }
            front::pause_until(now.saturating_add(100_000_000).min(deadline));
        }
    }
}

/// Runs the four block attacks, printing one line each.
pub(crate) fn run() {
    type Attack = fn(&mut Vbd) -> Result<XenbusState, Fail>;
    let attacks: [(&str, Attack); 4] = [
        ("ring-index", ring_index),
        ("bad-grant", bad_grant),
        ("bad-segments", bad_segments),
        ("rewrite", rewrite),
    ];
    for (k, (name, attack)) in attacks.into_iter().enumerate() {
        let vdev = DISKS[k].0;
        match Vbd::connect(k).and_then(|mut v| attack(&mut v)) {
            Ok(state) => println!(
                "badfront: {name} on {vdev}: back-end state {}",
                state.as_u32()
            ),
            Err(why) => println!("badfront: {name} on {vdev}: FAILED: {why}"),
        }
    }
}

/// A valid write first (it must succeed), then `req_prod` far beyond the ring.
fn ring_index(v: &mut Vbd) -> Result<XenbusState, Fail> {
    let req = v.write_req(7, 0);
    v.ring.queue_request(&req)?;
    v.push()?;
    let rsp = v.response()?;
    if rsp.id != 7 || rsp.status != BLKIF_RSP_OKAY {
        return Err(Fail::Status(rsp.status));
    }
    println!("badfront: ring-index on {}: valid write okay", v.vdev());
    // One request was published; claim a billion more.
    RINGS[v.k].store_release_u32(REQ_PROD_OFFSET, 1 + 0x4000_0000)?;
    v.kick();
    Ok(v.conn.wait_left_connected())
}

/// A write whose segments name a reference never granted and one beyond the table.
fn bad_grant(v: &mut Vbd) -> Result<XenbusState, Fail> {
    let req = request(
        BLKIF_OP_WRITE,
        1,
        0,
        &[
            segment(BAD_REF_UNGRANTED, 0, 7),
            segment(BAD_REF_OUT_OF_TABLE, 0, 7),
        ],
    );
    v.ring.queue_request(&req)?;
    v.push()?;
    Ok(v.conn.wait_left_connected())
}

/// Segments with first > last, a last sector of 9, and a request crossing the disk's end.
fn bad_segments(v: &mut Vbd) -> Result<XenbusState, Fail> {
    let gref = data_ref(v.k);
    let raw = |first_sect, last_sect| BlkifSegment {
        gref,
        first_sect,
        last_sect,
        pad: 0,
    };
    let reqs = [
        request(BLKIF_OP_WRITE, 1, 0, &[raw(5, 2)]),
        request(BLKIF_OP_WRITE, 2, 8, &[raw(0, 9)]),
        request(BLKIF_OP_WRITE, 3, v.sectors.saturating_sub(4), &[raw(0, 7)]),
    ];
    for r in &reqs {
        v.ring.queue_request(r)?;
    }
    v.push()?;
    Ok(v.conn.wait_left_connected())
}

/// The responses the rewrite attack saw.
#[derive(Default)]
struct Tally {
    /// Responses taken.
    n: u32,
    ok: u32,
    failed: u32,
    /// Responses with an id never sent, or a second one for an id.
    strange: u32,
    answered: [bool; BATCH as usize],
}

impl Tally {
    /// Takes every response published so far.
    fn take(&mut self, v: &mut Vbd) -> Result<(), Fail> {
        while let Some(rsp) = v.ring.take_response()? {
            self.n += 1;
            match usize::try_from(rsp.id)
                .ok()
                .and_then(|i| self.answered.get_mut(i))
            {
                Some(seen) if !*seen => {
                    *seen = true;
                    if rsp.status == BLKIF_RSP_OKAY {
                        self.ok += 1;
                    } else {
                        self.failed += 1;
                    }
                }
                _ => self.strange += 1,
            }
        }
        Ok(())
    }
}

/// One garbage version of request `valid` (pass `pass`).
fn garbage(valid: &BlkifRequest, pass: u64) -> BlkifRequest {
    let mut g = *valid;
    match pass % 6 {
        0 => g.id = 0xBAD0_0000_0000 | pass,
        1 => g.seg[0].gref = BAD_REF_UNGRANTED,
        2 => g.sector_number = u64::MAX - 3,
        3 => g.nr_segments = 200,
        4 => {
            g.seg[0].first_sect = 7;
            g.seg[0].last_sect = 0;
        }
        _ => g.operation = 77,
    }
    g
}

/// Publishes a full ring of valid writes, then rewrites every unanswered slot with garbage
/// and back, over and over, for [`REWRITE_NS`] at most; the last write of each slot is the
/// valid request. The back-end is signalled after the first pass, so the slots are already
/// changing when it starts copying them. A slot stops being rewritten once it holds
/// something else than what we wrote there (the back-end's response). Then waits for the
/// answers or the device being stopped.
fn rewrite(v: &mut Vbd) -> Result<XenbusState, Fail> {
    let valid: [BlkifRequest; BATCH as usize] =
        core::array::from_fn(|i| v.write_req(i as u64, 8 * i as u64));
    for r in &valid {
        v.ring.queue_request(r)?;
    }
    v.ring.push_requests()?;
    let mut t = Tally::default();
    // Slots the back-end has answered in (as far as we can tell).
    let mut answered = [false; BATCH as usize];
    let end = time::now_ns().saturating_add(REWRITE_NS);
    let mut passes = 0u64;
    let mut rewrites = 0u64;
    while time::now_ns() < end && answered.iter().any(|a| !a) {
        t.take(v)?;
        // Slots holding a response (taken or not) are left alone.
        for idx in 0..BATCH {
            let i = idx as usize;
            if answered[i] {
                continue;
            }
            let bad = garbage(&valid[i], passes);
            if v.scribble(idx, &valid[i], &bad) {
                rewrites += 1;
                answered[i] = !v.scribble(idx, &bad, &valid[i]);
            } else {
                answered[i] = true;
            }
        }
        if passes == 0 {
            v.kick();
        }
        passes += 1;
    }
    v.kick();
    let deadline = time::now_ns().saturating_add(TIMEOUT_NS);
    let state = loop {
        t.take(v)?;
        let state = v.conn.backend_state();
        let now = time::now_ns();
        if t.n >= BATCH || state != XenbusState::Connected || now >= deadline {
            break state;
        }
        front::pause_until(now.saturating_add(100_000_000).min(deadline));
    };
    println!(
        "badfront: rewrite on {}: {} of {BATCH} answered ({} okay, {} failed, {} unrecognised: ids never sent or repeated, or a response clobbered by our rewriting) after {rewrites} rewrites in {passes} passes",
        v.vdev(),
        t.n,
        t.ok,
        t.failed,
        t.strange
    );
    Ok(state)
}
