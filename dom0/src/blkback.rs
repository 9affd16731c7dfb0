//! dom0d's PV block back-end: one virtual block device (vbd) per `disk` entry of a
//! domain's config, served from a file in Dom0.
//!
//! **xenstore.** [`BlkBack::add`] publishes the back-end directory
//! `/local/domain/0/backend/vbd/<domid>/<devid>/` (`frontend`, `frontend-id`, `sectors`,
//! `info`, `sector-size` 512, `feature-flush-cache` 1, `mode`, `state`), owned by domain 0
//! and readable by the DomU, and the front-end directory
//! `/local/domain/<domid>/device/vbd/<devid>/` (`backend`, `backend-id` 0,
//! `virtual-device`, `state` 1), owned by the DomU (readable by domain 0, which reads
//! everything anyway). The back-end starts in InitWait.
//!
//! **Handshake** ([`BlkBack::step`], run whenever the store may have changed): once the
//! front-end's `state` is Initialised (or Connected), its `ring-ref` and `event-channel`
//! are read (strict decimal), the ring page is mapped writable with `GrantMap` into a
//! slot of dom0d's page pool, the event channel is bound with `EvtchnBindInterdomain`, and
//! the back-end goes to Connected. Any failure undoes what was done, writes Closed and
//! stops the device (one log line). A front-end that goes to Closing or Closed is
//! disconnected (ring unmapped, port closed) and the back-end goes to Closed; if the
//! front-end comes back to Initialising the back-end returns to InitWait.
//!
//! **Requests** ([`BlkBack::on_ports`], [`BlkBack::step`]): each request is copied out of
//! the ring once and validated ([`pv_drivers::blkif`]); reads and writes move the data with
//! `GrantCopy` between the granted pages and a dom0d buffer ([`crate::grants`]) and the
//! file (`pread`/`pwrite`), flushes call `fdatasync`. With persistent grants (both ends
//! write `feature-persistent` = 1, as Xen's blkif allows: the front-end grants its data
//! pages for good and reuses them), each data page is `GrantMap`ped into a pool slot the
//! first time a request names it, at most [`MAX_PERSISTENT`] per disk and only while
//! half of the page pool stays free (so no guest can take the slots others' rings need),
//! and from then on
//! copied through that mapping with no hypercall; a request naming a page that cannot be
//! mapped (pool full, a grant dom0d may not map writable) goes through `GrantCopy`, which
//! also reports a bad grant. The mappings end with the ring. Each response is published as soon
//! as it is written (a restarted dom0d resumes after the last published response and must
//! not find an unpublished one, [`crate::state`]); the guest is signalled per ring.h's
//! rule once per call; then the final check is made, so requests the front-end
//! published meanwhile are served too. At most [`REQUESTS_PER_SERVE`] requests are served
//! per call, so a front-end that refills its ring endlessly cannot hold dom0d.
//!
//! **Hostile front-ends.** An impossible ring index, a malformed request (segment count or
//! sectors, a range past the end of the disk) or a grant the copy may not use (bad
//! reference, read-only for a read, revoked) gets one warning line; that device is stopped
//! (ring unmapped, port closed, `state` Closed) and never served again, while every other
//! device and domain carry on. An operation this back-end does not serve is answered
//! `EOPNOTSUPP` and a write to a read-only disk `ERROR`; an I/O error of the file is
//! answered `ERROR`. Requests rewritten in the ring while being served change nothing:
//! only the private copy is used.
//!
//! **Teardown** ([`BlkBack::domain_gone`]): the ring is unmapped, the port closed and both
//! directories removed.
//!
//! The file I/O is synchronous; callers on the async runtime run these calls on a
//! blocking thread.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pv_drivers::blkif::{BlkBack as Ring, BlkOp, BlkRequest, Taken, response};
use shared_abi::io::blkif::{BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, SECTOR_SIZE, VDISK_READONLY};
use shared_abi::io::xenbus::XenbusState;

