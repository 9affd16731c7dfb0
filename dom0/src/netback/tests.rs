use std::os::unix::net::UnixDatagram;

use pv_drivers::VecMem;
use pv_drivers::netif::{NetFront, tx_request};
use pv_drivers::ring::REQ_PROD_OFFSET;
use shared_abi::io::netif::{NETTXF_MORE_DATA, NetifRxResponse, NetifTxResponse};

use super::*;
use crate::fake::FakeMicrovisor;
use crate::microvisor::{evtchn_alloc_unbound, evtchn_take_pending};

struct Rig {
    fake: FakeMicrovisor,
    pool: Arc<PagePool>,
    net: Arc<SocketNet>,
    nb: NetBack,
    store: Store,
}

fn rig() -> Rig {
    let fake = FakeMicrovisor::new();
    let pool = Arc::new(PagePool::default());
    let net = Arc::new(SocketNet::default());
    let mut store = Store::new();
    store.introduce_domain(1, "hello1");
    store.introduce_domain(2, "hello2");
    Rig {
        fake,
        nb: NetBack::new(Arc::clone(&pool), Arc::clone(&net) as Arc<dyn DeviceMaker>),
        pool,
        net,
        store,
    }
}

fn spec(mac: &str, ip: Option<&str>) -> VifSpec {
    VifSpec {
        bridge: "br0".into(),
        mac: mac.into(),
        ip: ip.map(str::to_owned),
    }
}

/// A scripted guest network front-end: table at gfn 100, tx ring gfn 200 (ref 8), rx ring
/// gfn 201 (ref 9), data pages gfn 300 + i (ref 16 + i).
struct Guest {
    domid: u32,
    handle: u32,
    front: NetFront<Arc<VecMem>>,
    port: u32,
}

const DATA_GFN: u64 = 300;
const DATA_REF: u32 = 16;

impl Rig {
    fn add(&mut self, domid: u32, handle: u32) -> Result<(), String> {
        let mac = format!("00:16:3e:00:{domid:02x}:{handle:02x}");
        self.nb.add(
            &mut self.store,
            domid,
            handle,
            &spec(&mac, Some("10.0.0.2/24")),
        )
    }

    fn guest(&mut self, domid: u32, handle: u32) -> Guest {
        let f = &self.fake;
        assert!(f.place_grant_frame(domid, 0, 100));
        assert!(f.grant_access(domid, 8, 200, false));
        assert!(f.grant_access(domid, 9, 201, false));
        for i in 0..8 {
            assert!(f.grant_access(domid, DATA_REF + i, DATA_GFN + u64::from(i), false));
        }
        let front = NetFront::init(
            f.guest_page(domid, 200).unwrap(),
            f.guest_page(domid, 201).unwrap(),
        )
        .unwrap();
        let port = evtchn_alloc_unbound(f, domid).unwrap();
        let fe = frontend_dir(domid, handle);
        for (k, v) in [
            ("tx-ring-ref", "8".to_owned()),
            ("rx-ring-ref", "9".to_owned()),
            ("event-channel", port.to_string()),
            ("request-rx-copy", "1".to_owned()),
            ("state", "3".to_owned()),
        ] {
            self.store
                .write(domid, &format!("{fe}/{k}"), v.as_bytes())
                .unwrap();
        }
        Guest {
            domid,
            handle,
            front,
            port,
        }
    }

    /// The guest pushes both rings and signals; dom0d takes the pending ports and serves
    /// them.
    fn kick(&mut self, g: &mut Guest) {
        g.front.push_tx().unwrap();
        g.front.push_rx().unwrap();
        self.fake.guest_send(g.domid, g.port);
        let ports = evtchn_take_pending(&self.fake).unwrap();
        let others = self.nb.on_ports(&self.fake, &mut self.store, &ports);
        assert!(others.is_empty(), "{others:?}");
    }

    fn host(&self, g: &Guest) -> UnixDatagram {
        self.net.host(g.domid, g.handle).unwrap()
    }

    fn be_state(&self, domid: u32, handle: u32) -> String {
        let raw = self
            .store
            .read(0, &format!("{}/state", backend_dir(domid, handle)))
            .unwrap();
        String::from_utf8(raw).unwrap()
    }

