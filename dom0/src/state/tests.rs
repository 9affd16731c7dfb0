//! Tests of dom0d's restart: a service dies (it is dropped: no destructor may give back
//! what the domains still use), a new one starts from the state file on the same fake
//! microvisor, and the domains' devices go on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pv_drivers::VecMem;
use pv_drivers::blkif::{BlkFront, request, segment};
use pv_drivers::netif::{NetFront, tx_request};
use pv_drivers::xenstore::{XsCallError, XsClient, XsFront, XsIo, header_bytes};
use shared_abi::control::ControlOp;
use shared_abi::hvm::{HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN};
use shared_abi::io::blkif::{BLKIF_OP_READ, BLKIF_OP_WRITE};
use shared_abi::io::netif::NETIF_RSP_OKAY;
use shared_abi::io::xenstore::{MsgHeader, XS_READ, XS_WATCH, XS_WRITE};

use super::*;
use crate::builder::test_elf::{Seg, pvh_elf};
use crate::config::{DomainConfig, OnEvent};
use crate::fake::FakeMicrovisor;
use crate::lifecycle::Waits;
use crate::microvisor::{Microvisor, evtchn_alloc_unbound};
use crate::netback::{DeviceMaker, SocketNet};
use crate::proto::{GuestRequest, Request, Response};

/// A fake microvisor, in-memory vif devices, a kernel, and a state directory shared by
/// the services started on them.
struct Rig {
    fake: Arc<FakeMicrovisor>,
    net: Arc<SocketNet>,
    dir: tempfile::TempDir,
    kernel: String,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("k.elf");
    let seg = Seg {
        paddr: 0x10_0000,
        data: vec![0x90; 64],
        mem: 4096,
    };
    std::fs::write(&kernel, pvh_elf(0x10_0000, &[seg])).unwrap();
    Rig {
        fake: Arc::new(FakeMicrovisor::new()),
        net: Arc::new(SocketNet::default()),
        kernel: kernel.to_str().unwrap().to_owned(),
        dir,
    }
}

impl Rig {
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A new dom0d on the rig (not restored yet).
    fn service(&self) -> Service {
        let mv: Arc<dyn Microvisor> = Arc::clone(&self.fake) as Arc<dyn Microvisor>;
        Service::new(mv)
            .with_waits(Waits {
                pause: Duration::from_millis(200),
                destroy: Duration::from_millis(200),
                poll: Duration::from_millis(1),
            })
            .with_net_devices(Arc::clone(&self.net) as Arc<dyn DeviceMaker>)
            .with_state_dir(self.state_dir())
    }

    fn config(&self, name: &str) -> DomainConfig {
        DomainConfig {
            name: name.into(),
            kernel: self.kernel.clone(),
            ramdisk: None,
            cmdline: None,
            memory_mib: 2,
            vcpus: 1,
            on_poweroff: OnEvent::Destroy,
            on_reboot: OnEvent::Restart,
            on_crash: OnEvent::Preserve,
            disks: Vec::new(),
            vifs: Vec::new(),
        }
    }

    /// A config with one 64-sector disk (filled with 7s) and one vif.
    fn io_config(&self, name: &str) -> DomainConfig {
        let img = self.dir.path().join(format!("{name}.img"));
        std::fs::write(&img, vec![7u8; 64 * 512]).unwrap();
        let mut c = self.config(name);
        c.disks =
            vec![crate::config::parse_disk(&format!("path={},vdev=xvda", img.display())).unwrap()];
        c.vifs = vec![
            crate::config::parse_vif("mac=00:16:3e:0a:0b:0c,ip=10.0.0.2/24", name, 0).unwrap(),
        ];
        c
    }