use crate::backend::{
    MappedRing, backend_perms, close_port, domains_of, frontend_perms, map_ring, read_state,
    read_u32, set_state, unmap_slot, write_dir,
};
use crate::grants::{self, GrantPiece};
use crate::log::{self, Level};
use crate::microvisor::{Microvisor, PageMap, evtchn_bind_interdomain, evtchn_send};
use crate::pages::PagePool;
use crate::proto::errno_text;
use crate::state::{DiskPhase, DiskRecord, PersistentGrant};
use crate::xenstore::path::home;
use crate::xenstore::store::Store;
use pv_drivers::SharedMem;

/// Log prefix.
const WHO: &str = "blkback";

/// Requests served per device per call.
pub const REQUESTS_PER_SERVE: usize = 256;

/// Persistent grant mappings per disk at most: every segment of a full ring.
pub const MAX_PERSISTENT: usize =
    shared_abi::io::blkif::BLKIF_RING_SIZE as usize * shared_abi::io::blkif::BLKIF_MAX_SEGMENTS;

/// A connected ring's persistent grant mappings: reference to (slot, mapping).
type Persistent = BTreeMap<u32, (u64, Arc<dyn PageMap>)>;

/// A disk to serve: a file in Dom0, the device name the guest sees, and its access.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskSpec {
    /// Absolute path of the image file.
    pub path: String,
    /// `xvda` ... `xvdz`.
    pub vdev: String,
    /// `access=ro`.
    pub read_only: bool,
}

/// The xenstore device id of `xvd<letter>` (Xen's encoding: major 202, 16 minors per
/// disk, and the extended form from the 17th disk on). `None` for anything else.
#[must_use]
pub fn devid_of(vdev: &str) -> Option<u32> {
    let rest = vdev.strip_prefix("xvd")?;
    let [c] = rest.as_bytes() else {
        return None;
    };
    if !c.is_ascii_lowercase() {
        return None;
    }
    let index = u32::from(c - b'a');
    Some(if index < 16 {
        (202 << 8) | (index << 4)
    } else {
        (1 << 28) | (index << 8)
    })
}

/// The back-end directory of a vbd.
#[must_use]
pub fn backend_dir(domid: u32, devid: u32) -> String {
    format!("/local/domain/0/backend/vbd/{domid}/{devid}")
}

/// The front-end directory of a vbd.
#[must_use]
pub fn frontend_dir(domid: u32, devid: u32) -> String {
    format!("{}/device/vbd/{devid}", home(domid))
}

/// A connected ring.
#[derive(Debug)]
struct Conn {
    slot: u64,
    ring: Ring<Arc<dyn PageMap>>,
    port: u32,
    /// `Some` when both ends use persistent grants.
    persistent: Option<Persistent>,
}

#[derive(Debug)]
enum Phase {
    /// InitWait: waiting for the front-end's ring details.
    Waiting,
    Connected(Conn),
    /// Closed after the front-end closed; back to `Waiting` if it starts again.
    Closed,
    /// Stopped for breaking the protocol; never served again.
    Stopped,
}

#[derive(Debug)]
struct Vbd {
    vdev: String,
    path: String,
    file: File,
    sectors: u64,
    read_only: bool,
    phase: Phase,
}

#[derive(Debug, Default)]
struct Inner {
    vbds: BTreeMap<(u32, u32), Vbd>,
    /// Domain 0 port to vbd.
    ports: BTreeMap<u32, (u32, u32)>,
    stopped: u64,
}

/// Every vbd dom0d serves.
#[derive(Debug)]
pub struct BlkBack {
    pool: Arc<PagePool>,
    inner: Mutex<Inner>,
    /// Bumped by every change dom0d's state file keeps ([`crate::state`]).
    changes: AtomicU64,
}

impl BlkBack {
    /// No devices yet; ring pages are mapped into slots of `pool`.
    #[must_use]
    pub fn new(pool: Arc<PagePool>) -> Self {
        Self {
            pool,
            inner: Mutex::new(Inner::default()),
            changes: AtomicU64::new(0),
        }
    }

