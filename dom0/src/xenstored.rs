//! dom0d's xenstore daemon: the [`xenstore`](crate::xenstore) store served over the
//! xenstore page of every domain dom0d builds, and the PV shutdown requests dom0d makes
//! through it.
//!
//! The builder gives each DomU a store page and an event channel
//! ([`crate::builder::setup_ring`]); [`Xenstored::register`] introduces the domain (its
//! home `/local/domain/<id>` with `name`, `domid` and `control`) and serves the page.
//! Whenever the DomU signals its store port ([`Xenstored::on_ports`]) the pending requests
//! are answered and queued watch events delivered, and every domain whose ring received
//! bytes is signalled. A connection that breaks the protocol (an index overrun, an
//! oversized message, or more than 64 KiB of replies left unread) is cut off with one log
//! line: its page is unmapped and its port closed at once (the guest's signals go nowhere
//! after that), its home stays until the domain is gone; its console, the store and every
//! other domain carry on.
//!
//! **PV shutdown** ([`Xenstored::request_shutdown`]) follows Xen's convention: a guest that
//! handles it writes `control/feature-poweroff` (and `feature-reboot`) = `1`, and watches
//! `control/shutdown`; dom0d writes `poweroff` or `reboot` there. A guest that never
//! announced the feature is refused at once rather than waited for.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::builder::{RingKind, RingSetup, undo_ring};
use crate::log::{self, Level};
use crate::microvisor::{Microvisor, PageMap, evtchn_send};
use crate::pages::PagePool;
use crate::proto::{Domain, domain_label, errno_text};
use crate::state::StoreRecord;
use crate::xenstore::path::home;
use crate::xenstore::service::{Pumped, Service};
use crate::xenstore::store::{Store, StoreImage};

/// Why a PV shutdown request was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownRefused {
    /// dom0d serves no xenstore for the domain (Domain-0's, a boot-time domain, one
    /// built without event channels, or one whose connection broke).
    NoXenstore,
    /// The guest never wrote `control/feature-<action>` = 1.
    NotAdvertised {
        /// The node it would have written.
        node: String,
    },
}

/// A domain dom0d introduced to the store.
#[derive(Debug)]
struct Served {
    name: String,
    /// Its page and port; `None` once its connection broke (released at once), or
    /// before [`Xenstored::register`] for a domain introduced early.
    ring: Option<RingSetup>,
    /// Introduced by [`Xenstored::introduce`] and not registered yet.
    early: bool,
}

#[derive(Debug)]
struct Inner {
    svc: Service<Arc<dyn PageMap>>,
    domains: BTreeMap<u32, Served>,
    /// Domain 0 port to domid, for the connected domains.
    ports: BTreeMap<u32, u32>,
    /// Connections cut off so far.
    cut_off: u64,
}

/// The xenstore of every domain dom0d built.
#[derive(Debug)]
pub struct Xenstored {
    pool: Arc<PagePool>,
    inner: Mutex<Inner>,
    /// Bumped by every change dom0d's state file keeps ([`crate::state`]).
    changes: AtomicU64,
}

impl Xenstored {
    /// An empty store whose pages come from (and go back to) `pool`.
    #[must_use]
    pub fn new(pool: Arc<PagePool>) -> Self {
        Self {
            pool,
            inner: Mutex::new(Inner {
                svc: Service::new(),
                domains: BTreeMap::new(),
                ports: BTreeMap::new(),
                cut_off: 0,
            }),
            changes: AtomicU64::new(0),
        }
    }

