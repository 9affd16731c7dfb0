//! PV shutdown requests through xenstore (Xen's `control/shutdown` convention).
//!
//! When the domain builder gave the guest a xenstore page (`HVM_PARAM_STORE_PFN` non-zero),
//! [`init`] announces `control/feature-poweroff` and `control/feature-reboot` = `1` and
//! watches `control/shutdown`. Every wait for events ([`crate::events::wait_for_event`])
//! then looks at the store's port: when the watch fires and the node holds `poweroff` or
//! `reboot`, the guest clears the node (the acknowledgement) and shuts down with that
//! reason, after letting the console drain. So any guest that sleeps or reads input
//! through the runtime obeys `dom0 shutdown` and `dom0 reboot`; a guest that never waits
//! for events never sees the request (and `dom0 shutdown --wait` reports that).

use shared_abi::sched::ShutdownReason;

/// What a value of `control/shutdown` asks for; `None` for an empty node (already
/// handled) or a request this runtime does not implement (`suspend`, `halt`, ...).
pub fn requested(value: &[u8]) -> Option<ShutdownReason> {
    match value {
        b"poweroff" => Some(ShutdownReason::Poweroff),
        b"reboot" => Some(ShutdownReason::Reboot),
        _ => None,
    }
}

/// Why a store access through [`store_read`]/[`store_write`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The domain has no xenstore, or [`init`] has not connected to it.
    NoStore,
    /// The store answered with this errno name (`ENOENT`, `EACCES`, ...), NUL-padded.
    Refused([u8; 16]),
    /// The reply did not fit the caller's buffer.
    TooLong,
    /// The connection broke (or the request was too long).
    Broken,
}

impl StoreError {
    /// The errno name of [`StoreError::Refused`], else `""`.
    pub fn errno_name(&self) -> &str {
        match self {
            StoreError::Refused(name) => {
                let n = name.iter().position(|b| *b == 0).unwrap_or(name.len());
                core::str::from_utf8(&name[..n]).unwrap_or("?")
            }
            _ => "",
        }
    }
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StoreError::NoStore => f.write_str("no xenstore connection"),
            StoreError::Refused(_) => write!(f, "the store refused ({})", self.errno_name()),
            StoreError::TooLong => f.write_str("the reply is longer than the buffer"),
            StoreError::Broken => f.write_str("the xenstore connection broke"),
        }
    }
}

/// Most entries `store_set_perms` takes (the owner's and up to three exceptions).
pub const MAX_PERMS: usize = 4;

#[cfg(target_os = "none")]
pub use bare::{init, on_events, store_read, store_set_perms, store_watch, store_write};

#[cfg(target_os = "none")]
mod bare {
    use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use pv_drivers::MappedMem;
    use pv_drivers::xenstore::{XsCallError, XsClient, XsIo};
    use shared_abi::Errno;
    use shared_abi::guest::{evtchn_send, hvm_get_param};
    use shared_abi::hvm::{HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN};
    use shared_abi::io::xenstore::{XS_READ, XS_SET_PERMS, XS_WATCH, XS_WRITE};

    use super::{StoreError, requested};
    use crate::arch::{paging, phys};
    use crate::events::Ports;
    use crate::pvconsole;

    static PAGE: spin::Once<MappedMem> = spin::Once::new();
    static CLIENT: spin::Mutex<Option<XsClient<&'static MappedMem>>> = spin::Mutex::new(None);
    /// The store's port, 0 before [`init`] succeeded.
    static PORT: AtomicU32 = AtomicU32::new(0);
    /// Watch events already looked at.
    static SEEN: AtomicU32 = AtomicU32::new(0);
    /// Set while this module waits for the store itself, so that wait does not recurse.
    static BUSY: AtomicBool = AtomicBool::new(false);
    /// The store's port fired and has not been looked at yet (the console was busy).
    static CHECK: AtomicBool = AtomicBool::new(false);

    struct StoreIo(u32);