    async fn create(&self, svc: &Service, config: DomainConfig) -> u32 {
        let req = Request::Create {
            config,
            dry_run: false,
            paused: false,
        };
        match svc.handle(&req).await {
            Response::Created(r) => r.domid.unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn xs(&self, domid: u32) -> Xs {
        let pfn = self.fake.param(domid, HVM_PARAM_STORE_PFN).unwrap();
        let port = self.fake.param(domid, HVM_PARAM_STORE_EVTCHN).unwrap();
        Xs {
            domid,
            port: u32::try_from(port).unwrap(),
            client: XsClient::new(self.fake.guest_page(domid, pfn).unwrap()).unwrap(),
        }
    }

    /// Whether any of domain 0's ports, window slots or grants still belong to `domid`.
    fn holds_anything_of(&self, domid: u32) -> bool {
        self.fake
            .dom0_ports()
            .iter()
            .any(|(_, peer)| peer.is_some_and(|(d, _)| d == domid))
            || self
                .fake
                .foreign_slots()
                .iter()
                .any(|&(_, d, _)| d == domid)
            || self.fake.grants_in_use(domid) != 0
    }

    fn history(&self, svc: &Service, name: &str) -> String {
        let log = svc.consoles().resolve(name).expect("a history");
        String::from_utf8_lossy(&svc.consoles().read_since(&log, 0, 1 << 20).bytes).into_owned()
    }

    fn state(&self) -> StateFile {
        match read_state(&self.state_dir()) {
            Loaded::Found(f) => *f,
            other => panic!("{other:?}"),
        }
    }
}

/// A guest's xenstore client; each call is served by whichever dom0d runs.
struct Xs {
    domid: u32,
    port: u32,
    client: XsClient<Arc<VecMem>>,
}

struct Io<'a> {
    fake: &'a FakeMicrovisor,
    svc: &'a Service,
    domid: u32,
    port: u32,
    waits: u32,
}

impl XsIo for Io<'_> {
    fn notify(&mut self) {
        self.fake.guest_send(self.domid, self.port);
    }

    fn wait(&mut self) {
        self.waits += 1;
        assert!(self.waits < 20, "the store never answered");
        self.svc.take_pending();
    }
}

