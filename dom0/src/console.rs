//! dom0d's PV console back-end: every domain dom0d builds has a console page (the last
//! page of its RAM) and an event channel ([`crate::builder::setup_console`]); this module
//! keeps the page mapped for the domain's life, drains the guest's output into a bounded
//! history, writes input into the guest's input ring, and serves the history to `dom0 logs`
//! and `dom0 console` ([`Consoles`]).
//!
//! - **Draining.** On `EVENT_EVTCHN` dom0d takes the pending domain 0 ports and drains the
//!   consoles they belong to ([`Consoles::on_ports`]); every sweep of the domain list (on a
//!   domain-state event: shutdown, crash) drains all of them ([`Consoles::sweep`]), so a
//!   guest that prints and powers off at once still has its output captured, and a slow
//!   poll ([`POLL_INTERVAL`]) covers lost events. After taking output dom0d signals the
//!   guest's port (it may be waiting for room), and again after writing input.
//! - **History.** The last [`HISTORY_BYTES`] of output per domain *name*, oldest bytes
//!   dropped first. A restart by `on_reboot`/`on_crash` continues the same history; a new
//!   `dom0 create` of the name starts a new one. When a domain is destroyed its page is
//!   drained a last time (the mapping keeps the frame alive after the domain dies), then
//!   unmapped and its port closed; the history stays readable by `dom0 logs` until a
//!   domain of that name is created again or [`KEPT_ENDED`] newer ended histories push it
//!   out.
//! - **Hostile guests.** A guest whose ring indices are impossible (an overrun: more bytes
//!   claimed than the ring holds) gets one warning in the log and its console is disabled:
//!   the page is unmapped and the port closed at once. Other consoles are unaffected.
//! - **Timing.** The time from the create request to the first byte of output is kept per
//!   domain ([`ConsoleSummary::first_byte_ms`], shown by `dom0 info`).
//! - **Writers.** At most one client is attached for input at a time; a second attach is
//!   refused unless it forces a takeover, which ends the first client's session.
//!
//! Everything is behind one short lock: each operation copies what it needs, hypercalls
//! included (`EvtchnSend`, `EvtchnClose`, `ForeignUnmap`), and never waits while holding
//! it. Clients follow a history by its byte count ([`Consoles::read_since`]) and a
//! [`tokio::sync::watch`] counter that every change bumps, so a slow reader never makes
//! dom0d queue output for it: it skips what the bounded history no longer holds.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pv_drivers::console::ConsoleBack;
use tokio::sync::watch;

use crate::builder::{ConsoleSetup, undo_console};
use crate::log::{self, Level};
use crate::microvisor::{Microvisor, PageMap, evtchn_send};
use crate::pages::PagePool;
use crate::proto::{ConsoleEnd, ConsoleSummary, Domain, domain_label, errno_text};

/// Bytes of history kept per domain name.
pub const HISTORY_BYTES: usize = 64 * 1024;
/// Histories of domains that are gone, kept for `dom0 logs`; the oldest goes first.
pub const KEPT_ENDED: usize = 16;
/// Most bytes one drain takes from a ring, so a guest that refills its ring as fast as
/// dom0d empties it cannot hold dom0d in a loop; the rest waits for the next event.
pub const DRAIN_MAX: usize = 64 * 1024;
/// How often dom0d drains every console without an event (lost or unavailable events).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The last [`HISTORY_BYTES`] bytes of a console, and how many bytes it ever received.
#[derive(Debug, Default, Clone)]
pub struct History {
    bytes: VecDeque<u8>,
    total: u64,
}

impl History {
    /// Appends `data`, dropping the oldest bytes beyond [`HISTORY_BYTES`].
    pub fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(HISTORY_BYTES)..];
        let over = (self.bytes.len() + data.len()).saturating_sub(HISTORY_BYTES);
        self.bytes.drain(..over);
        self.bytes.extend(data);
        self.total += data.len() as u64;
    }

    /// Bytes received since the history began (including dropped ones).
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Position (in [`Self::total`] terms) of the oldest byte kept.
    #[must_use]
    pub fn start(&self) -> u64 {
        self.total - self.bytes.len() as u64
    }

    /// Up to `max` bytes from position `from` on, and how many bytes between `from` and
    /// the oldest byte kept were dropped (skipped).
    #[must_use]
    pub fn since(&self, from: u64, max: usize) -> (u64, Vec<u8>) {
        let from = from.min(self.total);
        let skipped = self.start().saturating_sub(from);
        let at = usize::try_from(from.max(self.start()) - self.start()).unwrap_or(usize::MAX);
        let out = self.bytes.iter().skip(at).take(max).copied().collect();
        (skipped, out)
    }
}

