use std::io::Write as _;

use pv_drivers::VecMem;
use pv_drivers::blkif::{BlkFront, request, segment};
use pv_drivers::ring::REQ_PROD_OFFSET;
use shared_abi::io::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_RSP_EOPNOTSUPP, BlkifResponse,
};

use super::*;
use crate::fake::FakeMicrovisor;
use crate::microvisor::{evtchn_alloc_unbound, evtchn_take_pending};

const SECTORS: u64 = 64;

struct Rig {
    fake: FakeMicrovisor,
    pool: Arc<PagePool>,
    bb: BlkBack,
    store: Store,
    _dir: tempfile::TempDir,
    disk: std::path::PathBuf,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d1.img");
    let mut f = File::create(&disk).unwrap();
    for s in 0..SECTORS {
        f.write_all(&[s as u8; 512]).unwrap();
    }
    let fake = FakeMicrovisor::new();
    let pool = Arc::new(PagePool::default());
    let mut store = Store::new();
    store.introduce_domain(1, "hello1");
    store.introduce_domain(2, "hello2");
    Rig {
        fake,
        bb: BlkBack::new(Arc::clone(&pool)),
        pool,
        store,
        disk,
        _dir: dir,
    }
}

/// A scripted guest block front-end: table at gfn 100, ring page gfn 200 (ref 8), data
/// pages gfn 300 + i (ref 16 + i).
struct Guest {
    domid: u32,
    front: BlkFront<Arc<VecMem>>,
    port: u32,
}

impl Rig {
    fn spec(&self, vdev: &str, read_only: bool) -> DiskSpec {
        DiskSpec {
            path: self.disk.to_str().unwrap().to_owned(),
            vdev: vdev.to_owned(),
            read_only,
        }
    }

    fn add(&mut self, domid: u32, vdev: &str, read_only: bool) -> Result<u32, String> {
        let spec = self.spec(vdev, read_only);
        self.bb.add(&mut self.store, domid, &spec)
    }

    fn guest(&mut self, domid: u32, devid: u32) -> Guest {
        let f = &self.fake;
        assert!(f.place_grant_frame(domid, 0, 100));
        assert!(f.grant_access(domid, 8, 200, false));
        for i in 0..8 {
            assert!(f.grant_access(domid, 16 + i, 300 + u64::from(i), false));
        }
        let front = BlkFront::init(f.guest_page(domid, 200).unwrap()).unwrap();
        let port = evtchn_alloc_unbound(f, domid).unwrap();
        let fe = frontend_dir(domid, devid);
        for (k, v) in [
            ("ring-ref", "8".to_owned()),
            ("event-channel", port.to_string()),
            ("protocol", "x86_64-abi".to_owned()),
            ("state", "3".to_owned()),
        ] {
            self.store
                .write(domid, &format!("{fe}/{k}"), v.as_bytes())
                .unwrap();
        }
        let _ = devid;
        Guest { domid, front, port }
    }

    /// The guest pushes, signals; dom0d takes the pending ports and serves them.
    fn kick(&mut self, g: &mut Guest) {
        g.front.push().unwrap();
        self.fake.guest_send(g.domid, g.port);
        let ports = evtchn_take_pending(&self.fake).unwrap();
        let others = self.bb.on_ports(&self.fake, &mut self.store, &ports);
        assert!(others.is_empty(), "{others:?}");
    }