impl Xs {
    fn call(
        &mut self,
        r: &Rig,
        svc: &Service,
        msg_type: u32,
        parts: &[&[u8]],
    ) -> Result<Vec<u8>, String> {
        let mut io = Io {
            fake: &r.fake,
            svc,
            domid: self.domid,
            port: self.port,
            waits: 0,
        };
        let mut out = [0u8; 512];
        match self.client.call(&mut io, msg_type, parts, &mut out) {
            Ok(n) => Ok(out[..n].to_vec()),
            Err(XsCallError::Store(name)) => Err(String::from_utf8_lossy(&name)
                .trim_end_matches('\0')
                .to_owned()),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn write(&mut self, r: &Rig, svc: &Service, path: &str, value: &[u8]) {
        let p = format!("{path}\0");
        self.call(r, svc, XS_WRITE, &[p.as_bytes(), value]).unwrap();
    }

    fn read(&mut self, r: &Rig, svc: &Service, path: &str) -> Result<Vec<u8>, String> {
        let p = format!("{path}\0");
        self.call(r, svc, XS_READ, &[p.as_bytes()])
    }
}

fn msg(t: u32, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = header_bytes(&MsgHeader {
        msg_type: t,
        req_id: id,
        tx_id: 0,
        len: u32::try_from(payload.len()).unwrap(),
    })
    .to_vec();
    m.extend_from_slice(payload);
    m
}

/// The issue's requirement on the host: a domain with a disk and a vif does I/O, dom0d
/// dies (the service is dropped, with a request taken and not answered, a xenstore
/// request half read, output and requests arriving while no dom0d runs), a new dom0d
/// starts from the state file, and everything goes on: the unanswered request is
/// answered, new requests are served, xenstore reads and watches work, the history
/// survived, list/info/block-list/network-list answer, and a destroy cleans up all.
#[tokio::test]
async fn a_restarted_dom0d_serves_the_domains_an_earlier_one_built() {
    let r = rig();
    let svc = r.service();
    assert_eq!(svc.restore(), Restored::default(), "no state file yet");
    let config = r.io_config("pv");
    let domid = r.create(&svc, config.clone()).await;
    let f = &*r.fake;
    assert_eq!(f.console_write(domid, b"before the crash\n"), Some(17));
    svc.take_pending();

    // The guest: watches control/shutdown, announces poweroff, connects disk and vif.
    let mut xs = r.xs(domid);
    xs.write(&r, &svc, "control/feature-poweroff", b"1");
    assert_eq!(
        xs.call(&r, &svc, XS_WATCH, &[b"control/shutdown\0", b"shut\0"]),
        Ok(b"OK\0".to_vec())
    );
    assert!(f.place_grant_frame(domid, 0, 100));
    for (gref, gfn) in [
        (8, 200),
        (9, 201),
        (10, 202),
        (16, 300),
        (17, 301),
        (18, 302),
    ] {
        assert!(f.grant_access(domid, gref, gfn, false));
    }
    let mut blk = BlkFront::init(f.guest_page(domid, 200).unwrap()).unwrap();
    let blk_port = evtchn_alloc_unbound(f, domid).unwrap();
    let vbd = "device/vbd/51712";
    xs.write(&r, &svc, &format!("{vbd}/ring-ref"), b"8");
    xs.write(
        &r,
        &svc,
        &format!("{vbd}/event-channel"),
        blk_port.to_string().as_bytes(),
    );
    // Persistent grants: the data pages' mappings are state too.
    xs.write(&r, &svc, &format!("{vbd}/feature-persistent"), b"1");
    xs.write(&r, &svc, &format!("{vbd}/state"), b"3");
    let mut net = NetFront::init(
        f.guest_page(domid, 201).unwrap(),
        f.guest_page(domid, 202).unwrap(),
    )
    .unwrap();
    let net_port = evtchn_alloc_unbound(f, domid).unwrap();
    let vif = "device/vif/0";
    xs.write(&r, &svc, &format!("{vif}/tx-ring-ref"), b"9");
    xs.write(&r, &svc, &format!("{vif}/rx-ring-ref"), b"10");
    xs.write(
        &r,
        &svc,
        &format!("{vif}/event-channel"),
        net_port.to_string().as_bytes(),
    );
    xs.write(&r, &svc, &format!("{vif}/request-rx-copy"), b"1");
    xs.write(&r, &svc, &format!("{vif}/state"), b"3");
    assert!(svc.blkback.is_connected(domid, 51712));
    assert!(svc.netback.is_connected(domid, 0));

    // I/O: a write is served.
    f.write_guest(domid, 300 * 4096, &[0xab; 512]);
    blk.queue(&request(BLKIF_OP_WRITE, 1, 1, &[segment(16, 0, 0)]))
        .unwrap();
    blk.push().unwrap();
    f.guest_send(domid, blk_port);
    svc.take_pending();
    assert_eq!(blk.take().unwrap().map(|r| (r.id, r.status)), Some((1, 0)));

    // What the state file says now.
    let state = r.state();
    assert_eq!(state.version, STATE_VERSION);
    let [d] = state.domains.as_slice() else {
        panic!("{state:?}")
    };
    assert_eq!((d.domid, d.name.as_str()), (domid, "pv"));
    assert_eq!(d.supervised.as_ref().map(|s| &s.config), Some(&config));
    assert!(d.console.as_ref().is_some_and(|c| c.ring.is_some()));
    assert!(d.store.as_ref().is_some_and(|s| s.ring.is_some()));
    assert!(matches!(d.disks[0].phase, DiskPhase::Connected { .. }));
    assert!(matches!(d.vifs[0].phase, VifPhase::Connected { .. }));
    let home = format!("/local/domain/{domid}");
    assert!(
        state
            .xenstore
            .nodes
            .iter()
            .any(|n| n.path == format!("{home}/name") && n.value == Bytes(b"pv".to_vec()))
    );
    assert!(state.xenstore.connections.iter().any(|c| {
        c.domid == domid
            && c.watches.iter().any(|w| {
                w.path == format!("{home}/control/shutdown") && w.token == Bytes(b"shut".to_vec())
            })
    }));
    // Nothing changed: the file is not written again.
    let written = state.written_unix_ms;
    std::thread::sleep(Duration::from_millis(5));
    svc.take_pending();
    svc.step_devices();
    assert_eq!(r.state().written_unix_ms, written);

    // The dom0d dies. It had read the first part of a xenstore request (its header and
    // 4 payload bytes)...
    drop(xs);
    let store_pfn = f.param(domid, HVM_PARAM_STORE_PFN).unwrap();
    let mut raw = XsFront::new(f.guest_page(domid, store_pfn).unwrap()).unwrap();
    let half = msg(XS_WRITE, 77, b"data/half\0written across a restart");
    assert_eq!(raw.write(&half[..20]).unwrap(), 20);
    let store_port = u32::try_from(f.param(domid, HVM_PARAM_STORE_EVTCHN).unwrap()).unwrap();
    f.guest_send(domid, store_port);
    svc.take_pending();
    // ... and it had taken request 2 (a write) and request 3 (a read) of the disk and
    // the tx packet 1 of the vif, and answered none of them.
    f.write_guest(domid, 301 * 4096, &[0xcd; 512]);
    blk.queue(&request(BLKIF_OP_WRITE, 2, 2, &[segment(17, 0, 0)]))
        .unwrap();
    blk.queue(&request(BLKIF_OP_READ, 3, 1, &[segment(16, 0, 0)]))
        .unwrap();
    blk.push().unwrap();
    let mut dead_blk =
        pv_drivers::blkif::BlkBack::attach(f.guest_page(domid, 200).unwrap(), 64, false).unwrap();
    assert!(dead_blk.next_request().unwrap().is_some());
    assert!(dead_blk.next_request().unwrap().is_some());
    drop(dead_blk);
    let packet: Vec<u8> = (0..100u8).collect();
    f.write_guest(domid, 302 * 4096, &packet);
    net.queue_tx(&tx_request(1, 18, 0, 100, 0)).unwrap();
    net.push_tx().unwrap();
    let mut dead_net = pv_drivers::netif::NetBack::attach(
        f.guest_page(domid, 201).unwrap(),
        f.guest_page(domid, 202).unwrap(),
        1514,
    )
    .unwrap();
    assert!(dead_net.next_tx().unwrap().is_some());
    drop(dead_net);
    let slots_before = f.foreign_slots();
    let ports_before = f.dom0_ports();
    let signalled = |port| f.notified(domid, port);
    let (blk_signals, net_signals) = (signalled(blk_port), signalled(net_port));
    drop(svc);

    // Nothing of the domain was given back by the dying service.
    assert_eq!(f.foreign_slots(), slots_before);
    assert_eq!(f.dom0_ports(), ports_before);
    assert!(f.grants_in_use(domid) > 0);
    // While no dom0d runs: output, the rest of the xenstore request, and a signal.
    assert_eq!(f.console_write(domid, b"while nobody listened\n"), Some(22));
    assert_eq!(raw.write(&half[20..]).unwrap(), half.len() - 20);
    f.guest_send(domid, store_port);
    f.guest_send(domid, blk_port);
    f.guest_send(domid, net_port);

    // A new dom0d.
    let svc = r.service();
    let restored = svc.restore();
    assert_eq!(restored.adopted, [domid]);
    assert!(restored.released.is_empty() && restored.ignored.is_none());
    // The persistent mapping of page 300 (ref 16) was taken over, not made again.
    let adopted: Vec<u32> = svc.blkback.export()[0]
        .1
        .persistent
        .iter()
        .map(|g| g.gref)
        .collect();
    assert_eq!(adopted, [16]);
    // Every adopted ring's guest was signalled, in case the dead dom0d published
    // responses and died before signalling them.
    assert!(signalled(blk_port) > blk_signals && signalled(net_port) > net_signals);
    assert!(signalled(store_port) > 0);
    // The unanswered requests were served, in order, with their data.
    let mut done = Vec::new();
    while let Some(rsp) = blk.take().unwrap() {
        done.push((rsp.id, rsp.status));
    }
    assert_eq!(done, [(2, 0), (3, 0)]);
    assert_eq!(
        f.read_guest(domid, 300 * 4096, 512).unwrap(),
        vec![0xab; 512]
    );
    let img = std::fs::read(&config.disks[0].path).unwrap();
    assert!(img[1024..1536].iter().all(|&b| b == 0xcd));
    assert_eq!(
        net.take_tx_response().unwrap().map(|t| (t.id, t.status)),
        Some((1, NETIF_RSP_OKAY))
    );
    let host = r.net.host(domid, 0).expect("a new device for the vif");
    let mut buf = [0u8; 2048];
    let n = host.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], packet.as_slice());
    // The half-read request completed.
    let mut got = None;
    while let Some((h, p)) = raw.next_message().unwrap() {
        if h.req_id == 77 {
            got = Some((h.msg_type, p.to_vec()));
        }
    }
    assert_eq!(got, Some((XS_WRITE, b"OK\0".to_vec())));
    drop(raw);
    // The history survived, with what came while nobody listened.
    let history = r.history(&svc, "pv");
    assert_eq!(history, "before the crash\nwhile nobody listened\n");

