//! dom0d's durable state, so that a restarted dom0d finds the domains an earlier one built
//! and serves them again: their consoles, xenstore, disks and vifs, and their `on_*`
//! actions.
//!
//! **Why this works.** What dom0d holds in the microvisor (domain 0's event-channel ports,
//! the foreign-window slots of its console and xenstore pages, the grant mappings of its
//! rings) belongs to domain 0, not to the dom0d process: `microvisor.ko` frees nothing
//! when the device is closed, so after dom0d dies (SIGKILL included) every slot stays
//! filled and every port bound. A new dom0d `mmap`s the same slots again and keeps using
//! the same ports. The ring positions live in the shared pages: the console and xenstore
//! byte rings resume from their indices, and the block and net back-ends resume from the
//! responses they published (`rsp_prod`), so requests the dead dom0d had taken but not
//! answered are served again (harmless for block reads, writes and flushes, and for
//! network packets). Each response is published as soon as it is written, so a restart
//! never meets a slot that holds an unpublished response.
//!
//! **What is kept** ([`StateFile`], JSON, `STATE_DIR/state.json`, written atomically:
//! temp file and rename): per domain dom0d built, its id, name, effective config and
//! restart bookkeeping, its console and xenstore pages (slot, frame, both ports), the part
//! of a xenstore request already taken from its ring and the replies queued for it, and
//! per disk and vif the back-end's phase with its ring slots and port; the whole xenstore
//! tree (values, permissions), every connection's watches and open transactions; and the
//! console histories' bookkeeping. The histories themselves are files
//! (`STATE_DIR/consoles/NAME.log`), appended to as output is drained. The file is written
//! after each batch of changes (the end of an event, a poll, a request, a sweep), only if
//! something it holds changed ([`Service::persist`]).
//!
//! **At startup** ([`Service::restore`]) dom0d reads the file (an unreadable file, one
//! that does not parse or of another version is logged and ignored: a clean start),
//! lists the domains and re-adopts every recorded domain that is still there under the
//! same name: its slots are taken out of the page pool, its pages mapped again, its
//! console, xenstore connection, disks (the image files opened again) and vifs (a new TAP
//! of the same name on the bridge) served in the phase recorded, its `on_*` entry
//! restored. Recorded domains that are gone (or dying) have their slots unmapped, ports
//! closed and xenstore nodes removed. Domains not in the file are left alone. Every
//! adopted ring's guest is signalled once (the dead dom0d may have published responses
//! and died before signalling them), then the pending ports are taken and every back-end
//! is stepped once, for what arrived while no dom0d ran.
//!
//! **What is lost** in a crash: frames queued in dom0d for a guest (the network drops
//! them; TCP resends), console clients (they reconnect), a xenstore reply or state change
//! made in the microseconds between a request and the next save, and a connect the
//! back-end made in that window (that device must be reconnected by the guest).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::DomainConfig;
use crate::grants::grant_unmap;
use crate::log::{self, Level};
use crate::microvisor::{Microvisor, evtchn_close, foreign_unmap};
use crate::netback::VifSpec;
use crate::proto::{Domain, State, domain_label, errno_text};
use crate::server::Service;
use crate::xenstore::store::{Store, StoreImage};

/// The version of [`StateFile`]; a file of another version is ignored.
pub const STATE_VERSION: u32 = 1;
/// Where dom0d keeps its state by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dom0";
/// The state file, in the state directory.
pub const STATE_FILE: &str = "state.json";
/// The console histories' directory, in the state directory.
pub const CONSOLE_DIR: &str = "consoles";
/// The largest state file read back.
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// Bytes in the state file: a JSON string when they are UTF-8, else `{"hex": "..."}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum BytesRepr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => BytesRepr::Text(text.to_owned()),
            Err(_) => BytesRepr::Hex {
                hex: self.0.iter().map(|b| format!("{b:02x}")).collect(),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match BytesRepr::deserialize(d)? {
            BytesRepr::Text(t) => Ok(Self(t.into_bytes())),
            BytesRepr::Hex { hex } => {
                if hex.len() % 2 != 0 {
                    return Err(serde::de::Error::custom("odd number of hex digits"));
                }
                (0..hex.len())
                    .step_by(2)
                    .map(|i| {
                        hex.get(i..i + 2)
                            .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                            .ok_or_else(|| serde::de::Error::custom("not hex"))
                    })
                    .collect::<Result<Vec<u8>, _>>()
                    .map(Self)
            }
        }
    }
}