    impl XsIo for StoreIo {
        fn notify(&mut self) {
            let _ = evtchn_send(self.0);
        }
        fn wait(&mut self) {
            crate::events::wait_for_event();
        }
    }

    fn call(
        client: &mut XsClient<&'static MappedMem>,
        port: u32,
        t: u32,
        parts: &[&[u8]],
    ) -> Result<usize, XsCallError> {
        let mut out = [0u8; 64];
        client.call(&mut StoreIo(port), t, parts, &mut out)
    }

    /// Connects to xenstore if the builder gave the guest a store page, announces PV
    /// shutdown support and watches `control/shutdown`. Needs events
    /// ([`crate::events::init`]). Returns whether there is a store.
    ///
    /// # Errors
    /// The failing hypercall's errno, or `EIO` if the store refused a request.
    pub fn init() -> Result<bool, Errno> {
        if PORT.load(Ordering::Relaxed) != 0 {
            return Ok(true);
        }
        let pfn = match hvm_get_param(HVM_PARAM_STORE_PFN) {
            Ok(0) | Err(Errno::ENOSYS) => return Ok(false),
            Ok(pfn) => pfn,
            Err(e) => return Err(e),
        };
        let port = hvm_get_param(HVM_PARAM_STORE_EVTCHN)?;
        let (paddr, port) =
            pvconsole::check_page(pfn, port, paging::IDENTITY_MAP_END, phys::image_range())
                .map_err(|_| Errno::EINVAL)?;
        crate::events::init()?;
        let page = PAGE.call_once(|| phys::shared_page(paddr));
        let mut client = XsClient::new(page).map_err(|_| Errno::EINVAL)?;
        BUSY.store(true, Ordering::Relaxed);
        let result = (|| {
            call(
                &mut client,
                port,
                XS_WRITE,
                &[b"control/feature-poweroff\0", b"1"],
            )?;
            call(
                &mut client,
                port,
                XS_WRITE,
                &[b"control/feature-reboot\0", b"1"],
            )?;
            call(
                &mut client,
                port,
                XS_WATCH,
                &[b"control/shutdown\0", b"shutdown\0"],
            )
        })();
        BUSY.store(false, Ordering::Relaxed);
        result.map_err(|_| Errno::EIO)?;
        *CLIENT.lock() = Some(client);
        PORT.store(port, Ordering::Relaxed);
        Ok(true)
    }

    /// One request on the connection [`init`] made, from main code. Waits on events
    /// while the store answers; the shutdown check is deferred meanwhile (see
    /// [`on_events`]), so it never recurses.
    fn store_call(t: u32, parts: &[&[u8]], out: &mut [u8]) -> Result<usize, StoreError> {
        let port = PORT.load(Ordering::Relaxed);
        if port == 0 {
            return Err(StoreError::NoStore);
        }
        if BUSY.swap(true, Ordering::Relaxed) {
            // Only an upcall-free main-code caller gets here; the flag means a call of
            // this module is already in progress (not re-entrant).
            return Err(StoreError::Broken);
        }
        let result = {
            let mut guard = CLIENT.lock();
            match guard.as_mut() {
                Some(client) => {
                    client
                        .call(&mut StoreIo(port), t, parts, out)
                        .map_err(|e| match e {
                            XsCallError::Store(name) => StoreError::Refused(name),
                            XsCallError::TooLong => StoreError::TooLong,
                            XsCallError::RequestTooLong | XsCallError::Ring(_) => {
                                StoreError::Broken
                            }
                        })
                }
                None => Err(StoreError::NoStore),
            }
        };
        BUSY.store(false, Ordering::Relaxed);
        // A shutdown request that arrived meanwhile is looked at now.
        if CHECK.load(Ordering::Relaxed) {
            on_events(&Ports::EMPTY);
        }
        result
    }

