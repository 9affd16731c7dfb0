//! dom0d's PV console back-end: every domain dom0d builds has a console page (the last
//! page of its RAM) and an event channel ([`crate::builder::setup_ring`]); this module
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
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pv_drivers::console::ConsoleBack;
use tokio::sync::watch;

use crate::builder::{RingKind, RingSetup, undo_ring};
use crate::log::{self, Level};
use crate::microvisor::{Microvisor, PageMap, evtchn_send};
use crate::pages::PagePool;
use crate::proto::{ConsoleEnd, ConsoleSummary, Domain, domain_label, errno_text};
use crate::state::{ConsoleRecord, LogPhase, LogRecord};

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
        self.total += data.len() as u64;
        let data = &data[data.len().saturating_sub(HISTORY_BYTES)..];
        let over = (self.bytes.len() + data.len()).saturating_sub(HISTORY_BYTES);
        self.bytes.drain(..over);
        self.bytes.extend(data);
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

    /// A history holding the last [`HISTORY_BYTES`] of `bytes`, of which `total` were
    /// received (at least as many as it holds).
    #[must_use]
    pub fn with(bytes: &[u8], total: u64) -> Self {
        let kept = &bytes[bytes.len().saturating_sub(HISTORY_BYTES)..];
        Self {
            bytes: kept.iter().copied().collect(),
            total: total.max(kept.len() as u64),
        }
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
    /// Its file in the history directory, once opened for appending.
    file: Option<File>,
    /// Bytes in that file.
    file_len: u64,
}

impl Log {
    fn bump(&self) {
        self.seq.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Appends `data` (just pushed into the history) to the history's file in `dir`, or
    /// rewrites the file with the history once it has grown past twice
    /// [`HISTORY_BYTES`]. A failure is logged and the file left alone until the next one.
    fn save(&mut self, dir: Option<&Path>, name: &str, data: &[u8]) {
        let Some(dir) = dir else {
            return;
        };
        let saved = if self.file.is_none()
            || self.file_len + data.len() as u64 > 2 * HISTORY_BYTES as u64
        {
            self.rewrite(dir, name)
        } else {
            self.file
                .as_mut()
                .map_or(Ok(()), |f| f.write_all(data))
                .map(|()| self.file_len += data.len() as u64)
        };
        if let Err(e) = saved {
            self.file = None;
            log::limited(
                Level::Warn,
                format_args!(
                    "console: cannot save the history of {name} in {}: {e}",
                    dir.display()
                ),
            );
        }
    }

    /// Replaces the history's file with what the history holds, and opens it for
    /// appending.
    fn rewrite(&mut self, dir: &Path, name: &str) -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{name}.log.tmp"));
        let (a, b) = self.history.bytes.as_slices();
        // Private, as the console is.
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
            .write_all(&[a, b].concat())?;
        let path = history_path(dir, name);
        fs::rename(&tmp, &path)?;
        self.file = Some(fs::OpenOptions::new().append(true).open(&path)?);
        self.file_len = self.history.len() as u64;
        Ok(())
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
    setup: RingSetup,
    requested_at: Instant,
}

#[derive(Debug)]
struct Dom {
    name: String,
    live: Option<Live>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Where the histories are kept as files (`None`: in memory only).
    dir: Option<PathBuf>,
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
    /// Bumped by every change dom0d's state file keeps ([`crate::state`]).
    changes: AtomicU64,
}

/// What [`Consoles::export`] returns: each domain's console (domid, name, record), the
/// histories, and the ended histories' names, oldest first.
pub type ConsolesExport = (
    Vec<(u32, String, ConsoleRecord)>,
    Vec<LogRecord>,
    Vec<String>,
);

/// A history's file in `dir`.
fn history_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

/// Evicts the oldest ended histories beyond [`KEPT_ENDED`] (their files too).
fn evict(inner: &mut Inner) {
    while inner.ended.len() > KEPT_ENDED {
        if let Some(old) = inner.ended.pop_front() {
            inner.logs.remove(&old);
            if let Some(dir) = &inner.dir {
                let _ = fs::remove_file(history_path(dir, &old));
            }
        }
    }
}

impl Consoles {
    /// No consoles yet; pages are released into `pool`.
    #[must_use]
    pub fn new(pool: Arc<PagePool>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            pool,
            changes: AtomicU64::new(0),
        }
    }

