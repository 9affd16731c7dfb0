//! Host tests of the network front-end: node parsing, grant references, and the
//! datapath against pv-drivers' back-end ring end ([`NetBack`]) and a scripted hostile
//! back-end ([`MockNetBackend`]).

use super::*;
use pv_drivers::mock::{MockMem, MockNetBackend};
use pv_drivers::netif::{NetBack, TxTaken, rx_response};
use shared_abi::io::netif::{
    NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETRXF_DATA_VALIDATED, NetifRxResponse,
    NetifTxResponse,
};
use std::boxed::Box;
use std::vec::Vec;

fn leak_pages(n: usize) -> &'static [AtomicPage] {
    let v: Vec<AtomicPage> = (0..n).map(|_| AtomicPage::new()).collect();
    Box::leak(v.into_boxed_slice())
}

fn page() -> &'static AtomicPage {
    Box::leak(Box::new(AtomicPage::new()))
}

/// A datapath over leaked pages with the real back-end end attached to its rings.
struct Pair {
    dp: Datapath<'static, &'static AtomicPage, AtomicPage>,
    back: NetBack<&'static AtomicPage>,
    tx_pages: &'static [AtomicPage],
    rx_pages: &'static [AtomicPage],
}

fn pair() -> Pair {
    let (tx, rx) = (page(), page());
    let tx_pages = leak_pages(TX_PAGES);
    let rx_pages = leak_pages(RX_BUFFERS);
    let front = NetFront::init(tx, rx).unwrap();
    let back = NetBack::attach(tx, rx, ETH_FRAME_MAX).unwrap();
    let dp = Datapath::new(front, tx_pages, rx_pages).unwrap();
    Pair {
        dp,
        back,
        tx_pages,
        rx_pages,
    }
}

/// The page behind grant `gref` (what a back-end would map or copy from).
fn granted(p: &Pair, gref: u32) -> &'static AtomicPage {
    let g = gref as usize;
    if (FIRST_TX_REF as usize..FIRST_TX_REF as usize + TX_PAGES).contains(&g) {
        &p.tx_pages[g - FIRST_TX_REF as usize]
    } else {
        &p.rx_pages[g - FIRST_RX_REF as usize]
    }
}