    fn holds_nothing(&self) -> bool {
        self.fake.foreign_slots().is_empty()
            && self.fake.dom0_ports().is_empty()
            && self.pool.in_use() == 0
            && self.fake.grants_in_use(1) == 0
            && self.fake.grants_in_use(2) == 0
    }

    fn stats(&self, domid: u32, handle: u32) -> NetworkDevice {
        self.nb
            .list(&self.store, domid)
            .into_iter()
            .find(|n| n.handle == handle)
            .unwrap()
    }
}

/// A test frame of `len` bytes: broadcast destination, then a pattern.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    f[..6].copy_from_slice(&[0xff; 6]);
    f
}

fn tx_responses(g: &mut Guest) -> Vec<(u16, i16)> {
    let mut v = Vec::new();
    while let Some(NetifTxResponse { id, status }) = g.front.take_tx_response().unwrap() {
        v.push((id, status));
    }
    v
}

fn rx_responses(g: &mut Guest) -> Vec<NetifRxResponse> {
    let mut v = Vec::new();
    while let Some(r) = g.front.take_rx().unwrap() {
        v.push(r);
    }
    v
}

fn recv_all(host: &UnixDatagram) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = host.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

fn read_node(store: &Store, dom: u32, p: &str) -> Result<String, crate::xenstore::XsErr> {
    store.read(dom, p).map(|v| String::from_utf8(v).unwrap())
}

#[test]
fn nodes_are_published_with_the_right_permissions() {
    let mut r = rig();
    r.add(1, 0).unwrap();
    let be = backend_dir(1, 0);
    let fe = frontend_dir(1, 0);
    assert_eq!(be, "/local/domain/0/backend/vif/1/0");
    assert_eq!(fe, "/local/domain/1/device/vif/0");
    for (leaf, want) in [
        ("frontend", fe.as_str()),
        ("frontend-id", "1"),
        ("handle", "0"),
        ("mac", "00:16:3e:00:01:00"),
        ("bridge", "br0"),
        ("ip", "10.0.0.2/24"),
        ("feature-rx-copy", "1"),
        ("feature-sg", "0"),
        ("feature-gso-tcpv4", "0"),
        ("state", "2"),
    ] {
        assert_eq!(
            read_node(&r.store, 1, &format!("{be}/{leaf}")).unwrap(),
            want,
            "{leaf}"
        );
    }
    for (leaf, want) in [
        ("backend", be.as_str()),
        ("backend-id", "0"),
        ("handle", "0"),
        ("mac", "00:16:3e:00:01:00"),
        ("state", "1"),
    ] {
        assert_eq!(
            read_node(&r.store, 1, &format!("{fe}/{leaf}")).unwrap(),
            want,
            "{leaf}"
        );
    }
    // Another DomU sees neither; the DomU may not write the back-end's nodes.
    assert!(read_node(&r.store, 2, &format!("{be}/mac")).is_err());
    assert!(read_node(&r.store, 2, &format!("{fe}/state")).is_err());
    assert!(r.store.write(1, &format!("{be}/mac"), b"x").is_err());
    r.store
        .write(1, &format!("{fe}/tx-ring-ref"), b"8")
        .unwrap();

    // No ip: no node. A handle in use, a multicast MAC or a failing device: refused, and
    // nothing is left behind.
    r.nb.add(&mut r.store, 2, 0, &spec("00:16:3e:00:02:00", None))
        .unwrap();
    assert!(
        r.store
            .read(0, &format!("{}/ip", backend_dir(2, 0)))
            .is_err()
    );
    assert!(r.add(1, 0).unwrap_err().contains("already has a vif 0"));
    let e =
        r.nb.add(&mut r.store, 1, 1, &spec("01:16:3e:00:00:01", None))
            .unwrap_err();
    assert!(e.contains("not a unicast address"), "{e}");
    r.net.fail_next("no TAP for you");
    let e = r.add(1, 2).unwrap_err();
    assert!(e.contains("no TAP for you"), "{e}");
    for h in [1, 2] {
        assert!(r.store.read(0, &backend_dir(1, h)).is_err());
        assert!(r.store.read(0, &frontend_dir(1, h)).is_err());
    }
    assert_eq!(r.nb.devices(), 2);
    assert_eq!(r.nb.domids(), [1, 2]);
}

