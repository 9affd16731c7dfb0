//! dom0d's control API server: request handling ([`Service`]), the per-connection protocol
//! loop, the accept loop ([`serve`]) and the control socket ([`bind_socket`]).
//!
//! A connection is one task on a current-thread runtime. Whatever a client does (oversized
//! or garbage frames, requests before the hello, stalling mid-frame, never reading the
//! replies) costs only its own connection: it gets an error reply where one can be sent and
//! is disconnected after [`Limits::max_bad_frames`] bad frames, after
//! [`Limits::idle_timeout`] without a complete request, or after
//! [`Limits::write_timeout`] without reading a reply. At most [`Limits::max_connections`]
//! connections are served at once; the next ones get [`ApiError::Busy`].
#![forbid(unsafe_code)]

use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::blkback::BlkBack;
use crate::builder;
use crate::config::{DiskSpec, DomainConfig, VifSpec};
use crate::console::Consoles;
use crate::events::EventMonitor;
use crate::lifecycle::{self, Waits};
use crate::log::{self, Level};
use crate::microvisor::{self, Microvisor};
use crate::netback::{DeviceMaker, NetBack, TapMaker};
use crate::pages::PagePool;
use crate::proto::{
    self, ApiError, Cleanup, CreateError, CreateReport, FrameError, GuestRequest, Lifecycle,
    MAX_FRAME, NotApplicable, PROTOCOL_VERSION, Request, Response, ServiceVersion, ShutdownSent,
};
use crate::supervisor::Supervisor;
use crate::xenstored::{ShutdownRefused, Xenstored};

/// dom0d's version (the crate version).
pub const DOM0D_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Default path of the control socket.
pub const DEFAULT_SOCKET: &str = "/run/dom0/control.sock";

/// Answers requests from the microvisor (and, for [`Request::Events`], from what the event
/// task has seen). Its only state besides the device handle and the event monitor is the
/// table of domains it built ([`Supervisor`]).
pub struct Service {
    pub(crate) mv: Arc<dyn Microvisor>,
    pub(crate) events: Arc<EventMonitor>,
    pub(crate) waits: Waits,
    /// Held for the whole of a create: one build at a time (they share window slots and
    /// the free memory each one checks).
    create_lock: tokio::sync::Mutex<()>,
    /// The domains this dom0d built, for their `on_*` actions ([`crate::supervisor`]).
    pub(crate) supervisor: Supervisor,
    /// The consoles of the domains it built ([`crate::console`]).
    pub(crate) consoles: Arc<Consoles>,
    /// The xenstore of the domains it built ([`crate::xenstored`]).
    pub(crate) xenstored: Arc<Xenstored>,
    /// The disks of the domains it built ([`crate::blkback`]); its xenstore nodes live in
    /// `xenstored`'s store (lock order: the store, then the back-end).
    pub(crate) blkback: Arc<BlkBack>,
    /// The vifs of the domains it built ([`crate::netback`]); same lock order.
    pub(crate) netback: Arc<NetBack>,
    /// Where its state is kept for a restarted dom0d ([`crate::state`]), if anywhere.
    pub(crate) persist: Option<crate::state::Persist>,
    /// The store's generation when the back-ends last followed the front-ends' states:
    /// an event steps them again only if the store changed since.
    stepped_generation: AtomicU64,
}

/// What the builder publishes PV devices through: the store and the back-ends.
struct Devices {
    xenstored: Arc<Xenstored>,
    blkback: Arc<BlkBack>,
    netback: Arc<NetBack>,
}

impl Devices {
    /// Ends `domid`'s devices in both back-ends.
    fn gone(&self, mv: &dyn Microvisor, domid: u32) {
        self.xenstored.with_store(mv, |store| {
            self.blkback.domain_gone(mv, store, domid);
            self.netback.domain_gone(mv, store, domid);
        });
    }
}

impl builder::DeviceHost for Devices {
    fn attach(
        &self,
        mv: &dyn Microvisor,
        domid: u32,
        name: &str,
        disks: &[DiskSpec],
        vifs: &[VifSpec],
    ) -> Result<(), String> {
        // Whatever a domain of this id left (a missed end) goes first.
        self.gone(mv, domid);
        self.xenstored.introduce(mv, domid, name);
        let added = self.xenstored.with_store(mv, |store| {
            disks
                .iter()
                .try_for_each(|d| self.blkback.add(store, domid, d).map(|_| ()))?;
            vifs.iter()
                .zip(0u32..)
                .try_for_each(|(v, handle)| self.netback.add(store, domid, handle, v))
        });
        if added.is_err() {
            self.detach(mv, domid);
        }
        added
    }

