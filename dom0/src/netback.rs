//! dom0d's PV network back-end: one virtual interface (vif) per `vif` entry of a domain's
//! config, each joined to a frame device in Dom0 (a TAP on a bridge).
//!
//! **xenstore** ([`NetBack::add`]; keys as [`shared_abi::io::netif`] documents them). The
//! back-end directory `/local/domain/0/backend/vif/<domid>/<handle>/` (`frontend`,
//! `frontend-id`, `handle`, `mac`, `bridge`, `ip` if the config gives one,
//! `feature-rx-copy` 1, `feature-sg` 0, `feature-gso-tcpv4` 0, `state`) is domain 0's and
//! readable by the DomU; the front-end directory `/local/domain/<domid>/device/vif/<handle>/`
//! (`backend`, `backend-id` 0, `handle`, `mac`, `state` 1) is the DomU's. The back-end
//! starts in InitWait.
//!
//! **Handshake** ([`NetBack::step`]): once the front-end's `state` is Initialised (or
//! Connected), its `tx-ring-ref`, `rx-ring-ref` and `event-channel` are read (strict
//! decimal) and `request-rx-copy` must be `1` (this back-end only copies into posted
//! buffers); both ring pages are mapped writable with `GrantMap` into slots of dom0d's page
//! pool, the event channel is bound, and the back-end goes to Connected. Any failure undoes
//! what was done, writes Closed and stops the vif (one log line). A front-end that goes to
//! Closing or Closed is disconnected and the back-end goes to Closed; back to InitWait if
//! the front-end starts again.
//!
//! **tx** (guest to Dom0): each packet is copied out of the ring once and validated
//! ([`pv_drivers::netif`]); its fragments are grant-copied into a buffer and the frame is
//! written to the vif's [`FrameDevice`]. A packet flagged `NETTXF_CSUM_BLANK` (checksum
//! offload, as Linux's netfront always does for IPv4 TCP/UDP) gets its TCP/UDP checksum
//! computed first ([`pv_drivers::netif::csum`]). Every slot is answered with the packet's
//! status: OKAY, or ERROR if the device refuses the frame, its blank checksum cannot be
//! completed or dom0d's own copy call fails (counted as errors). A packet larger than
//! [`MAX_FRAME`] is answered ERROR (the front-end may not know the limit). At most
//! [`TX_PACKETS_PER_SERVE`] packets are served per vif per call; a vif with more waiting
//! is served again by the net task once other work had its turn.
//!
//! **rx** (Dom0 to guest): frames read from the device are queued per vif (at most
//! [`RX_QUEUE_FRAMES`]; the newest is dropped and counted when full, and while the vif is
//! not connected every frame is), then each is grant-copied into the oldest buffer the
//! front-end posted, at offset 0, answered `{id, offset 0, flags 0, status = length}`,
//! pushed, and the guest signalled. Frames longer than [`MAX_FRAME`] are dropped and
//! counted. With frames waiting and no buffer posted, the ring's final check asks the
//! front-end to signal when it posts more.
//!
//! **Wake-ups.** The guest's event channel routes to [`NetBack::on_ports`]; the frame
//! devices' descriptors are watched by dom0d's net task through [`NetBack::poll_devices`]
//! (tokio readiness), which reads the frames and reports which vifs have some; then
//! [`NetBack::serve_devices`] delivers them. [`NetBack::step`] (after store changes and on
//! the periodic poll) also reads every device and serves every ring.
//!
//! **Hostile front-ends.** An impossible ring index, a tx chain that only a broken
//! front-end sends (too many slots, fragments crossing their page, sizes that do not add
//! up, extra-info slots, empty), or a grant the copy may not use (a tx fragment, an rx
//! buffer) gets one warning line; that vif is stopped (rings unmapped, port closed, `state`
//! Closed) and never served again, while every other vif and domain carry on. Its device
//! stays, and what it receives is dropped.
//!
//! **Teardown** ([`NetBack::domain_gone`]): rings unmapped, port closed, both directories
//! removed, the device closed (a TAP disappears with its descriptor).
//!
//! **Counters** per vif, from the guest's point of view as netif names the rings: tx
//! packets/bytes (frames the guest sent), rx packets/bytes (frames delivered to it), drops
//! (frames not delivered) and errors (packets answered ERROR).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use pv_drivers::netif::{NetBack as Ring, TxTaken, csum, rx_response};
use shared_abi::io::netif::{ETH_FRAME_MAX, NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETTXF_CSUM_BLANK};
use shared_abi::io::xenbus::XenbusState;

use crate::backend::{
    MappedRing, backend_perms, close_port, domains_of, frontend_perms, map_ring, read_state,
    read_u32, set_state, unmap_ring, write_dir,
};
use crate::device::Readiness;
use crate::grants::{self, CopyError, GrantPiece};
use crate::log::{self, Level};
use crate::microvisor::{Microvisor, PageMap, evtchn_bind_interdomain, evtchn_send};
use crate::netdev::{self, Mac};
use crate::pages::PagePool;
use crate::proto::{NetworkDevice, errno_text};
use crate::state::{VifPhase, VifRecord, VifStats};
use crate::xenstore::path::home;
use crate::xenstore::store::Store;

/// Log prefix.
const WHO: &str = "netback";