    fn be_state(&self, domid: u32, devid: u32) -> String {
        let raw = self
            .store
            .read(0, &format!("{}/state", backend_dir(domid, devid)))
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
}

fn take_all(g: &mut Guest) -> Vec<BlkifResponse> {
    let mut v = Vec::new();
    while let Some(r) = g.front.take().unwrap() {
        v.push(r);
    }
    v
}

fn status(rs: &[BlkifResponse]) -> Vec<(u64, i16)> {
    rs.iter().map(|r| (r.id, r.status)).collect()
}

fn read_node(store: &Store, dom: u32, p: &str) -> Result<String, crate::xenstore::XsErr> {
    store.read(dom, p).map(|v| String::from_utf8(v).unwrap())
}

#[test]
fn devids_follow_xens_encoding() {
    assert_eq!(devid_of("xvda"), Some(51712));
    assert_eq!(devid_of("xvdb"), Some(51728));
    assert_eq!(devid_of("xvdp"), Some(51952));
    assert_eq!(devid_of("xvdq"), Some((1 << 28) | (16 << 8)));
    for bad in ["xvd", "xvdA", "xvdaa", "sda", "hda", ""] {
        assert_eq!(devid_of(bad), None, "{bad}");
    }
}

#[test]
fn nodes_are_published_with_the_right_permissions() {
    let mut r = rig();
    let devid = r.add(1, "xvda", false).unwrap();
    let be = backend_dir(1, devid);
    let fe = frontend_dir(1, devid);
    assert_eq!(be, "/local/domain/0/backend/vbd/1/51712");
    assert_eq!(fe, "/local/domain/1/device/vbd/51712");
    assert_eq!(
        read_node(&r.store, 1, &format!("{be}/sectors")).unwrap(),
        "64"
    );
    assert_eq!(
        read_node(&r.store, 1, &format!("{be}/sector-size")).unwrap(),
        "512"
    );
    assert_eq!(
        read_node(&r.store, 1, &format!("{be}/feature-flush-cache")).unwrap(),
        "1"
    );
    assert_eq!(read_node(&r.store, 1, &format!("{be}/info")).unwrap(), "0");
    assert_eq!(read_node(&r.store, 1, &format!("{be}/state")).unwrap(), "2");
    assert_eq!(
        read_node(&r.store, 1, &format!("{fe}/backend")).unwrap(),
        be
    );
    assert_eq!(
        read_node(&r.store, 1, &format!("{fe}/backend-id")).unwrap(),
        "0"
    );
    assert_eq!(read_node(&r.store, 1, &format!("{fe}/state")).unwrap(), "1");
    // Another DomU sees neither; the DomU may not write the back-end's nodes.
    assert!(read_node(&r.store, 2, &format!("{be}/sectors")).is_err());
    assert!(read_node(&r.store, 2, &format!("{fe}/state")).is_err());
    assert!(r.store.write(1, &format!("{be}/sectors"), b"9999").is_err());
    r.store.write(1, &format!("{fe}/state"), b"3").unwrap();
    // A second disk with the same vdev is refused; a missing file leaves nothing behind.
    assert!(r.add(1, "xvda", false).is_err());
    let mut missing = r.spec("xvdb", false);
    missing.path = "/nonexistent/disk.img".into();
    assert!(
        r.bb.add(&mut r.store, 1, &missing)
            .unwrap_err()
            .contains("opening disk")
    );
    assert!(r.store.read(0, &backend_dir(1, 51728)).is_err());
    let ro = r.add(2, "xvdb", true).unwrap();
    assert_eq!(
        read_node(&r.store, 2, &format!("{}/info", backend_dir(2, ro))).unwrap(),
        "4"
    );
}

#[test]
fn handshake_io_and_teardown_against_a_scripted_front_end() {
    let mut r = rig();
    let devid = r.add(1, "xvda", false).unwrap();
    r.bb.step(&r.fake, &mut r.store);
    assert!(
        !r.bb.is_connected(1, devid),
        "the front-end has not written its details"
    );
    let mut g = r.guest(1, devid);
    r.bb.step(&r.fake, &mut r.store);
    assert!(r.bb.is_connected(1, devid));
    assert_eq!(r.be_state(1, devid), "4");
    assert_eq!(r.fake.grants_in_use(1), 1, "the ring stays mapped");

    // Write sectors 2..=3 from page 300 (pattern), read sectors 0..=7 and 60..=63, flush,
    // discard (unsupported), all in flight together.
    r.fake.write_guest(1, 300 * 4096, &[0xab; 1024]);
    g.front
        .queue(&request(BLKIF_OP_WRITE, 1, 2, &[segment(16, 0, 1)]))
        .unwrap();
    g.front
        .queue(&request(BLKIF_OP_READ, 2, 0, &[segment(17, 0, 7)]))
        .unwrap();
    g.front
        .queue(&request(BLKIF_OP_READ, 3, 60, &[segment(18, 4, 7)]))
        .unwrap();
    g.front
        .queue(&request(BLKIF_OP_FLUSH_DISKCACHE, 4, 0, &[]))
        .unwrap();
    g.front
        .queue(&request(BLKIF_OP_DISCARD, 5, 0, &[]))
        .unwrap();
    r.kick(&mut g);
    let rs = take_all(&mut g);
    assert_eq!(
        status(&rs),
        [(1, 0), (2, 0), (3, 0), (4, 0), (5, BLKIF_RSP_EOPNOTSUPP)]
    );
    assert!(r.fake.notified(1, g.port) >= 1);
    let disk = std::fs::read(&r.disk).unwrap();
    assert!(disk[1024..2048].iter().all(|&b| b == 0xab));
    assert!(disk[2048..2560].iter().all(|&b| b == 4));
    let page = r.fake.read_guest(1, 301 * 4096, 4096).unwrap();
    for s in 0..8usize {
        let want = if (2..4).contains(&s) { 0xab } else { s as u8 };
        assert!(
            page[s * 512..(s + 1) * 512].iter().all(|&b| b == want),
            "sector {s}"
        );
    }
    let page = r.fake.read_guest(1, 302 * 4096 + 2048, 2048).unwrap();
    assert!(
        page.chunks(512)
            .zip(60u8..)
            .all(|(c, s)| c.iter().all(|&b| b == s))
    );

    // A full ring of requests is served in one go.
    for id in 0..32u64 {
        g.front
            .queue(&request(BLKIF_OP_READ, 100 + id, id, &[segment(19, 0, 0)]))
            .unwrap();
    }
    r.kick(&mut g);
    assert_eq!(take_all(&mut g).len(), 32);

    // The domain goes: ring unmapped, port closed, nodes removed.
    r.bb.domain_gone(&r.fake, &mut r.store, 1);
    assert!(r.holds_nothing());
    assert!(r.store.read(0, &backend_dir(1, devid)).is_err());
    assert!(r.store.read(0, &frontend_dir(1, devid)).is_err());
    assert_eq!(r.bb.devices(), 0);
    assert!(
        r.fake.end_access(1, 8),
        "the ring grant can be revoked again"
    );
}

#[test]
fn a_hostile_front_end_loses_only_its_own_disk() {
    let mut r = rig();
    let a = r.add(1, "xvda", false).unwrap();
    let b = r.add(2, "xvda", true).unwrap();
    let mut ga = r.guest(1, a);
    let mut gb = r.guest(2, b);
    r.bb.step(&r.fake, &mut r.store);
    assert!(r.bb.is_connected(1, a) && r.bb.is_connected(2, b));

    // Domain 2 (read-only disk): a write is answered ERROR, not a violation.
    gb.front
        .queue(&request(BLKIF_OP_WRITE, 1, 0, &[segment(16, 0, 0)]))
        .unwrap();
    r.kick(&mut gb);
    assert_eq!(status(&take_all(&mut gb)), [(1, -1)]);

    // Domain 1 hands over a grant it never made: stopped, one count.
    ga.front
        .queue(&request(BLKIF_OP_READ, 1, 0, &[segment(99, 0, 0)]))
        .unwrap();
    r.kick(&mut ga);
    assert_eq!(r.bb.stopped(), 1);
    assert!(!r.bb.is_connected(1, a));
    assert_eq!(r.be_state(1, a), "6");
    assert_eq!(r.fake.grants_in_use(1), 0, "its ring is unmapped");
    // Its further signals go nowhere; domain 2 carries on.
    assert!(!r.fake.guest_send(1, ga.port));
    gb.front
        .queue(&request(BLKIF_OP_READ, 2, 1, &[segment(17, 0, 0)]))
        .unwrap();
    r.kick(&mut gb);
    assert_eq!(status(&take_all(&mut gb)), [(2, 0)]);
    r.bb.step(&r.fake, &mut r.store);
    assert!(
        !r.bb.is_connected(1, a),
        "a stopped disk is never reconnected"
    );

    // Domain 2 now overruns its ring index: stopped too.
    let ring = r.fake.guest_page(2, 200).unwrap();
    pv_drivers::SharedMem::store_release_u32(&*ring, REQ_PROD_OFFSET, 1000).unwrap();
    r.fake.guest_send(2, gb.port);
    let ports = evtchn_take_pending(&r.fake).unwrap();
    r.bb.on_ports(&r.fake, &mut r.store, &ports);
    assert_eq!(r.bb.stopped(), 2);
    assert!(r.holds_nothing());
}

#[test]
fn malformed_and_out_of_range_requests_stop_the_device() {
    for bad in [
        request(BLKIF_OP_READ, 1, SECTORS, &[segment(16, 0, 0)]),
        request(BLKIF_OP_READ, 1, 0, &[segment(16, 3, 2)]),
        request(BLKIF_OP_READ, 1, 0, &[]),
        request(BLKIF_OP_FLUSH_DISKCACHE, 1, 0, &[segment(16, 0, 0)]),
    ] {
        let mut r = rig();
        let a = r.add(1, "xvda", false).unwrap();
        let mut g = r.guest(1, a);
        r.bb.step(&r.fake, &mut r.store);
        g.front.queue(&bad).unwrap();
        r.kick(&mut g);
        assert_eq!(r.bb.stopped(), 1, "{bad:?}");
        assert!(r.holds_nothing());
    }
}

#[test]
fn bad_ring_details_stop_the_device_with_nothing_held() {
    for (key, value) in [
        ("ring-ref", "7"),
        ("ring-ref", "x"),
        ("event-channel", "999"),
        ("protocol", "x86_32-abi"),
    ] {
        let mut r = rig();
        let a = r.add(1, "xvda", false).unwrap();
        let _g = r.guest(1, a);
        let fe = frontend_dir(1, a);
        r.store
            .write(1, &format!("{fe}/{key}"), value.as_bytes())
            .unwrap();
        r.bb.step(&r.fake, &mut r.store);
        assert_eq!(r.bb.stopped(), 1, "{key}={value}");
        assert_eq!(r.be_state(1, a), "6");
        assert!(r.fake.foreign_slots().is_empty() && r.pool.in_use() == 0);
        assert_eq!(r.fake.grants_in_use(1), 0);
    }
}

#[test]
fn a_front_end_that_closes_is_disconnected_and_may_come_back() {
    let mut r = rig();
    let a = r.add(1, "xvda", false).unwrap();
    let _g = r.guest(1, a);
    r.bb.step(&r.fake, &mut r.store);
    assert!(r.bb.is_connected(1, a));
    let fe = frontend_dir(1, a);
    r.store.write(1, &format!("{fe}/state"), b"5").unwrap();
    r.bb.step(&r.fake, &mut r.store);
    assert_eq!(r.be_state(1, a), "6");
    assert!(r.holds_nothing());
    r.store.write(1, &format!("{fe}/state"), b"1").unwrap();
    r.bb.step(&r.fake, &mut r.store);
    assert_eq!(r.be_state(1, a), "2");
    // The front-end connects again, with a fresh port.
    let port = evtchn_alloc_unbound(&r.fake, 1).unwrap();
    r.store
        .write(
            1,
            &format!("{fe}/event-channel"),
            port.to_string().as_bytes(),
        )
        .unwrap();
    r.store.write(1, &format!("{fe}/state"), b"3").unwrap();
    r.bb.step(&r.fake, &mut r.store);
    assert!(r.bb.is_connected(1, a));
    assert_eq!(r.bb.stopped(), 0);
}

#[test]
fn persistent_grants_are_mapped_once_and_released_with_the_ring() {
    let mut r = rig();
    let devid = r.add(1, "xvda", false).unwrap();
    let be = backend_dir(1, devid);
    assert_eq!(
        read_node(&r.store, 1, &format!("{be}/feature-persistent")).unwrap(),
        "1"
    );
    let mut g = r.guest(1, devid);
    r.store
        .write(
            1,
            &format!("{}/feature-persistent", frontend_dir(1, devid)),
            b"1",
        )
        .unwrap();
    r.bb.step(&r.fake, &mut r.store);
    assert!(r.bb.is_connected(1, devid));
    let ring_only = r.pool.in_use();

    // Sectors 2..=3 written from page 300 (ref 16), read back into page 301 (ref 17),
    // then page 300 used again.
    r.fake.write_guest(1, 300 * 4096, &[0xab; 1024]);
    g.front
        .queue(&request(BLKIF_OP_WRITE, 1, 2, &[segment(16, 0, 1)]))
        .unwrap();
    r.kick(&mut g);
    assert_eq!(status(&take_all(&mut g)), [(1, 0)]);
    assert_eq!(r.pool.in_use(), ring_only + 1, "page 300 mapped");
    assert_eq!(
        r.fake.grants_in_use(1),
        2,
        "the ring and page 300 stay mapped"
    );
    g.front
        .queue(&request(BLKIF_OP_READ, 2, 2, &[segment(17, 0, 1)]))
        .unwrap();
    g.front
        .queue(&request(BLKIF_OP_WRITE, 3, 4, &[segment(16, 1, 1)]))
        .unwrap();
    r.kick(&mut g);
    assert_eq!(status(&take_all(&mut g)), [(2, 0), (3, 0)]);
    assert_eq!(
        r.fake.read_guest(1, 301 * 4096, 1024).unwrap(),
        vec![0xab; 1024]
    );
    assert_eq!(
        r.pool.in_use(),
        ring_only + 2,
        "page 300 reused, 301 mapped once"
    );
    let image = std::fs::read(&r.disk).unwrap();
    assert_eq!(&image[1024..2048], &[0xab; 1024][..]);
    assert_eq!(
        &image[2048..2560],
        &[0xab; 512][..],
        "sector 4 from offset 512 of page 300"
    );
    // The mappings are state a restarted dom0d takes over.
    let recs = r.bb.export();
    let grefs: Vec<u32> = recs[0].1.persistent.iter().map(|p| p.gref).collect();
    assert_eq!(grefs, [16, 17]);

    // A reference that cannot be mapped goes through GrantCopy, which stops the disk.
    g.front
        .queue(&request(BLKIF_OP_READ, 4, 0, &[segment(999, 0, 0)]))
        .unwrap();
    r.kick(&mut g);
    assert!(!r.bb.is_connected(1, devid));
    assert_eq!(r.bb.stopped(), 1);
    assert_eq!(r.pool.in_use(), 0, "the ring and both pages unmapped");
    r.bb.domain_gone(&r.fake, &mut r.store, 1);
    assert!(r.holds_nothing());
}

#[test]
fn without_the_front_ends_consent_pages_are_copied_not_kept() {
    let mut r = rig();
    let devid = r.add(1, "xvda", false).unwrap();
    let mut g = r.guest(1, devid);
    r.bb.step(&r.fake, &mut r.store);
    let ring_only = r.pool.in_use();
    g.front
        .queue(&request(BLKIF_OP_READ, 1, 0, &[segment(16, 0, 0)]))
        .unwrap();
    r.kick(&mut g);
    assert_eq!(status(&take_all(&mut g)), [(1, 0)]);
    assert_eq!(r.pool.in_use(), ring_only);
    assert_eq!(r.fake.grants_in_use(1), 1, "only the ring");
    assert!(r.bb.export()[0].1.persistent.is_empty());
}