    fn detach(&self, mv: &dyn Microvisor, domid: u32) {
        self.gone(mv, domid);
        self.xenstored.domain_gone(mv, domid);
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// A service backed by `mv`, reporting events as unavailable (nothing watches them).
    #[must_use]
    pub fn new(mv: Arc<dyn Microvisor>) -> Self {
        let events = Arc::new(EventMonitor::unavailable(
            "this service does not watch the device",
        ));
        Self::with_events(mv, events)
    }

    /// A service backed by `mv` that reports what `events` has seen.
    #[must_use]
    pub fn with_events(mv: Arc<dyn Microvisor>, events: Arc<EventMonitor>) -> Self {
        let pool = Arc::new(PagePool::default());
        Self {
            mv,
            events,
            waits: Waits::default(),
            create_lock: tokio::sync::Mutex::new(()),
            supervisor: Supervisor::default(),
            consoles: Arc::new(Consoles::new(Arc::clone(&pool))),
            xenstored: Arc::new(Xenstored::new(Arc::clone(&pool))),
            blkback: Arc::new(BlkBack::new(Arc::clone(&pool))),
            netback: Arc::new(NetBack::new(pool, Arc::new(TapMaker))),
            persist: None,
            stepped_generation: AtomicU64::new(u64::MAX),
        }
    }

    /// The same service with vif frame devices made by `maker` instead of TAPs (for
    /// tests, or a Dom0 without TAP support). Call before any domain is built.
    #[must_use]
    pub fn with_net_devices(mut self, maker: Arc<dyn DeviceMaker>) -> Self {
        self.netback = Arc::new(NetBack::new(Arc::clone(self.consoles.pool()), maker));
        self
    }

    /// The consoles this service serves.
    #[must_use]
    pub fn consoles(&self) -> &Arc<Consoles> {
        &self.consoles
    }

    /// The same service with other limits for lifecycle actions to take effect.
    #[must_use]
    pub fn with_waits(mut self, waits: Waits) -> Self {
        self.waits = waits;
        self
    }

    /// The hello dom0d sends.
    #[must_use]
    pub fn hello() -> Response {
        Response::Hello {
            protocol: PROTOCOL_VERSION,
            software: format!("dom0d {DOM0D_VERSION}"),
        }
    }

    /// Answers one request (after the handshake). Lifecycle requests wait (without
    /// blocking the runtime) for the action to take effect, see [`lifecycle`]. The console
    /// streams ([`Request::Logs`], [`Request::ConsoleAttach`]) are served by the
    /// connection itself ([`crate::session`]); here they, and input outside a
    /// session, are refused as malformed.
    pub async fn handle(&self, req: &Request) -> Response {
        let response = self.answer(req).await;
        // A create or a destroy changed what a restarted dom0d must know.
        self.persist();
        response
    }

    async fn answer(&self, req: &Request) -> Response {
        let requested_at = std::time::Instant::now();
        let mv = &*self.mv;
        let result = match *req {
            Request::Hello { .. } => return Self::hello(),
            Request::Version => Ok(Response::Version(ServiceVersion {
                dom0d: DOM0D_VERSION.to_owned(),
                protocol: PROTOCOL_VERSION,
                control_version_built: shared_abi::control::CONTROL_VERSION,
                microvisor: microvisor::host_info(mv).map(|h| proto::MicrovisorVersion {
                    version: h.microvisor_version,
                    control_version: h.control_version,
                }),
            })),
            Request::HostInfo => microvisor::host_info(mv).map(Response::HostInfo),
            Request::ListDomains { from } => microvisor::list_domains(mv, from)
                .map(|(domains, next)| Response::Domains { domains, next }),
            Request::DomainInfo { domid } => {
                microvisor::domain_info(mv, domid).map(Response::Domain)
            }
            Request::Events => Ok(Response::Events(self.events.report())),
            Request::Pause { domid } => {
                lifecycle::perform(mv, Lifecycle::Pause, domid, &self.waits)
                    .await
                    .map(Response::Lifecycle)
            }
            Request::Unpause { domid } => {
                lifecycle::perform(mv, Lifecycle::Unpause, domid, &self.waits)
                    .await
                    .map(Response::Lifecycle)
            }
            Request::Destroy { domid } => {
                self.release_backends(domid);
                let done = lifecycle::perform(mv, Lifecycle::Destroy, domid, &self.waits).await;
                if matches!(done, Ok(_) | Err(ApiError::NoSuchDomain { .. })) {
                    self.consoles.domain_gone(mv, domid, false);
                    self.devices_gone(domid);
                }
                done.map(|done| {
                    self.supervisor.forget(domid);
                    Response::Lifecycle(done)
                })
            }
            Request::Create {
                ref config,
                dry_run,
                paused,
            } => self
                .create_domain(config, dry_run, paused, requested_at, false)
                .await
                .map(|report| {
                    if let Some(domid) = report.domid {
                        self.supervisor.adopt(domid, report.config.clone());
                        self.supervisor.wake();
                    }
                    Response::Created(report)
                }),
            Request::Shutdown { domid, request } => self.request_shutdown(domid, request),
            Request::BlockList { domid } => microvisor::domain_info(mv, domid).map(|_| {
                Response::Blocks(
                    self.xenstored
                        .with_store(mv, |store| self.blkback.list(store, domid)),
                )
            }),
            Request::NetworkList { domid } => microvisor::domain_info(mv, domid).map(|_| {
                Response::Networks(
                    self.xenstored
                        .with_store(mv, |store| self.netback.list(store, domid)),
                )
            }),
            Request::ConsoleStatus { domid } => {
                Ok(Response::ConsoleStatus(self.consoles.summary(domid)))
            }
            Request::Logs { .. }
            | Request::ConsoleAttach { .. }
            | Request::ConsoleInput(_)
            | Request::ConsoleDetach => Err(ApiError::Malformed {
                reason: "console input or a console stream request outside a console session"
                    .to_owned(),
            }),
        };
        result.unwrap_or_else(|e| {
            // Unknown domains are routine; lifecycle timeouts were logged as errors already,
            // and creates by the builder, with their duration.
            if !matches!(
                e,
                ApiError::NoSuchDomain { .. }
                    | ApiError::LifecycleTimeout { .. }
                    | ApiError::Create(_)
            ) {
                log::limited(Level::Warn, format_args!("request {req:?} failed: {e}"));
            }
            Response::Error(e)
        })
    }
}

impl Service {
    /// Domain `domid` is gone: its disks and vifs (rings, ports, nodes, devices), then
    /// its xenstore.
    pub(crate) fn devices_gone(&self, domid: u32) {
        self.release_backends(domid);
        self.xenstored.domain_gone(&*self.mv, domid);
    }

    /// Ends `domid`'s disks and vifs before it is destroyed: their rings are grant
    /// mappings, and a destroyed domain whose grants Dom0 still maps stays dying until
    /// they go, so the destroy would never see it disappear. Domain-0 has none.
    pub(crate) fn release_backends(&self, domid: u32) {
        let mv = &*self.mv;
        if domid == 0 {
            return;
        }
        let disks = self.blkback.domids().contains(&domid);
        let vifs = self.netback.domids().contains(&domid);
        if disks || vifs {
            self.xenstored.with_store(mv, |store| {
                self.blkback.domain_gone(mv, store, domid);
                self.netback.domain_gone(mv, store, domid);
            });
        }
    }