    fn bump(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the changes dom0d's state file keeps.
    #[must_use]
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Keeps every history as a file `NAME.log` in `dir` (appended to as output arrives,
    /// rewritten when it grows past twice [`HISTORY_BYTES`]), so that a restarted dom0d
    /// still has it; `None` keeps them in memory only.
    pub fn set_history_dir(&self, dir: Option<PathBuf>) {
        self.lock().dir = dir;
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
        setup: RingSetup,
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
                undo_ring(mv, &self.pool, setup);
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
                    file: None,
                    file_len: 0,
                },
            );
            // Clients of a replaced history see it closed (its sender is dropped).
            drop(old);
            // Its file starts again too.
            let dir = inner.dir.clone();
            if let Some(log) = inner.logs.get_mut(name) {
                log.save(dir.as_deref(), name, &[]);
            }
        }
        self.bump();
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

    /// The consoles and histories, for dom0d's state file: each domain's page and ports,
    /// each history's bookkeeping (its bytes are in its file), and the ended histories'
    /// names, oldest first.
    #[must_use]
    pub fn export(&self) -> ConsolesExport {
        let inner = self.lock();
        let domains = inner
            .domains
            .iter()
            .map(|(&domid, dom)| {
                let rec = ConsoleRecord {
                    ring: dom.live.as_ref().map(|l| l.setup.record()),
                    requested_unix_ms: dom.live.as_ref().map_or_else(crate::state::unix_ms, |l| {
                        crate::state::instant_to_unix_ms(l.requested_at)
                    }),
                };
                (domid, dom.name.clone(), rec)
            })
            .collect();
        let logs = inner
            .logs
            .iter()
            .map(|(name, l)| LogRecord {
                name: name.clone(),
                total: l.history.total(),
                file_bytes: l.file_len,
                domid: l.domid,
                last_domid: l.last_domid,
                phase: match l.phase {
                    Phase::Live => LogPhase::Live,
                    Phase::Restarting => LogPhase::Restarting,
                    Phase::Ended => LogPhase::Ended,
                },
                disabled: l.disabled.clone(),
                first_byte_ms: l.first_byte_ms,
            })
            .collect();
        (domains, logs, inner.ended.iter().cloned().collect())
    }