/// dom0d's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The dom0d that wrote it.
    pub dom0d: String,
    /// When (milliseconds since the epoch).
    pub written_unix_ms: u64,
    /// The domains dom0d built and still serves, by domid.
    pub domains: Vec<DomainRecord>,
    /// The xenstore.
    pub xenstore: StoreImage,
    /// The console histories (their bytes are in `consoles/NAME.log`).
    pub console_logs: Vec<LogRecord>,
    /// Names of the histories of domains that are gone, oldest first.
    pub ended_logs: Vec<String>,
}

/// One domain dom0d built.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    /// Its id.
    pub domid: u32,
    /// Its name (a domain is re-adopted only under the same id and name).
    pub name: String,
    /// Its `on_*` entry, if dom0d applies them.
    pub supervised: Option<SupervisedRecord>,
    /// Its PV console, if dom0d serves one.
    pub console: Option<ConsoleRecord>,
    /// Its xenstore, if dom0d keeps a home for it.
    pub store: Option<StoreRecord>,
    /// Its disks.
    pub disks: Vec<DiskRecord>,
    /// Its vifs.
    pub vifs: Vec<VifRecord>,
}

impl DomainRecord {
    /// Every page-pool slot the record holds.
    #[must_use]
    pub fn slots(&self) -> Vec<u64> {
        let mut slots: Vec<u64> = self
            .console
            .iter()
            .filter_map(|c| c.ring.as_ref())
            .chain(self.store.iter().filter_map(|s| s.ring.as_ref()))
            .map(|r| r.slot)
            .collect();
        for d in &self.disks {
            if let DiskPhase::Connected { slot, .. } = d.phase {
                slots.push(slot);
            }
            slots.extend(d.persistent.iter().map(|g| g.slot));
        }
        for v in &self.vifs {
            if let VifPhase::Connected {
                tx_slot, rx_slot, ..
            } = v.phase
            {
                slots.extend([tx_slot, rx_slot]);
            }
        }
        slots
    }
}

/// The supervisor's entry of a domain ([`crate::supervisor`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisedRecord {
    /// The effective config it was built from.
    pub config: DomainConfig,
    /// When it was restarted within the restart window (milliseconds since the epoch).
    pub restarts_unix_ms: Vec<u64>,
    /// The action for its current end was applied already.
    pub handled: bool,
}

/// A console or xenstore page dom0d maps: the slot, the frame and both ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingRecord {
    /// The foreign-window slot holding the frame.
    pub slot: u64,
    /// The frame in the domain.
    pub gfn: u64,
    /// Domain 0's port.
    pub port: u32,
    /// The DomU's port.
    pub remote_port: u32,
}

/// A domain's console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleRecord {
    /// The page and ports; `None` once the console was disabled.
    pub ring: Option<RingRecord>,
    /// When the domain was asked for (milliseconds since the epoch), for the time to its
    /// first output.
    pub requested_unix_ms: u64,
}

/// A domain's xenstore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRecord {
    /// The page and ports; `None` once the connection was cut off, or before the page is
    /// served.
    pub ring: Option<RingRecord>,
    /// Introduced early (its devices published) and not registered yet.
    pub early: bool,
    /// Where its connection stands.
    pub conn: Option<StoreConnRecord>,
}