    /// Ends the disks and vifs of domains whose xenstore is gone (after
    /// [`Xenstored::sweep`]), and of domains `listed` as dying (destroyed by someone else
    /// while dom0d still maps their rings, which would keep them dying).
    pub(crate) fn sweep_backends(&self, listed: &[proto::Domain]) {
        let mut domids = self.blkback.domids();
        domids.extend(self.netback.domids());
        domids.sort_unstable();
        domids.dedup();
        for domid in domids {
            if !self.xenstored.knows(domid) {
                self.devices_gone(domid);
            } else if listed
                .iter()
                .any(|d| d.domid == domid && d.state == proto::State::Dying)
            {
                self.release_backends(domid);
            }
        }
    }

    /// Follows every disk's and vif's front-end and serves the connected rings (at most
    /// [`crate::blkback::REQUESTS_PER_SERVE`] requests per disk and
    /// [`crate::netback::TX_PACKETS_PER_SERVE`] packets per vif, so one call stays short
    /// on the runtime's thread); then the watch events of its writes go out.
    pub(crate) fn step_devices(&self) {
        let disks = self.blkback.devices() != 0;
        let vifs = self.netback.devices() != 0;
        if !disks && !vifs {
            return;
        }
        let mv = &*self.mv;
        self.xenstored.with_store(mv, |store| {
            if disks {
                self.blkback.step(mv, store);
            }
            if vifs {
                self.netback.step(mv, store);
            }
        });
    }

    /// Serves the vifs' frame devices until the runtime ends: whenever one is readable
    /// ([`NetBack::poll_devices`]) its frames are read and delivered to the guest.
    pub async fn pump_net(self: Arc<Self>) {
        loop {
            let keys = std::future::poll_fn(|cx| self.netback.poll_devices(cx)).await;
            let mv = &*self.mv;
            self.xenstored
                .with_store(mv, |store| self.netback.serve_devices(mv, store, &keys));
            // A vif stopped for breaking the protocol is a change to keep.
            self.persist();
            // A vif served to its budget comes back at once: let other tasks run first.
            tokio::task::yield_now().await;
        }
    }

    /// [`Request::Shutdown`]: writes the request into the guest's `control/shutdown`
    /// ([`crate::xenstored`]) and answers at once; the guest acts in its own time.
    fn request_shutdown(&self, domid: u32, request: GuestRequest) -> Result<Response, ApiError> {
        let mv = &*self.mv;
        let d = microvisor::domain_info(mv, domid)?;
        let not = |why| ApiError::GuestRequestNotApplicable {
            request,
            domid,
            name: d.name.clone(),
            why,
        };
        if domid == 0 {
            return Err(not(NotApplicable::DomainZero));
        }
        if d.state.ended() {
            return Err(not(NotApplicable::Ended(d.state)));
        }
        match self.xenstored.request_shutdown(mv, domid, request.word()) {
            Ok(()) => {
                log::limited(
                    Level::Info,
                    format_args!(
                        "{}: {} asked to {}",
                        request.command(),
                        proto::domain_label(domid, &d.name),
                        request.word()
                    ),
                );
                Ok(Response::ShutdownSent(ShutdownSent {
                    request,
                    domid,
                    name: d.name,
                    state: d.state,
                }))
            }
            Err(refused) => Err(ApiError::PvShutdownUnsupported {
                request,
                domid,
                name: d.name,
                node: match refused {
                    ShutdownRefused::NoXenstore => None,
                    ShutdownRefused::NotAdvertised { node } => Some(node),
                },
            }),
        }
    }