fn frame(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// The back-end's side of one tx packet: its bytes (copied from the granted page) and ids.
fn take_packet(p: &mut Pair) -> Option<(Vec<u8>, Vec<u16>)> {
    let t = p.back.next_tx().unwrap()?;
    let TxTaken::Valid(pkt) = t else {
        panic!("refused: {t:?}")
    };
    let mut data = Vec::new();
    for f in pkt.frags() {
        let mut b = std::vec![0u8; usize::from(f.len)];
        granted(p, f.gref)
            .read_bytes(usize::from(f.offset), &mut b)
            .unwrap();
        data.extend_from_slice(&b);
    }
    Some((data, pkt.ids().to_vec()))
}

#[test]
fn grant_refs_do_not_collide() {
    assert_eq!(TX_RING_REF, 384);
    assert_eq!(RX_RING_REF, 385);
    assert_eq!(tx_ref(0), 386);
    assert_eq!(tx_ref(TX_PAGES - 1), 417);
    assert_eq!(rx_ref(0), 418);
    assert_eq!(rx_ref(RX_BUFFERS - 1), 481);
    let blk_last = crate::blkfront::data_ref(crate::blkfront::SLOTS - 1, 10);
    assert_eq!(blk_last, 368);
    assert!(TX_RING_REF > blk_last);
    assert_eq!(TX_BUFFERS, 64);
}

#[test]
fn macs_parse_strictly() {
    let m = Mac::parse(b"00:16:3e:0a:BC:ff").unwrap();
    assert_eq!(m, Mac([0x00, 0x16, 0x3e, 0x0a, 0xbc, 0xff]));
    assert_eq!(std::format!("{m}"), "00:16:3e:0a:bc:ff");
    assert_eq!(
        Mac::parse(b"00:16:3e:00:00:01\0"),
        Some(Mac([0, 0x16, 0x3e, 0, 0, 1]))
    );
    for bad in [
        &b""[..],
        b"00:16:3e:00:00",
        b"00:16:3e:00:00:01:02",
        b"00-16-3e-00-00-01",
        b"00:16:3e:00:00:1",
        b"00:16:3e:00:00:0g",
        b" 0:16:3e:00:00:01",
        b"01:16:3e:00:00:01", // multicast
        b"ff:ff:ff:ff:ff:ff", // broadcast
        b"00:00:00:00:00:00",
        b"00:16:3e:00:00:01\0\0",
    ] {
        assert_eq!(Mac::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn addresses_parse_strictly() {
    assert_eq!(parse_ipv4(b"10.0.0.2"), Some([10, 0, 0, 2]));
    assert_eq!(parse_ipv4(b"255.255.255.0"), Some([255, 255, 255, 0]));
    for bad in [
        &b""[..],
        b"10.0.0",
        b"10.0.0.2.1",
        b"10.0.0.256",
        b"10.0.0.02",
        b"10..0.2",
        b"10.0.0.2 ",
        b"+10.0.0.2",
        b"10.0.0.1234",
    ] {
        assert_eq!(parse_ipv4(bad), None, "{bad:?}");
    }
    let c = Ipv4Cidr::parse(b"10.0.0.2/24").unwrap();
    assert_eq!(
        c,
        Ipv4Cidr {
            addr: [10, 0, 0, 2],
            prefix: 24
        }
    );
    assert_eq!(std::format!("{c}"), "10.0.0.2/24");
    assert_eq!(Ipv4Cidr::parse(b"192.168.1.7/32\0").unwrap().prefix, 32);
    assert_eq!(
        Ipv4Cidr::parse(b"10.1.2.3"),
        Some(Ipv4Cidr {
            addr: [10, 1, 2, 3],
            prefix: DEFAULT_PREFIX
        })
    );
    for bad in [
        &b"10.0.0.2/"[..],
        b"10.0.0.2/0",
        b"10.0.0.2/33",
        b"10.0.0.2/024",
        b"10.0.0.2/2a",
        b"10.0.0.2/24/1",
        b"0.0.0.0/8",
        b"127.0.0.1/8",
        b"224.0.0.1/4",
        b"255.255.255.255/32",
        b"/24",
    ] {
        assert_eq!(Ipv4Cidr::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn nic_info_from_nodes() {
    let i = NicInfo::parse(b"00:16:3e:12:34:56", Some(b"1"), Some(b"10.0.0.3/24")).unwrap();
    assert_eq!(i.mac, Mac([0, 0x16, 0x3e, 0x12, 0x34, 0x56]));
    assert_eq!(i.ip.unwrap().addr, [10, 0, 0, 3]);
    let i = NicInfo::parse(b"00:16:3e:12:34:56", Some(b"1\0"), None).unwrap();
    assert_eq!(i.ip, None);
    let mac = b"00:16:3e:12:34:56";
    assert_eq!(NicInfo::parse(mac, None, None), Err(NetError::NoRxCopy));
    assert_eq!(
        NicInfo::parse(mac, Some(b"0"), None),
        Err(NetError::NoRxCopy)
    );
    assert_eq!(
        NicInfo::parse(mac, Some(b"2"), None),
        Err(NetError::BadNode("feature-rx-copy"))
    );
    assert_eq!(
        NicInfo::parse(mac, Some(b"yes"), None),
        Err(NetError::BadNode("feature-rx-copy"))
    );
    assert_eq!(
        NicInfo::parse(mac, Some(b"1"), Some(b"10.0.0.300/24")),
        Err(NetError::BadNode("ip"))
    );
    assert_eq!(
        NicInfo::parse(b"00:16:3e", Some(b"1"), None),
        Err(NetError::BadNode("mac"))
    );
}

#[test]
fn rx_buffers_are_posted_with_their_ids_and_grants() {
    let mut p = pair();
    p.dp.post_rx_all().unwrap();
    assert!(
        p.dp.take_notify(),
        "the back-end asked to be told at the first post"
    );
    assert_eq!(p.dp.rx_posted(), RX_BUFFERS as u32);
    let mut seen = Vec::new();
    while let Some(b) = p.back.next_rx_buffer().unwrap() {
        assert_eq!(b.gref, rx_ref(usize::from(b.id)));
        seen.push(b.id);
    }
    assert_eq!(seen, (0..RX_BUFFERS as u16).collect::<Vec<_>>());
    // Posting again posts nothing new.
    p.dp.post_rx_all().unwrap();
    assert!(!p.dp.take_notify());
    assert_eq!(p.back.next_rx_buffer().unwrap(), None);
}

#[test]
fn frames_go_out_in_half_pages_and_buffers_come_back() {
    let mut p = pair();
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(60 + 300 * i, i as u8)).collect();
    for f in &frames {
        p.dp.send(f).unwrap();
    }
    assert!(p.dp.take_notify());
    assert_eq!(p.dp.tx_in_flight(), 5);
    for (i, f) in frames.iter().enumerate() {
        let (data, ids) = take_packet(&mut p).unwrap();
        assert_eq!(&data, f, "frame {i}");
        assert_eq!(ids, [i as u16]);
    }
    // Where they were: buffer i is half i % 2 of page i / 2.
    let mut b = [0u8; 60];
    p.tx_pages[0].read_bytes(0, &mut b).unwrap();
    assert_eq!(&b[..], &frames[0][..]);
    p.tx_pages[0].read_bytes(TX_HALF, &mut b).unwrap();
    assert_eq!(&b[..], &frames[1][..60]);

    for id in [3u16, 0, 4] {
        p.back.respond_tx(id, NETIF_RSP_OKAY).unwrap();
    }
    p.back.respond_tx(1, NETIF_RSP_ERROR).unwrap();
    p.back.push_tx().unwrap();
    assert_eq!(p.dp.reclaim().unwrap(), 4);
    assert_eq!(p.dp.tx_in_flight(), 1);
    let s = p.dp.stats();
    assert_eq!((s.tx_frames, s.tx_errors), (5, 1));
    // The next frame takes the lowest free buffer (0).
    p.dp.send(&frame(100, 9)).unwrap();
    let (data, ids) = take_packet(&mut p).unwrap();
    assert_eq!((data.len(), ids), (100, std::vec![0]));
}

#[test]
fn sizes_are_checked() {
    let mut p = pair();
    assert_eq!(p.dp.send(&[]), Err(NetError::FrameSize(0)));
    assert_eq!(
        p.dp.send(&[0; ETH_FRAME_MAX + 1]),
        Err(NetError::FrameSize(ETH_FRAME_MAX + 1))
    );
    p.dp.send(&[0xab; ETH_FRAME_MAX]).unwrap();
    let (data, _) = take_packet(&mut p).unwrap();
    assert_eq!(data.len(), ETH_FRAME_MAX);
    assert_eq!(p.dp.broken(), None, "size errors do not break the NIC");
}

#[test]
fn a_full_nic_says_so_until_buffers_are_answered() {
    let mut p = pair();
    for i in 0..TX_BUFFERS {
        p.dp.send(&frame(64, i as u8)).unwrap();
    }
    assert_eq!(p.dp.tx_available(), Ok(false));
    assert_eq!(p.dp.send(&frame(64, 0)), Err(NetError::Full));
    let mut ids = Vec::new();
    while let Some((_, i)) = take_packet(&mut p) {
        ids.extend(i);
    }
    assert_eq!(ids.len(), TX_BUFFERS);
    p.back.respond_tx(ids[17], NETIF_RSP_OKAY).unwrap();
    p.back.push_tx().unwrap();
    // send reclaims by itself.
    p.dp.send(&frame(64, 1)).unwrap();
    let (_, again) = take_packet(&mut p).unwrap();
    assert_eq!(again, [ids[17]]);
    assert_eq!(p.dp.send(&frame(64, 0)), Err(NetError::Full));
}

#[test]
fn received_frames_are_copied_out_and_buffers_reposted() {
    let mut p = pair();
    p.dp.post_rx_all().unwrap();
    let mut buf = [0u8; PAGE];
    assert_eq!(p.dp.recv(&mut buf), Ok(None));
    let a = p.back.next_rx_buffer().unwrap().unwrap();
    let b = p.back.next_rx_buffer().unwrap().unwrap();
    let fa = frame(98, 1);
    let fb = frame(1514, 2);
    granted(&p, a.gref).write_bytes(0, &fa).unwrap();
    granted(&p, b.gref).write_bytes(100, &fb).unwrap();
    p.back
        .respond_rx(&rx_response(a.id, 98, NETRXF_DATA_VALIDATED))
        .unwrap();
    p.back
        .respond_rx(&NetifRxResponse {
            id: b.id,
            offset: 100,
            flags: 0,
            status: 1514,
        })
        .unwrap();
    p.back.push_rx().unwrap();
    let _ = p.dp.take_notify();

    assert_eq!(p.dp.recv(&mut buf), Ok(Some(98)));
    assert_eq!(&buf[..98], &fa[..]);
    assert_eq!(p.dp.recv(&mut buf), Ok(Some(1514)));
    assert_eq!(&buf[..1514], &fb[..]);
    assert_eq!(p.dp.recv(&mut buf), Ok(None));
    assert_eq!(p.dp.rx_posted(), RX_BUFFERS as u32, "both reposted");
    assert_eq!(p.dp.stats().rx_frames, 2);
    // The back-end sees the two buffers again after the 62 it has not taken.
    let mut again = Vec::new();
    while let Some(r) = p.back.next_rx_buffer().unwrap() {
        again.push((r.id, r.gref));
    }
    assert_eq!(again.len(), RX_BUFFERS - 2 + 2);
    assert_eq!(again[again.len() - 2..], [(a.id, a.gref), (b.id, b.gref)]);
}

#[test]
fn errored_long_and_chained_rx_slots_are_dropped() {
    let mut p = pair();
    p.dp.post_rx_all().unwrap();
    let taken: Vec<_> = (0..6)
        .map(|_| p.back.next_rx_buffer().unwrap().unwrap())
        .collect();
    let good = frame(200, 3);
    granted(&p, taken[5].gref).write_bytes(0, &good).unwrap();
    let rsps = [
        rx_response(taken[0].id, NETIF_RSP_DROPPED, 0),
        rx_response(taken[1].id, NETIF_RSP_ERROR, 0),
        // A two-slot packet (never asked for): both slots dropped.
        rx_response(taken[2].id, 1000, NETRXF_MORE_DATA),
        rx_response(taken[3].id, 500, 0),
        // Longer than the caller's buffer below.
        rx_response(taken[4].id, 300, 0),
        rx_response(taken[5].id, 200, 0),
    ];
    for r in &rsps {
        p.back.respond_rx(r).unwrap();
    }
    p.back.push_rx().unwrap();
    let mut buf = [0u8; 256];
    assert_eq!(p.dp.recv(&mut buf), Ok(Some(200)));
    assert_eq!(&buf[..200], &good[..]);
    let s = p.dp.stats();
    assert_eq!((s.rx_frames, s.rx_dropped), (1, 5));
    assert_eq!(p.dp.rx_posted(), RX_BUFFERS as u32);
    assert_eq!(p.dp.broken(), None);
}

#[test]
fn poll_reports_waiting_responses_and_rearms() {
    let mut p = pair();
    p.dp.post_rx_all().unwrap();
    assert_eq!(p.dp.poll(), Ok(false));
    p.dp.send(&frame(64, 0)).unwrap();
    let (_, ids) = take_packet(&mut p).unwrap();
    p.back.respond_tx(ids[0], NETIF_RSP_OKAY).unwrap();
    assert!(p.back.push_tx().unwrap(), "poll re-armed the tx event");
    // poll reclaims the answered buffer.
    assert_eq!(p.dp.poll(), Ok(false));
    assert_eq!(p.dp.tx_in_flight(), 0);
    let b = p.back.next_rx_buffer().unwrap().unwrap();
    p.back.respond_rx(&rx_response(b.id, 60, 0)).unwrap();
    assert!(p.back.push_rx().unwrap(), "poll re-armed the rx event");
    assert_eq!(p.dp.poll(), Ok(true), "a frame is waiting");
    let mut buf = [0u8; PAGE];
    assert_eq!(p.dp.recv(&mut buf), Ok(Some(60)));
    assert_eq!(p.dp.poll(), Ok(false));
}

/// A datapath whose rings are served by a scripted back-end.
fn scripted() -> (Datapath<'static, MockMem, AtomicPage>, MockNetBackend) {
    let back = MockNetBackend::new().unwrap();
    let front = NetFront::init(back.tx_mem(), back.rx_mem()).unwrap();
    let dp = Datapath::new(front, leak_pages(TX_PAGES), leak_pages(RX_BUFFERS)).unwrap();
    (dp, back)
}

#[test]
fn a_tx_response_for_a_buffer_not_in_flight_breaks_the_nic() {
    let (mut dp, mut back) = scripted();
    dp.send(&frame(64, 0)).unwrap();
    let slots = back.take_tx().unwrap();
    assert_eq!(slots.len(), 1);
    back.tx
        .respond([NetifTxResponse {
            id: 9,
            status: NETIF_RSP_OKAY,
        }])
        .unwrap();
    let e = NetError::Ring(FrontError::UnknownId(9));
    assert_eq!(dp.reclaim(), Err(e));
    assert_eq!(dp.broken(), Some(e));
    // Every later call fails the same way.
    assert_eq!(dp.send(&frame(64, 0)), Err(e));
    assert_eq!(dp.recv(&mut [0u8; 64]), Err(e));
    assert_eq!(dp.poll(), Err(e));
    assert_eq!(dp.tx_available(), Err(e));
}

#[test]
fn an_rx_response_for_a_buffer_not_posted_breaks_the_nic() {
    let (mut dp, mut back) = scripted();
    dp.post_rx_all().unwrap();
    let bufs = back.take_rx_buffers().unwrap();
    assert_eq!(bufs.len(), RX_BUFFERS);
    back.fill_rx([rx_response(200, 60, 0)]).unwrap();
    let e = NetError::Ring(FrontError::UnknownId(200));
    assert_eq!(dp.recv(&mut [0u8; PAGE]), Err(e));
    assert_eq!(dp.post_rx_all(), Err(e));
}

#[test]
fn rx_data_outside_the_page_breaks_the_nic() {
    let (mut dp, mut back) = scripted();
    dp.post_rx_all().unwrap();
    back.take_rx_buffers().unwrap();
    back.fill_rx([NetifRxResponse {
        id: 0,
        offset: 4000,
        flags: 0,
        status: 200,
    }])
    .unwrap();
    assert!(matches!(
        dp.recv(&mut [0u8; PAGE]),
        Err(NetError::Ring(FrontError::BadRxResponse { id: 0, .. }))
    ));
    assert!(dp.broken().is_some());
}

#[test]
fn rx_extra_info_breaks_the_nic() {
    let (mut dp, mut back) = scripted();
    dp.post_rx_all().unwrap();
    back.take_rx_buffers().unwrap();
    back.fill_rx([rx_response(0, 60, NETRXF_EXTRA_INFO)])
        .unwrap();
    let e = NetError::Protocol("an rx extra-info slot");
    assert_eq!(dp.recv(&mut [0u8; PAGE]), Err(e));
    assert_eq!(dp.send(&frame(60, 0)), Err(e));
}

#[test]
fn an_overrun_tx_ring_breaks_the_nic() {
    let (mut dp, back) = scripted();
    dp.send(&frame(64, 0)).unwrap();
    back.tx.overrun_responses().unwrap();
    assert!(matches!(
        dp.reclaim(),
        Err(NetError::Ring(FrontError::Ring(_)))
    ));
    assert!(dp.broken().is_some());
    assert!(dp.send(&frame(64, 0)).is_err());
}

#[test]
fn null_tx_status_counts_as_an_error_but_frees_the_buffer() {
    let (mut dp, mut back) = scripted();
    dp.send(&frame(64, 0)).unwrap();
    let slots = back.take_tx().unwrap();
    back.tx
        .respond([NetifTxResponse {
            id: slots[0].id,
            status: NETIF_RSP_NULL,
        }])
        .unwrap();
    assert_eq!(dp.reclaim(), Ok(1));
    assert_eq!(dp.stats().tx_errors, 1);
    assert_eq!(dp.tx_in_flight(), 0);
}

#[test]
fn too_many_pages_are_refused() {
    let back = MockNetBackend::new().unwrap();
    let front = NetFront::init(back.tx_mem(), back.rx_mem()).unwrap();
    assert!(Datapath::new(front, leak_pages(TX_PAGES + 1), leak_pages(1)).is_err());
}