#[test]
fn packets_flow_both_ways_and_teardown_leaves_nothing() {
    let mut r = rig();
    r.add(1, 0).unwrap();
    r.nb.step(&r.fake, &mut r.store);
    assert!(!r.nb.is_connected(1, 0), "no details yet");
    let mut g = r.guest(1, 0);
    let host = r.host(&g);
    r.nb.step(&r.fake, &mut r.store);
    assert!(r.nb.is_connected(1, 0));
    assert_eq!(r.be_state(1, 0), "4");
    assert_eq!(r.fake.grants_in_use(1), 2, "both rings stay mapped");

    // tx: a 600-byte packet in two fragments (100 bytes at offset 3996 of page 300, 500
    // at offset 0 of page 301), and a 60-byte one in one slot.
    let big = frame(600, 1);
    r.fake.write_guest(1, DATA_GFN * 4096 + 3996, &big[..100]);
    r.fake.write_guest(1, (DATA_GFN + 1) * 4096, &big[100..]);
    let small = frame(60, 2);
    r.fake.write_guest(1, (DATA_GFN + 2) * 4096 + 8, &small);
    g.front
        .queue_tx(&tx_request(1, DATA_REF, 3996, 600, NETTXF_MORE_DATA))
        .unwrap();
    g.front
        .queue_tx(&tx_request(2, DATA_REF + 1, 0, 500, 0))
        .unwrap();
    g.front
        .queue_tx(&tx_request(3, DATA_REF + 2, 8, 60, 0))
        .unwrap();
    r.kick(&mut g);
    assert_eq!(
        tx_responses(&mut g),
        [
            (1, NETIF_RSP_OKAY),
            (2, NETIF_RSP_OKAY),
            (3, NETIF_RSP_OKAY)
        ]
    );
    assert_eq!(recv_all(&host), [big.clone(), small.clone()]);
    assert!(r.fake.notified(1, g.port) >= 1);

    // rx: a frame from the network waits for a buffer, then lands at offset 0.
    let incoming = frame(1514, 3);
    host.send(&incoming).unwrap();
    r.nb.step(&r.fake, &mut r.store);
    assert!(rx_responses(&mut g).is_empty());
    g.front.post_rx(7, DATA_REF + 3).unwrap();
    g.front.post_rx(8, DATA_REF + 4).unwrap();
    r.kick(&mut g);
    let rs = rx_responses(&mut g);
    assert_eq!(rs.len(), 1);
    assert_eq!(
        (rs[0].id, rs[0].offset, rs[0].flags, rs[0].status),
        (7, 0, 0, 1514)
    );
    assert_eq!(
        r.fake.read_guest(1, (DATA_GFN + 3) * 4096, 1514).unwrap(),
        incoming
    );
    // The second buffer takes the next frame as soon as it is read.
    let short = frame(42, 4);
    host.send(&short).unwrap();
    r.nb.step(&r.fake, &mut r.store);
    let rs = rx_responses(&mut g);
    assert_eq!((rs[0].id, rs[0].status), (8, 42));
    assert_eq!(
        r.fake.read_guest(1, (DATA_GFN + 4) * 4096, 42).unwrap(),
        short
    );

    // A frame longer than MAX_FRAME (1518) is dropped; a packet too long for the device is
    // answered ERROR, and so is one the device refuses; the vif carries on.
    host.send(&frame(1519, 5)).unwrap();
    r.nb.step(&r.fake, &mut r.store);
    g.front
        .queue_tx(&tx_request(4, DATA_REF, 0, 1519, NETTXF_MORE_DATA))
        .unwrap();
    g.front
        .queue_tx(&tx_request(5, DATA_REF + 1, 0, 1000, 0))
        .unwrap();
    r.kick(&mut g);
    r.net.refuse_writes(1, 0, true);
    g.front
        .queue_tx(&tx_request(6, DATA_REF + 2, 8, 60, 0))
        .unwrap();
    r.kick(&mut g);
    r.net.refuse_writes(1, 0, false);
    assert_eq!(
        tx_responses(&mut g),
        [
            (4, NETIF_RSP_ERROR),
            (5, NETIF_RSP_ERROR),
            (6, NETIF_RSP_ERROR)
        ]
    );
    assert!(recv_all(&host).is_empty());
    assert!(r.nb.is_connected(1, 0));
    let n = r.stats(1, 0);
    assert_eq!(
        (
            n.tx_packets,
            n.tx_bytes,
            n.rx_packets,
            n.rx_bytes,
            n.drops,
            n.errors
        ),
        (2, 660, 2, 1556, 1, 2)
    );
    assert_eq!((n.backend_state, n.frontend_state), (4, 3));
    assert_eq!(n.tap, "vif1.0");
    assert!(n.connected && !n.stopped);

    // The domain goes: rings unmapped, port closed, nodes removed, device closed.
    r.nb.domain_gone(&r.fake, &mut r.store, 1);
    assert!(r.holds_nothing());
    assert!(r.store.read(0, &backend_dir(1, 0)).is_err());
    assert!(r.store.read(0, &frontend_dir(1, 0)).is_err());
    assert!(r.store.read(0, "/local/domain/0/backend/vif/1").is_err());
    assert!(!r.net.is_open(1, 0));
    assert_eq!(r.nb.devices(), 0);
    assert!(r.fake.end_access(1, 8) && r.fake.end_access(1, 9));
}