    // New requests are served: a write and a read on the disk, a frame each way.
    let mut xs = r.xs(domid);
    assert_eq!(
        xs.read(&r, &svc, "data/half"),
        Ok(b"written across a restart".to_vec())
    );
    f.write_guest(domid, 301 * 4096, &[0xee; 512]);
    blk.queue(&request(BLKIF_OP_WRITE, 4, 3, &[segment(17, 0, 0)]))
        .unwrap();
    blk.queue(&request(BLKIF_OP_READ, 5, 2, &[segment(16, 0, 0)]))
        .unwrap();
    blk.push().unwrap();
    f.guest_send(domid, blk_port);
    svc.take_pending();
    let mut done = Vec::new();
    while let Some(rsp) = blk.take().unwrap() {
        done.push((rsp.id, rsp.status));
    }
    assert_eq!(done, [(4, 0), (5, 0)]);
    assert_eq!(
        f.read_guest(domid, 300 * 4096, 512).unwrap(),
        vec![0xcd; 512]
    );
    net.post_rx(5, 18).unwrap();
    net.push_rx().unwrap();
    f.guest_send(domid, net_port);
    svc.take_pending();
    let incoming: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
    host.send(&incoming).unwrap();
    svc.step_devices();
    let rx = net.take_rx().unwrap().expect("the frame reached the guest");
    assert_eq!((rx.id, rx.status), (5, 600));
    assert_eq!(f.read_guest(domid, 302 * 4096, 600).unwrap(), incoming);
    // I/O changes nothing the state file keeps: it is not written again.
    let written = r.state().written_unix_ms;
    std::thread::sleep(Duration::from_millis(5));
    for id in 6..10 {
        blk.queue(&request(BLKIF_OP_READ, id, 0, &[segment(16, 0, 7)]))
            .unwrap();
    }
    blk.push().unwrap();
    f.guest_send(domid, blk_port);
    svc.take_pending();
    while blk.take().unwrap().is_some() {}
    svc.step_devices();
    svc.consoles().drain_all(f);
    svc.xenstored.pump_all(f);
    svc.persist();
    assert_eq!(r.state().written_unix_ms, written);