/// Where a xenstore connection stands besides the ring indices in its page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConnRecord {
    /// The bytes of a request taken from the ring whose end had not arrived.
    pub partial: Bytes,
    /// Replies and watch events queued for it (its ring was full).
    pub queued: Bytes,
    /// Why it broke, if it did.
    pub broken: Option<String>,
}

/// One disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// Its xenstore device id.
    pub devid: u32,
    /// `xvda` ...
    pub vdev: String,
    /// The image file.
    pub path: String,
    /// Read-only.
    pub read_only: bool,
    /// Its size in sectors, as published.
    pub sectors: u64,
    /// Where its back-end stands.
    pub phase: DiskPhase,
    /// Its persistent grant mappings while connected (`feature-persistent`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub persistent: Vec<PersistentGrant>,
}

/// A data page a front-end granted for good, mapped by the block back-end once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentGrant {
    /// The grant reference.
    pub gref: u32,
    /// The page-pool slot holding its mapping.
    pub slot: u64,
}

/// Where a disk's back-end stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum DiskPhase {
    /// InitWait.
    Waiting,
    /// Its ring is mapped in `slot`, its event channel bound to domain 0's `port`.
    Connected {
        /// The grant mapping's slot.
        slot: u64,
        /// Domain 0's port.
        port: u32,
    },
    /// Closed after the front-end closed.
    Closed,
    /// Stopped for breaking the protocol.
    Stopped,
}

/// One vif.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VifRecord {
    /// Its handle (index in the config).
    pub handle: u32,
    /// What the config says.
    pub spec: VifSpec,
    /// Where its back-end stands.
    pub phase: VifPhase,
    /// Its counters.
    pub stats: VifStats,
}

/// Where a vif's back-end stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum VifPhase {
    /// InitWait.
    Waiting,
    /// Its rings are mapped in two slots, its event channel bound to domain 0's `port`.
    Connected {
        /// The tx ring's slot.
        tx_slot: u64,
        /// The rx ring's slot.
        rx_slot: u64,
        /// Domain 0's port.
        port: u32,
    },
    /// Closed after the front-end closed.
    Closed,
    /// Stopped for breaking the protocol.
    Stopped,
}

/// A vif's counters, from the guest's point of view (as in `proto::NetworkDevice`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VifStats {
    /// Frames the guest sent.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames not delivered.
    pub drops: u64,
    /// Packets answered ERROR.
    pub errors: u64,
}

/// Where a console history stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogPhase {
    /// A domain writes to it.
    Live,
    /// Its domain was destroyed to be restarted.
    Restarting,
    /// Its domain is gone.
    Ended,
}

/// One console history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The domain name.
    pub name: String,
    /// Bytes it ever received.
    pub total: u64,
    /// Bytes in its file when this record was written.
    pub file_bytes: u64,
    /// The domain writing to it.
    pub domid: Option<u32>,
    /// The last domain that wrote to it.
    pub last_domid: u32,
    /// Where it stands.
    pub phase: LogPhase,
    /// Why its console was disabled.
    pub disabled: Option<String>,
    /// Time from the create request to the first output.
    pub first_byte_ms: Option<u64>,
}