#[test]
fn frames_for_a_full_queue_or_an_unconnected_vif_are_dropped_and_counted() {
    let mut r = rig();
    r.add(1, 0).unwrap();
    let host = r.net.host(1, 0).unwrap();
    host.send(&frame(60, 1)).unwrap();
    r.nb.step(&r.fake, &mut r.store);
    assert_eq!(r.stats(1, 0).drops, 1, "not connected yet");
    let mut g = r.guest(1, 0);
    r.nb.step(&r.fake, &mut r.store);
    for i in 0..RX_QUEUE_FRAMES + 10 {
        host.send(&frame(60, i as u8)).unwrap();
    }
    r.nb.step(&r.fake, &mut r.store);
    assert_eq!(r.stats(1, 0).drops, 11);
    // The queue drains into buffers as they come, oldest first.
    for id in 0..200u16 {
        g.front.post_rx(id, DATA_REF + u32::from(id % 8)).unwrap();
    }
    r.kick(&mut g);
    let rs = rx_responses(&mut g);
    assert_eq!(rs.len(), 200);
    assert!(rs.iter().all(|r| r.status == 60));
    assert_eq!(
        r.fake.read_guest(1, (DATA_GFN + 7) * 4096, 60).unwrap(),
        frame(60, 199)
    );
}

#[test]
fn a_hostile_front_end_loses_only_its_own_vif() {
    let mut r = rig();
    r.add(1, 0).unwrap();
    r.add(2, 0).unwrap();
    let mut ga = r.guest(1, 0);
    let mut gb = r.guest(2, 0);
    r.nb.step(&r.fake, &mut r.store);
    assert!(r.nb.is_connected(1, 0) && r.nb.is_connected(2, 0));
    let host_b = r.host(&gb);

    // Domain 1 hands over a grant it never made in a tx slot: stopped, one count.
    ga.front.queue_tx(&tx_request(1, 99, 0, 60, 0)).unwrap();
    r.kick(&mut ga);
    assert_eq!(r.nb.stopped(), 1);
    assert!(!r.nb.is_connected(1, 0));
    assert_eq!(r.be_state(1, 0), "6");
    assert_eq!(r.fake.grants_in_use(1), 0, "its rings are unmapped");
    assert!(r.stats(1, 0).stopped);
    assert!(!r.fake.guest_send(1, ga.port), "its port is closed");
    r.nb.step(&r.fake, &mut r.store);
    assert!(
        !r.nb.is_connected(1, 0),
        "a stopped vif is never reconnected"
    );

    // Domain 2 carries on.
    r.fake.write_guest(2, DATA_GFN * 4096, &frame(60, 9));
    gb.front
        .queue_tx(&tx_request(1, DATA_REF, 0, 60, 0))
        .unwrap();
    r.kick(&mut gb);
    assert_eq!(tx_responses(&mut gb), [(1, NETIF_RSP_OKAY)]);
    assert_eq!(recv_all(&host_b), [frame(60, 9)]);

    // Domain 2 now sends a chain of 19 slots: stopped too.
    for id in 0..19u16 {
        let more = if id < 18 { NETTXF_MORE_DATA } else { 0 };
        gb.front
            .queue_tx(&tx_request(
                10 + id,
                DATA_REF,
                0,
                if id == 0 { 19 } else { 1 },
                more,
            ))
            .unwrap();
    }
    r.kick(&mut gb);
    assert_eq!(r.nb.stopped(), 2);
    assert!(r.holds_nothing());
    // Their devices stay until the domains go; what arrives is dropped.
    host_b.send(&frame(60, 1)).unwrap();
    r.nb.step(&r.fake, &mut r.store);
    assert_eq!(r.stats(2, 0).drops, 1);
}