    fn bump(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the changes dom0d's state file keeps (devices added, gone, connected,
    /// disconnected, stopped).
    #[must_use]
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Every vbd with its phase, for dom0d's state file.
    #[must_use]
    pub fn export(&self) -> Vec<(u32, DiskRecord)> {
        self.lock()
            .vbds
            .iter()
            .map(|(&(domid, devid), v)| {
                let phase = match &v.phase {
                    Phase::Waiting => DiskPhase::Waiting,
                    Phase::Connected(c) => DiskPhase::Connected {
                        slot: c.slot,
                        port: c.port,
                    },
                    Phase::Closed => DiskPhase::Closed,
                    Phase::Stopped => DiskPhase::Stopped,
                };
                let persistent = match &v.phase {
                    Phase::Connected(Conn {
                        persistent: Some(maps),
                        ..
                    }) => maps
                        .iter()
                        .map(|(&gref, &(slot, _))| PersistentGrant { gref, slot })
                        .collect(),
                    _ => Vec::new(),
                };
                let rec = DiskRecord {
                    devid,
                    vdev: v.vdev.clone(),
                    path: v.path.clone(),
                    read_only: v.read_only,
                    sectors: v.sectors,
                    phase,
                    persistent,
                };
                (domid, rec)
            })
            .collect()
    }

    /// Serves again a vbd an earlier dom0d served ([`crate::state`]): its image opened
    /// again, and a connected ring mapped again from its slot, resuming after the last
    /// response that dom0d published (requests it took but did not answer are served
    /// again). A vbd that cannot be served again is stopped: its ring and port are
    /// released, `state` Closed, one warning.
    pub fn adopt(&self, mv: &dyn Microvisor, store: &mut Store, domid: u32, rec: &DiskRecord) {
        let key = (domid, rec.devid);
        let file = OpenOptions::new()
            .read(true)
            .write(!rec.read_only)
            .open(&rec.path);
        let mut inner = self.lock();
        self.bump();
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                if let DiskPhase::Connected { slot, port } = rec.phase {
                    unmap_slot(WHO, mv, &self.pool, slot);
                    close_port(WHO, mv, port);
                }
                for g in &rec.persistent {
                    unmap_slot(WHO, mv, &self.pool, g.slot);
                }
                set_state(
                    WHO,
                    store,
                    &backend_dir(domid, rec.devid),
                    XenbusState::Closed,
                );
                inner.stopped += 1;
                log::write(
                    Level::Warn,
                    format_args!(
                        "blkback: domain {domid} {}: cannot open {} again ({e}); this disk is no longer served",
                        rec.vdev, rec.path
                    ),
                );
                return;
            }
        };
        let mut vbd = Vbd {
            vdev: rec.vdev.clone(),
            path: rec.path.clone(),
            file,
            sectors: rec.sectors,
            read_only: rec.read_only,
            phase: match rec.phase {
                DiskPhase::Waiting => Phase::Waiting,
                DiskPhase::Closed => Phase::Closed,
                DiskPhase::Stopped => Phase::Stopped,
                DiskPhase::Connected { .. } => Phase::Stopped,
            },
        };
        if let DiskPhase::Connected { slot, port } = rec.phase {
            self.pool.claim(slot);
            let ring = mv
                .map_page(slot)
                .map_err(|errno| format!("mmap of slot {slot} failed with {}", errno_text(errno)))
                .and_then(|mem| {
                    Ring::attach(mem, rec.sectors, rec.read_only).map_err(|e| format!("ring: {e}"))
                });
            match ring {
                Ok(ring) => {
                    let persistent = self.adopt_persistent(mv, rec);
                    vbd.phase = Phase::Connected(Conn {
                        slot,
                        ring,
                        port,
                        persistent,
                    });
                    inner.ports.insert(port, key);
                    // The earlier dom0d may have died between publishing responses and
                    // signalling them: a spurious signal is harmless, a lost one stalls
                    // the front-end.
                    if let Err(errno) = evtchn_send(mv, port) {
                        log::limited(
                            Level::Warn,
                            format_args!(
                                "blkback: signalling domain {domid} failed with {}",
                                errno_text(errno)
                            ),
                        );
                    }
                }
                Err(why) => {
                    unmap_slot(WHO, mv, &self.pool, slot);
                    close_port(WHO, mv, port);
                    for g in &rec.persistent {
                        unmap_slot(WHO, mv, &self.pool, g.slot);
                    }
                    set_state(
                        WHO,
                        store,
                        &backend_dir(domid, rec.devid),
                        XenbusState::Closed,
                    );
                    inner.stopped += 1;
                    log::write(
                        Level::Warn,
                        format_args!(
                            "blkback: domain {domid} {}: its ring cannot be mapped again ({why}); this disk is no longer served",
                            rec.vdev
                        ),
                    );
                }
            }
        }
        inner.vbds.insert(key, vbd);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Devices stopped for breaking the protocol so far (one log line each).
    #[must_use]
    pub fn stopped(&self) -> u64 {
        self.lock().stopped
    }

