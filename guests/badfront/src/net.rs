//! The network attacks, one per vif (see the crate docs).

use guest_rt::blkfront::AtomicPage;
use guest_rt::{grants, println, time};
use pv_drivers::SharedMem;
use pv_drivers::netif::{NetRxFrontRing, NetTxFrontRing};
use pv_drivers::ring::REQ_PROD_OFFSET;
use shared_abi::DomId;
use shared_abi::guest::evtchn_send;
use shared_abi::io::netif::NetifTxRequest;
use shared_abi::io::xenbus::XenbusState;

use crate::BAD_REF_UNGRANTED;
use crate::front::{self, Conn, Fail, TIMEOUT_NS};

/// Grant references: vif `h`'s tx ring page is `TX_REF + 4h`, its rx ring page the next,
/// then its data page.
const TX_REF: u32 = 240;

static TX: [AtomicPage; 2] = [const { AtomicPage::new() }; 2];
static RX: [AtomicPage; 2] = [const { AtomicPage::new() }; 2];
static DATA: [AtomicPage; 2] = [const { AtomicPage::new() }; 2];

/// The frame vif 1 sends before its attack: broadcast, from a locally administered
/// address, EtherType 0x88B5 (local experimental), 60 bytes.
const FRAME_LEN: u16 = 60;

const fn tx_ref(h: usize) -> u32 {
    TX_REF + 4 * h as u32
}

/// A connected vif.
struct Vif {
    h: usize,
    conn: Conn,
    tx: NetTxFrontRing<&'static AtomicPage>,
    _rx: NetRxFrontRing<&'static AtomicPage>,
}

impl Vif {
    fn connect(h: usize) -> Result<Vif, Fail> {
        let dom0 = DomId::DOM0.0;
        grants::init().map_err(Fail::Hypercall)?;
        grants::grant_access(tx_ref(h), dom0, TX[h].gfn(), false)?;
        grants::grant_access(tx_ref(h) + 1, dom0, RX[h].gfn(), false)?;
        grants::grant_access(tx_ref(h) + 2, dom0, DATA[h].gfn(), true)?;
        let mut frame = [0u8; FRAME_LEN as usize];
        frame[..6].fill(0xFF);
        frame[6..12].copy_from_slice(&[0x02, 0xBA, 0xDF, 0x00, 0x00, h as u8]);
        frame[12..14].copy_from_slice(&[0x88, 0xB5]);
        frame[14..22].copy_from_slice(b"badfront");
        let _ = DATA[h].write_bytes(0, &frame);
        let tx = NetTxFrontRing::init(&TX[h])?;
        let rx = NetRxFrontRing::init(&RX[h])?;
        let conn = front::connect(
            "vif",
            h as u32,
            &[("tx-ring-ref", tx_ref(h)), ("rx-ring-ref", tx_ref(h) + 1)],
            &[("request-rx-copy", "1")],
        )?;
        Ok(Vif {
            h,
            conn,
            tx,
            _rx: rx,
        })
    }

    fn send(&mut self, req: &NetifTxRequest) -> Result<(), Fail> {
        self.tx.queue_request(req)?;
        self.tx.push_requests()?;
        let _ = evtchn_send(self.conn.port);
        Ok(())
    }
}

/// Runs the two network attacks, printing one line each.
pub(crate) fn run() {
    type Attack = fn(&mut Vif) -> Result<XenbusState, Fail>;
    let attacks: [(&str, Attack); 2] = [("bad-tx-grant", bad_grant), ("tx-ring-index", ring_index)];
    for (h, (name, attack)) in attacks.into_iter().enumerate() {
        match Vif::connect(h).and_then(|mut v| attack(&mut v)) {
            Ok(state) => println!(
                "badfront: {name} on vif{h}: back-end state {}",
                state.as_u32()
            ),
            Err(why) => println!("badfront: {name} on vif{h}: FAILED: {why}"),
        }
    }
}

/// A one-slot packet whose grant reference was never granted.
fn bad_grant(v: &mut Vif) -> Result<XenbusState, Fail> {
    v.send(&NetifTxRequest {
        gref: BAD_REF_UNGRANTED,
        offset: 0,
        flags: 0,
        id: 0,
        size: FRAME_LEN,
    })?;
    Ok(v.conn.wait_left_connected())
}

/// A valid frame first (it must be answered), then `req_prod` far beyond the ring.
fn ring_index(v: &mut Vif) -> Result<XenbusState, Fail> {
    v.send(&NetifTxRequest {
        gref: tx_ref(v.h) + 2,
        offset: 0,
        flags: 0,
        id: 0,
        size: FRAME_LEN,
    })?;
    let deadline = time::now_ns().saturating_add(TIMEOUT_NS);
    let rsp = loop {
        if let Some(rsp) = v.tx.take_response()? {
            break rsp;
        }
        if v.tx.final_check_for_responses()? {
            continue;
        }
        let now = time::now_ns();
        if now >= deadline {
            return Err(Fail::NoResponse);
        }
        front::pause_until(now.saturating_add(100_000_000).min(deadline));
    };
    println!(
        "badfront: tx-ring-index on vif{}: valid frame answered with status {}",
        v.h, rsp.status
    );
    TX[v.h].store_release_u32(REQ_PROD_OFFSET, 1 + 0x4000_0000)?;
    let _ = evtchn_send(v.conn.port);
    Ok(v.conn.wait_left_connected())
}