/// tx packets served per vif per call.
pub const TX_PACKETS_PER_SERVE: usize = 256;
/// Frames queued per vif for the guest.
pub const RX_QUEUE_FRAMES: usize = 256;
/// Device reads per vif per call (more wait for the next call).
pub const READS_PER_CALL: usize = 512;
/// Final-check rounds per ring per call.
const ROUNDS_PER_SERVE: usize = 4;
/// The MTU of every vif's TAP.
pub const VIF_MTU: u32 = 1500;
/// Most vifs per domain.
pub const MAX_VIFS: usize = 8;

/// A network interface to give a domain (one `vif` entry of its config); its handle is
/// its index in the config's list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VifSpec {
    /// The Dom0 bridge its TAP joins (`br0` by default).
    pub bridge: String,
    /// The guest's MAC, `00:16:3e:01:02:03` (unicast; generated when the config has
    /// none).
    pub mac: String,
    /// An IPv4 address with prefix for the guest (`10.0.0.2/24`), published as a hint.
    pub ip: Option<String>,
}

/// Where a vif's frames go and come from: a TAP in dom0d, an in-memory device in tests.
pub trait FrameDevice: Send + fmt::Debug {
    /// The device's name (`vif3.0`).
    fn name(&self) -> &str;
    /// Hands one whole Ethernet frame to the device.
    ///
    /// # Errors
    /// The device refused it.
    fn write_frame(&self, frame: &[u8]) -> io::Result<()>;
    /// Reads one frame into `buf`; `WouldBlock` when none is waiting. A frame longer than
    /// `buf` may be cut to `buf.len()`.
    ///
    /// # Errors
    /// `WouldBlock`, or the read's error.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// A non-blocking descriptor that is readable while frames wait, if the device has
    /// one (without, frames are read only by [`NetBack::step`]).
    fn fd(&self) -> Option<BorrowedFd<'_>>;
}

impl FrameDevice for netdev::Tap {
    fn name(&self) -> &str {
        netdev::Tap::name(self)
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        netdev::Tap::write_frame(self, frame)
    }

    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        netdev::Tap::read_frame(self, buf)
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}

/// Makes the frame device of a new vif.
pub trait DeviceMaker: Send + Sync + fmt::Debug {
    /// The device for vif `handle` of `domid`, attached as `vif` says.
    ///
    /// # Errors
    /// What failed, as text.
    fn create(
        &self,
        domid: u32,
        handle: u32,
        vif: &VifSpec,
    ) -> Result<Box<dyn FrameDevice>, String>;
}

/// dom0d's devices: a TAP `vif<domid>.<handle>` (MTU [`VIF_MTU`], Xen's `fe:ff:ff:ff:ff:ff`
/// address) on the vif's bridge, which is created if missing ([`netdev::DEFAULT_BRIDGE`]
/// then gets [`netdev::DEFAULT_BRIDGE_ADDR`]), up.
#[derive(Debug, Default)]
pub struct TapMaker;

impl DeviceMaker for TapMaker {
    fn create(
        &self,
        domid: u32,
        handle: u32,
        vif: &VifSpec,
    ) -> Result<Box<dyn FrameDevice>, String> {
        let addr = if vif.bridge == netdev::DEFAULT_BRIDGE {
            Some(
                netdev::DEFAULT_BRIDGE_ADDR
                    .parse()
                    .map_err(|e| format!("{e}"))?,
            )
        } else {
            None
        };
        let text = |e: io::Error| e.to_string();
        if netdev::ensure_bridge(&vif.bridge, addr).map_err(text)? {
            log::write(
                Level::Info,
                format_args!(
                    "{WHO}: created bridge {}{}",
                    vif.bridge,
                    addr.map_or(String::new(), |a: netdev::Ipv4Cidr| format!(" ({a})"))
                ),
            );
        }
        let tap = netdev::Tap::create(&netdev::vif_name(domid, handle)).map_err(text)?;
        let name = tap.name().to_owned();
        netdev::set_mac(&name, netdev::HOST_VIF_MAC).map_err(text)?;
        netdev::set_mtu(&name, VIF_MTU).map_err(text)?;
        netdev::attach_to_bridge(&vif.bridge, &name).map_err(text)?;
        netdev::set_up(&name).map_err(text)?;
        Ok(Box::new(tap))
    }
}

/// The back-end directory of a vif.
#[must_use]
pub fn backend_dir(domid: u32, handle: u32) -> String {
    format!("/local/domain/0/backend/vif/{domid}/{handle}")
}

/// The front-end directory of a vif.
#[must_use]
pub fn frontend_dir(domid: u32, handle: u32) -> String {
    format!("{}/device/vif/{handle}", home(domid))
}

/// Two connected rings.
#[derive(Debug)]
struct Conn {
    ring: Ring<Arc<dyn PageMap>>,
    tx: MappedRing,
    rx: MappedRing,
    port: u32,
}

#[derive(Debug)]
enum Phase {
    /// InitWait: waiting for the front-end's ring details.
    Waiting,
    Connected(Box<Conn>),
    /// Closed after the front-end closed; back to `Waiting` if it starts again.
    Closed,
    /// Stopped for breaking the protocol; never served again.
    Stopped,
}

/// Counters of one vif.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
    drops: u64,
    errors: u64,
}

