//! dom0d's `on_poweroff` / `on_reboot` / `on_crash` handling.
//!
//! dom0d keeps the effective [`DomainConfig`] of every domain it built ([`Supervisor`],
//! keyed by domid; saved in its state file, so a restarted dom0d takes them over,
//! [`crate::state`]). Domains it did not build (Domain-0, the boot-time domains of the
//! bundle) are never touched.
//!
//! A sweep ([`Service::supervise_once`]) runs once at startup, after every create and
//! after every event mask from the microvisor (any bit; `EVENT_DOMAIN_STATE` is raised
//! whenever a domain is created, changes state, shuts down or crashes). It lists the
//! domains and, for each domain of the table that is now `shutdown` or `crashed`, applies
//! its action once:
//!
//! | how it ended | key |
//! |--------------|-----|
//! | shut down, reason `poweroff` | `on_poweroff` |
//! | shut down, reason `reboot` | `on_reboot` |
//! | crashed, or shut down for any other reason (`crash`, `watchdog`, `suspend`, `soft_reset`) | `on_crash` |
//!
//! dom0d has no save/restore and no soft reset, so a domain that stops with one of the
//! other reasons cannot be resumed: it is treated as a crash.
//!
//! - `destroy`: `DomainDestroy`, waiting until it is gone; the entry is forgotten.
//! - `preserve`: nothing; the domain stays listed as shut down or crashed until
//!   `dom0 destroy` (which forgets the entry).
//! - `restart`: destroy, then build it again from the stored config (same name, usually
//!   a new domid), not paused. Restarts are counted per name: a domain that would be
//!   restarted a [`RESTART_LIMIT`]+1-th time within [`RESTART_WINDOW`] (a crash or
//!   reboot loop) is destroyed instead and an error is logged, so a loop cannot spin
//!   forever.
//!
//! Each action is logged, e.g. `on_poweroff: domain 3 (hello) destroyed`, `on_crash:
//! domain 4 (x) restarted as domain 5`. A failed action is logged as an error and not
//! retried (the domain stays listed, as with `preserve`). Entries whose domain has
//! disappeared (or whose domid now holds another name) are dropped at the next sweep.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::{DomainConfig, OnEvent};
use crate::lifecycle;
use crate::log::{self, Level};
use crate::microvisor;
use crate::proto::{ApiError, CreateReport, Domain, Lifecycle, Reason, State, domain_label};
use crate::server::Service;

/// Restarts allowed within [`RESTART_WINDOW`]; the next one within the window is refused.
pub const RESTART_LIMIT: usize = 5;
/// The window [`RESTART_LIMIT`] counts restarts in.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Which of the `on_*` keys applies to a domain that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Shut down with reason `poweroff`: `on_poweroff`.
    Poweroff,
    /// Shut down with reason `reboot`: `on_reboot`.
    Reboot,
    /// Crashed, or shut down for another reason: `on_crash`.
    Crash,
}

impl Trigger {
    /// The trigger for `d`, or `None` while it has not ended.
    #[must_use]
    pub fn of(d: &Domain) -> Option<Self> {
        match (d.state, d.reason) {
            (State::Shutdown, Some(Reason::Poweroff)) => Some(Self::Poweroff),
            (State::Shutdown, Some(Reason::Reboot)) => Some(Self::Reboot),
            (State::Shutdown | State::Crashed, _) => Some(Self::Crash),
            _ => None,
        }
    }

    /// The config key, as in logs.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            Self::Poweroff => "on_poweroff",
            Self::Reboot => "on_reboot",
            Self::Crash => "on_crash",
        }
    }

    /// The action `config` asks for.
    #[must_use]
    pub fn action(self, config: &DomainConfig) -> OnEvent {
        match self {
            Self::Poweroff => config.on_poweroff,
            Self::Reboot => config.on_reboot,
            Self::Crash => config.on_crash,
        }
    }
}

/// What a sweep did with one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `destroy`: it is gone.
    Destroyed,
    /// `preserve`: left as it is.
    Preserved,
    /// `restart`: destroyed and built again as `domid`.
    Restarted {
        /// The new domain's id.
        domid: u32,
    },
    /// `restart`, but it was restarted too often: destroyed and not built again.
    GaveUp,
    /// The action failed (logged); the reason.
    Failed(String),
}