    /// Serves domain 0's event channels until the runtime ends: whenever the event task
    /// sees `EVENT_EVTCHN` it takes the pending ports ([`Self::take_pending`]), and every
    /// [`POLL_INTERVAL`](crate::console::POLL_INTERVAL) it takes them and drains every
    /// console anyway, in case an event was lost (or events are unavailable).
    pub async fn pump_evtchn(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.events.evtchn() => self.take_pending(),
                () = tokio::time::sleep(crate::console::POLL_INTERVAL) => {
                    // A port left pending without an event reaching dom0d (one raised
                    // while no dom0d had the device open) never raises another: take
                    // them, so I/O never falls back to this poll's pace.
                    self.take_pending();
                    if self.consoles.any_live() {
                        self.consoles.drain_all(&*self.mv);
                    }
                    self.xenstored.pump_all(&*self.mv);
                    self.step_devices();
                    self.persist();
                }
            }
        }
    }

    /// Takes domain 0's pending ports and drains the consoles they belong to. Ports that
    /// belong to nothing dom0d serves are logged at debug level.
    pub fn take_pending(&self) {
        let mv = &*self.mv;
        match microvisor::evtchn_take_pending(mv) {
            Ok(ports) => {
                let others = self.consoles.on_ports(mv, &ports);
                let others = self.xenstored.on_ports(mv, &others);
                // After the store: a guest's writes there may move its devices along.
                let disks = self.blkback.devices() != 0;
                let vifs = self.netback.devices() != 0;
                let others = if !disks && !vifs {
                    others
                } else {
                    self.xenstored.with_store(mv, |store| {
                        let mut others = others;
                        if disks {
                            others = self.blkback.on_ports(mv, store, &others);
                        }
                        if vifs {
                            others = self.netback.on_ports(mv, store, &others);
                        }
                        // Following every front-end's state costs a pass over every
                        // device: only when the store changed (a guest cannot make dom0d
                        // do it by signalling alone). The periodic poll steps anyway.
                        let seen = self.stepped_generation.load(Ordering::Relaxed);
                        if store.generation() != seen {
                            if disks {
                                self.blkback.step(mv, store);
                            }
                            if vifs {
                                self.netback.step(mv, store);
                            }
                            self.stepped_generation
                                .store(store.generation(), Ordering::Relaxed);
                        }
                        others
                    })
                };
                if !others.is_empty() {
                    log::limited(
                        Level::Debug,
                        format_args!("event channels: no owner for pending port(s) {others:?}"),
                    );
                }
                self.persist();
            }
            Err(errno) => log::limited(
                Level::Warn,
                format_args!(
                    "event channels: EvtchnTakePending failed with {}",
                    proto::errno_text(errno)
                ),
            ),
        }
    }

    /// [`Request::Create`]: one at a time, on a blocking thread (reading the kernel and
    /// writing the domain's memory take many system calls), see [`builder`]. The new
    /// domain's console is handed to [`Consoles`] (`restart`: it continues the name's
    /// history; `requested_at`: when the create was asked for, for the time to the first
    /// console byte). The caller records the new domain with the [`Supervisor`].
    pub(crate) async fn create_domain(
        &self,
        config: &DomainConfig,
        dry_run: bool,
        paused: bool,
        requested_at: std::time::Instant,
        restart: bool,
    ) -> Result<CreateReport, ApiError> {
        let _one_at_a_time = self.create_lock.lock().await;
        let opts = builder::Options {
            dry_run,
            paused,
            destroy_wait: self.waits.destroy,
            poll: self.waits.poll,
        };
        let created = Arc::new(std::sync::Mutex::new(None));
        let (mv, cell, config) = (Arc::clone(&self.mv), Arc::clone(&created), config.clone());
        let pool = Arc::clone(self.consoles.pool());
        let devices = Devices {
            xenstored: Arc::clone(&self.xenstored),
            blkback: Arc::clone(&self.blkback),
            netback: Arc::clone(&self.netback),
        };
        let joined = tokio::task::spawn_blocking(move || {
            builder::create_with(&*mv, &pool, &config, opts, &cell, Some(&devices))
                .map(|built| (built, config.name))
        })
        .await;
        match joined {
            Ok(Ok((built, name))) => {
                if let Some(store) = built.store {
                    self.xenstored.register(&*self.mv, &name, store);
                    // The guest may have said Initialised already.
                    self.step_devices();
                }
                if let Some(console) = built.console {
                    self.consoles
                        .register(&*self.mv, &name, console, requested_at, restart);
                }
                Ok(built.report)
            }
            Ok(Err(e)) => Err(ApiError::Create(e)),
            Err(e) => {
                // The builder died (a bug): do not leave its domain behind.
                log::write(Level::Error, format_args!("create: the builder died: {e}"));
                let left = created
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                if let Some(domid) = left {
                    self.devices_gone(domid);
                }
                let cleanup = match left {
                    Some(domid) => {
                        let mv = Arc::clone(&self.mv);
                        tokio::task::spawn_blocking(move || {
                            builder::destroy_and_wait(&*mv, domid, opts.destroy_wait, opts.poll)
                        })
                        .await
                        .unwrap_or_else(|e| Cleanup::Failed {
                            reason: e.to_string(),
                        })
                    }
                    None => Cleanup::NotNeeded,
                };
                Err(ApiError::Create(CreateError::Failed {
                    step: "building the domain".to_owned(),
                    errno: None,
                    reason: "dom0d's builder thread died (a bug; see dom0d's log)".to_owned(),
                    domid: left,
                    cleanup,
                }))
            }
        }
    }
}

/// [`Service::pump_net`]'s loop without the state file, for tests of a service that is
/// not in an `Arc`: waits until a vif's device is readable, reads it, and delivers the
/// frames (the store's lock, then the back-end's, as everywhere).
#[cfg(test)]
pub(crate) async fn pump_vifs(
    mv: Arc<dyn Microvisor>,
    xenstored: Arc<Xenstored>,
    netback: Arc<NetBack>,
) {
    loop {
        let keys = std::future::poll_fn(|cx| netback.poll_devices(cx)).await;
        let mv = &*mv;
        xenstored.with_store(mv, |store| netback.serve_devices(mv, store, &keys));
        tokio::task::yield_now().await;
    }
}

/// Bounds on what one client can cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest wait for a complete request.
    pub idle_timeout: Duration,
    /// Longest wait for a client to accept a reply.
    pub write_timeout: Duration,
    /// Malformed frames or early requests tolerated before disconnecting.
    pub max_bad_frames: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            max_bad_frames: 8,
        }
    }
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Serves connections from `listener` until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    service: Arc<Service>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::limited(Level::Error, format_args!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        let permit = Arc::clone(&slots).try_acquire_owned().ok();
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            match permit {
                Some(_permit) => connection(stream, &service, &limits, id).await,
                None => {
                    log::limited(
                        Level::Warn,
                        format_args!(
                            "conn {id}: refused, {} connections open",
                            limits.max_connections
                        ),
                    );
                    let mut stream = stream;
                    let _ = send(&mut stream, &Response::Error(ApiError::Busy), &limits).await;
                }
            }
        });
    }
}