#[derive(Debug)]
struct Vif {
    spec: VifSpec,
    mac: Mac,
    dev: Box<dyn FrameDevice>,
    /// The device's registered readiness, once [`NetBack::poll_devices`] armed it.
    ready: Option<Readiness>,
    /// Arming failed (logged once); the device is read by `step` only.
    unarmed: bool,
    /// The last serve stopped at its budget with work left: serve again soon.
    more: bool,
    phase: Phase,
    rxq: VecDeque<Vec<u8>>,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Inner {
    vifs: BTreeMap<(u32, u32), Vif>,
    /// Domain 0 port to vif.
    ports: BTreeMap<u32, (u32, u32)>,
    stopped: u64,
    /// The net task's waker, woken when a vif is added (to arm its device).
    waker: Option<Waker>,
}

/// Every vif dom0d serves.
#[derive(Debug)]
pub struct NetBack {
    pool: Arc<PagePool>,
    maker: Arc<dyn DeviceMaker>,
    inner: Mutex<Inner>,
    /// Bumped by every change dom0d's state file keeps ([`crate::state`]).
    changes: AtomicU64,
}

impl NetBack {
    /// No vifs yet; ring pages are mapped into slots of `pool`, devices made by `maker`.
    #[must_use]
    pub fn new(pool: Arc<PagePool>, maker: Arc<dyn DeviceMaker>) -> Self {
        Self {
            pool,
            maker,
            inner: Mutex::new(Inner::default()),
            changes: AtomicU64::new(0),
        }
    }