    /// Whether vbd `devid` of `domid` has a connected ring.
    #[must_use]
    pub fn is_connected(&self, domid: u32, devid: u32) -> bool {
        matches!(
            self.lock().vbds.get(&(domid, devid)).map(|v| &v.phase),
            Some(Phase::Connected(_))
        )
    }

    /// Devices served (any phase).
    #[must_use]
    pub fn devices(&self) -> usize {
        self.lock().vbds.len()
    }

    /// The domains that have disks.
    #[must_use]
    pub fn domids(&self) -> Vec<u32> {
        domains_of(&self.lock().vbds)
    }

    /// The disks of `domid`, in device id order, with both xenbus states read from `store`.
    #[must_use]
    pub fn list(&self, store: &Store, domid: u32) -> Vec<crate::proto::BlockDevice> {
        self.lock()
            .vbds
            .range((domid, 0)..=(domid, u32::MAX))
            .map(|(&(domid, devid), v)| crate::proto::BlockDevice {
                domid,
                vdev: v.vdev.clone(),
                devid,
                path: v.path.clone(),
                read_only: v.read_only,
                sectors: v.sectors,
                backend_state: read_state(store, &backend_dir(domid, devid)).as_u32(),
                frontend_state: read_state(store, &frontend_dir(domid, devid)).as_u32(),
                connected: matches!(v.phase, Phase::Connected(_)),
                stopped: matches!(v.phase, Phase::Stopped),
            })
            .collect()
    }

    /// Opens `disk` and publishes vbd nodes for DomU `domid`; returns the device id.
    ///
    /// # Errors
    /// What failed, as text (bad `vdev`, a device id in use, the file, the store); nothing
    /// is left published then.
    pub fn add(&self, store: &mut Store, domid: u32, disk: &DiskSpec) -> Result<u32, String> {
        let devid = devid_of(&disk.vdev)
            .ok_or_else(|| format!("vdev {:?} is not xvda..xvdz", disk.vdev))?;
        let mut inner = self.lock();
        if inner.vbds.contains_key(&(domid, devid)) {
            return Err(format!("domain {domid} already has a disk {}", disk.vdev));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!disk.read_only)
            .open(&disk.path)
            .map_err(|e| format!("opening disk {}: {e}", disk.path))?;
        let len = file
            .metadata()
            .map_err(|e| format!("disk {}: {e}", disk.path))?
            .len();
        let sectors = len / SECTOR_SIZE;
        if sectors == 0 {
            return Err(format!("disk {} is smaller than one sector", disk.path));
        }
        let be = backend_dir(domid, devid);
        let fe = frontend_dir(domid, devid);
        let published = Self::publish(store, domid, devid, disk, sectors);
        if let Err(e) = published {
            let _ = store.rm(0, &be);
            let _ = store.rm(0, &fe);
            return Err(e);
        }
        inner.vbds.insert(
            (domid, devid),
            Vbd {
                vdev: disk.vdev.clone(),
                path: disk.path.clone(),
                file,
                sectors,
                read_only: disk.read_only,
                phase: Phase::Waiting,
            },
        );
        self.bump();
        Ok(devid)
    }