/// Milliseconds since the epoch, now.
#[must_use]
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `t` as milliseconds since the epoch.
#[must_use]
pub fn instant_to_unix_ms(t: Instant) -> u64 {
    unix_ms().saturating_sub(u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since the epoch as an [`Instant`] (now, for a time in the future or too
/// far back).
#[must_use]
pub fn unix_ms_to_instant(ms: u64) -> Instant {
    let age = Duration::from_millis(unix_ms().saturating_sub(ms));
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

/// Writes `file` to `dir/state.json` atomically (a private temp file, then a rename),
/// creating `dir` if needed. No fsync: `/var/lib/dom0` is in Dom0's RAM, and the state
/// only has to outlive dom0d, not the machine.
///
/// # Errors
/// The failing file system call.
pub fn write_state(dir: &Path, file: &StateFile) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let text = serde_json::to_vec_pretty(file).map_err(io::Error::other)?;
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&text)?;
    f.write_all(b"\n")?;
    drop(f);
    fs::rename(&tmp, dir.join(STATE_FILE))
}

/// What [`read_state`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No state file.
    Missing,
    /// A state file that cannot be used, and why.
    Unusable(String),
    /// The state.
    Found(Box<StateFile>),
}

/// Reads `dir/state.json`.
#[must_use]
pub fn read_state(dir: &Path) -> Loaded {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let path = dir.join(STATE_FILE);
    let text = match fs::metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Unusable(format!("cannot read it: {e}")),
        Ok(m) if m.len() > MAX_STATE_BYTES => {
            return Loaded::Unusable(format!(
                "it has {} bytes, more than the {MAX_STATE_BYTES} allowed",
                m.len()
            ));
        }
        Ok(_) => match fs::read(&path) {
            Ok(t) => t,
            Err(e) => return Loaded::Unusable(format!("cannot read it: {e}")),
        },
    };
    match serde_json::from_slice::<Version>(&text) {
        Ok(v) if v.version == STATE_VERSION => {}
        Ok(v) => {
            return Loaded::Unusable(format!(
                "it has version {}, this dom0d reads version {STATE_VERSION}",
                v.version
            ));
        }
        Err(e) => return Loaded::Unusable(format!("it is not a dom0d state file ({e})")),
    }
    match serde_json::from_slice::<StateFile>(&text) {
        Ok(f) => Loaded::Found(Box::new(f)),
        Err(e) => Loaded::Unusable(format!("it does not parse ({e})")),
    }
}

/// Change counters of the parts of the state, for [`Service::persist`].
type Epochs = [u64; 5];

/// Where a service keeps its state, and what it last wrote.
#[derive(Debug)]
pub struct Persist {
    dir: PathBuf,
    last: Mutex<Option<Epochs>>,
}

impl Persist {
    /// The state directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What [`Service::restore`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Recorded domains served again.
    pub adopted: Vec<u32>,
    /// Recorded domains that were gone (their slots and ports released).
    pub released: Vec<u32>,
    /// Why the state file was ignored, if it was.
    pub ignored: Option<String>,
}