async fn send(stream: &mut UnixStream, resp: &Response, limits: &Limits) -> io::Result<()> {
    let frame = proto::encode(resp).map_err(io::Error::other)?;
    tokio::time::timeout(limits.write_timeout, stream.write_all(&frame))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// One client, from its first byte to its last.
async fn connection(mut stream: UnixStream, service: &Service, limits: &Limits, id: u64) {
    log::write(Level::Debug, format_args!("conn {id}: open"));
    let why = converse(&mut stream, service, limits, id).await;
    log::write(Level::Debug, format_args!("conn {id}: closed ({why})"));
}

/// The protocol loop; returns why the connection ended.
async fn converse(stream: &mut UnixStream, service: &Service, limits: &Limits, id: u64) -> String {
    let mut greeted = false;
    let mut bad_frames = 0u32;
    loop {
        let read = tokio::time::timeout(
            limits.idle_timeout,
            proto::read_frame_async(stream, MAX_FRAME),
        )
        .await;
        let payload = match read {
            Err(_) => return "idle timeout".to_owned(),
            Ok(Ok(None)) => return "client closed".to_owned(),
            Ok(Ok(Some(payload))) => payload,
            Ok(Err(FrameError::TooLarge { len, max })) => {
                log::limited(
                    Level::Warn,
                    format_args!("conn {id}: frame of {len} bytes exceeds {max}; disconnecting"),
                );
                let err = ApiError::FrameTooLarge {
                    len: u32::try_from(len).unwrap_or(u32::MAX),
                    max: u32::try_from(max).unwrap_or(u32::MAX),
                };
                let _ = send(stream, &Response::Error(err), limits).await;
                return "oversized frame".to_owned();
            }
            Ok(Err(e)) => return format!("read failed: {e}"),
        };
        let (reply, close) = match proto::decode::<Request>(&payload) {
            Err(e) => {
                bad_frames += 1;
                let reason = match &e {
                    FrameError::Decode(inner) => format!("{e}: {inner}"),
                    other => other.to_string(),
                };
                log::limited(
                    Level::Warn,
                    format_args!("conn {id}: malformed request ({reason})"),
                );
                (Response::Error(ApiError::Malformed { reason }), false)
            }
            Ok(Request::Hello { protocol, software }) => {
                greeted = protocol == PROTOCOL_VERSION;
                // The client chose this string; keep log lines short.
                let software: String = software.chars().take(64).collect();
                if !greeted {
                    log::limited(
                        Level::Warn,
                        format_args!(
                            "conn {id}: {software:?} speaks protocol {protocol}, dom0d speaks {PROTOCOL_VERSION}; disconnecting"
                        ),
                    );
                } else {
                    log::write(
                        Level::Debug,
                        format_args!("conn {id}: hello from {software:?}"),
                    );
                }
                (Service::hello(), !greeted)
            }
            Ok(_) if !greeted => {
                bad_frames += 1;
                (Response::Error(ApiError::HandshakeRequired), false)
            }
            Ok(req @ (Request::Logs { .. } | Request::ConsoleAttach { .. })) => {
                log::write(Level::Debug, format_args!("conn {id}: {req:?}"));
                match service.open_console(&req) {
                    Ok(session) => {
                        return crate::session::run(stream, service, session, limits).await;
                    }
                    Err(e) => (Response::Error(e), false),
                }
            }
            Ok(req) => {
                log::write(Level::Debug, format_args!("conn {id}: {req:?}"));
                (service.handle(&req).await, false)
            }
        };
        if let Err(e) = send(stream, &reply, limits).await {
            return format!("write failed: {e}");
        }
        if close {
            return "protocol version mismatch".to_owned();
        }
        if bad_frames >= limits.max_bad_frames {
            log::limited(
                Level::Warn,
                format_args!("conn {id}: {bad_frames} bad frames; disconnecting"),
            );
            return "too many bad frames".to_owned();
        }
    }
}

/// The control socket, bound and listening, with the identity of its file so that only
/// dom0d's own socket is removed at exit.
#[derive(Debug)]
pub struct BoundSocket {
    /// The listener (blocking mode; [`BoundSocket::into_tokio`] converts it).
    pub listener: std::os::unix::net::UnixListener,
    /// Where it is.
    pub path: PathBuf,
    dev_ino: (u64, u64),
}

impl BoundSocket {
    /// The listener for tokio; must run inside a runtime.
    ///
    /// # Errors
    /// Switching to non-blocking mode or registering with the runtime failed.
    pub fn into_tokio(self) -> io::Result<(UnixListener, SocketGuard)> {
        self.listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(self.listener)?;
        Ok((
            listener,
            SocketGuard {
                path: self.path,
                dev_ino: self.dev_ino,
            },
        ))
    }
}

/// Removes the socket file on drop, if it is still the one dom0d created.
#[derive(Debug)]
pub struct SocketGuard {
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Ok(m) = fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == self.dev_ino
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates the control socket at `path`, mode 0600, such that the path appears only once
/// the socket is listening (readiness: a client that finds the path can connect).
///
/// Missing parent directories are created. A stale socket left by a dead dom0d is replaced;
/// a live one (something accepts connections on it) or a file that is not a socket is an
/// error. The socket is bound inside a fresh 0700 directory next to `path`, set to 0600,
/// and renamed into place, so nobody else can connect to it before its mode is set.
///
/// # Errors
/// `AddrInUse` if another service answers on `path`, `AlreadyExists` if `path` is not a
/// socket, or the failing file system call.
pub fn bind_socket(path: &Path) -> io::Result<BoundSocket> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)?;
    if let Ok(m) = fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; refusing to replace it",
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another service is answering on it (is dom0d already running?)",
            ));
        }
        fs::remove_file(path)?;
    }
    let private = parent.join(format!(".dom0d-{}.tmp", std::process::id()));
    if fs::symlink_metadata(&private).is_ok() {
        fs::remove_dir_all(&private)?;
    }
    fs::DirBuilder::new().mode(0o700).create(&private)?;
    let result = (|| {
        let tmp = private.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
        fs::rename(&tmp, path)?;
        let m = fs::symlink_metadata(path)?;
        Ok(BoundSocket {
            listener,
            path: path.to_path_buf(),
            dev_ino: (m.dev(), m.ino()),
        })
    })();
    let _ = fs::remove_dir_all(&private);
    result
}