    fn bump(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the changes dom0d's state file keeps: requests served, output queued or
    /// written, domains introduced, connected or gone, and dom0d's own writes.
    #[must_use]
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// The store and every domain's connection, for dom0d's state file, with `also` run
    /// under the store's lock (the back-ends' state, so that both agree).
    pub fn export<R>(
        &self,
        also: impl FnOnce() -> R,
    ) -> (StoreImage, Vec<(u32, String, StoreRecord)>, R) {
        let inner = self.lock();
        let image = inner.svc.store_ref().image();
        let domains = inner
            .domains
            .iter()
            .map(|(&domid, served)| {
                let rec = StoreRecord {
                    ring: served.ring.as_ref().map(RingSetup::record),
                    early: served.early,
                    conn: inner.svc.ring_image(domid),
                };
                (domid, served.name.clone(), rec)
            })
            .collect();
        let r = also();
        (image, domains, r)
    }

    /// Takes over what an earlier dom0d recorded ([`crate::state`]): the whole `store`,
    /// then the connections of the domains still there (`domains`; their pages mapped
    /// again from their slots, their half-read requests and queued replies restored),
    /// and removes the homes and device directories of the domains that are `gone`
    /// (`@releaseDomain` fires). Call once, on an empty store.
    pub fn restore(
        &self,
        mv: &dyn Microvisor,
        store: Store,
        domains: Vec<(u32, String, StoreRecord)>,
        gone: &[u32],
    ) {
        let mut inner = self.lock();
        inner.svc.set_store(store);
        for &domid in gone {
            let st = inner.svc.store();
            st.release_domain(domid);
            for kind in ["vbd", "vif"] {
                let _ = st.rm(0, &format!("/local/domain/0/backend/{kind}/{domid}"));
            }
        }
        for (domid, name, rec) in domains {
            let label = domain_label(domid, &name);
            let ring = rec.ring.and_then(|r| {
                match RingSetup::adopt(mv, &self.pool, RingKind::Store, domid, r) {
                    Ok(setup) => Some(setup),
                    Err(why) => {
                        log::write(
                            Level::Warn,
                            format_args!(
                                "xenstore: {label}: cannot map its xenstore page again ({why}); its connection is cut off"
                            ),
                        );
                        None
                    }
                }
            });
            let ring = ring.and_then(|setup| {
                let conn = rec.conn.clone().unwrap_or_default();
                match inner
                    .svc
                    .resume_domain(domid, Arc::clone(&setup.page.mem), &conn)
                {
                    Ok(()) => Some(setup),
                    Err(e) => {
                        log::write(
                            Level::Warn,
                            format_args!(
                                "xenstore: {label}: its connection cannot be resumed ({e}); it is cut off"
                            ),
                        );
                        undo_ring(mv, &self.pool, setup);
                        None
                    }
                }
            });
            if ring.is_none() && !rec.early {
                // Its watches and transactions went with its connection.
                drop(inner.svc.disconnect_domain(domid));
            }
            if let Some(setup) = &ring {
                inner.ports.insert(setup.port, domid);
                // A signal the earlier dom0d may not have sent after its last reply.
                if let Err(errno) = evtchn_send(mv, setup.port) {
                    log::limited(
                        Level::Warn,
                        format_args!(
                            "xenstore: signalling domain {domid} failed with {}",
                            errno_text(errno)
                        ),
                    );
                }
            }
            inner.domains.insert(
                domid,
                Served {
                    name,
                    ring,
                    early: rec.early,
                },
            );
        }
        self.bump();
        let pumped = inner.svc.flush();
        self.act(&mut inner, mv, pumped);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Introduces domain `name` and serves the store page the builder made for it.
    /// A domain [`Self::introduce`]d early keeps its home (and the device nodes in it).
    pub fn register(&self, mv: &dyn Microvisor, name: &str, setup: RingSetup) {
        let domid = setup.domid;
        let early = self
            .lock()
            .domains
            .get(&domid)
            .is_some_and(|s| s.early && s.name == name);
        // A domid dom0d still knows is a domain whose end it missed: forget it first.
        if !early {
            self.domain_gone(mv, domid);
        }
        let mut inner = self.lock();
        let mem = Arc::clone(&setup.page.mem);
        let added = if early {
            inner.svc.connect_domain(domid, mem)
        } else {
            inner.svc.add_domain(domid, name, mem)
        };
        if let Err(e) = added {
            log::write(
                Level::Error,
                format_args!("xenstore: {}: {e}", domain_label(domid, name)),
            );
            drop(inner);
            undo_ring(mv, &self.pool, setup);
            if early {
                self.domain_gone(mv, domid);
            }
            return;
        }
        inner.ports.insert(setup.port, domid);
        inner.domains.insert(
            domid,
            Served {
                name: name.to_owned(),
                ring: Some(setup),
                early: false,
            },
        );
        self.bump();
        // The guest may have queued requests before it was introduced.
        let pumped = inner.svc.pump(domid);
        self.act(&mut inner, mv, pumped);
    }

    /// Introduces new domain `domid` (its home, as [`Self::register`] does) before its
    /// store page is served, so that devices can publish nodes under its home before it
    /// runs; [`Self::register`] then serves the page and keeps the home, and
    /// [`Self::domain_gone`] undoes this.
    pub fn introduce(&self, mv: &dyn Microvisor, domid: u32, name: &str) {
        self.domain_gone(mv, domid);
        let mut inner = self.lock();
        inner.svc.store().introduce_domain(domid, name);
        inner.domains.insert(
            domid,
            Served {
                name: name.to_owned(),
                ring: None,
                early: true,
            },
        );
        self.bump();
        let pumped = inner.svc.flush();
        self.act(&mut inner, mv, pumped);
    }

    /// Runs `f` on the store (with whatever rights it uses; dom0d's own writes are domain
    /// 0's), then delivers the watch events its writes fired and signals the guests.
    pub fn with_store<R>(&self, mv: &dyn Microvisor, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut inner = self.lock();
        let before = inner.svc.store_ref().generation();
        let r = f(inner.svc.store());
        if inner.svc.store_ref().generation() != before {
            self.bump();
        }
        let pumped = inner.svc.flush();
        self.act(&mut inner, mv, pumped);
        r
    }

    /// Serves the stores of the pending domain 0 `ports`; returns the ports that are not
    /// xenstore ports.
    pub fn on_ports(&self, mv: &dyn Microvisor, ports: &[u32]) -> Vec<u32> {
        let mut inner = self.lock();
        let mut others = Vec::new();
        for &port in ports {
            match inner.ports.get(&port).copied() {
                Some(domid) => {
                    let pumped = inner.svc.pump(domid);
                    self.act(&mut inner, mv, pumped);
                }
                None => others.push(port),
            }
        }
        others
    }

    /// Serves every store (the safety poll, in case an event was lost).
    pub fn pump_all(&self, mv: &dyn Microvisor) {
        let mut inner = self.lock();
        let domids: Vec<u32> = inner.ports.values().copied().collect();
        for domid in domids {
            let pumped = inner.svc.pump(domid);
            self.act(&mut inner, mv, pumped);
        }
    }

    /// Domain `domid` is gone: its subtree and watches go (`@releaseDomain` fires), its
    /// page is unmapped and its port closed.
    pub fn domain_gone(&self, mv: &dyn Microvisor, domid: u32) {
        let mut inner = self.lock();
        let Some(served) = inner.domains.remove(&domid) else {
            return;
        };
        self.bump();
        drop(inner.svc.remove_domain(domid));
        if let Some(setup) = served.ring {
            inner.ports.remove(&setup.port);
            undo_ring(mv, &self.pool, setup);
        }
        let pumped = inner.svc.flush();
        self.act(&mut inner, mv, pumped);
    }

    /// Ends the stores of domains that are not in `listed` (or whose domid now holds
    /// another name).
    pub fn sweep(&self, mv: &dyn Microvisor, listed: &[Domain]) {
        let gone: Vec<u32> = self
            .lock()
            .domains
            .iter()
            .filter(|(domid, served)| {
                !listed
                    .iter()
                    .any(|d| d.domid == **domid && d.name == served.name)
            })
            .map(|(domid, _)| *domid)
            .collect();
        for domid in gone {
            self.domain_gone(mv, domid);
        }
    }

    /// Whether dom0d serves a working store connection for `domid`.
    #[must_use]
    pub fn serves(&self, domid: u32) -> bool {
        let inner = self.lock();
        inner.domains.get(&domid).is_some_and(|s| s.ring.is_some()) && inner.svc.is_connected(domid)
    }

    /// Whether dom0d keeps store state (a home) for `domid`, connected or not.
    #[must_use]
    pub fn knows(&self, domid: u32) -> bool {
        self.lock().domains.contains_key(&domid)
    }

    /// How many connections were cut off for breaking the protocol (one log line each).
    #[must_use]
    pub fn connections_cut(&self) -> u64 {
        self.lock().cut_off
    }

    /// Reads `path` with domain 0's rights (for tests and diagnostics).
    ///
    /// # Errors
    /// The store's error (`ENOENT`, ...).
    pub fn read(&self, path: &str) -> Result<Vec<u8>, crate::xenstore::XsErr> {
        self.lock().svc.store_ref().read(0, path)
    }

    /// Asks domain `domid` to `poweroff` or `reboot` by writing `control/shutdown`.
    ///
    /// # Errors
    /// [`ShutdownRefused`]; nothing is written then.
    pub fn request_shutdown(
        &self,
        mv: &dyn Microvisor,
        domid: u32,
        action: &str,
    ) -> Result<(), ShutdownRefused> {
        let mut inner = self.lock();
        let connected = inner.domains.get(&domid).is_some_and(|s| s.ring.is_some());
        if !connected || !inner.svc.is_connected(domid) {
            return Err(ShutdownRefused::NoXenstore);
        }
        let control = format!("{}/control", home(domid));
        let feature = format!("{control}/feature-{action}");
        if inner.svc.store_ref().read(0, &feature).as_deref() != Ok(b"1".as_slice()) {
            return Err(ShutdownRefused::NotAdvertised {
                node: format!("control/feature-{action}"),
            });
        }
        if let Err(e) =
            inner
                .svc
                .store()
                .write(0, &format!("{control}/shutdown"), action.as_bytes())
        {
            // Domain 0 may write anywhere; only a full store could refuse.
            log::write(
                Level::Error,
                format_args!("xenstore: writing control/shutdown of domain {domid} failed: {e}"),
            );
            return Err(ShutdownRefused::NoXenstore);
        }
        let pumped = inner.svc.flush();
        self.act(&mut inner, mv, pumped);
        Ok(())
    }

    /// Signals the domains whose rings got bytes, and cuts off the connections that broke:
    /// one log line each, their page unmapped and their port closed.
    fn act(&self, inner: &mut Inner, mv: &dyn Microvisor, pumped: Pumped) {
        if pumped.changed {
            self.bump();
        }
        for (domid, why) in pumped.broke {
            let Some(served) = inner.domains.get_mut(&domid) else {
                continue;
            };
            let label = domain_label(domid, &served.name);
            let ring = served.ring.take();
            inner.cut_off += 1;
            drop(inner.svc.disconnect_domain(domid));
            if let Some(setup) = ring {
                inner.ports.remove(&setup.port);
                undo_ring(mv, &self.pool, setup);
            }
            log::write(
                Level::Warn,
                format_args!(
                    "xenstore: {label} {why}; its xenstore connection is cut off (page unmapped, port closed); its console and every other domain carry on"
                ),
            );
        }
        for domid in pumped.notify {
            if let Some(setup) = inner.domains.get(&domid).and_then(|s| s.ring.as_ref())
                && let Err(errno) = evtchn_send(mv, setup.port)
            {
                log::limited(
                    Level::Warn,
                    format_args!(
                        "xenstore: signalling domain {domid} failed with {}",
                        errno_text(errno)
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pv_drivers::xenstore::{XsCallError, XsClient, XsIo, header_bytes};
    use pv_drivers::{SharedMem, VecMem};
    use shared_abi::control::ControlOp;
    use shared_abi::hvm::{
        HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN, HVM_PARAM_STORE_EVTCHN,
        HVM_PARAM_STORE_PFN,
    };
    use shared_abi::io::xenstore::{MsgHeader, REQ_PROD, XS_READ, XS_WATCH, XS_WRITE};

    use super::*;
    use crate::builder::test_elf::{Seg, pvh_elf};
    use crate::builder::{self, Options};
    use crate::config::{DomainConfig, OnEvent};
    use crate::fake::FakeMicrovisor;
    use crate::lifecycle::Waits;
    use crate::proto::{ApiError, GuestRequest, NotApplicable, Request, Response, State};
    use crate::server::Service;
    use crate::supervisor::Outcome;

    const ENOSYS: i32 = 38;

    /// A fake microvisor and a dom0d service on it (no socket: requests go to
    /// `Service::handle`, events are delivered by calling `take_pending`).
    struct Rig {
        fake: Arc<FakeMicrovisor>,
        service: Service,
        /// The vifs' in-memory frame devices.
        net: Arc<crate::netback::SocketNet>,
        _dir: tempfile::TempDir,
        kernel: String,
    }

    fn rig() -> Rig {
        let fake = Arc::new(FakeMicrovisor::new());
        let mv: Arc<dyn Microvisor> = Arc::clone(&fake) as Arc<dyn Microvisor>;
        let net = Arc::new(crate::netback::SocketNet::default());
        let service = Service::new(mv)
            .with_waits(Waits {
                pause: Duration::from_millis(200),
                destroy: Duration::from_millis(200),
                poll: Duration::from_millis(1),
            })
            .with_net_devices(Arc::clone(&net) as Arc<dyn crate::netback::DeviceMaker>);
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k.elf");
        let seg = Seg {
            paddr: 0x10_0000,
            data: vec![0x90; 64],
            mem: 4096,
        };
        std::fs::write(&kernel, pvh_elf(0x10_0000, &[seg])).unwrap();
        Rig {
            fake,
            service,
            net,
            kernel: kernel.to_str().unwrap().to_owned(),
            _dir: dir,
        }
    }

    use std::time::Duration;

    fn config(kernel: &str, name: &str) -> DomainConfig {
        DomainConfig {
            name: name.into(),
            kernel: kernel.to_owned(),
            ramdisk: None,
            cmdline: None,
            memory_mib: 2,
            vcpus: 1,
            on_poweroff: OnEvent::Destroy,
            on_reboot: OnEvent::Restart,
            on_crash: OnEvent::Destroy,
            disks: Vec::new(),
            vifs: Vec::new(),
        }
    }

    impl Rig {
        async fn create(&self, name: &str) -> u32 {
            let req = Request::Create {
                config: config(&self.kernel, name),
                dry_run: false,
                paused: false,
            };
            match self.service.handle(&req).await {
                Response::Created(r) => r.domid.unwrap(),
                other => panic!("{other:?}"),
            }
        }

        async fn shutdown(&self, domid: u32, request: GuestRequest) -> Response {
            self.service
                .handle(&Request::Shutdown { domid, request })
                .await
        }

        fn param(&self, domid: u32, index: u32) -> u64 {
            self.fake.param(domid, index).unwrap()
        }

        /// The guest side of `domid`'s xenstore, on the page and port the builder gave it.
        fn guest(&self, domid: u32) -> Guest<'_> {
            let page = self
                .fake
                .guest_page(domid, self.param(domid, HVM_PARAM_STORE_PFN))
                .unwrap();
            Guest {
                rig: self,
                domid,
                port: u32::try_from(self.param(domid, HVM_PARAM_STORE_EVTCHN)).unwrap(),
                client: XsClient::new(page).unwrap(),
            }
        }

        fn xs(&self) -> &Xenstored {
            &self.service.xenstored
        }

        /// Whether any of domain 0's ports, window slots or pages still belong to `domid`.
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
        }
    }

    /// A scripted guest xenstore front-end: every wait for the store is one round of what
    /// dom0d does on `EVENT_EVTCHN`.
    struct Guest<'a> {
        rig: &'a Rig,
        domid: u32,
        port: u32,
        client: XsClient<Arc<VecMem>>,
    }

    struct Io<'a> {
        rig: &'a Rig,
        domid: u32,
        port: u32,
        waits: u32,
    }

    impl XsIo for Io<'_> {
        fn notify(&mut self) {
            self.rig.fake.guest_send(self.domid, self.port);
        }

        fn wait(&mut self) {
            self.waits += 1;
            assert!(self.waits < 20, "the store never answered");
            self.rig.service.take_pending();
        }
    }

    impl Guest<'_> {
        /// One request; the reply payload, or the errno name the store sent.
        fn call(&mut self, msg_type: u32, parts: &[&[u8]]) -> Result<Vec<u8>, String> {
            let mut io = Io {
                rig: self.rig,
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

        fn write(&mut self, path: &str, value: &[u8]) -> Result<(), String> {
            let p = format!("{path}\0");
            self.call(XS_WRITE, &[p.as_bytes(), value]).map(|_| ())
        }

        fn read(&mut self, path: &str) -> Result<Vec<u8>, String> {
            let p = format!("{path}\0");
            self.call(XS_READ, &[p.as_bytes()])
        }

        /// What a guest-rt guest does at boot: announce poweroff and watch the node.
        fn announce_poweroff(&mut self) {
            self.write("control/feature-poweroff", b"1").unwrap();
            assert_eq!(
                self.call(XS_WATCH, &[b"control/shutdown\0", b"shutdown\0"]),
                Ok(b"OK\0".to_vec())
            );
            self.client.poll().unwrap();
            assert_eq!(self.client.watch_events(), 1, "a new watch fires once");
        }
    }

    /// A guest block front-end driven through dom0d's service: nodes read and written
    /// through its xenstore ring, the back-end connected by `take_pending`, a write, a
    /// read and a flush served, `block-list` data, and teardown on destroy.
    #[tokio::test]
    async fn a_disk_reaches_connected_and_serves_a_scripted_front_end() {
        use pv_drivers::blkif::{BlkFront, request, segment};
        use shared_abi::io::blkif::{BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE};

        use crate::microvisor::evtchn_alloc_unbound;

        let r = rig();
        let img = r._dir.path().join("d1.img");
        std::fs::write(&img, vec![7u8; 64 * 512]).unwrap();
        let mut c = config(&r.kernel, "pvdisk");
        c.disks =
            vec![crate::config::parse_disk(&format!("path={},vdev=xvda", img.display())).unwrap()];
        let req = Request::Create {
            config: c,
            dry_run: false,
            paused: false,
        };
        let domid = match r.service.handle(&req).await {
            Response::Created(rep) => rep.domid.unwrap(),
            other => panic!("{other:?}"),
        };
        let mut g = r.guest(domid);
        // The nodes were there before the guest ran; the back-end waits.
        let fe = "device/vbd/51712";
        let be = format!("/local/domain/0/backend/vbd/{domid}/51712");
        assert_eq!(
            g.read(&format!("{fe}/backend")),
            Ok(be.clone().into_bytes())
        );
        assert_eq!(g.read(&format!("{be}/state")), Ok(b"2".to_vec()));
        assert_eq!(g.read(&format!("{be}/sectors")), Ok(b"64".to_vec()));
        let state_node = format!("{be}/state\0");
        assert_eq!(
            g.call(XS_WATCH, &[state_node.as_bytes(), b"be\0"]),
            Ok(b"OK\0".to_vec())
        );
        g.client.poll().unwrap();
        let watched = g.client.watch_events();

        // The front-end: ring page gfn 200 (ref 8), data page gfn 300 (ref 16).
        let f = &r.fake;
        assert!(f.place_grant_frame(domid, 0, 100));
        assert!(f.grant_access(domid, 8, 200, false));
        assert!(f.grant_access(domid, 16, 300, false));
        let mut front = BlkFront::init(f.guest_page(domid, 200).unwrap()).unwrap();
        let port = evtchn_alloc_unbound(f, domid).unwrap();
        g.write(&format!("{fe}/ring-ref"), b"8").unwrap();
        g.write(&format!("{fe}/event-channel"), port.to_string().as_bytes())
            .unwrap();
        g.write(&format!("{fe}/state"), b"3").unwrap();
        // Its last write went through `take_pending`, which stepped the back-end.
        assert!(r.service.blkback.is_connected(domid, 51712));
        assert_eq!(g.read(&format!("{be}/state")), Ok(b"4".to_vec()));
        g.client.poll().unwrap();
        assert!(
            g.client.watch_events() > watched,
            "the back-end's state change reached the guest's watch"
        );

        // Write sector 1, read sectors 0..=1 back, flush.
        f.write_guest(domid, 300 * 4096, &[0xcd; 512]);
        front
            .queue(&request(BLKIF_OP_WRITE, 1, 1, &[segment(16, 0, 0)]))
            .unwrap();
        front.push().unwrap();
        f.guest_send(domid, port);
        r.service.take_pending();
        f.write_guest(domid, 300 * 4096, &[0; 1024]);
        front
            .queue(&request(BLKIF_OP_READ, 2, 0, &[segment(16, 0, 1)]))
            .unwrap();
        front
            .queue(&request(BLKIF_OP_FLUSH_DISKCACHE, 3, 0, &[]))
            .unwrap();
        front.push().unwrap();
        f.guest_send(domid, port);
        r.service.take_pending();
        let mut done = Vec::new();
        while let Some(rsp) = front.take().unwrap() {
            done.push((rsp.id, rsp.status));
        }
        assert_eq!(done, [(1, 0), (2, 0), (3, 0)]);
        let page = f.read_guest(domid, 300 * 4096, 1024).unwrap();
        assert!(page[..512].iter().all(|&b| b == 7));
        assert!(page[512..].iter().all(|&b| b == 0xcd));
        assert!(
            std::fs::read(&img).unwrap()[512..1024]
                .iter()
                .all(|&b| b == 0xcd)
        );

        // What `block-list` shows.
        match r.service.handle(&Request::BlockList { domid }).await {
            Response::Blocks(b) => {
                assert_eq!(b.len(), 1);
                assert_eq!(
                    (
                        b[0].vdev.as_str(),
                        b[0].sectors,
                        b[0].backend_state,
                        b[0].frontend_state
                    ),
                    ("xvda", 64, 4, 3)
                );
                assert!(b[0].connected && !b[0].read_only);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.service.handle(&Request::BlockList { domid: 77 }).await,
            Response::Error(ApiError::NoSuchDomain { domid: 77 })
        );

        // Destroy: ring unmapped, port closed, nodes gone.
        assert!(matches!(
            r.service.handle(&Request::Destroy { domid }).await,
            Response::Lifecycle(_)
        ));
        assert_eq!(r.service.blkback.devices(), 0);
        assert!(!r.holds_anything_of(domid));
        assert!(r.xs().read(&be).is_err());
        assert_eq!(f.grants_in_use(domid), 0);
    }

    /// A guest network front-end driven through dom0d's service: nodes read and written
    /// through its xenstore ring, the back-end connected by `take_pending`, a packet out
    /// to the frame device byte for byte, a frame from the device into a posted buffer
    /// woken by the device itself (the net task), `network-list` data, a hostile second
    /// domain stopped while the first carries on, and teardown on destroy.
    #[tokio::test]
    async fn a_vif_reaches_connected_and_moves_frames_both_ways() {
        use pv_drivers::netif::{NetFront, tx_request};
        use shared_abi::io::netif::{NETIF_RSP_OKAY, NETTXF_MORE_DATA};

        use crate::microvisor::evtchn_alloc_unbound;

        let r = rig();
        let mut c = config(&r.kernel, "pvnet");
        c.vifs = vec![
            crate::config::parse_vif("mac=00:16:3e:0a:0b:0c,ip=10.0.0.2/24", "pvnet", 0).unwrap(),
        ];
        let req = Request::Create {
            config: c,
            dry_run: false,
            paused: false,
        };
        let domid = match r.service.handle(&req).await {
            Response::Created(rep) => rep.domid.unwrap(),
            other => panic!("{other:?}"),
        };
        let mut g = r.guest(domid);
        // The nodes were there before the guest ran; the back-end waits.
        let fe = "device/vif/0";
        let be = format!("/local/domain/0/backend/vif/{domid}/0");
        assert_eq!(
            g.read(&format!("{fe}/backend")),
            Ok(be.clone().into_bytes())
        );
        assert_eq!(
            g.read(&format!("{fe}/mac")),
            Ok(b"00:16:3e:0a:0b:0c".to_vec())
        );
        assert_eq!(g.read(&format!("{be}/state")), Ok(b"2".to_vec()));
        assert_eq!(g.read(&format!("{be}/ip")), Ok(b"10.0.0.2/24".to_vec()));
        assert_eq!(g.read(&format!("{be}/feature-rx-copy")), Ok(b"1".to_vec()));

        // The front-end: tx ring gfn 200 (ref 8), rx ring gfn 201 (ref 9), data pages
        // gfn 300.. (ref 16..).
        let f = &r.fake;
        assert!(f.place_grant_frame(domid, 0, 100));
        assert!(f.grant_access(domid, 8, 200, false));
        assert!(f.grant_access(domid, 9, 201, false));
        for i in 0..4 {
            assert!(f.grant_access(domid, 16 + i, 300 + u64::from(i), false));
        }
        let mut front = NetFront::init(
            f.guest_page(domid, 200).unwrap(),
            f.guest_page(domid, 201).unwrap(),
        )
        .unwrap();
        let port = evtchn_alloc_unbound(&**f, domid).unwrap();
        g.write(&format!("{fe}/tx-ring-ref"), b"8").unwrap();
        g.write(&format!("{fe}/rx-ring-ref"), b"9").unwrap();
        g.write(&format!("{fe}/event-channel"), port.to_string().as_bytes())
            .unwrap();
        g.write(&format!("{fe}/request-rx-copy"), b"1").unwrap();
        g.write(&format!("{fe}/state"), b"3").unwrap();
        assert!(r.service.netback.is_connected(domid, 0));
        assert_eq!(g.read(&format!("{be}/state")), Ok(b"4".to_vec()));

        // A two-fragment packet comes out of the device byte for byte.
        let packet: Vec<u8> = (0..300u32).map(|i| (i * 13 % 251) as u8).collect();
        f.write_guest(domid, 300 * 4096 + 4000, &packet[..96]);
        f.write_guest(domid, 301 * 4096, &packet[96..]);
        front
            .queue_tx(&tx_request(1, 16, 4000, 300, NETTXF_MORE_DATA))
            .unwrap();
        front.queue_tx(&tx_request(2, 17, 0, 204, 0)).unwrap();
        front.push_tx().unwrap();
        f.guest_send(domid, port);
        r.service.take_pending();
        let mut answered = Vec::new();
        while let Some(t) = front.take_tx_response().unwrap() {
            answered.push((t.id, t.status));
        }
        assert_eq!(answered, [(1, NETIF_RSP_OKAY), (2, NETIF_RSP_OKAY)]);
        let host = r.net.host(domid, 0).unwrap();
        let mut buf = [0u8; 2048];
        let n = host.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], packet.as_slice());

        // The net task delivers a frame from the device as soon as it arrives.
        let pump = tokio::spawn(crate::server::pump_vifs(
            Arc::clone(&r.service.mv),
            Arc::clone(&r.service.xenstored),
            Arc::clone(&r.service.netback),
        ));
        front.post_rx(5, 18).unwrap();
        front.push_rx().unwrap();
        f.guest_send(domid, port);
        r.service.take_pending();
        tokio::task::yield_now().await;
        let incoming: Vec<u8> = (0..1514u32).map(|i| (i % 256) as u8).collect();
        let notified = f.notified(domid, port);
        host.send(&incoming).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(rsp) = front.take_rx().unwrap() {
                    return rsp;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!((got.id, got.offset, got.status), (5, 0, 1514));
        assert_eq!(f.read_guest(domid, 302 * 4096, 1514).unwrap(), incoming);
        assert!(
            f.notified(domid, port) > notified,
            "the guest was signalled"
        );

        // What `network-list` shows.
        match r.service.handle(&Request::NetworkList { domid }).await {
            Response::Networks(n) => {
                assert_eq!(n.len(), 1);
                let v = &n[0];
                assert_eq!(
                    (
                        v.handle,
                        v.mac.as_str(),
                        v.ip.as_deref(),
                        v.bridge.as_str(),
                        v.tap.clone()
                    ),
                    (
                        0,
                        "00:16:3e:0a:0b:0c",
                        Some("10.0.0.2/24"),
                        "br0",
                        format!("vif{domid}.0")
                    )
                );
                assert_eq!((v.backend_state, v.frontend_state), (4, 3));
                assert_eq!(
                    (v.tx_packets, v.tx_bytes, v.rx_packets, v.rx_bytes),
                    (1, 300, 1, 1514)
                );
                assert!(v.connected && !v.stopped);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.service.handle(&Request::NetworkList { domid: 77 }).await,
            Response::Error(ApiError::NoSuchDomain { domid: 77 })
        );

        // A second domain whose front-end hands over a bad ring reference is stopped; the
        // first carries on.
        let mut c = config(&r.kernel, "evil");
        c.vifs = vec![crate::config::parse_vif("", "evil", 0).unwrap()];
        let evil = match r
            .service
            .handle(&Request::Create {
                config: c,
                dry_run: false,
                paused: false,
            })
            .await
        {
            Response::Created(rep) => rep.domid.unwrap(),
            other => panic!("{other:?}"),
        };
        let mut e = r.guest(evil);
        let eport = evtchn_alloc_unbound(&**f, evil).unwrap();
        e.write(&format!("{fe}/tx-ring-ref"), b"4000").unwrap();
        e.write(&format!("{fe}/rx-ring-ref"), b"9").unwrap();
        e.write(&format!("{fe}/event-channel"), eport.to_string().as_bytes())
            .unwrap();
        e.write(&format!("{fe}/request-rx-copy"), b"1").unwrap();
        e.write(&format!("{fe}/state"), b"3").unwrap();
        assert_eq!(r.service.netback.stopped(), 1);
        assert!(!r.service.netback.is_connected(evil, 0));
        assert_eq!(f.grants_in_use(evil), 0);
        assert_eq!(
            e.read(&format!("/local/domain/0/backend/vif/{evil}/0/state")),
            Ok(b"6".to_vec())
        );
        f.write_guest(domid, 300 * 4096, &packet[..60]);
        front.queue_tx(&tx_request(3, 16, 0, 60, 0)).unwrap();
        front.push_tx().unwrap();
        f.guest_send(domid, port);
        r.service.take_pending();
        assert_eq!(
            front.take_tx_response().unwrap().map(|t| (t.id, t.status)),
            Some((3, NETIF_RSP_OKAY))
        );
        assert_eq!(host.recv(&mut buf).unwrap(), 60);

        // Destroy: rings unmapped, port closed, nodes gone, the device closed.
        for d in [domid, evil] {
            assert!(matches!(
                r.service.handle(&Request::Destroy { domid: d }).await,
                Response::Lifecycle(_)
            ));
            assert!(!r.holds_anything_of(d));
            assert!(!r.net.is_open(d, 0));
            assert_eq!(f.grants_in_use(d), 0);
        }
        assert_eq!(r.service.netback.devices(), 0);
        assert!(r.xs().read(&be).is_err());
        pump.abort();
    }

    #[tokio::test]
    async fn a_guest_that_announced_poweroff_sees_the_request_through_its_watch() {
        let r = rig();
        let domid = r.create("spin").await;
        let other = r.create("other").await;
        let mut g = r.guest(domid);
        // The toolstack's nodes, read-only to the guest; other homes are closed to it.
        assert_eq!(g.read("name"), Ok(b"spin".to_vec()));
        assert_eq!(g.read("domid"), Ok(domid.to_string().into_bytes()));
        assert_eq!(g.write("name", b"evil"), Err("EACCES".to_owned()));
        assert_eq!(
            g.read(&format!("/local/domain/{other}/name")),
            Err("EACCES".to_owned())
        );
        g.announce_poweroff();
        assert_eq!(
            r.xs()
                .read(&format!("/local/domain/{domid}/control/feature-poweroff")),
            Ok(b"1".to_vec())
        );

        let signalled = r.fake.notified(domid, g.port);
        match r.shutdown(domid, GuestRequest::Poweroff).await {
            Response::ShutdownSent(sent) => {
                assert_eq!(
                    (sent.request, sent.domid, sent.name.as_str(), sent.state),
                    (GuestRequest::Poweroff, domid, "spin", State::Running)
                );
            }
            other => panic!("{other:?}"),
        }
        // The guest is signalled, its watch fires, and the node says what to do.
        assert!(r.fake.notified(domid, g.port) > signalled);
        g.client.poll().unwrap();
        assert_eq!(g.client.watch_events(), 2);
        assert_eq!(g.client.last_token(), b"shutdown");
        assert_eq!(g.read("control/shutdown"), Ok(b"poweroff".to_vec()));
        // It acknowledges, as Xen guests do.
        g.write("control/shutdown", b"").unwrap();
        assert_eq!(
            r.xs()
                .read(&format!("/local/domain/{domid}/control/shutdown")),
            Ok(Vec::new())
        );
        // It never announced reboot: refused, and nothing is written.
        match r.shutdown(domid, GuestRequest::Reboot).await {
            Response::Error(e @ ApiError::PvShutdownUnsupported { .. }) => {
                assert_eq!(
                    e,
                    ApiError::PvShutdownUnsupported {
                        request: GuestRequest::Reboot,
                        domid,
                        name: "spin".into(),
                        node: Some("control/feature-reboot".into()),
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(g.read("control/shutdown"), Ok(Vec::new()));
        g.client.poll().unwrap();
        assert_eq!(g.client.watch_events(), 3, "only the guest's own ack fired");
        // The other domain saw none of it.
        let mut o = r.guest(other);
        assert_eq!(o.read("control/shutdown"), Err("ENOENT".to_owned()));
    }

    #[tokio::test]
    async fn a_guest_that_never_announced_it_is_refused_at_once() {
        let r = rig();
        let domid = r.create("mute").await;
        let refused = |node: Option<&str>, domid: u32, name: &str| {
            Response::Error(ApiError::PvShutdownUnsupported {
                request: GuestRequest::Poweroff,
                domid,
                name: name.into(),
                node: node.map(str::to_owned),
            })
        };
        let answer = r.shutdown(domid, GuestRequest::Poweroff).await;
        assert_eq!(
            answer,
            refused(Some("control/feature-poweroff"), domid, "mute")
        );
        let Response::Error(e) = answer else {
            unreachable!()
        };
        assert_eq!(
            e.to_string(),
            format!(
                "domain {domid} (mute) does not handle PV shutdown requests: the guest never wrote control/feature-poweroff = 1"
            )
        );
        let mut g = r.guest(domid);
        assert_eq!(g.read("control/shutdown"), Err("ENOENT".to_owned()));
        // Only "1" announces it.
        g.write("control/feature-poweroff", b"0").unwrap();
        assert_eq!(
            r.shutdown(domid, GuestRequest::Poweroff).await,
            refused(Some("control/feature-poweroff"), domid, "mute")
        );
        // A boot-time domain has no xenstore dom0d serves.
        assert_eq!(
            r.shutdown(1, GuestRequest::Poweroff).await,
            refused(None, 1, "hello1")
        );
        // Nor has a domain built without event channels.
        r.fake
            .fail_nth(ControlOp::EvtchnAllocUnbound as u64, 1, ENOSYS);
        let bare = r.create("bare").await;
        assert_eq!(r.fake.param(bare, HVM_PARAM_STORE_PFN), None);
        assert!(!r.xs().knows(bare));
        let answer = r.shutdown(bare, GuestRequest::Poweroff).await;
        assert_eq!(answer, refused(None, bare, "bare"));
        let Response::Error(e) = answer else {
            unreachable!()
        };
        assert_eq!(
            e.to_string(),
            format!(
                "domain {bare} (bare) cannot be sent a PV shutdown request: dom0d serves no xenstore for it"
            )
        );
    }

    #[tokio::test]
    async fn domain_0_and_ended_domains_are_not_asked() {
        let r = rig();
        let not = |request, domid, name: &str, why| {
            Response::Error(ApiError::GuestRequestNotApplicable {
                request,
                domid,
                name: name.into(),
                why,
            })
        };
        assert_eq!(
            r.shutdown(0, GuestRequest::Poweroff).await,
            not(
                GuestRequest::Poweroff,
                0,
                "Domain-0",
                NotApplicable::DomainZero
            )
        );
        assert_eq!(
            r.shutdown(0, GuestRequest::Reboot).await,
            not(
                GuestRequest::Reboot,
                0,
                "Domain-0",
                NotApplicable::DomainZero
            )
        );
        let off = r.create("off").await;
        let crashed = r.create("crashed").await;
        for domid in [off, crashed] {
            r.guest(domid).announce_poweroff();
        }
        // Shut down and crashed, with nothing applied yet (on_* sweeps come later).
        assert!(r.fake.shut_down(off, 0));
        assert!(r.fake.crash(crashed));
        assert_eq!(
            r.shutdown(off, GuestRequest::Poweroff).await,
            not(
                GuestRequest::Poweroff,
                off,
                "off",
                NotApplicable::Ended(State::Shutdown)
            )
        );
        let answer = r.shutdown(crashed, GuestRequest::Reboot).await;
        assert_eq!(
            answer,
            not(
                GuestRequest::Reboot,
                crashed,
                "crashed",
                NotApplicable::Ended(State::Crashed)
            )
        );
        let Response::Error(e) = answer else {
            unreachable!()
        };
        assert_eq!(
            e.to_string(),
            format!(
                "domain {crashed} (crashed) cannot be sent a PV reboot request: it has crashed"
            )
        );
        for domid in [off, crashed] {
            assert_eq!(
                r.xs()
                    .read(&format!("/local/domain/{domid}/control/shutdown")),
                Err(crate::xenstore::XsErr::NoEnt),
                "nothing was written"
            );
        }
        // No such domain.
        assert!(matches!(
            r.shutdown(99, GuestRequest::Poweroff).await,
            Response::Error(ApiError::NoSuchDomain { domid: 99 })
        ));
    }

    #[tokio::test]
    async fn a_domain_that_is_gone_leaves_no_xenstore_state() {
        let r = rig();
        let free = r.fake.mem_free_kib();
        let a = r.create("a").await;
        let b = r.create("b").await;
        let c = r.create("c").await;
        for domid in [a, b, c] {
            let mut g = r.guest(domid);
            g.announce_poweroff();
            g.write("data/x", b"v").unwrap();
        }
        assert_eq!(r.fake.page_maps(), 6, "a console and a store page each");
        // `dom0 destroy a`: its home, page and port go with it.
        assert!(matches!(
            r.service.handle(&Request::Destroy { domid: a }).await,
            Response::Lifecycle(_)
        ));
        assert!(!r.xs().knows(a));
        assert_eq!(
            r.xs().read(&format!("/local/domain/{a}/name")),
            Err(crate::xenstore::XsErr::NoEnt)
        );
        assert!(!r.holds_anything_of(a));
        // b powers off when asked, and on_poweroff destroys it.
        assert!(matches!(
            r.shutdown(b, GuestRequest::Poweroff).await,
            Response::ShutdownSent(_)
        ));
        assert!(r.fake.shut_down(b, 0));
        let applied = r.service.supervise_once().await;
        assert_eq!(applied.len(), 1, "{applied:?}");
        assert_eq!(applied[0].outcome, Outcome::Destroyed);
        assert!(!r.xs().knows(b));
        assert!(!r.holds_anything_of(b));
        // c is destroyed behind dom0d's back: the next sweep notices.
        r.fake
            .control(ControlOp::DomainDestroy as u64, u64::from(c), &mut [])
            .unwrap();
        r.service.supervise_once().await;
        assert!(!r.xs().knows(c));
        assert!(!r.holds_anything_of(c));
        // Everything is back.
        assert_eq!(r.fake.page_maps(), 0);
        assert!(r.fake.dom0_ports().is_empty());
        assert!(r.fake.foreign_slots().is_empty());
        assert_eq!(r.service.consoles.pool().in_use(), 0);
        assert_eq!(r.fake.mem_free_kib(), free);
        // Gone twice is harmless.
        r.xs().domain_gone(&*r.fake, a);
    }

    #[tokio::test]
    async fn a_hostile_store_ring_is_cut_off_alone() {
        let r = rig();
        let bad = r.create("bad").await;
        let good = r.create("good").await;
        let mut g = r.guest(bad);
        g.announce_poweroff();
        let store_port = g.port;
        let store_gfn = r.param(bad, HVM_PARAM_STORE_PFN);
        let console_gfn = r.param(bad, HVM_PARAM_CONSOLE_PFN);
        // The guest claims 9999 request bytes in a 1 KiB ring.
        let page = r.fake.guest_page(bad, store_gfn).unwrap();
        page.store_release_u32(REQ_PROD, 9999).unwrap();
        assert!(r.fake.guest_send(bad, store_port));
        r.service.take_pending();
        assert_eq!(r.xs().connections_cut(), 1);
        assert!(!r.xs().serves(bad));
        assert!(r.xs().knows(bad), "its home stays until it is gone");
        // Its store page and port are given up at once; its console's stay.
        let slots: Vec<(u32, u64)> = r
            .fake
            .foreign_slots()
            .iter()
            .filter(|s| s.1 == bad)
            .map(|s| (s.1, s.2))
            .collect();
        assert_eq!(slots, [(bad, console_gfn)]);
        let console_port = u32::try_from(r.param(bad, HVM_PARAM_CONSOLE_EVTCHN)).unwrap();
        assert_eq!(
            r.fake.domu_ports(bad),
            [(console_port, true), (store_port, false)]
        );
        // Its signals go nowhere now: no second log line, however often it tries.
        assert!(!r.fake.guest_send(bad, store_port));
        r.service.take_pending();
        r.xs().pump_all(&*r.fake);
        assert_eq!(r.xs().connections_cut(), 1);
        // Its console still works.
        assert_eq!(r.fake.console_write(bad, b"still here"), Some(10));
        r.service.take_pending();
        let consoles = &r.service.consoles;
        let log = consoles.resolve("bad").unwrap();
        let opened = consoles.open(&log).unwrap();
        assert_eq!(
            consoles.read_since(&log, opened.start, 100).bytes,
            b"still here"
        );
        // It cannot be asked to shut down any more; the other domain can.
        assert_eq!(
            r.shutdown(bad, GuestRequest::Poweroff).await,
            Response::Error(ApiError::PvShutdownUnsupported {
                request: GuestRequest::Poweroff,
                domid: bad,
                name: "bad".into(),
                node: None,
            })
        );
        let mut o = r.guest(good);
        o.announce_poweroff();
        assert!(matches!(
            r.shutdown(good, GuestRequest::Poweroff).await,
            Response::ShutdownSent(_)
        ));
        assert_eq!(o.read("control/shutdown"), Ok(b"poweroff".to_vec()));
        // Destroying it later still cleans up the rest.
        assert!(matches!(
            r.service.handle(&Request::Destroy { domid: bad }).await,
            Response::Lifecycle(_)
        ));
        assert!(!r.xs().knows(bad));
        assert!(!r.holds_anything_of(bad));
    }

    #[test]
    fn requests_queued_before_the_domain_is_introduced_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k.elf");
        let seg = Seg {
            paddr: 0x10_0000,
            data: vec![0x90; 64],
            mem: 4096,
        };
        std::fs::write(&kernel, pvh_elf(0x10_0000, &[seg])).unwrap();
        let fake = FakeMicrovisor::new();
        let pool = Arc::new(PagePool::default());
        let xs = Xenstored::new(Arc::clone(&pool));
        let built = builder::create(
            &fake,
            &pool,
            &config(kernel.to_str().unwrap(), "early"),
            Options::default(),
            &Mutex::new(None),
        )
        .unwrap();
        let domid = built.report.domid.unwrap();
        let store = built.store.unwrap();
        let remote = store.remote_port;
        // The guest asks before dom0d has introduced it (and its signal is lost).
        let page = fake.guest_page(domid, store.gfn).unwrap();
        let mut front = pv_drivers::xenstore::XsFront::new(Arc::clone(&page)).unwrap();
        let mut m = header_bytes(&MsgHeader {
            msg_type: XS_READ,
            req_id: 7,
            tx_id: 0,
            len: 5,
        })
        .to_vec();
        m.extend_from_slice(b"name\0");
        assert_eq!(front.write(&m).unwrap(), m.len());
        xs.register(&fake, "early", store);
        let (h, payload) = front.next_message().unwrap().unwrap();
        assert_eq!((h.msg_type, h.req_id, payload), (XS_READ, 7, &b"early"[..]));
        assert_eq!(fake.notified(domid, remote), 1);
        assert!(xs.serves(domid));
        // Introduced again under the same id (dom0d missed the end): the old connection,
        // page and port go first.
        let old_port = fake.dom0_ports()[1].0;
        let again = builder::setup_ring(&fake, &pool, domid, 2 << 20, builder::RingKind::Store)
            .unwrap()
            .unwrap();
        assert_eq!(pool.in_use(), 3);
        xs.register(&fake, "again", again);
        assert_eq!(pool.in_use(), 2);
        assert!(fake.dom0_ports().iter().all(|(p, _)| *p != old_port));
        assert_eq!(
            xs.read(&format!("/local/domain/{domid}/name")),
            Ok(b"again".to_vec())
        );
        xs.domain_gone(&fake, domid);
        assert!(!xs.knows(domid));
        assert_eq!(pool.in_use(), 1, "only the console page is left");
        builder::undo_ring(&fake, &pool, built.console.unwrap());
        assert_eq!(pool.in_use(), 0);
        assert!(fake.dom0_ports().is_empty());
    }
}