/// One action a sweep applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The domain that ended.
    pub domid: u32,
    /// Its name.
    pub name: String,
    /// Which key applied.
    pub trigger: Trigger,
    /// What happened.
    pub outcome: Outcome,
}

#[derive(Debug)]
struct Managed {
    config: DomainConfig,
    /// Times of the restarts within the last [`RESTART_WINDOW`].
    restarts: Vec<Instant>,
    /// The action for its current end was applied (preserve, or a failure).
    handled: bool,
}

/// The domains dom0d built, with their configs, and the wake-up for sweeps.
#[derive(Debug, Default)]
pub struct Supervisor {
    table: Mutex<BTreeMap<u32, Managed>>,
    wake: Notify,
    /// Bumped by every change dom0d's state file keeps ([`crate::state`]).
    changes: AtomicU64,
}

impl Supervisor {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Managed>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that dom0d built `domid` from `config`.
    pub fn adopt(&self, domid: u32, config: DomainConfig) {
        self.adopt_with(domid, config, Vec::new());
    }

    fn adopt_with(&self, domid: u32, config: DomainConfig, restarts: Vec<Instant>) {
        self.lock().insert(
            domid,
            Managed {
                config,
                restarts,
                handled: false,
            },
        );
        self.bump();
    }

    /// Forgets `domid` (it was destroyed).
    pub fn forget(&self, domid: u32) {
        if self.lock().remove(&domid).is_some() {
            self.bump();
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

    /// Every entry, for dom0d's state file.
    #[must_use]
    pub fn export(&self) -> Vec<(u32, crate::state::SupervisedRecord)> {
        self.lock()
            .iter()
            .map(|(&domid, m)| {
                let rec = crate::state::SupervisedRecord {
                    config: m.config.clone(),
                    restarts_unix_ms: m
                        .restarts
                        .iter()
                        .map(|t| crate::state::instant_to_unix_ms(*t))
                        .collect(),
                    handled: m.handled,
                };
                (domid, rec)
            })
            .collect()
    }

    /// Takes over the entry an earlier dom0d kept for `domid` ([`crate::state`]).
    pub fn restore(&self, domid: u32, rec: &crate::state::SupervisedRecord) {
        self.lock().insert(
            domid,
            Managed {
                config: rec.config.clone(),
                restarts: rec
                    .restarts_unix_ms
                    .iter()
                    .map(|&ms| crate::state::unix_ms_to_instant(ms))
                    .collect(),
                handled: rec.handled,
            },
        );
        self.bump();
    }

    /// The config `domid` was built from, if dom0d built it.
    #[must_use]
    pub fn config_of(&self, domid: u32) -> Option<DomainConfig> {
        self.lock().get(&domid).map(|m| m.config.clone())
    }

    /// The domids dom0d built and still tracks, ascending.
    #[must_use]
    pub fn managed(&self) -> Vec<u32> {
        self.lock().keys().copied().collect()
    }

    /// Asks for a sweep (kept if no sweep is waiting).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for [`Self::wake`].
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

/// Every domain, all pages.
pub(crate) fn all_domains(mv: &dyn microvisor::Microvisor) -> Result<Vec<Domain>, ApiError> {
    let mut all = Vec::new();
    let mut from = Some(0);
    while let Some(f) = from {
        let (domains, next) = microvisor::list_domains(mv, f)?;
        all.extend(domains);
        from = next;
    }
    Ok(all)
}

impl Service {
    /// Sweeps until the runtime ends: once now, then after every wake-up or event.
    pub async fn supervise(self: Arc<Self>) {
        loop {
            self.supervise_once().await;
            self.persist();
            tokio::select! {
                () = self.supervisor.woken() => {}
                () = self.events.changed() => {}
            }
        }
    }

    /// One sweep, as the module docs say; returns what it did.
    pub async fn supervise_once(&self) -> Vec<Applied> {
        let domains = match all_domains(&*self.mv) {
            Ok(d) => d,
            Err(e) => {
                log::limited(
                    Level::Warn,
                    format_args!("on_* actions: cannot list the domains: {e}"),
                );
                return Vec::new();
            }
        };
        // Console output first: a domain that printed and then ended is drained before its
        // action destroys it (the final drain after a destroy catches the rest).
        self.consoles.sweep(&*self.mv, &domains);
        self.xenstored.sweep(&*self.mv, &domains);
        self.sweep_backends(&domains);
        let listed: BTreeMap<u32, &Domain> = domains.iter().map(|d| (d.domid, d)).collect();
        let mut due = Vec::new();
        {
            let mut table = self.supervisor.lock();
            let before = table.len();
            table.retain(|domid, m| listed.get(domid).is_some_and(|d| d.name == m.config.name));
            if table.len() != before {
                self.supervisor.bump();
            }
            for (domid, m) in table.iter() {
                if m.handled {
                    continue;
                }
                if let Some(trigger) = listed.get(domid).and_then(|d| Trigger::of(d)) {
                    due.push((*domid, trigger, m.config.clone()));
                }
            }
        }
        let mut applied = Vec::new();
        for (domid, trigger, config) in due {
            let outcome = self.apply(domid, trigger, &config).await;
            applied.push(Applied {
                domid,
                name: config.name,
                trigger,
                outcome,
            });
        }
        applied
    }

    fn mark_handled(&self, domid: u32) {
        if let Some(m) = self.supervisor.lock().get_mut(&domid) {
            m.handled = true;
        }
        self.supervisor.bump();
    }

    async fn apply(&self, domid: u32, trigger: Trigger, config: &DomainConfig) -> Outcome {
        let key = trigger.key();
        let label = domain_label(domid, &config.name);
        let action = trigger.action(config);
        if action == OnEvent::Preserve {
            self.mark_handled(domid);
            log::write(Level::Info, format_args!("{key}: {label} preserved"));
            return Outcome::Preserved;
        }
        let restarts = if action == OnEvent::Restart {
            let now = Instant::now();
            let mut table = self.supervisor.lock();
            table.get_mut(&domid).map(|m| {
                m.restarts
                    .retain(|t| now.duration_since(*t) < RESTART_WINDOW);
                m.restarts.clone()
            })
        } else {
            None
        };
        self.release_backends(domid);
        match lifecycle::perform(&*self.mv, Lifecycle::Destroy, domid, &self.waits).await {
            Ok(_) | Err(ApiError::NoSuchDomain { .. }) => self.supervisor.forget(domid),
            Err(e) => {
                self.mark_handled(domid);
                log::write(
                    Level::Error,
                    format_args!("{key}: cannot destroy {label}: {e}; it stays listed"),
                );
                return Outcome::Failed(e.to_string());
            }
        }
        let restarting = restarts.as_ref().is_some_and(|r| r.len() < RESTART_LIMIT);
        self.consoles.domain_gone(&*self.mv, domid, restarting);
        self.devices_gone(domid);
        let Some(mut restarts) = restarts else {
            log::write(Level::Info, format_args!("{key}: {label} destroyed"));
            return Outcome::Destroyed;
        };
        if restarts.len() >= RESTART_LIMIT {
            log::write(
                Level::Error,
                format_args!(
                    "{key}: {label} destroyed and not restarted: it was restarted {} times within {} s",
                    restarts.len(),
                    RESTART_WINDOW.as_secs()
                ),
            );
            return Outcome::GaveUp;
        }
        let rebuilt = self
            .create_domain(config, false, false, Instant::now(), true)
            .await;
        if !matches!(rebuilt, Ok(CreateReport { domid: Some(_), .. })) {
            self.consoles.restart_failed(&config.name);
        }
        match rebuilt {
            Ok(report) => match report.domid {
                Some(new) => {
                    restarts.push(Instant::now());
                    self.supervisor.adopt_with(new, config.clone(), restarts);
                    log::write(
                        Level::Info,
                        format_args!("{key}: {label} restarted as domain {new}"),
                    );
                    Outcome::Restarted { domid: new }
                }
                None => Outcome::Failed("the builder returned no domain".to_owned()),
            },
            Err(e) => {
                log::write(
                    Level::Error,
                    format_args!("{key}: {label} destroyed, but building it again failed: {e}"),
                );
                Outcome::Failed(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::builder::test_elf::{Seg, pvh_elf};
    use crate::events::EventMonitor;
    use crate::fake::FakeMicrovisor;
    use crate::lifecycle::Waits;
    use crate::microvisor::Microvisor;
    use crate::proto::{Request, Response};

    const POWEROFF: u32 = 0;
    const REBOOT: u32 = 1;
    const WATCHDOG: u32 = 4;

    struct Rig {
        fake: Arc<FakeMicrovisor>,
        service: Arc<Service>,
        monitor: Arc<EventMonitor>,
        _dir: tempfile::TempDir,
        kernel: String,
    }

    fn rig() -> Rig {
        let fake = Arc::new(FakeMicrovisor::new());
        let monitor = Arc::new(EventMonitor::unavailable("test"));
        let mv: Arc<dyn Microvisor> = Arc::clone(&fake) as Arc<dyn Microvisor>;
        let service = Service::with_events(mv, Arc::clone(&monitor)).with_waits(Waits {
            pause: Duration::from_millis(200),
            destroy: Duration::from_millis(200),
            poll: Duration::from_millis(1),
        });
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k.elf");
        let seg = Seg {
            paddr: 0x10_0000,
            data: vec![0x90; 64],
            mem: 4096,
        };
        std::fs::write(&kernel, pvh_elf(0x10_0000, &[seg])).unwrap();
        let kernel = Path::new(&kernel).to_str().unwrap().to_owned();
        Rig {
            fake,
            service: Arc::new(service),
            monitor,
            _dir: dir,
            kernel,
        }
    }

    impl Rig {
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
                on_crash: OnEvent::Destroy,
                disks: Vec::new(),
                vifs: Vec::new(),
            }
        }

        async fn create(&self, config: &DomainConfig) -> u32 {
            let req = Request::Create {
                config: config.clone(),
                dry_run: false,
                paused: false,
            };
            match self.service.handle(&req).await {
                Response::Created(r) => r.domid.unwrap(),
                other => panic!("{other:?}"),
            }
        }

        fn domain(&self, domid: u32) -> Option<Domain> {
            microvisor::domain_info(&*self.fake, domid).ok()
        }

        fn by_name(&self, name: &str) -> Option<Domain> {
            all_domains(&*self.fake)
                .unwrap()
                .into_iter()
                .find(|d| d.name == name)
        }
    }

    fn one(applied: &[Applied]) -> &Applied {
        assert_eq!(applied.len(), 1, "{applied:?}");
        &applied[0]
    }

    #[tokio::test]
    async fn a_domain_that_powers_off_is_destroyed_by_default() {
        let r = rig();
        let domid = r.create(&r.config("hello")).await;
        assert_eq!(r.service.supervisor.managed(), vec![domid]);
        assert!(r.service.supervise_once().await.is_empty());
        assert!(r.fake.shut_down(domid, POWEROFF));
        let applied = r.service.supervise_once().await;
        assert_eq!(
            one(&applied),
            &Applied {
                domid,
                name: "hello".into(),
                trigger: Trigger::Poweroff,
                outcome: Outcome::Destroyed,
            }
        );
        assert_eq!(r.domain(domid), None);
        assert!(r.service.supervisor.managed().is_empty());
        // A crash with the default on_crash is a destroy too.
        let domid = r.create(&r.config("again")).await;
        r.fake.crash(domid);
        let applied = r.service.supervise_once().await;
        assert_eq!(one(&applied).outcome, Outcome::Destroyed);
        assert_eq!(one(&applied).trigger, Trigger::Crash);
        assert_eq!(r.domain(domid), None);
    }

    /// The console history of `name`, as `dom0 logs` would print it.
    fn history(r: &Rig, name: &str) -> Vec<u8> {
        let c = &r.service.consoles;
        let log = c.resolve(name).unwrap();
        let opened = c.open(&log).unwrap();
        c.read_since(&log, opened.start, usize::MAX).bytes
    }

    #[tokio::test]
    async fn output_printed_just_before_a_poweroff_is_kept() {
        let r = rig();
        let free = r.fake.mem_free_kib();
        let domid = r.create(&r.config("hello")).await;
        // The guest greets and powers off at once; dom0d sees only the state event.
        assert_eq!(
            r.fake.console_write(domid, b"Hello from hello\r\n"),
            Some(18)
        );
        assert!(r.fake.shut_down(domid, POWEROFF));
        let applied = r.service.supervise_once().await;
        assert_eq!(one(&applied).outcome, Outcome::Destroyed);
        assert_eq!(history(&r, "hello"), b"Hello from hello\r\n");
        // Destroyed, and its console page, slot and port are gone with it.
        assert_eq!(r.fake.mem_free_kib(), free);
        assert_eq!(r.fake.page_maps(), 0);
        assert!(r.fake.dom0_ports().is_empty());
    }

    #[tokio::test]
    async fn a_restart_keeps_the_console_history() {
        let r = rig();
        let first = r.create(&r.config("phoenix")).await;
        assert_eq!(r.fake.console_write(first, b"boot 1\r\n"), Some(8));
        r.fake.shut_down(first, REBOOT);
        let applied = r.service.supervise_once().await;
        let Outcome::Restarted { domid: second } = one(&applied).outcome else {
            panic!("{applied:?}");
        };
        assert_eq!(r.fake.console_write(second, b"boot 2\r\n"), Some(8));
        r.service.consoles.drain_all(&*r.fake);
        assert_eq!(history(&r, "phoenix"), b"boot 1\r\nboot 2\r\n");
        let s = r.service.consoles.summary(second).unwrap();
        assert_eq!(s.total_bytes, 16);
        assert!(s.first_byte_ms.is_some());
        // Only the new domain's console and xenstore pages and ports are left.
        assert_eq!(r.fake.page_maps(), 2, "only the new domain's pages");
        assert!(
            r.fake.foreign_slots().iter().all(|&(_, d, _)| d == second),
            "{:?}",
            r.fake.foreign_slots()
        );
        assert!(
            r.fake
                .dom0_ports()
                .iter()
                .all(|(_, peer)| peer.is_some_and(|(d, _)| d == second)),
            "{:?}",
            r.fake.dom0_ports()
        );
        assert_eq!(r.fake.dom0_ports().len(), 2);
        assert!(r.service.xenstored.serves(second));
        assert!(!r.service.xenstored.serves(first));
    }

    #[tokio::test]
    async fn boot_time_domains_are_left_alone() {
        let r = rig();
        r.fake.shut_down(1, POWEROFF);
        r.fake.crash(2);
        assert!(r.service.supervise_once().await.is_empty());
        assert_eq!(r.domain(1).unwrap().state, State::Shutdown);
        assert_eq!(r.domain(2).unwrap().state, State::Crashed);
        assert_eq!(r.domain(0).unwrap().state, State::Running);
    }

    #[tokio::test]
    async fn preserve_leaves_it_listed_until_destroyed() {
        let r = rig();
        let mut config = r.config("keep");
        config.on_poweroff = OnEvent::Preserve;
        let domid = r.create(&config).await;
        r.fake.shut_down(domid, POWEROFF);
        let applied = r.service.supervise_once().await;
        assert_eq!(one(&applied).outcome, Outcome::Preserved);
        // Once: later sweeps leave it be.
        assert!(r.service.supervise_once().await.is_empty());
        let d = r.domain(domid).unwrap();
        assert_eq!(
            (d.state, d.reason),
            (State::Shutdown, Some(Reason::Poweroff))
        );
        assert_eq!(r.service.supervisor.config_of(domid), Some(config));
        match r.service.handle(&Request::Destroy { domid }).await {
            Response::Lifecycle(done) => assert_eq!(done.state, None),
            other => panic!("{other:?}"),
        }
        assert!(r.service.supervisor.managed().is_empty());
    }

    #[tokio::test]
    async fn restart_builds_it_again_under_the_same_name() {
        let r = rig();
        let mut config = r.config("phoenix");
        config.on_crash = OnEvent::Restart;
        let first = r.create(&config).await;
        // on_reboot defaults to restart.
        r.fake.shut_down(first, REBOOT);
        let applied = r.service.supervise_once().await;
        let Outcome::Restarted { domid: second } = one(&applied).outcome else {
            panic!("{applied:?}");
        };
        assert_eq!(one(&applied).trigger, Trigger::Reboot);
        let d = r.by_name("phoenix").unwrap();
        assert_eq!((d.domid, d.state), (second, State::Running));
        assert_eq!(r.service.supervisor.managed(), vec![second]);
        assert_eq!(r.service.supervisor.config_of(second), Some(config));
        // A watchdog is handled as a crash: on_crash = restart.
        r.fake.shut_down(second, WATCHDOG);
        let applied = r.service.supervise_once().await;
        assert_eq!(one(&applied).trigger, Trigger::Crash);
        assert!(matches!(one(&applied).outcome, Outcome::Restarted { .. }));
        assert_eq!(r.by_name("phoenix").unwrap().state, State::Running);
    }

    #[tokio::test]
    async fn a_crash_loop_stops_restarting() {
        let r = rig();
        let mut config = r.config("loop");
        config.on_crash = OnEvent::Restart;
        let mut domid = r.create(&config).await;
        for _ in 0..RESTART_LIMIT {
            r.fake.crash(domid);
            let applied = r.service.supervise_once().await;
            match one(&applied).outcome {
                Outcome::Restarted { domid: new } => domid = new,
                ref other => panic!("{other:?}"),
            }
        }
        r.fake.crash(domid);
        let applied = r.service.supervise_once().await;
        assert_eq!(one(&applied).outcome, Outcome::GaveUp);
        assert_eq!(r.by_name("loop"), None);
        assert!(r.service.supervisor.managed().is_empty());
        assert!(r.service.supervise_once().await.is_empty());
    }

    #[tokio::test]
    async fn a_failed_rebuild_leaves_it_destroyed() {
        let r = rig();
        let config = r.config("gone");
        let domid = r.create(&config).await;
        std::fs::remove_file(&r.kernel).unwrap();
        r.fake.shut_down(domid, REBOOT);
        let applied = r.service.supervise_once().await;
        assert!(
            matches!(one(&applied).outcome, Outcome::Failed(_)),
            "{applied:?}"
        );
        assert_eq!(r.by_name("gone"), None);
        assert!(r.service.supervisor.managed().is_empty());
    }

    #[tokio::test]
    async fn events_trigger_sweeps() {
        let r = rig();
        let task = tokio::spawn(Arc::clone(&r.service).supervise());
        let domid = r.create(&r.config("hello")).await;
        r.fake.shut_down(domid, POWEROFF);
        // What the event task does with the device's mask.
        r.monitor.record(r.fake.take_events());
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.domain(domid).is_some() {
            assert!(Instant::now() < deadline, "not destroyed after the event");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(r.service.supervisor.managed().is_empty());
        task.abort();
    }

    #[test]
    fn which_key_applies() {
        let d = |state, reason| Domain {
            domid: 3,
            name: "x".into(),
            state,
            reason,
            privileged: false,
            vcpus: 1,
            pcpu: 1,
            mem_kib: 2048,
            cpu_time_ns: 0,
        };
        let cases = [
            (State::Running, None, None),
            (State::Paused, None, None),
            (
                State::Shutdown,
                Some(Reason::Poweroff),
                Some(Trigger::Poweroff),
            ),
            (State::Shutdown, Some(Reason::Reboot), Some(Trigger::Reboot)),
            (State::Shutdown, Some(Reason::Crash), Some(Trigger::Crash)),
            (
                State::Shutdown,
                Some(Reason::Watchdog),
                Some(Trigger::Crash),
            ),
            (State::Shutdown, Some(Reason::Suspend), Some(Trigger::Crash)),
            (State::Crashed, None, Some(Trigger::Crash)),
        ];
        for (state, reason, want) in cases {
            assert_eq!(Trigger::of(&d(state, reason)), want, "{state:?} {reason:?}");
        }
    }
}