#[test]
fn every_kind_of_hostile_ring_stops_the_vif_with_nothing_held() {
    type Attack = fn(&mut Rig, &mut Guest);
    // Each attack publishes what it queued (the overruns write the index last).
    let attacks: [(&str, Attack); 6] = [
        ("tx index overrun", |r, g| {
            let ring = r.fake.guest_page(g.domid, 200).unwrap();
            pv_drivers::SharedMem::store_release_u32(&*ring, REQ_PROD_OFFSET, 1000).unwrap();
        }),
        ("rx index overrun", |r, g| {
            let ring = r.fake.guest_page(g.domid, 201).unwrap();
            pv_drivers::SharedMem::store_release_u32(&*ring, REQ_PROD_OFFSET, 999).unwrap();
            r.net.host(1, 0).unwrap().send(&frame(60, 0)).unwrap();
        }),
        ("fragment crossing its page", |_, g| {
            g.front
                .queue_tx(&tx_request(1, DATA_REF, 4000, 200, 0))
                .unwrap();
            g.front.push_tx().unwrap();
        }),
        ("sizes that do not add up", |_, g| {
            g.front
                .queue_tx(&tx_request(1, DATA_REF, 0, 10, NETTXF_MORE_DATA))
                .unwrap();
            g.front
                .queue_tx(&tx_request(2, DATA_REF + 1, 0, 20, 0))
                .unwrap();
            g.front.push_tx().unwrap();
        }),
        ("read-only rx buffer", |r, g| {
            assert!(r.fake.grant_access(1, 40, 350, true));
            g.front.post_rx(1, 40).unwrap();
            g.front.push_rx().unwrap();
            r.net.host(1, 0).unwrap().send(&frame(60, 0)).unwrap();
        }),
        ("extra-info slot", |_, g| {
            g.front
                .queue_tx(&tx_request(1, DATA_REF, 0, 60, 8))
                .unwrap();
            g.front.push_tx().unwrap();
        }),
    ];
    for (what, attack) in attacks {
        let mut r = rig();
        r.add(1, 0).unwrap();
        let mut g = r.guest(1, 0);
        r.nb.step(&r.fake, &mut r.store);
        assert!(r.nb.is_connected(1, 0), "{what}");
        attack(&mut r, &mut g);
        r.fake.guest_send(1, g.port);
        let ports = evtchn_take_pending(&r.fake).unwrap();
        r.nb.on_ports(&r.fake, &mut r.store, &ports);
        r.nb.step(&r.fake, &mut r.store);
        assert_eq!(r.nb.stopped(), 1, "{what}");
        assert_eq!(r.be_state(1, 0), "6", "{what}");
        assert!(r.holds_nothing(), "{what}");
    }
}