impl Service {
    /// The same service keeping its state in `dir` ([`crate::state`]): call before the
    /// service is shared, then [`Self::restore`].
    #[must_use]
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        self.consoles.set_history_dir(Some(dir.join(CONSOLE_DIR)));
        self.persist = Some(Persist {
            dir,
            last: Mutex::new(None),
        });
        self
    }

    fn epochs(&self) -> Epochs {
        [
            self.supervisor.changes(),
            self.consoles.changes(),
            self.xenstored.changes(),
            self.blkback.changes(),
            self.netback.changes(),
        ]
    }

    /// Writes the state file if anything it holds changed since the last write (a few
    /// counters are compared otherwise). Call at the end of a batch of changes; a failed
    /// write is logged and tried again at the next call.
    pub fn persist(&self) {
        let Some(p) = &self.persist else {
            return;
        };
        let epochs = self.epochs();
        let mut last = p
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == Some(epochs) {
            return;
        }
        match write_state(&p.dir, &self.snapshot()) {
            Ok(()) => *last = Some(epochs),
            Err(e) => log::limited(
                Level::Warn,
                format_args!(
                    "state: cannot write {}: {e}; a restarted dom0d may not find its domains",
                    p.dir.join(STATE_FILE).display()
                ),
            ),
        }
    }

    /// Everything the state file holds, now.
    #[must_use]
    pub fn snapshot(&self) -> StateFile {
        fn record<'a>(
            domains: &'a mut BTreeMap<u32, DomainRecord>,
            domid: u32,
            name: &str,
        ) -> &'a mut DomainRecord {
            let r = domains.entry(domid).or_insert_with(|| DomainRecord {
                domid,
                ..DomainRecord::default()
            });
            if r.name.is_empty() {
                name.clone_into(&mut r.name);
            }
            r
        }
        let mut domains: BTreeMap<u32, DomainRecord> = BTreeMap::new();
        let (xenstore, stores, (disks, vifs)) = self
            .xenstored
            .export(|| (self.blkback.export(), self.netback.export()));
        for (domid, name, s) in stores {
            record(&mut domains, domid, &name).store = Some(s);
        }
        for (domid, sup) in self.supervisor.export() {
            let name = sup.config.name.clone();
            record(&mut domains, domid, &name).supervised = Some(sup);
        }
        let (consoles, console_logs, ended_logs) = self.consoles.export();
        for (domid, name, c) in consoles {
            record(&mut domains, domid, &name).console = Some(c);
        }
        for (domid, d) in disks {
            record(&mut domains, domid, "").disks.push(d);
        }
        for (domid, v) in vifs {
            record(&mut domains, domid, "").vifs.push(v);
        }
        StateFile {
            version: STATE_VERSION,
            dom0d: crate::server::DOM0D_VERSION.to_owned(),
            written_unix_ms: unix_ms(),
            domains: domains.into_values().collect(),
            xenstore,
            console_logs,
            ended_logs,
        }
    }

    /// Reads the state file and serves again the recorded domains that are still there
    /// (module docs). Call once, before the service serves anything. Never fails: what
    /// cannot be used is logged, and the service starts clean.
    pub fn restore(&self) -> Restored {
        let Some(p) = &self.persist else {
            return Restored::default();
        };
        let path = p.dir.join(STATE_FILE);
        let file = match read_state(&p.dir) {
            Loaded::Found(f) => f,
            Loaded::Missing => {
                log::write(
                    Level::Info,
                    format_args!("state: no {}; no domains to adopt", path.display()),
                );
                self.consoles
                    .restore(&*self.mv, Vec::new(), Vec::new(), Vec::new());
                return Restored::default();
            }
            Loaded::Unusable(why) => return self.start_clean(&path, why),
        };
        let store = match Store::from_image(&file.xenstore) {
            Ok(s) => s,
            Err(why) => return self.start_clean(&path, format!("its xenstore is broken: {why}")),
        };
        let listed = match crate::supervisor::all_domains(&*self.mv) {
            Ok(d) => d,
            Err(e) => {
                return self.start_clean(&path, format!("the domains cannot be listed: {e}"));
            }
        };
        let mv = &*self.mv;
        let pool = self.consoles.pool();
        // Every recorded slot first, so that nothing else is mapped over one.
        for d in &file.domains {
            for slot in d.slots() {
                pool.claim(slot);
            }
        }
        let still_there = |d: &DomainRecord| {
            listed
                .iter()
                .any(|l: &Domain| l.domid == d.domid && l.name == d.name && l.state != State::Dying)
        };
        let (alive, gone): (Vec<&DomainRecord>, Vec<&DomainRecord>) =
            file.domains.iter().partition(|d| still_there(d));
        let gone_ids: Vec<u32> = gone.iter().map(|d| d.domid).collect();

        // xenstore: the tree and connections, the homes of gone domains removed.
        let stores = alive
            .iter()
            .filter_map(|d| d.store.clone().map(|s| (d.domid, d.name.clone(), s)))
            .collect();
        self.xenstored.restore(mv, store, stores, &gone_ids);
        // Consoles: the histories, and the live ones' pages.
        let consoles = alive
            .iter()
            .filter_map(|d| d.console.clone().map(|c| (d.domid, d.name.clone(), c)))
            .collect();
        let mut logs = file.console_logs.clone();
        for l in &mut logs {
            if l.domid.is_some_and(|d| gone_ids.contains(&d))
                || (l.phase == LogPhase::Restarting && l.domid.is_none())
            {
                l.domid = None;
                l.phase = LogPhase::Ended;
            }
        }
        let mut ended = file.ended_logs.clone();
        for l in &logs {
            if l.phase == LogPhase::Ended && !ended.contains(&l.name) {
                ended.push(l.name.clone());
            }
        }
        self.consoles.restore(mv, logs, ended, consoles);
        // Disks and vifs, in the phase recorded.
        self.xenstored.with_store(mv, |store| {
            for d in &alive {
                for disk in &d.disks {
                    self.blkback.adopt(mv, store, d.domid, disk);
                }
                for vif in &d.vifs {
                    self.netback.adopt(mv, store, d.domid, vif);
                }
            }
        });
        for d in &alive {
            if let Some(s) = &d.supervised {
                self.supervisor.restore(d.domid, s);
            }
            log::write(
                Level::Info,
                format_args!(
                    "state: {} adopted from an earlier dom0d ({} disk(s), {} vif(s){})",
                    domain_label(d.domid, &d.name),
                    d.disks.len(),
                    d.vifs.len(),
                    if d.console.as_ref().is_some_and(|c| c.ring.is_some()) {
                        ", console"
                    } else {
                        ""
                    }
                ),
            );
        }
        for d in &gone {
            release_gone(mv, d);
            for slot in d.slots() {
                pool.free_slot(slot);
            }
            log::write(
                Level::Info,
                format_args!(
                    "state: {} is gone; its slots and ports are released",
                    domain_label(d.domid, &d.name)
                ),
            );
        }
        // What arrived while no dom0d ran.
        self.take_pending();
        self.consoles.drain_all(mv);
        self.xenstored.pump_all(mv);
        self.step_devices();
        self.persist();
        Restored {
            adopted: alive.iter().map(|d| d.domid).collect(),
            released: gone_ids,
            ignored: None,
        }
    }

    fn start_clean(&self, path: &Path, why: String) -> Restored {
        log::write(
            Level::Warn,
            format_args!(
                "state: ignoring {}: {why}; starting clean (domains an earlier dom0d built are not served)",
                path.display()
            ),
        );
        self.consoles
            .restore(&*self.mv, Vec::new(), Vec::new(), Vec::new());
        Restored {
            ignored: Some(why),
            ..Restored::default()
        }
    }
}