/// Which history a client follows: the name, and which history of that name (a new
/// create of the name starts a new one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRef {
    /// The domain name.
    pub name: String,
    id: u64,
}

/// Where a history stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// A domain writes to it.
    Live,
    /// Its domain was destroyed to be restarted; the new one continues it.
    Restarting,
    /// Its domain is gone.
    Ended,
}

#[derive(Debug)]
struct Log {
    id: u64,
    history: History,
    /// The domain writing to it, if any (also while its console is disabled).
    domid: Option<u32>,
    /// The last domain that wrote to it.
    last_domid: u32,
    phase: Phase,
    /// Token of the attached writer.
    owner: Option<u64>,
    /// Why the console was disabled.
    disabled: Option<String>,
    /// Time from the create request to the first output of the current (or last) domain.
    first_byte_ms: Option<u64>,
    /// Bumped on every change; clients wait on it.
    seq: watch::Sender<u64>,
}

impl Log {
    fn bump(&self) {
        self.seq.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn end_reason(&self) -> Option<ConsoleEnd> {
        match (&self.phase, &self.disabled) {
            (Phase::Ended, _) => Some(ConsoleEnd::DomainGone),
            (_, Some(reason)) => Some(ConsoleEnd::Disabled {
                reason: reason.clone(),
            }),
            _ => None,
        }
    }
}

/// A console that is connected: the ring end and what the builder made.
#[derive(Debug)]
struct Live {
    back: ConsoleBack<Arc<dyn PageMap>>,
    setup: ConsoleSetup,
    requested_at: Instant,
}

#[derive(Debug)]
struct Dom {
    name: String,
    live: Option<Live>,
}

#[derive(Debug, Default)]
struct Inner {
    logs: BTreeMap<String, Log>,
    domains: BTreeMap<u32, Dom>,
    /// Domain 0 port → domid.
    ports: BTreeMap<u32, u32>,
    /// Names of ended histories, oldest first.
    ended: VecDeque<String>,
    next_id: u64,
}

/// What a client needs to follow a history, from [`Consoles::open`].
#[derive(Debug)]
pub struct Opened {
    /// The history.
    pub log: LogRef,
    /// The domain writing to it now, if any.
    pub domid: Option<u32>,
    /// The last domain that wrote to it.
    pub last_domid: u32,
    /// Where the history starts now (pass to [`Consoles::read_since`]).
    pub start: u64,
    /// Bytes kept.
    pub history_bytes: u64,
    /// Why the console is disabled, if it is.
    pub disabled: Option<String>,
    /// Bumped on every change of the history.
    pub changes: watch::Receiver<u64>,
}

/// What [`Consoles::read_since`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Update {
    /// Bytes dropped from the history before the client read them.
    pub skipped: u64,
    /// New bytes (at most what was asked for).
    pub bytes: Vec<u8>,
    /// The position after `bytes`.
    pub next: u64,
    /// Whether more bytes are waiting.
    pub more: bool,
    /// Set once the stream is over (the domain is gone, the console disabled, or the
    /// history replaced by a new domain of the name).
    pub end: Option<ConsoleEnd>,
    /// The attached writer's token.
    pub owner: Option<u64>,
}

/// Why input was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRefused {
    /// The domain is gone, or its console disabled.
    NoConsole,
    /// Another client took the console over.
    NotOwner,
}

/// Why an attach was refused: another client holds the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    /// The domain, if it is still there.
    pub domid: Option<u32>,
}

/// Every console dom0d serves.
#[derive(Debug)]
pub struct Consoles {
    inner: Mutex<Inner>,
    pool: Arc<PagePool>,
}