/// A dom0d serving on a thread of its own, for tests: the socket exists when
/// [`spawn_background`] returns, and dropping the handle stops the server and removes it.
#[derive(Debug)]
pub struct BackgroundServer {
    path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundServer {
    /// The socket path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a server for `mv` on `path` in a new thread; see [`BackgroundServer`].
///
/// # Errors
/// Building the runtime or binding the socket failed.
pub fn spawn_background(
    path: &Path,
    mv: Arc<dyn Microvisor>,
    limits: Limits,
) -> io::Result<BackgroundServer> {
    spawn_service(path, Service::new(mv), limits)
}

/// Starts `service` on `path` in a new thread, with its event-channel pump
/// ([`Service::pump_evtchn`]); see [`BackgroundServer`].
///
/// # Errors
/// Building the runtime or binding the socket failed.
pub fn spawn_service(
    path: &Path,
    service: Service,
    limits: Limits,
) -> io::Result<BackgroundServer> {
    spawn(path, service, limits, false)
}

/// As [`spawn_service`], and with the `on_*` sweeps ([`Service::supervise`]) too, as
/// dom0d runs them: once at startup, after every create, and after every event mask the
/// service's [`EventMonitor`] records.
///
/// # Errors
/// Building the runtime or binding the socket failed.
pub fn spawn_supervised(
    path: &Path,
    service: Service,
    limits: Limits,
) -> io::Result<BackgroundServer> {
    spawn(path, service, limits, true)
}

fn spawn(
    path: &Path,
    service: Service,
    limits: Limits,
    supervise: bool,
) -> io::Result<BackgroundServer> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let socket = path.to_path_buf();
    let thread = std::thread::spawn(move || {
        let setup = (|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let bound = bind_socket(&socket)?;
            let (listener, guard) = rt.block_on(async { bound.into_tokio() })?;
            Ok::<_, io::Error>((rt, listener, guard))
        })();
        match setup {
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
            Ok((rt, listener, guard)) => {
                let _ = ready_tx.send(Ok(()));
                let service = Arc::new(service);
                rt.block_on(async {
                    tokio::spawn(Arc::clone(&service).pump_evtchn());
                    tokio::spawn(Arc::clone(&service).pump_net());
                    if supervise {
                        tokio::spawn(Arc::clone(&service).supervise());
                    }
                    serve(listener, service, limits, async {
                        let _ = stop_rx.await;
                    })
                    .await;
                });
                drop(guard);
            }
        }
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(BackgroundServer {
            path: path.to_path_buf(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other("the server thread died during setup"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream as StdStream;

    use shared_abi::control::ControlOp;

    use super::*;
    use crate::fake::FakeMicrovisor;
    use crate::proto::{Domain, PROTOCOL_VERSION};

    struct Fixture {
        _dir: tempfile::TempDir,
        server: BackgroundServer,
        fake: Arc<FakeMicrovisor>,
    }

    fn start(limits: Limits) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeMicrovisor::new());
        let mv: Arc<dyn Microvisor> = fake.clone();
        let server = spawn_background(&dir.path().join("run/dom0d.sock"), mv, limits).unwrap();
        Fixture {
            _dir: dir,
            server,
            fake,
        }
    }

    fn conn(f: &Fixture) -> StdStream {
        let s = StdStream::connect(f.server.path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn send(s: &mut StdStream, req: &Request) {
        s.write_all(&proto::encode(req).unwrap()).unwrap();
    }

    fn recv(s: &mut StdStream) -> Option<Response> {
        proto::read_frame(s, MAX_FRAME)
            .unwrap()
            .map(|p| proto::decode(&p).unwrap())
    }

    fn hello() -> Request {
        Request::Hello {
            protocol: PROTOCOL_VERSION,
            software: "test".into(),
        }
    }

    fn greeted(f: &Fixture) -> StdStream {
        let mut s = conn(f);
        send(&mut s, &hello());
        assert!(matches!(
            recv(&mut s),
            Some(Response::Hello {
                protocol: PROTOCOL_VERSION,
                ..
            })
        ));
        s
    }

    fn ask(s: &mut StdStream, req: &Request) -> Response {
        send(s, req);
        recv(s).expect("a reply")
    }

    /// Asserts that the server closed the connection (EOF, or a reset if unread input
    /// was pending).
    fn assert_closed(s: &mut StdStream) {
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("connection still open: {other:?}"),
        }
    }

    #[test]
    fn serves_every_request() {
        let f = start(Limits::default());
        let mut s = greeted(&f);
        match ask(&mut s, &Request::Version) {
            Response::Version(v) => {
                assert_eq!(v.dom0d, DOM0D_VERSION);
                assert_eq!(v.protocol, PROTOCOL_VERSION);
                assert_eq!(v.microvisor.unwrap().version, "0.1.0-fake");
            }
            other => panic!("{other:?}"),
        }
        match ask(&mut s, &Request::HostInfo) {
            Response::HostInfo(h) => assert_eq!(h.pcpus, 2),
            other => panic!("{other:?}"),
        }
        match ask(&mut s, &Request::ListDomains { from: 0 }) {
            Response::Domains { domains, next } => {
                let names: Vec<&str> = domains.iter().map(|d| d.name.as_str()).collect();
                assert_eq!(names, ["Domain-0", "hello1", "hello2"]);
                assert_eq!(next, None);
            }
            other => panic!("{other:?}"),
        }
        match ask(&mut s, &Request::DomainInfo { domid: 2 }) {
            Response::Domain(Domain { name, .. }) => assert_eq!(name, "hello2"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ask(&mut s, &Request::DomainInfo { domid: 4000 }),
            Response::Error(ApiError::NoSuchDomain { domid: 4000 })
        );
        match ask(&mut s, &Request::Events) {
            Response::Events(r) => {
                assert_eq!(r.status.name(), "unavailable");
                assert_eq!(r.count, 0);
            }
            other => panic!("{other:?}"),
        }
        // A second hello is answered again, harmlessly.
        assert!(matches!(ask(&mut s, &hello()), Response::Hello { .. }));
    }

    #[test]
    fn requests_before_the_hello_are_refused_but_the_connection_survives() {
        let f = start(Limits::default());
        let mut s = conn(&f);
        assert_eq!(
            ask(&mut s, &Request::HostInfo),
            Response::Error(ApiError::HandshakeRequired)
        );
        assert_eq!(f.fake.calls(), 0, "nothing reached the microvisor");
        assert!(matches!(ask(&mut s, &hello()), Response::Hello { .. }));
        assert!(matches!(
            ask(&mut s, &Request::HostInfo),
            Response::HostInfo(_)
        ));
    }

    #[test]
    fn a_version_mismatch_gets_our_hello_then_the_door() {
        let f = start(Limits::default());
        let mut s = conn(&f);
        let reply = ask(
            &mut s,
            &Request::Hello {
                protocol: PROTOCOL_VERSION + 1,
                software: "dom0 9".into(),
            },
        );
        assert_eq!(reply, Service::hello());
        assert_closed(&mut s);
    }

    #[test]
    fn an_oversized_frame_is_answered_and_disconnected() {
        let f = start(Limits::default());
        let mut s = greeted(&f);
        let len = u32::try_from(MAX_FRAME + 1).unwrap();
        s.write_all(&len.to_le_bytes()).unwrap();
        assert_eq!(
            recv(&mut s),
            Some(Response::Error(ApiError::FrameTooLarge {
                len,
                max: u32::try_from(MAX_FRAME).unwrap()
            }))
        );
        assert_closed(&mut s);
        // Others are still served.
        let mut other = greeted(&f);
        assert!(matches!(
            ask(&mut other, &Request::HostInfo),
            Response::HostInfo(_)
        ));
    }

    #[test]
    fn garbage_frames_get_errors_and_eventually_the_door() {
        let limits = Limits::default();
        let f = start(limits);
        let mut s = greeted(&f);
        s.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
        match recv(&mut s) {
            Some(Response::Error(ApiError::Malformed { reason })) => {
                assert!(reason.contains("decode"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Still usable: the framing was intact.
        assert!(matches!(
            ask(&mut s, &Request::HostInfo),
            Response::HostInfo(_)
        ));
        // Trailing bytes after a valid request are garbage too.
        let mut payload = postcard::to_stdvec(&Request::HostInfo).unwrap();
        payload.push(7);
        let mut frame = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
        frame.extend_from_slice(&payload);
        s.write_all(&frame).unwrap();
        assert!(matches!(
            recv(&mut s),
            Some(Response::Error(ApiError::Malformed { .. }))
        ));
        for _ in 2..limits.max_bad_frames {
            s.write_all(&[1, 0, 0, 0, 99]).unwrap();
            assert!(matches!(
                recv(&mut s),
                Some(Response::Error(ApiError::Malformed { .. }))
            ));
        }
        assert_closed(&mut s);
    }

    #[test]
    fn a_stalled_client_costs_only_its_own_connection() {
        let f = start(Limits {
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        let mut stalled = conn(&f);
        stalled.write_all(&[10, 0, 0, 0, 1]).unwrap(); // half a frame, then nothing
        let mut other = greeted(&f);
        assert!(matches!(
            ask(&mut other, &Request::HostInfo),
            Response::HostInfo(_)
        ));
        assert_closed(&mut stalled);
    }

    #[test]
    fn random_bytes_from_many_clients_never_stop_the_server() {
        let f = start(Limits {
            idle_timeout: Duration::from_millis(200),
            ..Limits::default()
        });
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..100 {
            let mut s = conn(&f);
            let len = usize::try_from(next() % 64).unwrap();
            let mut bytes: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            if round % 2 == 0 {
                // A plausible length prefix, so the payload reaches the decoder.
                let n = u32::try_from(len).unwrap();
                bytes.splice(0..0, n.to_le_bytes());
            }
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            // Drain whatever the server says until it closes.
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        let mut s = greeted(&f);
        assert!(matches!(
            ask(&mut s, &Request::HostInfo),
            Response::HostInfo(_)
        ));
    }

    #[test]
    fn many_clients_at_once() {
        let f = start(Limits::default());
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..32)
                .map(|i| {
                    let f = &f;
                    scope.spawn(move || {
                        let mut s = greeted(f);
                        for _ in 0..20 {
                            match ask(&mut s, &Request::DomainInfo { domid: i % 3 }) {
                                Response::Domain(d) => assert_eq!(d.domid, i % 3),
                                other => panic!("{other:?}"),
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().unwrap();
            }
        });
    }

    #[test]
    fn connections_beyond_the_limit_are_told_busy() {
        let f = start(Limits {
            max_connections: 2,
            ..Limits::default()
        });
        let a = greeted(&f);
        let b = greeted(&f);
        let mut c = conn(&f);
        assert_eq!(recv(&mut c), Some(Response::Error(ApiError::Busy)));
        assert_closed(&mut c);
        drop((a, b));
        // Slots free up once the first clients leave.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut d = conn(&f);
            send(&mut d, &hello());
            match recv(&mut d) {
                Some(Response::Hello { .. }) => break,
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_socket_is_private_and_removed_on_stop() {
        let f = start(Limits::default());
        let path = f.server.path().to_path_buf();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No private bind directory is left behind.
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("dom0d.sock")]);
        drop(f.server);
        assert!(fs::symlink_metadata(&path).is_err());
    }

    #[test]
    fn binding_replaces_stale_sockets_and_refuses_live_ones_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // A stale socket: bound, then its listener closed.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let bound = bind_socket(&path).unwrap();
        // Now live: a second dom0d must not steal it.
        let e = bind_socket(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(bound);
        // A regular file is never removed.
        let file = dir.path().join("file");
        fs::write(&file, b"keep").unwrap();
        let e = bind_socket(&file).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&file).unwrap(), b"keep");
    }

    #[test]
    fn the_guard_leaves_a_replaced_socket_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let bound = bind_socket(&path).unwrap();
        let guard = SocketGuard {
            path: bound.path.clone(),
            dev_ino: bound.dev_ino,
        };
        fs::remove_file(&path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(guard);
        assert!(fs::symlink_metadata(&path).is_ok());
    }

    #[test]
    fn lifecycle_requests_are_served() {
        use crate::proto::{Lifecycle, LifecycleDone, State};
        let f = start(Limits::default());
        let mut s = greeted(&f);
        for action in [Lifecycle::Pause, Lifecycle::Unpause, Lifecycle::Destroy] {
            assert_eq!(
                ask(&mut s, &action.request(0)),
                Response::Error(ApiError::DomainZero { action })
            );
        }
        assert_eq!(
            f.fake.calls(),
            0,
            "domain 0 is refused before the microvisor"
        );
        assert_eq!(
            ask(&mut s, &Request::Pause { domid: 2 }),
            Response::Lifecycle(LifecycleDone {
                action: Lifecycle::Pause,
                domid: 2,
                name: "hello2".into(),
                state: Some(State::Paused),
            })
        );
        assert_eq!(
            ask(&mut s, &Request::Pause { domid: 2 }),
            Response::Error(ApiError::AlreadyPaused {
                domid: 2,
                name: "hello2".into()
            })
        );
        assert_eq!(
            ask(&mut s, &Request::Unpause { domid: 1 }),
            Response::Error(ApiError::NotPaused {
                domid: 1,
                name: "hello1".into(),
                state: Some(State::Blocked),
            })
        );
        match ask(&mut s, &Request::Destroy { domid: 2 }) {
            Response::Lifecycle(done) => assert_eq!(done.state, None),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ask(&mut s, &Request::Unpause { domid: 2 }),
            Response::Error(ApiError::NoSuchDomain { domid: 2 })
        );
    }

    #[test]
    fn create_requests_are_served() {
        use crate::builder::test_elf::{Seg, pvh_elf};
        use crate::config::{DomainConfig, OnEvent};
        use crate::proto::{CreateError, State};
        let f = start(Limits::default());
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k.elf");
        let seg = Seg {
            paddr: 0x10_0000,
            data: vec![0x90; 64],
            mem: 4096,
        };
        fs::write(&kernel, pvh_elf(0x10_0000, &[seg])).unwrap();
        let config = DomainConfig {
            name: "web".into(),
            kernel: kernel.to_str().unwrap().into(),
            ramdisk: None,
            cmdline: None,
            memory_mib: 2,
            vcpus: 1,
            on_poweroff: OnEvent::Destroy,
            on_reboot: OnEvent::Restart,
            on_crash: OnEvent::Destroy,
            disks: Vec::new(),
            vifs: Vec::new(),
        };
        let mut s = greeted(&f);
        let create = |config: &DomainConfig, dry_run| Request::Create {
            config: config.clone(),
            dry_run,
            paused: false,
        };
        match ask(&mut s, &create(&config, true)) {
            Response::Created(r) => assert_eq!((r.domid, r.state), (None, None)),
            other => panic!("{other:?}"),
        }
        match ask(&mut s, &create(&config, false)) {
            Response::Created(r) => {
                assert_eq!((r.domid, r.state), (Some(3), Some(State::Running)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.fake.read_guest(3, 0x10_0000, 64).unwrap(), vec![0x90; 64]);
        // dom0d checks the config again: a client cannot skip the CLI's checks.
        let mut bad = config.clone();
        bad.name = "other".into();
        bad.kernel = "relative.elf".into();
        assert_eq!(
            ask(&mut s, &create(&bad, false)),
            Response::Error(ApiError::Create(CreateError::InvalidConfig {
                reason: "\"kernel\" \"relative.elf\" is not an absolute path".into()
            }))
        );
        bad = config.clone();
        bad.vcpus = 0;
        assert!(matches!(
            ask(&mut s, &create(&bad, false)),
            Response::Error(ApiError::Create(CreateError::InvalidConfig { .. }))
        ));
        assert_eq!(
            ask(&mut s, &create(&config, false)),
            Response::Error(ApiError::Create(CreateError::NameInUse {
                name: "web".into(),
                domid: Some(3)
            }))
        );
    }

    #[test]
    fn a_create_does_not_hold_up_other_clients() {
        use crate::builder::test_elf::{Seg, pvh_elf};
        use crate::config::{DomainConfig, OnEvent};
        // The fake's destroy never shows, so a failing create waits out its destroy limit
        // (1 s here) on the builder's thread; meanwhile others are answered.
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeMicrovisor::new());
        let mv: Arc<dyn Microvisor> = fake.clone();
        let waits = Waits {
            destroy: Duration::from_secs(1),
            ..Waits::default()
        };
        let server = spawn_service(
            &dir.path().join("s.sock"),
            Service::new(mv).with_waits(waits),
            Limits::default(),
        )
        .unwrap();
        let f = Fixture {
            _dir: dir,
            server,
            fake,
        };
        f.fake.set_lag(u32::MAX);
        f.fake.fail_nth(ControlOp::DomainSetEntry as u64, 1, 22);
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k.elf");
        let seg = Seg {
            paddr: 0x10_0000,
            data: vec![1],
            mem: 1,
        };
        fs::write(&kernel, pvh_elf(0x10_0000, &[seg])).unwrap();
        let req = Request::Create {
            config: DomainConfig {
                name: "slow".into(),
                kernel: kernel.to_str().unwrap().into(),
                ramdisk: None,
                cmdline: None,
                memory_mib: 2,
                vcpus: 1,
                on_poweroff: OnEvent::Destroy,
                on_reboot: OnEvent::Restart,
                on_crash: OnEvent::Destroy,
                disks: Vec::new(),
                vifs: Vec::new(),
            },
            dry_run: false,
            paused: false,
        };
        let mut slow = greeted(&f);
        send(&mut slow, &req);
        std::thread::sleep(Duration::from_millis(100));
        let mut other = greeted(&f);
        let started = std::time::Instant::now();
        assert!(matches!(
            ask(&mut other, &Request::HostInfo),
            Response::HostInfo(_)
        ));
        assert!(started.elapsed() < Duration::from_millis(500));
        match recv(&mut slow) {
            Some(Response::Error(ApiError::Create(crate::proto::CreateError::Failed {
                cleanup: crate::proto::Cleanup::Failed { .. },
                ..
            }))) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn microvisor_errors_become_error_replies() {
        let f = start(Limits::default());
        f.fake.set_fault(crate::fake::Fault::Errno(1));
        let mut s = greeted(&f);
        assert_eq!(
            ask(&mut s, &Request::HostInfo),
            Response::Error(ApiError::Hypercall {
                op: "HostInfo".into(),
                errno: 1
            })
        );
        match ask(&mut s, &Request::Version) {
            Response::Version(v) => assert!(v.microvisor.is_err()),
            other => panic!("{other:?}"),
        }
    }
}