#[test]
fn bad_ring_details_stop_the_vif_with_nothing_held() {
    for (key, value) in [
        ("tx-ring-ref", "7"),
        ("rx-ring-ref", "x"),
        ("rx-ring-ref", "12"),
        ("event-channel", "999"),
        ("request-rx-copy", "0"),
        ("tx-ring-ref", "8 "),
    ] {
        let mut r = rig();
        r.add(1, 0).unwrap();
        let _g = r.guest(1, 0);
        let fe = frontend_dir(1, 0);
        r.store
            .write(1, &format!("{fe}/{key}"), value.as_bytes())
            .unwrap();
        r.nb.step(&r.fake, &mut r.store);
        assert_eq!(r.nb.stopped(), 1, "{key}={value}");
        assert_eq!(r.be_state(1, 0), "6");
        assert!(r.holds_nothing(), "{key}={value}");
    }
    // No request-rx-copy at all: refused with the reason.
    let mut r = rig();
    r.add(1, 0).unwrap();
    let _g = r.guest(1, 0);
    r.store
        .rm(1, &format!("{}/request-rx-copy", frontend_dir(1, 0)))
        .unwrap();
    r.nb.step(&r.fake, &mut r.store);
    assert_eq!(r.nb.stopped(), 1);
    assert!(r.holds_nothing());
}

#[test]
fn a_front_end_that_closes_is_disconnected_and_may_come_back() {
    let mut r = rig();
    r.add(1, 0).unwrap();
    let _g = r.guest(1, 0);
    r.nb.step(&r.fake, &mut r.store);
    assert!(r.nb.is_connected(1, 0));
    let fe = frontend_dir(1, 0);
    r.store.write(1, &format!("{fe}/state"), b"5").unwrap();
    r.nb.step(&r.fake, &mut r.store);
    assert_eq!(r.be_state(1, 0), "6");
    assert!(r.holds_nothing());
    r.store.write(1, &format!("{fe}/state"), b"1").unwrap();
    r.nb.step(&r.fake, &mut r.store);
    assert_eq!(r.be_state(1, 0), "2");
    let port = evtchn_alloc_unbound(&r.fake, 1).unwrap();
    r.store
        .write(
            1,
            &format!("{fe}/event-channel"),
            port.to_string().as_bytes(),
        )
        .unwrap();
    r.store.write(1, &format!("{fe}/state"), b"3").unwrap();
    r.nb.step(&r.fake, &mut r.store);
    assert!(r.nb.is_connected(1, 0));
    assert_eq!(r.nb.stopped(), 0);
}

/// The device's descriptor wakes the net task: a frame sent into the network end is read
/// by `poll_devices` without any poll, and delivered by `serve_devices`.
#[tokio::test]
async fn a_readable_device_wakes_the_poller() {
    let mut r = rig();
    r.add(1, 0).unwrap();
    let mut g = r.guest(1, 0);
    r.nb.step(&r.fake, &mut r.store);
    g.front.post_rx(3, DATA_REF).unwrap();
    r.kick(&mut g);
    let nb = &r.nb;
    // Nothing to read: pending (and the device is now watched).
    let first = std::future::poll_fn(|cx| Poll::Ready(nb.poll_devices(cx))).await;
    assert!(first.is_pending());
    let host = r.net.host(1, 0).unwrap();
    let sent = frame(100, 1);
    host.send(&sent).unwrap();
    let keys = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        std::future::poll_fn(|cx| nb.poll_devices(cx)),
    )
    .await
    .unwrap();
    assert_eq!(keys, [(1, 0)]);
    r.nb.serve_devices(&r.fake, &mut r.store, &keys);
    let rs = rx_responses(&mut g);
    assert_eq!((rs[0].id, rs[0].status), (3, 100));
    assert_eq!(r.fake.read_guest(1, DATA_GFN * 4096, 100).unwrap(), sent);
    // Drained: pending again.
    let again = std::future::poll_fn(|cx| Poll::Ready(nb.poll_devices(cx))).await;
    assert!(again.is_pending());
    r.nb.domain_gone(&r.fake, &mut r.store, 1);
    assert!(
        !r.net.is_open(1, 0),
        "the watch does not keep the device open"
    );
}