impl Consoles {
    /// No consoles yet; pages are released into `pool`.
    #[must_use]
    pub fn new(pool: Arc<PagePool>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            pool,
        }
    }

    /// The page pool the builder maps console pages from.
    #[must_use]
    pub fn pool(&self) -> &Arc<PagePool> {
        &self.pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes over the console the builder made for domain `name`, created on a request
    /// that arrived at `requested_at`, and drains it once. With `restart` (an
    /// `on_reboot`/`on_crash` restart) the name's history goes on; otherwise a new one
    /// starts.
    pub fn register(
        &self,
        mv: &dyn Microvisor,
        name: &str,
        setup: ConsoleSetup,
        requested_at: Instant,
        restart: bool,
    ) {
        let domid = setup.domid;
        let back = match ConsoleBack::new(Arc::clone(&setup.page.mem)) {
            Ok(back) => back,
            Err(e) => {
                // A page smaller than the layout: cannot happen with real pages.
                log::write(
                    Level::Error,
                    format_args!("console: {}: {e}", domain_label(domid, name)),
                );
                undo_console(mv, &self.pool, setup);
                return;
            }
        };
        let mut inner = self.lock();
        let inner = &mut *inner;
        let keep = restart && inner.logs.get(name).is_some_and(|l| l.phase != Phase::Live);
        if keep {
            if let Some(log) = inner.logs.get_mut(name) {
                log.phase = Phase::Live;
                log.domid = Some(domid);
                log.last_domid = domid;
                log.disabled = None;
                log.first_byte_ms = None;
            }
        } else {
            inner.next_id += 1;
            let (seq, _) = watch::channel(0);
            let old = inner.logs.insert(
                name.to_owned(),
                Log {
                    id: inner.next_id,
                    history: History::default(),
                    domid: Some(domid),
                    last_domid: domid,
                    phase: Phase::Live,
                    owner: None,
                    disabled: None,
                    first_byte_ms: None,
                    seq,
                },
            );
            // Clients of a replaced history see it closed (its sender is dropped).
            drop(old);
        }
        inner.ended.retain(|n| n != name);
        inner.ports.insert(setup.port, domid);
        inner.domains.insert(
            domid,
            Dom {
                name: name.to_owned(),
                live: Some(Live {
                    back,
                    setup,
                    requested_at,
                }),
            },
        );
        if let Some(log) = inner.logs.get(name) {
            log.bump();
        }
        self.drain_locked(inner, mv, domid);
    }

    /// Whether any console is connected (for the poll).
    #[must_use]
    pub fn any_live(&self) -> bool {
        self.lock().domains.values().any(|d| d.live.is_some())
    }

    /// Drains the consoles of the pending domain 0 `ports`; returns the ports that are not
    /// consoles' (for other back-ends).
    pub fn on_ports(&self, mv: &dyn Microvisor, ports: &[u32]) -> Vec<u32> {
        let mut inner = self.lock();
        let mut others = Vec::new();
        for &port in ports {
            match inner.ports.get(&port).copied() {
                Some(domid) => self.drain_locked(&mut inner, mv, domid),
                None => others.push(port),
            }
        }
        others
    }

    /// Drains every console.
    pub fn drain_all(&self, mv: &dyn Microvisor) {
        let mut inner = self.lock();
        let domids: Vec<u32> = inner.domains.keys().copied().collect();
        for domid in domids {
            self.drain_locked(&mut inner, mv, domid);
        }
    }

    /// Drains every console, then ends those whose domain is not in `listed` (or whose
    /// domid now holds another name): destroyed by someone else, or gone unnoticed.
    pub fn sweep(&self, mv: &dyn Microvisor, listed: &[Domain]) {
        self.drain_all(mv);
        let gone: Vec<u32> = {
            let inner = self.lock();
            inner
                .domains
                .iter()
                .filter(|(domid, dom)| {
                    !listed
                        .iter()
                        .any(|d| d.domid == **domid && d.name == dom.name)
                })
                .map(|(domid, _)| *domid)
                .collect()
        };
        for domid in gone {
            self.domain_gone(mv, domid, false);
        }
    }

    /// Domain `domid` was destroyed: drains its console a last time, unmaps the page and
    /// closes the port. With `restarting`, the next domain of the name continues the
    /// history; otherwise the history ends (and is kept for `dom0 logs`).
    pub fn domain_gone(&self, mv: &dyn Microvisor, domid: u32, restarting: bool) {
        let mut inner = self.lock();
        self.drain_locked(&mut inner, mv, domid);
        let Some(dom) = inner.domains.remove(&domid) else {
            return;
        };
        if let Some(live) = dom.live {
            inner.ports.remove(&live.setup.port);
            self.release(mv, live);
        }
        let Some(log) = inner.logs.get_mut(&dom.name) else {
            return;
        };
        log.domid = None;
        log.last_domid = domid;
        if restarting {
            log.phase = Phase::Restarting;
        } else {
            log.phase = Phase::Ended;
            log.owner = None;
            log.bump();
            inner.ended.retain(|n| *n != dom.name);
            inner.ended.push_back(dom.name);
            while inner.ended.len() > KEPT_ENDED {
                if let Some(old) = inner.ended.pop_front() {
                    inner.logs.remove(&old);
                }
            }
            return;
        }
        log.bump();
    }

    /// A restart of `name` failed after its domain was destroyed: its history ends.
    pub fn restart_failed(&self, name: &str) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(log) = inner.logs.get_mut(name)
            && log.phase == Phase::Restarting
        {
            log.phase = Phase::Ended;
            log.owner = None;
            log.bump();
            inner.ended.push_back(name.to_owned());
            while inner.ended.len() > KEPT_ENDED {
                if let Some(old) = inner.ended.pop_front() {
                    inner.logs.remove(&old);
                }
            }
        }
    }

    /// The console of `domid`, for `dom0 info`.
    #[must_use]
    pub fn summary(&self, domid: u32) -> Option<ConsoleSummary> {
        let inner = self.lock();
        let dom = inner.domains.get(&domid)?;
        let log = inner.logs.get(&dom.name)?;
        Some(ConsoleSummary {
            domid,
            first_byte_ms: log.first_byte_ms,
            total_bytes: log.history.total(),
            history_bytes: log.history.len() as u64,
            disabled: log.disabled.clone(),
            attached: log.owner.is_some(),
        })
    }

    /// The history `reference` names: a domain name (a live domain's, or one whose history
    /// is kept), or a domid (all digits: a live domain's, or the last one that wrote to a
    /// kept history).
    #[must_use]
    pub fn resolve(&self, reference: &str) -> Option<LogRef> {
        let inner = self.lock();
        let found = if !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_digit()) {
            let domid: u32 = reference.parse().ok()?;
            match inner.domains.get(&domid) {
                Some(dom) => inner.logs.get(&dom.name),
                None => inner
                    .logs
                    .values()
                    .filter(|l| l.domid.is_none() && l.last_domid == domid)
                    .max_by_key(|l| l.id),
            }
        } else {
            inner.logs.get(reference)
        };
        let log = found?;
        let name = inner
            .logs
            .iter()
            .find(|(_, l)| l.id == log.id)
            .map(|(n, _)| n.clone())?;
        Some(LogRef { name, id: log.id })
    }

    /// Starts following `log`.
    #[must_use]
    pub fn open(&self, log: &LogRef) -> Option<Opened> {
        let inner = self.lock();
        let l = inner.logs.get(&log.name).filter(|l| l.id == log.id)?;
        Some(Opened {
            log: log.clone(),
            domid: l.domid,
            last_domid: l.last_domid,
            start: l.history.start(),
            history_bytes: l.history.len() as u64,
            disabled: l.disabled.clone(),
            changes: l.seq.subscribe(),
        })
    }

    /// Makes the caller the console's writer; returns its token and whether it took the
    /// console over from another client (which then sees [`ConsoleEnd::TakenOver`]).
    ///
    /// # Errors
    /// [`Busy`] if another client holds it and `force` is not set.
    pub fn attach(&self, log: &LogRef, force: bool) -> Result<(u64, bool), Busy> {
        let mut inner = self.lock();
        inner.next_id += 1;
        let token = inner.next_id;
        let Some(l) = inner.logs.get_mut(&log.name).filter(|l| l.id == log.id) else {
            return Ok((token, false));
        };
        let took_over = l.owner.is_some();
        if took_over && !force {
            return Err(Busy { domid: l.domid });
        }
        l.owner = Some(token);
        l.bump();
        Ok((token, took_over))
    }

    /// Gives up the writer role (if `token` still holds it).
    pub fn detach(&self, log: &LogRef, token: u64) {
        let mut inner = self.lock();
        if let Some(l) = inner.logs.get_mut(&log.name).filter(|l| l.id == log.id)
            && l.owner == Some(token)
        {
            l.owner = None;
            l.bump();
        }
    }

    /// Up to `max` bytes of `log` from position `from` on, and how the stream stands.
    #[must_use]
    pub fn read_since(&self, log: &LogRef, from: u64, max: usize) -> Update {
        let inner = self.lock();
        let Some(l) = inner.logs.get(&log.name).filter(|l| l.id == log.id) else {
            return Update {
                skipped: 0,
                bytes: Vec::new(),
                next: from,
                more: false,
                end: Some(ConsoleEnd::DomainGone),
                owner: None,
            };
        };
        let (skipped, bytes) = l.history.since(from, max);
        let next = from.max(l.history.start()) + bytes.len() as u64;
        Update {
            skipped,
            next,
            more: next < l.history.total(),
            bytes,
            end: l.end_reason(),
            owner: l.owner,
        }
    }

    /// Writes as much of `data` as fits into the guest's input ring (signalling its port
    /// if any was written); returns how many bytes. Only the attached writer (`token`) may
    /// write.
    ///
    /// # Errors
    /// [`InputRefused`].
    pub fn write_input(
        &self,
        mv: &dyn Microvisor,
        log: &LogRef,
        token: u64,
        data: &[u8],
    ) -> Result<usize, InputRefused> {
        let mut inner = self.lock();
        let l = inner
            .logs
            .get(&log.name)
            .filter(|l| l.id == log.id)
            .ok_or(InputRefused::NoConsole)?;
        if l.owner != Some(token) {
            return Err(InputRefused::NotOwner);
        }
        let domid = l.domid.ok_or(InputRefused::NoConsole)?;
        let live = inner
            .domains
            .get_mut(&domid)
            .and_then(|d| d.live.as_mut())
            .ok_or(InputRefused::NoConsole)?;
        match live.back.write_input(data) {
            Ok(n) => {
                if n > 0 {
                    notify(mv, &live.setup, "input");
                }
                Ok(n)
            }
            Err(e) => {
                self.disable(&mut inner, mv, domid, &e.to_string());
                Err(InputRefused::NoConsole)
            }
        }
    }

    /// Drains `domid`'s console into its history (with the lock held).
    fn drain_locked(&self, inner: &mut Inner, mv: &dyn Microvisor, domid: u32) {
        let Some(dom) = inner.domains.get_mut(&domid) else {
            return;
        };
        let Some(live) = dom.live.as_mut() else {
            return;
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        let mut broke = None;
        while got.len() < DRAIN_MAX {
            match live.back.read_output(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => {
                    broke = Some(e.to_string());
                    break;
                }
            }
        }
        if !got.is_empty() {
            // The guest may wait for room in its ring.
            notify(mv, &live.setup, "output");
            let first = live.requested_at.elapsed();
            if let Some(log) = inner.logs.get_mut(&dom.name) {
                if log.first_byte_ms.is_none() {
                    log.first_byte_ms = Some(u64::try_from(first.as_millis()).unwrap_or(u64::MAX));
                }
                log.history.push(&got);
                log.bump();
            }
        }
        if let Some(reason) = broke {
            self.disable(inner, mv, domid, &reason);
        }
    }

    /// Cuts off a console whose guest broke the ring protocol: one warning, the page
    /// unmapped and the port closed; its history stays.
    fn disable(&self, inner: &mut Inner, mv: &dyn Microvisor, domid: u32, reason: &str) {
        let Some(dom) = inner.domains.get_mut(&domid) else {
            return;
        };
        let Some(live) = dom.live.take() else {
            return;
        };
        log::write(
            Level::Warn,
            format_args!(
                "console: {} broke its console ring ({reason}); its console is disabled",
                domain_label(domid, &dom.name)
            ),
        );
        inner.ports.remove(&live.setup.port);
        if let Some(log) = inner.logs.get_mut(&dom.name) {
            log.disabled = Some(reason.to_owned());
            log.bump();
        }
        self.release(mv, live);
    }

    fn release(&self, mv: &dyn Microvisor, live: Live) {
        let Live { back, setup, .. } = live;
        drop(back);
        undo_console(mv, &self.pool, setup);
    }
}

/// Signals the guest's console port; a failure is logged (rate-limited) and otherwise
/// ignored: the guest polls or gets the next signal.
fn notify(mv: &dyn Microvisor, setup: &ConsoleSetup, what: &str) {
    if let Err(errno) = evtchn_send(mv, setup.port) {
        log::limited(
            Level::Warn,
            format_args!(
                "console: signalling domain {} after {what} failed with {}",
                setup.domid,
                errno_text(errno)
            ),
        );
    }
}
