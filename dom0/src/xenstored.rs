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
//! line; the store and every other domain carry on.
//!
//! **PV shutdown** ([`Xenstored::request_shutdown`]) follows Xen's convention: a guest that
//! handles it writes `control/feature-poweroff` (and `feature-reboot`) = `1`, and watches
//! `control/shutdown`; dom0d writes `poweroff` or `reboot` there. A guest that never
//! announced the feature is refused at once rather than waited for.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::builder::{RingSetup, undo_ring};
use crate::log::{self, Level};
use crate::microvisor::{Microvisor, PageMap, evtchn_send};
use crate::pages::PagePool;
use crate::proto::{Domain, errno_text};
use crate::xenstore::path::home;
use crate::xenstore::service::{Pumped, Service};

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

#[derive(Debug)]
struct Inner {
    svc: Service<Arc<dyn PageMap>>,
    rings: BTreeMap<u32, RingSetup>,
    /// Domain 0 port to domid.
    ports: BTreeMap<u32, u32>,
}

/// The xenstore of every domain dom0d built.
#[derive(Debug)]
pub struct Xenstored {
    pool: Arc<PagePool>,
    inner: Mutex<Inner>,
}

impl Xenstored {
    /// An empty store whose pages come from (and go back to) `pool`.
    #[must_use]
    pub fn new(pool: Arc<PagePool>) -> Self {
        Self {
            pool,
            inner: Mutex::new(Inner {
                svc: Service::new(),
                rings: BTreeMap::new(),
                ports: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Introduces domain `name` and serves the store page the builder made for it.
    pub fn register(&self, mv: &dyn Microvisor, name: &str, setup: RingSetup) {
        let domid = setup.domid;
        let mut inner = self.lock();
        if let Err(e) = inner
            .svc
            .add_domain(domid, name, Arc::clone(&setup.page.mem))
        {
            log::write(
                Level::Error,
                format_args!("xenstore: domain {domid} ({name}): {e}"),
            );
            drop(inner);
            undo_ring(mv, &self.pool, setup);
            return;
        }
        inner.ports.insert(setup.port, domid);
        inner.rings.insert(domid, setup);
        // The guest may have queued requests before it was introduced.
        let pumped = inner.svc.pump(domid);
        act(&inner, mv, pumped);
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
                    act(&inner, mv, pumped);
                }
                None => others.push(port),
            }
        }
        others
    }

    /// Serves every store (the safety poll, in case an event was lost).
    pub fn pump_all(&self, mv: &dyn Microvisor) {
        let mut inner = self.lock();
        let domids: Vec<u32> = inner.rings.keys().copied().collect();
        for domid in domids {
            let pumped = inner.svc.pump(domid);
            act(&inner, mv, pumped);
        }
    }

    /// Domain `domid` is gone: its subtree and watches go (`@releaseDomain` fires), its
    /// page is unmapped and its port closed.
    pub fn domain_gone(&self, mv: &dyn Microvisor, domid: u32) {
        let mut inner = self.lock();
        let Some(setup) = inner.rings.remove(&domid) else {
            return;
        };
        inner.ports.remove(&setup.port);
        drop(inner.svc.remove_domain(domid));
        let pumped = inner.svc.flush();
        act(&inner, mv, pumped);
        drop(inner);
        undo_ring(mv, &self.pool, setup);
    }

    /// Ends the stores of domains that are not in `listed` (or whose domid now holds
    /// another name).
    pub fn sweep(&self, mv: &dyn Microvisor, listed: &[Domain]) {
        let gone: Vec<u32> = {
            let inner = self.lock();
            inner
                .rings
                .keys()
                .copied()
                .filter(|domid| {
                    let name = inner
                        .svc
                        .store_ref()
                        .read(0, &format!("{}/name", home(*domid)));
                    !listed.iter().any(|d| {
                        d.domid == *domid && name.as_deref().is_ok_and(|n| n == d.name.as_bytes())
                    })
                })
                .collect()
        };
        for domid in gone {
            self.domain_gone(mv, domid);
        }
    }

    /// Whether dom0d serves a store for `domid`.
    #[must_use]
    pub fn serves(&self, domid: u32) -> bool {
        let inner = self.lock();
        inner.rings.contains_key(&domid) && inner.svc.is_connected(domid)
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
        if !inner.rings.contains_key(&domid) || !inner.svc.is_connected(domid) {
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
        act(&inner, mv, pumped);
        Ok(())
    }
}

/// Signals the domains whose rings got bytes and logs connections that broke.
fn act(inner: &Inner, mv: &dyn Microvisor, pumped: Pumped) {
    for (_, why) in pumped.broke {
        log::write(
            Level::Warn,
            format_args!("xenstore: {why}; the domain's console and every other domain carry on"),
        );
    }
    for domid in pumped.notify {
        if let Some(setup) = inner.rings.get(&domid)
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