    /// Reads node `path` (relative to the domain's home, or absolute) into `out`;
    /// returns its length.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn store_read(path: &str, out: &mut [u8]) -> Result<usize, StoreError> {
        store_call(XS_READ, &[path.as_bytes(), b"\0"], out)
    }

    /// Writes `value` to node `path`.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn store_write(path: &str, value: &[u8]) -> Result<(), StoreError> {
        store_call(XS_WRITE, &[path.as_bytes(), b"\0", value], &mut [0u8; 16]).map(|_| ())
    }

    /// Sets the permissions of node `path` (which must exist and be owned by this
    /// domain): `perms` are xenstore's `<letter><domid>` entries, the first naming the
    /// owner and what every other domain may do, the rest per-domain exceptions; the
    /// letters are `n` (nothing), `r` (read), `w` (write) and `b` (both). For example
    /// `["w5"]`: owned by domain 5, writable (not readable) by everyone else. At most
    /// [`MAX_PERMS`](super::MAX_PERMS) entries.
    ///
    /// # Errors
    /// [`StoreError`]; [`StoreError::Broken`] without entries or with too many.
    pub fn store_set_perms(path: &str, perms: &[&str]) -> Result<(), StoreError> {
        if perms.is_empty() || perms.len() > super::MAX_PERMS {
            return Err(StoreError::Broken);
        }
        let mut parts: [&[u8]; 2 + 2 * super::MAX_PERMS] = [b""; 2 + 2 * super::MAX_PERMS];
        parts[0] = path.as_bytes();
        parts[1] = b"\0";
        for (i, p) in perms.iter().enumerate() {
            parts[2 + 2 * i] = p.as_bytes();
            parts[3 + 2 * i] = b"\0";
        }
        store_call(XS_SET_PERMS, &parts[..2 + 2 * perms.len()], &mut [0u8; 16]).map(|_| ())
    }

    /// Watches `path` with `token`: a change makes the store signal its port, which
    /// wakes [`crate::events::wait_for_event`].
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn store_watch(path: &str, token: &str) -> Result<(), StoreError> {
        store_call(
            XS_WATCH,
            &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"],
            &mut [0u8; 16],
        )
        .map(|_| ())
    }

    /// Called with every batch of ports a wait returned: if the store's port is among
    /// them (now or in an earlier batch that came while the console was busy) and
    /// `control/shutdown` asks for it, acknowledges and shuts down (this does not return
    /// then).
    pub fn on_events(ports: &Ports) {
        let port = PORT.load(Ordering::Relaxed);
        if port == 0 {
            return;
        }
        if ports.contains(port) {
            CHECK.store(true, Ordering::Relaxed);
        }
        // A wait inside a console write holds the console: shutting down now would wait
        // for that same console. Look again at the next wait outside it.
        if !CHECK.load(Ordering::Relaxed)
            || crate::console::busy()
            || BUSY.swap(true, Ordering::Relaxed)
        {
            return;
        }
        CHECK.store(false, Ordering::Relaxed);
        let reason = {
            let mut guard = CLIENT.lock();
            guard.as_mut().and_then(|client| {
                client.poll().ok()?;
                let events = client.watch_events();
                if SEEN.swap(events, Ordering::Relaxed) == events {
                    return None;
                }
                let mut value = [0u8; 32];
                let n = client
                    .call(
                        &mut StoreIo(port),
                        XS_READ,
                        &[b"control/shutdown\0"],
                        &mut value,
                    )
                    .ok()?;
                let reason = requested(&value[..n])?;
                // Acknowledge, as Xen guests do, so the request is not acted on twice.
                let _ = call(client, port, XS_WRITE, &[b"control/shutdown\0", b""]);
                Some(reason)
            })
        };
        BUSY.store(false, Ordering::Relaxed);
        if let Some(reason) = reason {
            crate::println!("guest-rt: {} requested through xenstore", reason.name());
            crate::rt::shutdown(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_poweroff_and_reboot_are_acted_on() {
        assert_eq!(requested(b"poweroff"), Some(ShutdownReason::Poweroff));
        assert_eq!(requested(b"reboot"), Some(ShutdownReason::Reboot));
        for other in [&b""[..], b"suspend", b"halt", b"poweroff\0", b"POWEROFF"] {
            assert_eq!(requested(other), None, "{other:?}");
        }
    }
}