    fn publish(
        store: &mut Store,
        domid: u32,
        devid: u32,
        disk: &DiskSpec,
        sectors: u64,
    ) -> Result<(), String> {
        let be = backend_dir(domid, devid);
        let fe = frontend_dir(domid, devid);
        let _ = store.rm(0, &be);
        let _ = store.rm(0, &fe);
        let info = if disk.read_only { VDISK_READONLY } else { 0 };
        let mode = if disk.read_only { "r" } else { "w" };
        // The back-end's nodes: domain 0's, readable by the DomU.
        write_dir(
            store,
            &be,
            &[
                ("frontend", fe.clone()),
                ("frontend-id", domid.to_string()),
                ("params", disk.path.clone()),
                ("mode", mode.to_owned()),
                ("sectors", sectors.to_string()),
                ("info", info.to_string()),
                ("sector-size", SECTOR_SIZE.to_string()),
                ("feature-flush-cache", "1".to_owned()),
                ("feature-persistent", "1".to_owned()),
                ("state", XenbusState::InitWait.as_u32().to_string()),
            ],
            &backend_perms(domid),
        )?;
        // The front-end's nodes: the DomU's, readable by domain 0.
        write_dir(
            store,
            &fe,
            &[
                ("backend", be.clone()),
                ("backend-id", "0".to_owned()),
                ("virtual-device", devid.to_string()),
                ("state", XenbusState::Initialising.as_u32().to_string()),
            ],
            &frontend_perms(domid),
        )?;
        Ok(())
    }

    /// Follows every front-end's state (connects, disconnects) and serves the connected
    /// rings. Run after the store may have changed and on the periodic poll.
    pub fn step(&self, mv: &dyn Microvisor, store: &mut Store) {
        let mut inner = self.lock();
        let keys: Vec<(u32, u32)> = inner.vbds.keys().copied().collect();
        for key in keys {
            let fe = frontend_dir(key.0, key.1);
            let be = backend_dir(key.0, key.1);
            let fe_state = read_state(store, &fe);
            let Some(vbd) = inner.vbds.get_mut(&key) else {
                continue;
            };
            match (&vbd.phase, fe_state) {
                (Phase::Waiting, XenbusState::Initialised | XenbusState::Connected) => {
                    match self.connect(mv, store, key, vbd) {
                        Ok(conn) => {
                            let port = conn.port;
                            vbd.phase = Phase::Connected(conn);
                            self.bump();
                            log::write(
                                Level::Info,
                                format_args!(
                                    "blkback: domain {} {} connected (port {port})",
                                    key.0, vbd.vdev
                                ),
                            );
                            inner.ports.insert(port, key);
                            set_state(WHO, store, &be, XenbusState::Connected);
                        }
                        Err(why) => {
                            self.stop(mv, store, &mut inner, key, &why);
                            continue;
                        }
                    }
                }
                (
                    Phase::Connected(_),
                    XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown,
                ) => {
                    set_state(WHO, store, &be, XenbusState::Closing);
                    self.disconnect(mv, &mut inner, key);
                    if let Some(v) = inner.vbds.get_mut(&key) {
                        v.phase = Phase::Closed;
                    }
                    set_state(WHO, store, &be, XenbusState::Closed);
                }
                (Phase::Closed, XenbusState::Initialising) => {
                    vbd.phase = Phase::Waiting;
                    self.bump();
                    set_state(WHO, store, &be, XenbusState::InitWait);
                }
                _ => {}
            }
            self.serve(mv, store, &mut inner, key);
        }
    }

    /// Maps the front-end's ring and binds its event channel.
    fn connect(
        &self,
        mv: &dyn Microvisor,
        store: &Store,
        (domid, devid): (u32, u32),
        vbd: &Vbd,
    ) -> Result<Conn, String> {
        let fe = frontend_dir(domid, devid);
        let gref = read_u32(store, &format!("{fe}/ring-ref"))?;
        let remote = read_u32(store, &format!("{fe}/event-channel"))?;
        if let Ok(p) = store.read(0, &format!("{fe}/protocol"))
            && p != b"x86_64-abi"
        {
            return Err(format!(
                "protocol {:?} is not x86_64-abi",
                String::from_utf8_lossy(&p)
            ));
        }
        let MappedRing { slot, mem } = map_ring(WHO, mv, &self.pool, domid, gref, "ring-ref")?;
        let undo_map = |why: String| {
            unmap_slot(WHO, mv, &self.pool, slot);
            why
        };
        let ring = Ring::attach(mem, vbd.sectors, vbd.read_only)
            .map_err(|e| undo_map(format!("ring: {e}")))?;
        let port = match evtchn_bind_interdomain(mv, domid, remote) {
            Ok(p) => p,
            Err(errno) => {
                drop(ring);
                return Err(undo_map(format!(
                    "binding event-channel {remote} failed with {}",
                    errno_text(errno)
                )));
            }
        };
        // Persistent grants only when the front-end says it reuses its grants (one that
        // revokes them after each request would find them still mapped).
        let persistent = store
            .read(0, &format!("{fe}/feature-persistent"))
            .is_ok_and(|v| v == b"1")
            .then(Persistent::new);
        Ok(Conn {
            slot,
            ring,
            port,
            persistent,
        })
    }