    /// Takes over what an earlier dom0d recorded ([`crate::state`]): the histories `logs`
    /// (their bytes read back from their files; files of no history are removed), the
    /// ended ones' order, and the consoles of the domains still there, whose pages are
    /// mapped again from their slots (a page that cannot be is released, and that
    /// console disabled). Call once, on an empty set of consoles.
    pub fn restore(
        &self,
        mv: &dyn Microvisor,
        logs: Vec<LogRecord>,
        ended: Vec<String>,
        live: Vec<(u32, String, ConsoleRecord)>,
    ) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let dir = inner.dir.clone();
        let fresh = |inner: &mut Inner, history: History, domid: Option<u32>, last_domid| {
            inner.next_id += 1;
            let (seq, _) = watch::channel(0);
            Log {
                id: inner.next_id,
                history,
                domid,
                last_domid,
                phase: Phase::Live,
                owner: None,
                disabled: None,
                first_byte_ms: None,
                seq,
                file: None,
                file_len: 0,
            }
        };
        for rec in logs {
            let bytes = dir
                .as_ref()
                .and_then(|d| fs::read(history_path(d, &rec.name)).ok())
                .unwrap_or_default();
            let len = bytes.len() as u64;
            // Output appended after the record was written counts too.
            let total = match len.checked_sub(rec.file_bytes) {
                Some(more) => rec.total + more,
                None => rec.total,
            };
            let mut log = fresh(
                inner,
                History::with(&bytes, total),
                rec.domid,
                rec.last_domid,
            );
            log.phase = match rec.phase {
                LogPhase::Live => Phase::Live,
                LogPhase::Restarting => Phase::Restarting,
                LogPhase::Ended => Phase::Ended,
            };
            log.disabled = rec.disabled;
            log.first_byte_ms = rec.first_byte_ms;
            log.file_len = len;
            inner.logs.insert(rec.name, log);
        }
        inner.ended = ended
            .into_iter()
            .filter(|n| inner.logs.contains_key(n))
            .collect();
        evict(inner);
        if let Some(dir) = &dir {
            for f in crate::state::file_names(dir) {
                let stray = match f.strip_suffix(".log") {
                    Some(name) => !inner.logs.contains_key(name),
                    None => f.ends_with(".tmp"),
                };
                if stray {
                    let _ = fs::remove_file(dir.join(&f));
                }
            }
        }
        for (domid, name, rec) in live {
            let live = rec.ring.and_then(|r| {
                let setup = match RingSetup::adopt(mv, &self.pool, RingKind::Console, domid, r) {
                    Ok(setup) => setup,
                    Err(why) => {
                        log::write(
                            Level::Warn,
                            format_args!(
                                "console: {}: cannot map its console again ({why}); its console is disabled",
                                domain_label(domid, &name)
                            ),
                        );
                        return None;
                    }
                };
                match ConsoleBack::new(Arc::clone(&setup.page.mem)) {
                    Ok(back) => Some(Live {
                        back,
                        setup,
                        requested_at: crate::state::unix_ms_to_instant(rec.requested_unix_ms),
                    }),
                    Err(e) => {
                        log::write(
                            Level::Error,
                            format_args!("console: {}: {e}", domain_label(domid, &name)),
                        );
                        undo_ring(mv, &self.pool, setup);
                        None
                    }
                }
            });
            if !inner.logs.contains_key(&name) {
                let log = fresh(inner, History::default(), Some(domid), domid);
                inner.logs.insert(name.clone(), log);
            }
            if let Some(log) = inner.logs.get_mut(&name) {
                if live.is_none() && log.disabled.is_none() {
                    log.disabled = Some("its console was lost when dom0d restarted".to_owned());
                }
                log.domid = Some(domid);
                log.phase = Phase::Live;
            }
            if let Some(l) = &live {
                inner.ports.insert(l.setup.port, domid);
                // The guest may wait for room the earlier dom0d made without saying so.
                notify(mv, &l.setup, "a restart");
            }
            inner.domains.insert(domid, Dom { name, live });
        }
        self.bump();
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
        self.bump();
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
            evict(&mut inner);
            self.bump();
            return;
        }
        log.bump();
        self.bump();
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
            evict(inner);
            self.bump();
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
                    self.bump();
                }
                log.history.push(&got);
                log.save(inner.dir.as_deref(), &dom.name, &got);
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
        self.bump();
        self.release(mv, live);
    }

    fn release(&self, mv: &dyn Microvisor, live: Live) {
        let Live { back, setup, .. } = live;
        drop(back);
        undo_ring(mv, &self.pool, setup);
    }
}