    fn bump(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the changes dom0d's state file keeps (vifs added, gone, connected,
    /// disconnected, stopped; not the counters).
    #[must_use]
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Every vif with its phase and counters, for dom0d's state file.
    #[must_use]
    pub fn export(&self) -> Vec<(u32, VifRecord)> {
        self.lock()
            .vifs
            .iter()
            .map(|(&(domid, handle), v)| {
                let phase = match &v.phase {
                    Phase::Waiting => VifPhase::Waiting,
                    Phase::Connected(c) => VifPhase::Connected {
                        tx_slot: c.tx.slot,
                        rx_slot: c.rx.slot,
                        port: c.port,
                    },
                    Phase::Closed => VifPhase::Closed,
                    Phase::Stopped => VifPhase::Stopped,
                };
                let st = v.stats;
                let rec = VifRecord {
                    handle,
                    spec: v.spec.clone(),
                    phase,
                    stats: VifStats {
                        tx_packets: st.tx_packets,
                        tx_bytes: st.tx_bytes,
                        rx_packets: st.rx_packets,
                        rx_bytes: st.rx_bytes,
                        drops: st.drops,
                        errors: st.errors,
                    },
                };
                (domid, rec)
            })
            .collect()
    }

    /// Serves again a vif an earlier dom0d served ([`crate::state`]): a new frame device
    /// (the TAP of the same name on its bridge; the old one went with the old dom0d), and
    /// connected rings mapped again from their slots, resuming after the last responses
    /// that dom0d published (tx packets it took but did not answer are sent again). A vif
    /// that cannot be served again is stopped: rings and port released, `state` Closed,
    /// one warning.
    pub fn adopt(&self, mv: &dyn Microvisor, store: &mut Store, domid: u32, rec: &VifRecord) {
        let key = (domid, rec.handle);
        let be = backend_dir(domid, rec.handle);
        let release = |slots: &[u64], port: u32| {
            for &slot in slots {
                crate::backend::unmap_slot(WHO, mv, &self.pool, slot);
            }
            close_port(WHO, mv, port);
        };
        let mac: Result<Mac, String> = rec.spec.mac.parse().map_err(|e| format!("{e}"));
        let dev = mac.and_then(|mac| {
            self.maker
                .create(domid, rec.handle, &rec.spec)
                .map(|dev| (mac, dev))
        });
        let mut inner = self.lock();
        self.bump();
        let (mac, dev) = match dev {
            Ok(d) => d,
            Err(why) => {
                if let VifPhase::Connected {
                    tx_slot,
                    rx_slot,
                    port,
                } = rec.phase
                {
                    release(&[tx_slot, rx_slot], port);
                }
                set_state(WHO, store, &be, XenbusState::Closed);
                inner.stopped += 1;
                log::write(
                    Level::Warn,
                    format_args!(
                        "{WHO}: domain {domid} vif {}: its device cannot be made again ({why}); this vif is no longer served",
                        rec.handle
                    ),
                );
                return;
            }
        };
        let s = rec.stats;
        let mut vif = Vif {
            spec: rec.spec.clone(),
            mac,
            dev,
            ready: None,
            unarmed: false,
            more: false,
            phase: match rec.phase {
                VifPhase::Waiting => Phase::Waiting,
                VifPhase::Closed => Phase::Closed,
                VifPhase::Stopped | VifPhase::Connected { .. } => Phase::Stopped,
            },
            rxq: VecDeque::new(),
            stats: Stats {
                tx_packets: s.tx_packets,
                tx_bytes: s.tx_bytes,
                rx_packets: s.rx_packets,
                rx_bytes: s.rx_bytes,
                drops: s.drops,
                errors: s.errors,
            },
        };
        if let VifPhase::Connected {
            tx_slot,
            rx_slot,
            port,
        } = rec.phase
        {
            let map = |slot: u64| {
                self.pool.claim(slot);
                mv.map_page(slot)
                    .map(|mem| MappedRing { slot, mem })
                    .map_err(|errno| {
                        format!("mmap of slot {slot} failed with {}", errno_text(errno))
                    })
            };
            let conn = map(tx_slot).and_then(|tx| {
                let rx = map(rx_slot)?;
                let ring = Ring::attach(Arc::clone(&tx.mem), Arc::clone(&rx.mem), MAX_FRAME)
                    .map_err(|e| format!("rings: {e}"))?;
                Ok(Conn { ring, tx, rx, port })
            });
            match conn {
                Ok(conn) => {
                    vif.phase = Phase::Connected(Box::new(conn));
                    inner.ports.insert(port, key);
                    // A signal the earlier dom0d did not get to send (see `blkback`).
                    if let Err(errno) = evtchn_send(mv, port) {
                        log::limited(
                            Level::Warn,
                            format_args!(
                                "{WHO}: signalling domain {domid} failed with {}",
                                errno_text(errno)
                            ),
                        );
                    }
                }
                Err(why) => {
                    release(&[tx_slot, rx_slot], port);
                    set_state(WHO, store, &be, XenbusState::Closed);
                    inner.stopped += 1;
                    log::write(
                        Level::Warn,
                        format_args!(
                            "{WHO}: domain {domid} vif {}: its rings cannot be mapped again ({why}); this vif is no longer served",
                            rec.handle
                        ),
                    );
                }
            }
        }
        log::write(
            Level::Info,
            format_args!(
                "{WHO}: domain {domid} vif {} ({}) on {} via {} again",
                rec.handle,
                vif.mac,
                vif.spec.bridge,
                vif.dev.name()
            ),
        );
        inner.vifs.insert(key, vif);
        if let Some(w) = &inner.waker {
            w.wake_by_ref();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Vifs stopped for breaking the protocol so far (one log line each).
    #[must_use]
    pub fn stopped(&self) -> u64 {
        self.lock().stopped
    }

    /// Whether vif `handle` of `domid` has connected rings.
    #[must_use]
    pub fn is_connected(&self, domid: u32, handle: u32) -> bool {
        matches!(
            self.lock().vifs.get(&(domid, handle)).map(|v| &v.phase),
            Some(Phase::Connected(_))
        )
    }

    /// Vifs served (any phase).
    #[must_use]
    pub fn devices(&self) -> usize {
        self.lock().vifs.len()
    }

    /// The domains that have vifs.
    #[must_use]
    pub fn domids(&self) -> Vec<u32> {
        domains_of(&self.lock().vifs)
    }

    /// The vifs of `domid`, in handle order, with both xenbus states read from `store`.
    #[must_use]
    pub fn list(&self, store: &Store, domid: u32) -> Vec<NetworkDevice> {
        self.lock()
            .vifs
            .range((domid, 0)..=(domid, u32::MAX))
            .map(|(&(domid, handle), v)| NetworkDevice {
                domid,
                handle,
                mac: v.mac.to_string(),
                ip: v.spec.ip.clone(),
                bridge: v.spec.bridge.clone(),
                tap: v.dev.name().to_owned(),
                backend_state: read_state(store, &backend_dir(domid, handle)).as_u32(),
                frontend_state: read_state(store, &frontend_dir(domid, handle)).as_u32(),
                connected: matches!(v.phase, Phase::Connected(_)),
                stopped: matches!(v.phase, Phase::Stopped),
                tx_packets: v.stats.tx_packets,
                tx_bytes: v.stats.tx_bytes,
                rx_packets: v.stats.rx_packets,
                rx_bytes: v.stats.rx_bytes,
                drops: v.stats.drops,
                errors: v.stats.errors,
            })
            .collect()
    }

    /// Makes the frame device of vif `handle` of DomU `domid` and publishes its nodes.
    ///
    /// # Errors
    /// What failed, as text (a bad MAC, a handle in use, the device, the store); nothing
    /// is left published then.
    pub fn add(
        &self,
        store: &mut Store,
        domid: u32,
        handle: u32,
        vif: &VifSpec,
    ) -> Result<(), String> {
        let mac: Mac = vif.mac.parse().map_err(|e| format!("vif {handle}: {e}"))?;
        if !mac.is_unicast() || mac.is_zero() {
            return Err(format!("vif {handle}: mac {mac} is not a unicast address"));
        }
        let mut inner = self.lock();
        if inner.vifs.contains_key(&(domid, handle)) {
            return Err(format!("domain {domid} already has a vif {handle}"));
        }
        let dev = self
            .maker
            .create(domid, handle, vif)
            .map_err(|e| format!("vif {handle}: {e}"))?;
        let be = backend_dir(domid, handle);
        let fe = frontend_dir(domid, handle);
        if let Err(e) = Self::publish(store, domid, handle, vif, mac) {
            let _ = store.rm(0, &be);
            let _ = store.rm(0, &fe);
            return Err(e);
        }
        log::write(
            Level::Info,
            format_args!(
                "{WHO}: domain {domid} vif {handle} ({mac}) on {} via {}",
                vif.bridge,
                dev.name()
            ),
        );
        inner.vifs.insert(
            (domid, handle),
            Vif {
                spec: vif.clone(),
                mac,
                dev,
                ready: None,
                unarmed: false,
                more: false,
                phase: Phase::Waiting,
                rxq: VecDeque::new(),
                stats: Stats::default(),
            },
        );
        self.bump();
        if let Some(w) = &inner.waker {
            w.wake_by_ref();
        }
        Ok(())
    }

    fn publish(
        store: &mut Store,
        domid: u32,
        handle: u32,
        vif: &VifSpec,
        mac: Mac,
    ) -> Result<(), String> {
        let be = backend_dir(domid, handle);
        let fe = frontend_dir(domid, handle);
        let _ = store.rm(0, &be);
        let _ = store.rm(0, &fe);
        let mut nodes = vec![
            ("frontend", fe.clone()),
            ("frontend-id", domid.to_string()),
            ("handle", handle.to_string()),
            ("mac", mac.to_string()),
            ("bridge", vif.bridge.clone()),
        ];
        if let Some(ip) = &vif.ip {
            nodes.push(("ip", ip.clone()));
        }
        nodes.extend([
            ("feature-rx-copy", "1".to_owned()),
            ("feature-sg", "0".to_owned()),
            ("feature-gso-tcpv4", "0".to_owned()),
            ("state", XenbusState::InitWait.as_u32().to_string()),
        ]);
        write_dir(store, &be, &nodes, &backend_perms(domid))?;
        write_dir(
            store,
            &fe,
            &[
                ("backend", be.clone()),
                ("backend-id", "0".to_owned()),
                ("handle", handle.to_string()),
                ("mac", mac.to_string()),
                ("state", XenbusState::Initialising.as_u32().to_string()),
            ],
            &frontend_perms(domid),
        )
    }

    /// Follows every front-end's state (connects, disconnects), reads every device and
    /// serves the connected rings. Run after the store may have changed and on the periodic
    /// poll.
    pub fn step(&self, mv: &dyn Microvisor, store: &mut Store) {
        let mut inner = self.lock();
        let keys: Vec<(u32, u32)> = inner.vifs.keys().copied().collect();
        for key in keys {
            let fe = frontend_dir(key.0, key.1);
            let be = backend_dir(key.0, key.1);
            let fe_state = read_state(store, &fe);
            let Some(vif) = inner.vifs.get_mut(&key) else {
                continue;
            };
            match (&vif.phase, fe_state) {
                (Phase::Waiting, XenbusState::Initialised | XenbusState::Connected) => {
                    match self.connect(mv, store, key) {
                        Ok(conn) => {
                            let port = conn.port;
                            vif.phase = Phase::Connected(Box::new(conn));
                            self.bump();
                            // Rate-limited: a front-end cycling through the handshake
                            // must not flood the log.
                            log::limited(
                                Level::Info,
                                format_args!(
                                    "{WHO}: domain {} vif {} connected (port {port})",
                                    key.0, key.1
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
                // Initialising: a front-end that restarted without closing first.
                (
                    Phase::Connected(_),
                    XenbusState::Closing
                    | XenbusState::Closed
                    | XenbusState::Unknown
                    | XenbusState::Initialising,
                ) => {
                    set_state(WHO, store, &be, XenbusState::Closing);
                    self.disconnect(mv, &mut inner, key);
                    if let Some(v) = inner.vifs.get_mut(&key) {
                        v.phase = Phase::Closed;
                    }
                    set_state(WHO, store, &be, XenbusState::Closed);
                }
                (Phase::Closed, XenbusState::Initialising) => {
                    vif.phase = Phase::Waiting;
                    self.bump();
                    set_state(WHO, store, &be, XenbusState::InitWait);
                }
                _ => {}
            }
            if let Some(vif) = inner.vifs.get_mut(&key) {
                read_device(key, vif);
            }
            self.serve(mv, store, &mut inner, key);
        }
    }

    /// Maps the front-end's rings and binds its event channel.
    fn connect(
        &self,
        mv: &dyn Microvisor,
        store: &Store,
        (domid, handle): (u32, u32),
    ) -> Result<Conn, String> {
        let fe = frontend_dir(domid, handle);
        let tx_ref = read_u32(store, &format!("{fe}/tx-ring-ref"))?;
        let rx_ref = read_u32(store, &format!("{fe}/rx-ring-ref"))?;
        let remote = read_u32(store, &format!("{fe}/event-channel"))?;
        match store.read(0, &format!("{fe}/request-rx-copy")) {
            Ok(v) if v == b"1" => {}
            _ => {
                return Err(format!(
                    "{fe}/request-rx-copy is not 1: this back-end only copies received packets into buffers the front-end posts"
                ));
            }
        }
        let tx = map_ring(WHO, mv, &self.pool, domid, tx_ref, "tx-ring-ref")?;
        let rx = match map_ring(WHO, mv, &self.pool, domid, rx_ref, "rx-ring-ref") {
            Ok(rx) => rx,
            Err(e) => {
                unmap_ring(WHO, mv, &self.pool, tx);
                return Err(e);
            }
        };
        let undo = |tx, rx, why: String| {
            unmap_ring(WHO, mv, &self.pool, tx);
            unmap_ring(WHO, mv, &self.pool, rx);
            why
        };
        let ring = match Ring::attach(Arc::clone(&tx.mem), Arc::clone(&rx.mem), MAX_FRAME) {
            Ok(r) => r,
            Err(e) => return Err(undo(tx, rx, format!("rings: {e}"))),
        };
        match evtchn_bind_interdomain(mv, domid, remote) {
            Ok(port) => Ok(Conn { ring, tx, rx, port }),
            Err(errno) => {
                drop(ring);
                Err(undo(
                    tx,
                    rx,
                    format!(
                        "binding event-channel {remote} failed with {}",
                        errno_text(errno)
                    ),
                ))
            }
        }
    }

    /// Unmaps a vif's connected rings and closes its port (the vif stays, in whatever
    /// phase the caller sets); frames queued for it are dropped.
    fn disconnect(&self, mv: &dyn Microvisor, inner: &mut Inner, key: (u32, u32)) {
        let Some(vif) = inner.vifs.get_mut(&key) else {
            return;
        };
        vif.stats.drops += vif.rxq.len() as u64;
        vif.rxq.clear();
        if let Phase::Connected(conn) = std::mem::replace(&mut vif.phase, Phase::Closed) {
            self.bump();
            inner.ports.remove(&conn.port);
            let Conn { ring, tx, rx, port } = *conn;
            drop(ring);
            unmap_ring(WHO, mv, &self.pool, tx);
            unmap_ring(WHO, mv, &self.pool, rx);
            close_port(WHO, mv, port);
        }
    }

    /// Stops a vif for good: one log line, rings and port released, `state` Closed.
    fn stop(
        &self,
        mv: &dyn Microvisor,
        store: &mut Store,
        inner: &mut Inner,
        key: (u32, u32),
        why: &str,
    ) {
        self.disconnect(mv, inner, key);
        let Some(vif) = inner.vifs.get_mut(&key) else {
            return;
        };
        vif.phase = Phase::Stopped;
        inner.stopped += 1;
        self.bump();
        set_state(WHO, store, &backend_dir(key.0, key.1), XenbusState::Closed);
        log::write(
            Level::Warn,
            format_args!(
                "{WHO}: domain {} vif {}: {why}; this vif is no longer served, every other device and domain carry on",
                key.0, key.1
            ),
        );
    }

    /// Serves the vifs of the pending domain 0 `ports`; returns the other ports.
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

    /// For dom0d's net task: registers every device's descriptor with the runtime (new
    /// vifs wake the task), reads the devices that are readable, and returns the vifs that
    /// were (to pass to [`Self::serve_devices`]); `Pending` until one is. Must run on a
    /// tokio runtime.
    pub fn poll_devices(&self, cx: &mut Context<'_>) -> Poll<Vec<(u32, u32)>> {
        let mut inner = self.lock();
        inner.waker = Some(cx.waker().clone());
        let mut ready = Vec::new();
        for (&key, vif) in &mut inner.vifs {
            // Left unfinished by its last serve: due again whatever its device says.
            let again = std::mem::take(&mut vif.more);
            if again {
                ready.push(key);
            }
            if vif.ready.is_none() && !vif.unarmed {
                let Some(fd) = vif.dev.fd() else {
                    vif.unarmed = true;
                    continue;
                };
                match Readiness::register(fd) {
                    Ok(r) => vif.ready = Some(r),
                    Err(e) => {
                        vif.unarmed = true;
                        log::limited(
                            Level::Warn,
                            format_args!(
                                "{WHO}: cannot watch {} ({e}); its frames are read on the slow poll only",
                                vif.dev.name()
                            ),
                        );
                        continue;
                    }
                }
            }
            let Some(ready_fd) = vif.ready.take() else {
                continue;
            };
            match ready_fd.poll_drain(cx, || read_device(key, vif)) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) if again => {}
                Poll::Ready(Ok(())) => ready.push(key),
                Poll::Ready(Err(e)) => {
                    log::limited(
                        Level::Warn,
                        format_args!("{WHO}: watching {} failed: {e}", vif.dev.name()),
                    );
                }
            }
            vif.ready = Some(ready_fd);
        }
        if ready.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(ready)
        }
    }

    /// Delivers what [`Self::poll_devices`] read for `keys`.
    pub fn serve_devices(&self, mv: &dyn Microvisor, store: &mut Store, keys: &[(u32, u32)]) {
        let mut inner = self.lock();
        for &key in keys {
            self.serve(mv, store, &mut inner, key);
        }
    }

    /// Serves one vif's rings; stops it if it broke the protocol.
    fn serve(&self, mv: &dyn Microvisor, store: &mut Store, inner: &mut Inner, key: (u32, u32)) {
        let Some(vif) = inner.vifs.get_mut(&key) else {
            return;
        };
        match serve_rings(mv, key.0, vif) {
            Ok(more) => {
                if more && !vif.more {
                    vif.more = true;
                    // The net task serves it again (see `poll_devices`).
                    if let Some(w) = &inner.waker {
                        w.wake_by_ref();
                    }
                }
            }
            Err(why) => self.stop(mv, store, inner, key, &why),
        }
    }

    /// DomU `domid` is gone: its rings are unmapped, ports closed, nodes removed and
    /// devices closed.
    pub fn domain_gone(&self, mv: &dyn Microvisor, store: &mut Store, domid: u32) {
        let mut inner = self.lock();
        let keys: Vec<(u32, u32)> = inner
            .vifs
            .range((domid, 0)..=(domid, u32::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.disconnect(mv, &mut inner, key);
            self.bump();
            if let Some(vif) = inner.vifs.remove(&key) {
                // The readiness (a duplicate descriptor) goes first, then the device.
                let Vif { ready, dev, .. } = vif;
                drop(ready);
                drop(dev);
            }
            let _ = store.rm(0, &backend_dir(key.0, key.1));
            let _ = store.rm(0, &frontend_dir(key.0, key.1));
        }
        let _ = store.rm(0, &format!("/local/domain/0/backend/vif/{domid}"));
    }
}

/// The largest frame either way: an Ethernet frame of MTU 1500 with one 802.1Q tag.
pub const MAX_FRAME: usize = ETH_FRAME_MAX + 4;

/// Reads up to [`READS_PER_CALL`] frames from the vif's device into its queue (dropping
/// what cannot be delivered); returns whether the device has no more (`WouldBlock`).
fn read_device(key: (u32, u32), vif: &mut Vif) -> bool {
    // One byte more than the largest frame, so that a longer one shows as too long.
    let mut buf = [0u8; MAX_FRAME + 1];
    for _ in 0..READS_PER_CALL {
        match vif.dev.read_frame(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                let deliverable = matches!(vif.phase, Phase::Connected(_))
                    && n <= MAX_FRAME
                    && vif.rxq.len() < RX_QUEUE_FRAMES;
                if deliverable {
                    vif.rxq.push_back(buf[..n].to_vec());
                } else {
                    vif.stats.drops += 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                vif.stats.errors += 1;
                log::limited(
                    Level::Warn,
                    format_args!(
                        "{WHO}: domain {} vif {}: reading {}: {e}",
                        key.0,
                        key.1,
                        vif.dev.name()
                    ),
                );
                return true;
            }
        }
    }
    false
}

/// Serves a connected vif: tx packets to the device, queued frames to posted rx buffers.
/// `Err` names a protocol violation.
/// Serves a connected vif's rings; `Ok(true)` when it stopped at its budget with work
/// left, `Err` names a protocol violation.
fn serve_rings(mv: &dyn Microvisor, domid: u32, vif: &mut Vif) -> Result<bool, String> {
    let Phase::Connected(conn) = &mut vif.phase else {
        return Ok(false);
    };
    let dom =
        u16::try_from(domid).map_err(|_| format!("domid {domid} does not fit a grant copy"))?;
    let broke = |e: pv_drivers::RingError| format!("broke its rings ({e})");
    let ring = &mut conn.ring;
    let mut notify = false;

    // tx: guest to device. The final check may find more (bounded: a front-end racing
    // its own indices cannot keep dom0d here).
    let mut served = 0usize;
    for _ in 0..ROUNDS_PER_SERVE {
        while served < TX_PACKETS_PER_SERVE {
            let Some(taken) = ring.next_tx().map_err(broke)? else {
                break;
            };
            served += 1;
            let status = match taken {
                TxTaken::Valid(p) => {
                    let pieces: Vec<GrantPiece> = p
                        .frags()
                        .iter()
                        .map(|f| GrantPiece {
                            domid: dom,
                            gref: f.gref,
                            offset: f.offset,
                            len: f.len,
                        })
                        .collect();
                    let mut frame = vec![0u8; p.len()];
                    let copied = match grants::copy_from(mv, &pieces, &mut frame) {
                        Ok(()) => Ok(()),
                        Err(e @ CopyError::Call(_)) => Err(format!("copying a tx packet: {e}")),
                        Err(e) => {
                            return Err(format!(
                                "handed over a grant dom0d may not use (tx id {}: {e})",
                                p.ids()[0]
                            ));
                        }
                    };
                    let ready = copied.and_then(|()| {
                        if p.flags() & NETTXF_CSUM_BLANK == 0 {
                            return Ok(());
                        }
                        csum::complete_checksum(&mut frame)
                            .map_err(|e| format!("a tx packet's blank checksum: {e}"))
                    });
                    match ready
                        .and_then(|()| vif.dev.write_frame(&frame).map_err(|e| e.to_string()))
                    {
                        Ok(()) => {
                            vif.stats.tx_packets += 1;
                            vif.stats.tx_bytes += frame.len() as u64;
                            NETIF_RSP_OKAY
                        }
                        Err(e) => {
                            vif.stats.errors += 1;
                            log::limited(
                                Level::Warn,
                                format_args!("{WHO}: domain {domid}: dropped: {e}"),
                            );
                            NETIF_RSP_ERROR
                        }
                    }
                }
                TxTaken::Invalid { why, .. } if !why.is_protocol_violation() => {
                    vif.stats.errors += 1;
                    NETIF_RSP_ERROR
                }
                TxTaken::Invalid { ids, why } => {
                    return Err(format!(
                        "sent a bad packet (tx id {}: {why})",
                        ids.first().copied().unwrap_or(0)
                    ));
                }
            };
            ring.respond_tx_chain(taken.ids(), status).map_err(broke)?;
            // Published at once (see `blkback`): a restarted dom0d resumes after it.
            notify |= ring.push_tx().map_err(broke)?;
        }
        if served >= TX_PACKETS_PER_SERVE || !ring.final_check_tx().map_err(broke)? {
            break;
        }
    }
    let mut more = served >= TX_PACKETS_PER_SERVE;

    // rx: queued frames into posted buffers.
    let mut rounds = 0;
    for _ in 0..ROUNDS_PER_SERVE {
        rounds += 1;
        while let Some(frame) = vif.rxq.front() {
            let Some(buf) = ring.next_rx_buffer().map_err(broke)? else {
                break;
            };
            // Lossless: queued frames are at most MAX_FRAME bytes.
            let len = frame.len() as u16;
            let piece = GrantPiece {
                domid: dom,
                gref: buf.gref,
                offset: 0,
                len,
            };
            let status = match grants::copy_to(mv, &[piece], frame) {
                Ok(()) => {
                    vif.stats.rx_packets += 1;
                    vif.stats.rx_bytes += u64::from(len);
                    len as i16
                }
                // dom0d's own call failed: the frame is lost, the buffer answered.
                Err(e @ CopyError::Call(_)) => {
                    vif.stats.drops += 1;
                    log::limited(
                        Level::Warn,
                        format_args!("{WHO}: domain {domid}: dropped an rx frame: {e}"),
                    );
                    NETIF_RSP_ERROR
                }
                Err(e) => {
                    return Err(format!(
                        "handed over a grant dom0d may not use (rx buffer id {}: {e})",
                        buf.id
                    ));
                }
            };
            ring.respond_rx(&rx_response(buf.id, status, 0))
                .map_err(broke)?;
            notify |= ring.push_rx().map_err(broke)?;
            vif.rxq.pop_front();
        }
        // With frames left, make sure the front-end signals when it posts buffers.
        if vif.rxq.is_empty() || !ring.final_check_rx().map_err(broke)? {
            break;
        }
    }
    // Frames and buffers both left after the last round: not done.
    more |= rounds == ROUNDS_PER_SERVE
        && !vif.rxq.is_empty()
        && ring.final_check_rx().map_err(broke)?;

    if notify && let Err(errno) = evtchn_send(mv, conn.port) {
        log::limited(
            Level::Warn,
            format_args!(
                "{WHO}: signalling domain {domid} failed with {}",
                errno_text(errno)
            ),
        );
    }
    Ok(more)
}

// ---------------------------------------------------------------------------------------
// In-memory devices

/// Frame devices on Unix datagram socket pairs (one datagram per frame): dom0d's side is
/// the vif's device, the other end is kept here for the caller to play the network with
/// ([`Self::host`]). For tests (never touching the host's interfaces); the descriptor is
/// a real one, so the net task's readiness path is exercised too.
#[derive(Debug, Default)]
pub struct SocketNet {
    inner: Mutex<SocketNetInner>,
}

#[derive(Debug, Default)]
struct SocketNetInner {
    ends: BTreeMap<(u32, u32), SocketEnd>,
    /// The next `create` fails with this message.
    fail: Option<String>,
}

#[derive(Debug)]
struct SocketEnd {
    host: std::os::unix::net::UnixDatagram,
    refuse: Arc<std::sync::atomic::AtomicBool>,
    alive: std::sync::Weak<()>,
}

/// dom0d's end of a [`SocketNet`] pair.
#[derive(Debug)]
pub struct SocketDevice {
    name: String,
    sock: std::os::unix::net::UnixDatagram,
    refuse: Arc<std::sync::atomic::AtomicBool>,
    _alive: Arc<()>,
}

impl SocketNet {
    fn lock(&self) -> std::sync::MutexGuard<'_, SocketNetInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The network's end of vif `handle` of `domid` (a clone): what the guest sent can be
    /// received from it, and frames sent into it reach the guest.
    #[must_use]
    pub fn host(&self, domid: u32, handle: u32) -> Option<std::os::unix::net::UnixDatagram> {
        self.lock()
            .ends
            .get(&(domid, handle))
            .and_then(|e| e.host.try_clone().ok())
    }

    /// Whether the device of vif `handle` of `domid` is still open in dom0d.
    #[must_use]
    pub fn is_open(&self, domid: u32, handle: u32) -> bool {
        self.lock()
            .ends
            .get(&(domid, handle))
            .is_some_and(|e| e.alive.strong_count() > 0)
    }

    /// Makes the device of vif `handle` of `domid` refuse (or take again) the frames
    /// written to it.
    pub fn refuse_writes(&self, domid: u32, handle: u32, refuse: bool) {
        if let Some(e) = self.lock().ends.get(&(domid, handle)) {
            e.refuse.store(refuse, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Makes the next device creation fail with `why`.
    pub fn fail_next(&self, why: &str) {
        self.lock().fail = Some(why.to_owned());
    }
}

impl DeviceMaker for SocketNet {
    fn create(
        &self,
        domid: u32,
        handle: u32,
        _vif: &VifSpec,
    ) -> Result<Box<dyn FrameDevice>, String> {
        let mut inner = self.lock();
        if let Some(why) = inner.fail.take() {
            return Err(why);
        }
        let (host, dev) = std::os::unix::net::UnixDatagram::pair().map_err(|e| e.to_string())?;
        for s in [&host, &dev] {
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
        }
        let alive = Arc::new(());
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
        inner.ends.insert(
            (domid, handle),
            SocketEnd {
                host,
                refuse: Arc::clone(&refuse),
                alive: Arc::downgrade(&alive),
            },
        );
        Ok(Box::new(SocketDevice {
            name: netdev::vif_name(domid, handle),
            sock: dev,
            refuse,
            _alive: alive,
        }))
    }
}

impl FrameDevice for SocketDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        if self.refuse.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::other(format!(
                "writing a {}-byte frame into {}: refused",
                frame.len(),
                self.name
            )));
        }
        self.sock.send(frame).map(|_| ())
    }

    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf)
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.sock.as_fd())
    }
}

#[cfg(test)]
mod tests;