    /// Maps again the persistent grants an earlier dom0d recorded for a connected ring;
    /// `None` if the ring had none (the front-end did not ask for them).
    fn adopt_persistent(&self, mv: &dyn Microvisor, rec: &DiskRecord) -> Option<Persistent> {
        if rec.persistent.is_empty() {
            return None;
        }
        let mut maps = Persistent::new();
        for g in &rec.persistent {
            self.pool.claim(g.slot);
            match mv.map_page(g.slot) {
                Ok(mem) => {
                    maps.insert(g.gref, (g.slot, mem));
                }
                // Not fatal: the page is mapped again (or copied) when next used.
                Err(_) => unmap_slot(WHO, mv, &self.pool, g.slot),
            }
        }
        Some(maps)
    }

    /// Unmaps a connected ring and closes its port (the vbd stays, in whatever phase the
    /// caller sets).
    fn disconnect(&self, mv: &dyn Microvisor, inner: &mut Inner, key: (u32, u32)) {
        let Some(vbd) = inner.vbds.get_mut(&key) else {
            return;
        };
        if let Phase::Connected(conn) = std::mem::replace(&mut vbd.phase, Phase::Closed) {
            self.bump();
            inner.ports.remove(&conn.port);
            let Conn {
                slot,
                ring,
                port,
                persistent,
            } = conn;
            drop(ring);
            unmap_slot(WHO, mv, &self.pool, slot);
            for (_, (data_slot, mem)) in persistent.into_iter().flatten() {
                drop(mem);
                unmap_slot(WHO, mv, &self.pool, data_slot);
            }
            close_port(WHO, mv, port);
        }
    }

    /// Stops a device for good: one log line, ring and port released, `state` Closed.
    fn stop(
        &self,
        mv: &dyn Microvisor,
        store: &mut Store,
        inner: &mut Inner,
        key: (u32, u32),
        why: &str,
    ) {
        self.disconnect(mv, inner, key);
        let Some(vbd) = inner.vbds.get_mut(&key) else {
            return;
        };
        vbd.phase = Phase::Stopped;
        inner.stopped += 1;
        self.bump();
        set_state(WHO, store, &backend_dir(key.0, key.1), XenbusState::Closed);
        let vdev = inner.vbds.get(&key).map_or("?", |v| v.vdev.as_str());
        log::write(
            Level::Warn,
            format_args!(
                "blkback: domain {} {vdev}: {why}; this disk is no longer served, every other device and domain carry on",
                key.0
            ),
        );
    }

    /// Serves the devices of the pending domain 0 `ports`; returns the other ports.
    pub fn on_ports(&self, mv: &dyn Microvisor, store: &mut Store, ports: &[u32]) -> Vec<u32> {
        let mut inner = self.lock();
        let mut others = Vec::new();
        for &port in ports {
            match inner.ports.get(&port).copied() {
                Some(key) => self.serve(mv, store, &mut inner, key),
                None => others.push(port),
            }
        }
        others
    }

    /// Serves one connected device; stops it if it broke the protocol.
    fn serve(&self, mv: &dyn Microvisor, store: &mut Store, inner: &mut Inner, key: (u32, u32)) {
        let Some(vbd) = inner.vbds.get_mut(&key) else {
            return;
        };
        let mapped = persistent_count(vbd);
        let served = serve_ring(mv, &self.pool, key.0, vbd);
        if persistent_count(vbd) != mapped {
            // New mappings are state a restarted dom0d must find.
            self.bump();
        }
        if let Err(why) = served {
            self.stop(mv, store, inner, key, &why);
        }
    }