/// Signals the guest's console port; a failure is logged (rate-limited) and otherwise
/// ignored: the guest polls or gets the next signal.
fn notify(mv: &dyn Microvisor, setup: &RingSetup, what: &str) {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use shared_abi::control::ControlOp;
    use shared_abi::io::console::OUT_PROD;

    use super::*;
    use crate::builder::test_elf::{Seg, pvh_elf};
    use crate::builder::{self, Options};
    use crate::config::{DomainConfig, OnEvent};
    use crate::fake::FakeMicrovisor;
    use crate::microvisor::{self, evtchn_take_pending};

    /// A fake microvisor, the consoles, and a kernel to build domains from.
    struct Rig {
        fake: FakeMicrovisor,
        consoles: Consoles,
        _dir: tempfile::TempDir,
        kernel: String,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k.elf");
        let seg = Seg {
            paddr: 0x10_0000,
            data: vec![0x90; 16],
            mem: 4096,
        };
        std::fs::write(&kernel, pvh_elf(0x10_0000, &[seg])).unwrap();
        Rig {
            fake: FakeMicrovisor::new(),
            consoles: Consoles::new(Arc::new(PagePool::default())),
            kernel: kernel.to_str().unwrap().to_owned(),
            _dir: dir,
        }
    }

    impl Rig {
        /// Builds `name` (2 MiB) and hands its console over; returns the domid. Its
        /// xenstore page is not under test here and is handed back at once
        /// (`crate::xenstored` tests both together).
        fn create(&self, name: &str, restart: bool) -> u32 {
            let config = DomainConfig {
                name: name.into(),
                kernel: self.kernel.clone(),
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
            let built = builder::create(
                &self.fake,
                self.consoles.pool(),
                &config,
                Options::default(),
                &StdMutex::new(None),
            )
            .unwrap();
            let domid = built.report.domid.unwrap();
            builder::undo_ring(&self.fake, self.consoles.pool(), built.store.unwrap());
            self.consoles.register(
                &self.fake,
                name,
                built.console.unwrap(),
                Instant::now(),
                restart,
            );
            domid
        }

        /// What dom0d does on EVENT_EVTCHN.
        fn pump(&self) {
            let ports = evtchn_take_pending(&self.fake).unwrap();
            assert!(self.consoles.on_ports(&self.fake, &ports).is_empty());
        }

        fn history(&self, reference: &str) -> Vec<u8> {
            let log = self.consoles.resolve(reference).unwrap();
            let opened = self.consoles.open(&log).unwrap();
            self.consoles
                .read_since(&log, opened.start, usize::MAX)
                .bytes
        }

        fn destroy(&self, domid: u32) {
            self.fake
                .control(ControlOp::DomainDestroy as u64, u64::from(domid), &mut [])
                .unwrap();
        }

        /// The DomU's console port.
        fn guest_port(&self, domid: u32) -> u32 {
            let p = self
                .fake
                .param(domid, shared_abi::hvm::HVM_PARAM_CONSOLE_EVTCHN)
                .unwrap();
            u32::try_from(p).unwrap()
        }
    }

    #[test]
    fn history_keeps_the_last_64_kib() {
        let mut h = History::default();
        assert!(h.is_empty());
        h.push(b"abc");
        assert_eq!(h.since(0, 10), (0, b"abc".to_vec()));
        assert_eq!(h.since(1, 1), (0, b"b".to_vec()));
        assert_eq!(h.since(99, 10), (0, Vec::new()));
        let big: Vec<u8> = (0..HISTORY_BYTES + 100).map(|i| (i % 251) as u8).collect();
        h.push(&big);
        assert_eq!(h.len(), HISTORY_BYTES);
        assert_eq!(h.total(), 3 + big.len() as u64);
        assert_eq!(h.start(), 103);
        // A reader at 0 lost what was dropped, and gets the oldest byte kept next.
        let (skipped, bytes) = h.since(0, 4);
        assert_eq!(skipped, 103);
        assert_eq!(bytes, big[100..104]);
        let (_, all) = h.since(h.start(), usize::MAX);
        assert_eq!(all, big[100..]);
        // Oldest first: more pushes drop from the front.
        h.push(b"tail");
        assert_eq!(h.len(), HISTORY_BYTES);
        assert!(h.since(h.total() - 4, 9).1 == b"tail");
    }

    #[test]
    fn output_is_drained_on_events_and_the_guest_is_signalled() {
        let r = rig();
        let domid = r.create("web", false);
        let port = r.guest_port(domid);
        assert_eq!(r.fake.console_write(domid, b"booting\r\n"), Some(9));
        r.pump();
        assert_eq!(r.history("web"), b"booting\r\n");
        assert_eq!(r.history(&domid.to_string()), b"booting\r\n");
        // The guest is told its ring has room again.
        assert_eq!(r.fake.notified(domid, port), 1);
        let s = r.consoles.summary(domid).unwrap();
        assert_eq!((s.total_bytes, s.history_bytes), (9, 9));
        assert!(s.first_byte_ms.is_some());
        assert_eq!(s.disabled, None);
        // More output than the ring holds arrives as the guest refills it.
        let mut sent = Vec::new();
        for round in 0..10u8 {
            let chunk = vec![b'a' + round; 1500];
            assert_eq!(r.fake.console_write(domid, &chunk), Some(1500));
            sent.extend_from_slice(&chunk);
            r.pump();
        }
        assert_eq!(r.history("web")[9..], sent[..]);
    }

    #[test]
    fn output_written_before_the_register_is_not_lost() {
        let r = rig();
        let domid = r.create("web", false);
        r.consoles.domain_gone(&r.fake, domid, true);
        // The builder's console of a restart, before dom0d hands it over: the guest may
        // already print.
        let config = DomainConfig {
            name: "web".into(),
            kernel: r.kernel.clone(),
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
        r.destroy(domid);
        let built = builder::create(
            &r.fake,
            r.consoles.pool(),
            &config,
            Options::default(),
            &StdMutex::new(None),
        )
        .unwrap();
        let new = built.report.domid.unwrap();
        builder::undo_ring(&r.fake, r.consoles.pool(), built.store.unwrap());
        assert_eq!(r.fake.console_write(new, b"early"), Some(5));
        r.consoles
            .register(&r.fake, "web", built.console.unwrap(), Instant::now(), true);
        assert_eq!(r.history("web"), b"early");
    }

    #[test]
    fn the_last_output_is_drained_after_the_domain_is_destroyed() {
        let r = rig();
        let free = r.fake.mem_free_kib();
        let domid = r.create("hello", false);
        // The guest prints and powers off before dom0d saw an event.
        assert_eq!(r.fake.console_write(domid, b"bye\r\n"), Some(5));
        r.fake.shut_down(domid, 0);
        r.destroy(domid);
        r.consoles.domain_gone(&r.fake, domid, false);
        assert_eq!(r.history("hello"), b"bye\r\n");
        // Everything is given back: page, slot, port, memory.
        assert_eq!(r.fake.page_maps(), 0);
        assert!(r.fake.foreign_slots().is_empty());
        assert!(r.fake.dom0_ports().is_empty());
        assert_eq!(r.consoles.pool().in_use(), 0);
        assert_eq!(r.fake.mem_free_kib(), free);
        assert!(!r.consoles.any_live());
        // The history is still there by name and by the last domid, and says it ended.
        let log = r.consoles.resolve(&domid.to_string()).unwrap();
        assert_eq!(log.name, "hello");
        let opened = r.consoles.open(&log).unwrap();
        assert_eq!((opened.domid, opened.last_domid), (None, domid));
        assert_eq!(
            r.consoles.read_since(&log, 0, 100).end,
            Some(ConsoleEnd::DomainGone)
        );
        assert_eq!(r.consoles.summary(domid), None);
        // Gone twice is harmless.
        r.consoles.domain_gone(&r.fake, domid, false);
    }

    #[test]
    fn a_sweep_drains_and_ends_consoles_of_vanished_domains() {
        let r = rig();
        let a = r.create("a", false);
        let b = r.create("b", false);
        assert_eq!(r.fake.console_write(a, b"from a"), Some(6));
        assert_eq!(r.fake.console_write(b, b"from b"), Some(6));
        // b is destroyed behind dom0d's back.
        r.destroy(b);
        let (listed, _) = microvisor::list_domains(&r.fake, 0).unwrap();
        r.consoles.sweep(&r.fake, &listed);
        assert_eq!(r.history("a"), b"from a");
        assert_eq!(r.history("b"), b"from b");
        assert!(r.consoles.summary(a).is_some());
        assert!(r.consoles.summary(b).is_none());
        assert_eq!(r.fake.page_maps(), 1);
    }

    #[test]
    fn a_hostile_ring_disables_only_its_console() {
        let r = rig();
        let bad = r.create("bad", false);
        let good = r.create("good", false);
        assert_eq!(r.fake.console_write(bad, b"ok so far"), Some(9));
        r.pump();
        // The guest claims 3000 bytes in a 2048-byte ring.
        let page = r.fake.guest_page(bad, 511).unwrap();
        use pv_drivers::SharedMem;
        page.store_release_u32(OUT_PROD, 9 + 3000).unwrap();
        assert!(r.fake.guest_send(bad, r.guest_port(bad)));
        assert_eq!(r.fake.console_write(good, b"fine"), Some(4));
        r.pump();
        let s = r.consoles.summary(bad).unwrap();
        let why = s.disabled.unwrap();
        assert!(why.contains("overrun"), "{why}");
        assert_eq!(r.history("bad"), b"ok so far", "the history stays");
        // Its page, slot and port are given up at once; the other console goes on.
        assert_eq!(r.fake.page_maps(), 1);
        assert_eq!(r.fake.dom0_ports().len(), 1);
        assert_eq!(r.history("good"), b"fine");
        let log = r.consoles.resolve("bad").unwrap();
        assert!(matches!(
            r.consoles.read_since(&log, 0, 10).end,
            Some(ConsoleEnd::Disabled { .. })
        ));
        // Signals from it go nowhere now; draining everything is harmless.
        assert!(!r.fake.guest_send(bad, r.guest_port(bad)));
        r.consoles.drain_all(&r.fake);
        // Destroying it later still cleans up.
        r.destroy(bad);
        r.consoles.domain_gone(&r.fake, bad, false);
        assert!(r.consoles.summary(bad).is_none());
    }

    #[test]
    fn a_hostile_input_index_disables_the_console_too() {
        let r = rig();
        let domid = r.create("x", false);
        let log = r.consoles.resolve("x").unwrap();
        let (token, _) = r.consoles.attach(&log, false).unwrap();
        let page = r.fake.guest_page(domid, 511).unwrap();
        use pv_drivers::SharedMem;
        page.store_release_u32(shared_abi::io::console::IN_CONS, 77_777)
            .unwrap();
        assert_eq!(
            r.consoles.write_input(&r.fake, &log, token, b"x"),
            Err(InputRefused::NoConsole)
        );
        assert!(r.consoles.summary(domid).unwrap().disabled.is_some());
        assert_eq!(r.fake.page_maps(), 0);
    }

    #[test]
    fn a_restart_continues_the_history_and_a_new_create_starts_one() {
        let r = rig();
        let first = r.create("web", false);
        assert_eq!(r.fake.console_write(first, b"run 1;"), Some(6));
        r.destroy(first);
        r.consoles.domain_gone(&r.fake, first, true);
        let before = r.consoles.resolve("web").unwrap();
        let second = r.create("web", true);
        assert_eq!(r.fake.console_write(second, b"run 2;"), Some(6));
        r.pump();
        assert_eq!(r.history("web"), b"run 1;run 2;");
        assert_eq!(r.consoles.resolve("web").unwrap(), before, "same history");
        // A failed restart ends it.
        r.destroy(second);
        r.consoles.domain_gone(&r.fake, second, true);
        r.consoles.restart_failed("web");
        assert_eq!(
            r.consoles.read_since(&before, 0, 1).end,
            Some(ConsoleEnd::DomainGone)
        );
        // A fresh create of the name starts a new history; followers of the old one see
        // it closed.
        let old = r.consoles.open(&before).unwrap();
        let third = r.create("web", false);
        assert_eq!(r.history("web"), b"");
        assert_ne!(r.consoles.resolve("web").unwrap(), before);
        assert!(old.changes.has_changed().is_err());
        assert_eq!(
            r.consoles.read_since(&before, 0, 1).end,
            Some(ConsoleEnd::DomainGone)
        );
        assert_eq!(r.consoles.summary(third).unwrap().total_bytes, 0);
    }

    #[test]
    fn ended_histories_are_kept_up_to_a_limit() {
        let r = rig();
        for i in 0..KEPT_ENDED + 2 {
            let name = format!("d{i}");
            let domid = r.create(&name, false);
            r.destroy(domid);
            r.consoles.domain_gone(&r.fake, domid, false);
        }
        assert!(r.consoles.resolve("d0").is_none());
        assert!(r.consoles.resolve("d1").is_none());
        assert!(r.consoles.resolve("d2").is_some());
        assert!(
            r.consoles
                .resolve(&format!("d{}", KEPT_ENDED + 1))
                .is_some()
        );
        assert!(r.consoles.resolve("nope").is_none());
        assert!(r.consoles.resolve("4000").is_none());
    }

    #[test]
    fn one_writer_at_a_time_and_input_reaches_the_guest() {
        let r = rig();
        let domid = r.create("echo", false);
        let port = r.guest_port(domid);
        let log = r.consoles.resolve("echo").unwrap();
        let (first, took) = r.consoles.attach(&log, false).unwrap();
        assert!(!took);
        assert!(r.consoles.summary(domid).unwrap().attached);
        assert_eq!(
            r.consoles.attach(&log, false),
            Err(Busy { domid: Some(domid) })
        );
        assert_eq!(r.consoles.write_input(&r.fake, &log, first, b"hi\r"), Ok(3));
        assert_eq!(r.fake.notified(domid, port), 1);
        assert_eq!(r.fake.console_read_input(domid).unwrap(), b"hi\r");
        // The input ring holds 1024 bytes; the rest waits.
        assert_eq!(
            r.consoles.write_input(&r.fake, &log, first, &[b'x'; 1500]),
            Ok(1024)
        );
        assert_eq!(r.consoles.write_input(&r.fake, &log, first, b"y"), Ok(0));
        // A forced attach takes over: the first client may no longer write.
        let (second, took) = r.consoles.attach(&log, true).unwrap();
        assert!(took);
        assert_eq!(r.consoles.read_since(&log, 0, 0).owner, Some(second));
        assert_eq!(
            r.consoles.write_input(&r.fake, &log, first, b"z"),
            Err(InputRefused::NotOwner)
        );
        // The first client's detach does not free the second's hold; the second's does.
        r.consoles.detach(&log, first);
        assert_eq!(r.consoles.read_since(&log, 0, 0).owner, Some(second));
        r.consoles.detach(&log, second);
        assert_eq!(r.consoles.read_since(&log, 0, 0).owner, None);
        assert!(r.consoles.attach(&log, false).is_ok());
        // No input for a domain that is gone.
        r.destroy(domid);
        r.consoles.domain_gone(&r.fake, domid, false);
        let (token, _) = r.consoles.attach(&log, false).unwrap();
        assert_eq!(
            r.consoles.write_input(&r.fake, &log, token, b"late"),
            Err(InputRefused::NoConsole)
        );
    }

    #[test]
    fn a_long_stream_keeps_only_the_last_64_kib() {
        let r = rig();
        let domid = r.create("flood", false);
        let page = r.fake.guest_page(domid, 511).unwrap();
        use pv_drivers::SharedMem;
        // A full ring each time dom0d looks, 100 times (the bytes are whatever the ring
        // holds; only the counts matter here).
        let mut prod = 0u32;
        for _ in 0..100 {
            prod = prod.wrapping_add(2048);
            page.store_release_u32(OUT_PROD, prod).unwrap();
            r.consoles.drain_all(&r.fake);
        }
        let s = r.consoles.summary(domid).unwrap();
        assert_eq!(s.total_bytes, 100 * 2048);
        assert_eq!(s.history_bytes, HISTORY_BYTES as u64);
        assert_eq!(s.disabled, None);
    }
}