/// A UDP packet 10.0.0.2:9 -> 10.0.0.1:53 in an Ethernet frame, checksum field `csum`.
fn udp_frame(payload: &[u8], csum: [u8; 2]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x00, 0x16, 0x3e, 0, 1, 0, 0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[10, 0, 0, 2, 10, 0, 0, 1]);
    f.extend_from_slice(&[0, 9, 0, 53]);
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&csum);
    f.extend_from_slice(payload);
    f
}

#[test]
fn blank_checksums_are_completed_and_unfixable_ones_refused() {
    use shared_abi::io::netif::NETTXF_CSUM_BLANK;
    let mut r = rig();
    r.add(1, 0).unwrap();
    let mut g = r.guest(1, 0);
    let host = r.host(&g);
    r.nb.step(&r.fake, &mut r.store);
    assert!(r.nb.is_connected(1, 0));

    // As Linux's netfront sends it: a partial sum in the field, CSUM_BLANK set.
    let blank = udp_frame(b"offloaded", [0x12, 0x34]);
    r.fake.write_guest(1, DATA_GFN * 4096, &blank);
    let len = blank.len() as u16;
    g.front
        .queue_tx(&tx_request(1, DATA_REF, 0, len, NETTXF_CSUM_BLANK))
        .unwrap();
    // Not IPv4: cannot be completed, answered ERROR; the vif carries on.
    let mut arp = frame(60, 3);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    r.fake.write_guest(1, (DATA_GFN + 1) * 4096, &arp);
    g.front
        .queue_tx(&tx_request(2, DATA_REF + 1, 0, 60, NETTXF_CSUM_BLANK))
        .unwrap();
    r.kick(&mut g);
    assert_eq!(
        tx_responses(&mut g),
        [(1, NETIF_RSP_OKAY), (2, NETIF_RSP_ERROR)]
    );
    let sent = recv_all(&host);
    assert_eq!(sent.len(), 1);
    assert_eq!(pv_drivers::netif::csum::checksum_ok(&sent[0]), Ok(true));
    assert_ne!(sent[0][40..42], [0x12, 0x34]);
    assert_eq!(sent[0][..40], blank[..40]);
    assert_eq!(sent[0][42..], blank[42..]);
    assert!(r.nb.is_connected(1, 0));
    assert_eq!(r.stats(1, 0).errors, 1);
}

#[test]
fn a_burst_beyond_the_budget_is_finished_without_another_event() {
    use std::task::{Context, Poll, Waker};
    let mut r = rig();
    r.add(1, 0).unwrap();
    let mut g = r.guest(1, 0);
    let host = r.host(&g);
    r.nb.step(&r.fake, &mut r.store);
    assert!(r.nb.is_connected(1, 0));
    let small = frame(60, 4);
    r.fake.write_guest(1, DATA_GFN * 4096, &small);
    // More packets than one serve takes: the guest publishes them, signals once.
    let burst = TX_PACKETS_PER_SERVE + 40;
    let mut answered = 0;
    let mut delivered = 0;
    let mut id = 0u16;
    while answered < burst {
        while g.front.tx_free() > 0 && usize::from(id) < burst {
            g.front
                .queue_tx(&tx_request(id % 256, DATA_REF, 0, 60, 0))
                .unwrap();
            id += 1;
        }
        if answered == 0 {
            r.kick(&mut g);
        } else {
            // No event from the guest: the net task finds the vif it left unfinished.
            g.front.push_tx().unwrap();
            let mut cx = Context::from_waker(Waker::noop());
            let Poll::Ready(keys) = r.nb.poll_devices(&mut cx) else {
                panic!("the unfinished vif was not offered again");
            };
            assert_eq!(keys, [(1, 0)]);
            r.nb.serve_devices(&r.fake, &mut r.store, &keys);
        }
        let rsps = tx_responses(&mut g);
        assert!(!rsps.is_empty(), "no progress after {answered}");
        assert!(rsps.iter().all(|&(_, st)| st == NETIF_RSP_OKAY), "{rsps:?}");
        answered += rsps.len();
        // The datagram socket holds only so many frames: drain it as a network would.
        delivered += recv_all(&host).len();
    }
    assert_eq!(answered, burst);
    assert_eq!(delivered, burst);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        r.nb.poll_devices(&mut cx).is_pending(),
        "nothing left to do"
    );
}