    /// DomU `domid` is gone: its rings are unmapped, ports closed and nodes removed.
    pub fn domain_gone(&self, mv: &dyn Microvisor, store: &mut Store, domid: u32) {
        let mut inner = self.lock();
        let keys: Vec<(u32, u32)> = inner
            .vbds
            .range((domid, 0)..=(domid, u32::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.disconnect(mv, &mut inner, key);
            inner.vbds.remove(&key);
            self.bump();
            let _ = store.rm(0, &backend_dir(key.0, key.1));
            let _ = store.rm(0, &frontend_dir(key.0, key.1));
        }
        let _ = store.rm(0, &format!("/local/domain/0/backend/vbd/{domid}"));
    }
}

/// Serves the requests waiting in a connected device's ring. `Err` names a protocol
/// violation.
/// Persistent mappings a vbd holds.
fn persistent_count(vbd: &Vbd) -> usize {
    match &vbd.phase {
        Phase::Connected(Conn {
            persistent: Some(maps),
            ..
        }) => maps.len(),
        _ => 0,
    }
}

fn serve_ring(
    mv: &dyn Microvisor,
    pool: &PagePool,
    domid: u32,
    vbd: &mut Vbd,
) -> Result<(), String> {
    let Phase::Connected(conn) = &mut vbd.phase else {
        return Ok(());
    };
    let mut served = 0usize;
    let mut notify = false;
    let result = loop {
        while served < REQUESTS_PER_SERVE {
            let Some(taken) = conn
                .ring
                .next_request()
                .map_err(|e| format!("broke its ring ({e})"))?
            else {
                break;
            };
            served += 1;
            let rsp = match taken {
                Taken::Valid(req) => {
                    let mapped = conn
                        .persistent
                        .as_mut()
                        .and_then(|maps| persistent_pages(mv, pool, domid, maps, &req));
                    let status = match mapped {
                        Some(pages) => do_io_mapped(domid, &vbd.file, &req, &pages),
                        None => do_io(mv, domid, &vbd.file, &req)?,
                    };
                    req.response(status)
                }
                Taken::Invalid { id, op, why } if !why.is_protocol_violation() => {
                    response(id, op, why.status())
                }
                Taken::Invalid { id, why, .. } => {
                    return Err(format!("sent a bad request (id {id}: {why})"));
                }
            };
            conn.ring
                .respond(&rsp)
                .map_err(|e| format!("broke its ring ({e})"))?;
            // Published at once: a dom0d that restarts resumes after the last published
            // response, and must never find a response it would read as a request.
            notify |= conn
                .ring
                .push()
                .map_err(|e| format!("broke its ring ({e})"))?;
        }
        if served >= REQUESTS_PER_SERVE {
            break Ok(());
        }
        match conn.ring.final_check() {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => break Err(format!("broke its ring ({e})")),
        }
    };
    if notify && let Err(errno) = evtchn_send(mv, conn.port) {
        log::limited(
            Level::Warn,
            format_args!(
                "blkback: signalling domain {domid} failed with {}",
                errno_text(errno)
            ),
        );
    }
    result
}

/// The mappings of every segment's page of `req`, mapping pages not seen before; `None`
/// if one cannot be mapped (the request then goes through `GrantCopy`, which reports a
/// bad grant) or `req` has no segments.
fn persistent_pages(
    mv: &dyn Microvisor,
    pool: &PagePool,
    domid: u32,
    maps: &mut Persistent,
    req: &BlkRequest,
) -> Option<Vec<Arc<dyn PageMap>>> {
    if req.segments().is_empty() {
        return None;
    }
    let mut pages = Vec::with_capacity(req.segments().len());
    for seg in req.segments() {
        if !maps.contains_key(&seg.gref) {
            if maps.len() >= MAX_PERSISTENT || !pool.has_room_to_spare() {
                return None;
            }
            let mapped = map_ring(WHO, mv, pool, domid, seg.gref, "persistent grant").ok()?;
            maps.insert(seg.gref, (mapped.slot, mapped.mem));
        }
        pages.push(Arc::clone(&maps.get(&seg.gref)?.1));
    }
    Some(pages)
}

/// Does one valid read or write through persistent mappings (`pages[i]` is segment
/// `i`'s); its status.
fn do_io_mapped(domid: u32, file: &File, req: &BlkRequest, pages: &[Arc<dyn PageMap>]) -> i16 {
    let len = usize::try_from(req.bytes()).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; len];
    let status = |r: std::io::Result<()>| match r {
        Ok(()) => BLKIF_RSP_OKAY,
        Err(e) => {
            log::limited(
                Level::Warn,
                format_args!("blkback: domain {domid}: disk I/O failed: {e}"),
            );
            BLKIF_RSP_ERROR
        }
    };
    // Validated segments lie inside their page, so these accesses cannot fail.
    let pieces = req.segments().iter().zip(pages);
    match req.op {
        BlkOp::Flush => status(file.sync_data()),
        BlkOp::Read => {
            let st = status(file.read_exact_at(&mut buf, req.disk_offset()));
            if st == BLKIF_RSP_OKAY {
                let mut at = 0;
                for (seg, page) in pieces {
                    let n = usize::from(seg.len);
                    let _ = page.write_bytes(usize::from(seg.offset), &buf[at..at + n]);
                    at += n;
                }
            }
            st
        }
        BlkOp::Write => {
            let mut at = 0;
            for (seg, page) in pieces {
                let n = usize::from(seg.len);
                let _ = page.read_bytes(usize::from(seg.offset), &mut buf[at..at + n]);
                at += n;
            }
            status(file.write_all_at(&buf, req.disk_offset()))
        }
    }
}