    // xenstore: the watch is still there, and so is the feature the guest announced.
    assert_eq!(xs.read(&r, &svc, "name"), Ok(b"pv".to_vec()));
    let before = xs.client.watch_events();
    match svc
        .handle(&Request::Shutdown {
            domid,
            request: GuestRequest::Poweroff,
        })
        .await
    {
        Response::ShutdownSent(_) => {}
        other => panic!("{other:?}"),
    }
    xs.client.poll().unwrap();
    assert_eq!(xs.client.watch_events(), before + 1);
    assert_eq!(xs.client.last_token(), b"shut");

    // The other requests answer as before.
    assert!(matches!(
        svc.handle(&Request::ListDomains { from: 0 }).await,
        Response::Domains { ref domains, .. } if domains.iter().any(|d| d.domid == domid)
    ));
    match svc.handle(&Request::ConsoleStatus { domid }).await {
        Response::ConsoleStatus(Some(c)) => assert_eq!(c.total_bytes, 39),
        other => panic!("{other:?}"),
    }
    match svc.handle(&Request::BlockList { domid }).await {
        Response::Blocks(b) => assert!(b.len() == 1 && b[0].connected, "{b:?}"),
        other => panic!("{other:?}"),
    }
    match svc.handle(&Request::NetworkList { domid }).await {
        Response::Networks(n) => {
            assert!(n.len() == 1 && n[0].connected, "{n:?}");
            assert_eq!((n[0].tx_packets, n[0].rx_packets), (1, 1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(svc.supervisor.config_of(domid), Some(config));

    // A destroy gives everything back.
    assert!(matches!(
        svc.handle(&Request::Destroy { domid }).await,
        Response::Lifecycle(_)
    ));
    assert!(!r.holds_anything_of(domid));
    assert!(f.foreign_slots().is_empty());
    assert!(!r.net.is_open(domid, 0));
    assert_eq!(svc.consoles().pool().in_use(), 0);
    assert!(svc.xenstored.read(&home).is_err());
    assert!(r.state().domains.is_empty());
    drop(xs);
    drop(svc);
    assert_eq!(f.page_maps(), 0);
}

/// A SIGTERM'd dom0d saves its state and gives nothing back either: a domain built by
/// one dom0d is served by the next one, and by the one after it.
#[tokio::test]
async fn a_domain_survives_several_restarts() {
    let r = rig();
    let mut svc = r.service();
    svc.restore();
    let domid = r.create(&svc, r.config("calm")).await;
    for round in 0..3 {
        let line = format!("round {round}\n");
        assert_eq!(
            r.fake.console_write(domid, line.as_bytes()),
            Some(line.len())
        );
        svc.take_pending();
        svc.persist();
        drop(svc);
        svc = r.service();
        assert_eq!(svc.restore().adopted, [domid]);
        let mut xs = r.xs(domid);
        assert_eq!(xs.read(&r, &svc, "name"), Ok(b"calm".to_vec()));
    }
    assert_eq!(r.history(&svc, "calm"), "round 0\nround 1\nround 2\n");
    // Histories of other names survive too, also once their domain is gone.
    let other = r.create(&svc, r.config("brief")).await;
    assert_eq!(r.fake.console_write(other, b"short life\n"), Some(11));
    svc.take_pending();
    assert!(matches!(
        svc.handle(&Request::Destroy { domid: other }).await,
        Response::Lifecycle(_)
    ));
    drop(svc);
    let svc = r.service();
    svc.restore();
    assert_eq!(r.history(&svc, "brief"), "short life\n");
    assert_eq!(
        svc.consoles().resolve(&other.to_string()).map(|l| l.name),
        Some("brief".into())
    );
}

/// A recorded domain that went away while no dom0d ran: its slots are unmapped, ports
/// closed, grants released and xenstore nodes removed; its history is kept as ended.
#[tokio::test]
async fn a_recorded_domain_that_is_gone_is_released() {
    let r = rig();
    let svc = r.service();
    svc.restore();
    let keep = r.create(&svc, r.config("keep")).await;
    let domid = r.create(&svc, r.io_config("lost")).await;
    let f = &*r.fake;
    // Its disk connects (a grant mapping dom0d must release).
    let mut xs = r.xs(domid);
    assert!(f.place_grant_frame(domid, 0, 100));
    assert!(f.grant_access(domid, 8, 200, false));
    let _front = BlkFront::init(f.guest_page(domid, 200).unwrap()).unwrap();
    let port = evtchn_alloc_unbound(f, domid).unwrap();
    let vbd = "device/vbd/51712";
    xs.write(&r, &svc, &format!("{vbd}/ring-ref"), b"8");
    xs.write(
        &r,
        &svc,
        &format!("{vbd}/event-channel"),
        port.to_string().as_bytes(),
    );
    xs.write(&r, &svc, &format!("{vbd}/state"), b"3");
    assert!(svc.blkback.is_connected(domid, 51712));
    assert_eq!(f.console_write(domid, b"last words\n"), Some(11));
    svc.take_pending();
    drop(svc);
    // Destroyed behind dom0d's back.
    f.control(ControlOp::DomainDestroy as u64, u64::from(domid), &mut [])
        .unwrap();

    let svc = r.service();
    let restored = svc.restore();
    assert_eq!(
        (restored.adopted, restored.released),
        (vec![keep], vec![domid])
    );
    assert!(!r.holds_anything_of(domid));
    assert!(
        f.dom0_ports().iter().all(|(_, peer)| peer.is_some()),
        "no port of domain 0 is left without its peer: {:?}",
        f.dom0_ports()
    );
    assert!(
        svc.xenstored
            .read(&format!("/local/domain/{domid}"))
            .is_err()
    );
    assert!(
        svc.xenstored
            .read(&format!("/local/domain/0/backend/vbd/{domid}"))
            .is_err()
    );
    assert_eq!(svc.blkback.devices(), 0);
    assert!(!r.net.is_open(domid, 0));
    assert_eq!(r.history(&svc, "lost"), "last words\n");
    let state = r.state();
    assert_eq!(
        state.domains.iter().map(|d| d.domid).collect::<Vec<_>>(),
        [keep]
    );
    // The one still there is served.
    let mut xs = r.xs(keep);
    assert_eq!(xs.read(&r, &svc, "name"), Ok(b"keep".to_vec()));
}

/// A domain that ended while no dom0d ran gets its `on_*` action from the next one.
#[tokio::test]
async fn an_end_while_dom0d_was_down_gets_its_action() {
    let r = rig();
    let svc = r.service();
    svc.restore();
    let domid = r.create(&svc, r.config("short")).await;
    drop(svc);
    assert!(r.fake.shut_down(domid, 0));
    let svc = Arc::new(r.service());
    assert_eq!(svc.restore().adopted, [domid]);
    let applied = svc.supervise_once().await;
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(applied[0].outcome, crate::supervisor::Outcome::Destroyed);
    assert!(!r.holds_anything_of(domid));
    svc.persist();
    assert!(r.state().domains.is_empty());
}

/// A state file that is corrupt, cut short, of an unknown version or with a broken
/// xenstore is logged and ignored: the service starts clean and works.
#[tokio::test]
async fn an_unusable_state_file_means_a_clean_start() {
    let r = rig();
    let svc = r.service();
    svc.restore();
    r.create(&svc, r.config("one")).await;
    drop(svc);
    let path = r.state_dir().join(STATE_FILE);
    let good = std::fs::read_to_string(&path).unwrap();
    let mut wrong_version: serde_json::Value = serde_json::from_str(&good).unwrap();
    wrong_version["version"] = 99.into();
    let mut bad_store: serde_json::Value = serde_json::from_str(&good).unwrap();
    bad_store["xenstore"]["nodes"][3]["perms"] = serde_json::json!(["x"]);
    for (what, text) in [
        ("garbage", "\u{1}not json at all".to_owned()),
        ("truncated", good[..good.len() / 2].to_owned()),
        ("empty", String::new()),
        ("version", wrong_version.to_string()),
        ("xenstore", bad_store.to_string()),
    ] {
        std::fs::write(&path, &text).unwrap();
        let svc = r.service();
        let restored = svc.restore();
        assert!(restored.ignored.is_some(), "{what}: {restored:?}");
        assert!(restored.adopted.is_empty(), "{what}");
        // It serves: a create works (its pages do not collide with the old domain's).
        let name = format!("new-{what}");
        let domid = r.create(&svc, r.config(&name)).await;
        let mut xs = r.xs(domid);
        assert_eq!(xs.read(&r, &svc, "name"), Ok(name.into_bytes()), "{what}");
        assert!(matches!(
            svc.handle(&Request::Destroy { domid }).await,
            Response::Lifecycle(_)
        ));
    }
    // A directory where the file should be cannot be read: the same.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    assert!(r.service().restore().ignored.is_some());
}

#[test]
fn bytes_are_text_or_hex() {
    let text = serde_json::to_string(&Bytes(b"hello".to_vec())).unwrap();
    assert_eq!(text, "\"hello\"");
    let bin = serde_json::to_string(&Bytes(vec![0xff, 0, 7])).unwrap();
    assert_eq!(bin, r#"{"hex":"ff0007"}"#);
    for s in [text, bin] {
        let back: Bytes = serde_json::from_str(&s).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), s);
    }
    assert!(serde_json::from_str::<Bytes>(r#"{"hex":"f"}"#).is_err());
    assert!(serde_json::from_str::<Bytes>(r#"{"hex":"zz"}"#).is_err());
}

#[test]
fn the_store_round_trips_through_its_image() {
    use crate::xenstore::store::{ConnId, Store};
    let mut s = Store::new();
    s.introduce_domain(3, "vm3");
    s.write(0, "/local/domain/3/bin", &[0, 0xff]).unwrap();
    let conn = ConnId { domid: 3, index: 0 };
    let h = |t, tx, len| MsgHeader {
        msg_type: t,
        req_id: 1,
        tx_id: tx,
        len,
    };
    s.handle(conn, &h(XS_WATCH, 0, 6), b"data\0t\0");
    let reply = s.handle(
        conn,
        &h(shared_abi::io::xenstore::XS_TRANSACTION_START, 0, 1),
        b"\0",
    );
    let tx: u32 = std::str::from_utf8(&reply[16..reply.len() - 1])
        .unwrap()
        .parse()
        .unwrap();
    s.handle(conn, &h(XS_WRITE, tx, 8), b"data/x\0v");
    s.take_events();
    let image = s.image();
    let text = serde_json::to_string(&image).unwrap();
    let back = Store::from_image(&serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(back.image(), image);
    // The transaction commits in the restored store, and the watch fires.
    let mut back = back;
    back.handle(
        conn,
        &h(shared_abi::io::xenstore::XS_TRANSACTION_END, tx, 2),
        b"T\0",
    );
    assert_eq!(back.read(0, "/local/domain/3/data/x"), Ok(b"v".to_vec()));
    // `data` and `data/x` were made: two events for the watch on `data`.
    assert_eq!(back.take_events().len(), 2);
    // Broken images are refused.
    let mut bad = image.clone();
    bad.nodes.retain(|n| n.path != "/local/domain/3");
    assert!(Store::from_image(&bad).is_err(), "an orphan node");
    let mut bad = image;
    bad.nodes[0].path = "relative".into();
    assert!(Store::from_image(&bad).is_err());
}