/// Gives back what a gone domain's record holds: its console and xenstore slots
/// (`ForeignUnmap`), its rings' grant mappings (`GrantUnmap`) and domain 0's ports.
fn release_gone(mv: &dyn Microvisor, d: &DomainRecord) {
    let label = domain_label(d.domid, &d.name);
    let unmapped = |slot: u64, r: Result<(), i32>| {
        if let Err(errno) = r {
            log::limited(
                Level::Warn,
                format_args!(
                    "state: {label}: unmapping slot {slot} failed with {}",
                    errno_text(errno)
                ),
            );
        }
    };
    let close = |port: u32| {
        if let Err(errno) = evtchn_close(mv, port) {
            log::limited(
                Level::Warn,
                format_args!(
                    "state: {label}: closing port {port} failed with {}",
                    errno_text(errno)
                ),
            );
        }
    };
    let rings = d
        .console
        .iter()
        .filter_map(|c| c.ring)
        .chain(d.store.iter().filter_map(|s| s.ring));
    for r in rings {
        close(r.port);
        unmapped(r.slot, foreign_unmap(mv, r.slot).map(|_| ()));
    }
    for disk in &d.disks {
        if let DiskPhase::Connected { slot, port } = disk.phase {
            close(port);
            unmapped(slot, grant_unmap(mv, slot));
        }
        for g in &disk.persistent {
            unmapped(g.slot, grant_unmap(mv, g.slot));
        }
    }
    for vif in &d.vifs {
        if let VifPhase::Connected {
            tx_slot,
            rx_slot,
            port,
        } = vif.phase
        {
            close(port);
            unmapped(tx_slot, grant_unmap(mv, tx_slot));
            unmapped(rx_slot, grant_unmap(mv, rx_slot));
        }
    }
}

/// The names of the files in `dir` (none if it cannot be read).
pub(crate) fn file_names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