/// Does one valid request; its status, or `Err` for a grant the front-end may not use.
fn do_io(mv: &dyn Microvisor, domid: u32, file: &File, req: &BlkRequest) -> Result<i16, String> {
    let dom =
        u16::try_from(domid).map_err(|_| format!("domid {domid} does not fit a grant copy"))?;
    let pieces: Vec<GrantPiece> = req
        .segments()
        .iter()
        .map(|s| GrantPiece {
            domid: dom,
            gref: s.gref,
            offset: s.offset,
            len: s.len,
        })
        .collect();
    let len = usize::try_from(req.bytes()).unwrap_or(usize::MAX);
    // A segment the microvisor refused is the front-end's doing and stops the disk; a
    // failed call is dom0d's own trouble and fails only this request.
    let copied = |r: Result<(), grants::CopyError>| match r {
        Ok(()) => Ok(BLKIF_RSP_OKAY),
        Err(e @ grants::CopyError::Call(_)) => {
            log::limited(
                Level::Warn,
                format_args!("blkback: domain {domid}: request {}: {e}", req.id),
            );
            Ok(BLKIF_RSP_ERROR)
        }
        Err(e) => Err(format!(
            "handed over a grant dom0d may not use (id {}: {e})",
            req.id
        )),
    };
    let ok = |r: std::io::Result<()>| match r {
        Ok(()) => BLKIF_RSP_OKAY,
        Err(e) => {
            log::limited(
                Level::Warn,
                format_args!("blkback: domain {domid}: disk I/O failed: {e}"),
            );
            BLKIF_RSP_ERROR
        }
    };
    Ok(match req.op {
        BlkOp::Flush => ok(file.sync_data()),
        BlkOp::Read => {
            let mut buf = vec![0u8; len];
            match ok(file.read_exact_at(&mut buf, req.disk_offset())) {
                BLKIF_RSP_OKAY => copied(grants::copy_to(mv, &pieces, &buf))?,
                failed => failed,
            }
        }
        BlkOp::Write => {
            let mut buf = vec![0u8; len];
            match copied(grants::copy_from(mv, &pieces, &mut buf))? {
                BLKIF_RSP_OKAY => ok(file.write_all_at(&buf, req.disk_offset())),
                failed => failed,
            }
        }
    })
}

#[cfg(test)]
mod tests;
