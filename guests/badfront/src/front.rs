//! The xenbus handshake of a front-end, done by hand (badfront keeps its own ring pages
//! and grant references instead of using `guest_rt::blkfront`/`netfront`), and the waits
//! on the back-end's `state` the attacks need.

use core::fmt;

use guest_rt::control::{StoreError, store_read, store_watch, store_write};
use guest_rt::grants::GrantError;
use guest_rt::pvdev::{Text, parse_decimal, text, wait_connected};
use guest_rt::time;
use pv_drivers::RingError;
use shared_abi::guest::evtchn_alloc_unbound;
use shared_abi::io::xenbus::XenbusState;
use shared_abi::{DomId, Errno};

/// How long the back-end may take to connect, and to react to an attack.
pub(crate) const TIMEOUT_NS: u64 = 10_000_000_000;

/// A xenstore path.
pub(crate) type Path = Text<128>;

/// Why an attack could not be carried out (as opposed to what the back-end did).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fail {
    /// A path did not fit its buffer.
    PathTooLong,
    /// The domain has no such device (`device/<kind>/<id>/backend` is missing).
    NoDevice,
    /// A xenstore access failed.
    Store(StoreError),
    /// A node holds something unexpected.
    BadNode(&'static str),
    /// Granting a page failed.
    Grant(GrantError),
    /// A hypercall failed.
    Hypercall(Errno),
    /// The back-end did not connect (its last state).
    NotConnected(XenbusState),
    /// Our end of a ring refused something (the back-end broke the ring?).
    Ring(RingError),
    /// The back-end did not answer a request in time.
    NoResponse,
    /// The back-end answered a valid request with a failed status.
    Status(i16),
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::PathTooLong => f.write_str("a xenstore path is too long"),
            Fail::NoDevice => f.write_str("no such device"),
            Fail::Store(e) => write!(f, "xenstore: {e}"),
            Fail::BadNode(n) => write!(f, "node {n} is malformed"),
            Fail::Grant(e) => write!(f, "grant: {e}"),
            Fail::Hypercall(e) => write!(f, "hypercall failed: {}", e.name()),
            Fail::NotConnected(s) => {
                write!(f, "the back-end did not connect (state {})", s.as_u32())
            }
            Fail::Ring(e) => write!(f, "ring: {e}"),
            Fail::NoResponse => f.write_str("no response in time"),
            Fail::Status(s) => write!(f, "a valid request was answered with status {s}"),
        }
    }
}

impl From<RingError> for Fail {
    fn from(e: RingError) -> Self {
        Fail::Ring(e)
    }
}

impl From<pv_drivers::MemError> for Fail {
    fn from(e: pv_drivers::MemError) -> Self {
        Fail::Ring(RingError::Mem(e))
    }
}

impl From<GrantError> for Fail {
    fn from(e: GrantError) -> Self {
        Fail::Grant(e)
    }
}

/// `format_args` into a [`Path`].
pub(crate) fn path(args: fmt::Arguments<'_>) -> Result<Path, Fail> {
    text(args).ok_or(Fail::PathTooLong)
}

/// A front-end whose handshake is done: the back-end is Connected.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The back-end's directory.
    pub(crate) be: Path,
    /// Our end of the event channel.
    pub(crate) port: u32,
}

impl Conn {
    /// Reads the back-end's node `leaf` as a decimal number.
    pub(crate) fn backend_u64(&self, leaf: &'static str) -> Result<u64, Fail> {
        let mut raw = [0u8; 32];
        let n = store_read(
            path(format_args!("{}/{leaf}", self.be.as_str()))?.as_str(),
            &mut raw,
        )
        .map_err(Fail::Store)?;
        parse_decimal(&raw[..n]).ok_or(Fail::BadNode(leaf))
    }

    /// The back-end's `state` now (Unknown if unreadable).
    pub(crate) fn backend_state(&self) -> XenbusState {
        let Ok(p) = path(format_args!("{}/state", self.be.as_str())) else {
            return XenbusState::Unknown;
        };
        let mut raw = [0u8; 16];
        store_read(p.as_str(), &mut raw)
            .ok()
            .and_then(|n| XenbusState::parse(&raw[..n]))
            .unwrap_or(XenbusState::Unknown)
    }

    /// Waits (blocked on events, looking at least every 100 ms) until the back-end's
    /// `state` is no longer Connected, for at most [`TIMEOUT_NS`]; returns the state last
    /// seen.
    pub(crate) fn wait_left_connected(&self) -> XenbusState {
        if let Ok(p) = path(format_args!("{}/state", self.be.as_str())) {
            let _ = store_watch(p.as_str(), "badfront-state");
        }
        let deadline = time::now_ns().saturating_add(TIMEOUT_NS);
        loop {
            let state = self.backend_state();
            let now = time::now_ns();
            if state != XenbusState::Connected || now >= deadline {
                return state;
            }
            pause_until(now.saturating_add(100_000_000).min(deadline));
        }
    }
}

/// Blocks until an event or `deadline` (spins a little without timer events).
pub(crate) fn pause_until(deadline: u64) {
    if time::wait_event_until(deadline).is_none() {
        time::sleep_ns(1_000_000);
    }
}

/// Connects device `id` of `kind` (`vbd`, `vif`): reads `device/<kind>/<id>/backend`,
/// allocates an unbound event channel for domain 0, writes the numeric nodes `numbers`
/// (ring references), `event-channel`, the text nodes `texts`, then `state` Initialised;
/// waits until the back-end is Connected and writes `state` Connected.
///
/// The caller has granted the ring pages already.
pub(crate) fn connect(
    kind: &str,
    id: u32,
    numbers: &[(&str, u32)],
    texts: &[(&str, &str)],
) -> Result<Conn, Fail> {
    let fe = path(format_args!("device/{kind}/{id}"))?;
    let mut raw = [0u8; 128];
    let be = match store_read(
        path(format_args!("{}/backend", fe.as_str()))?.as_str(),
        &mut raw,
    ) {
        Ok(n) => core::str::from_utf8(&raw[..n]).map_err(|_| Fail::BadNode("backend"))?,
        Err(StoreError::Refused(_)) => return Err(Fail::NoDevice),
        Err(e) => return Err(Fail::Store(e)),
    };
    let be = path(format_args!("{be}"))?;
    let port = evtchn_alloc_unbound(DomId::DOM0).map_err(Fail::Hypercall)?;
    let write = |leaf: &str, value: fmt::Arguments<'_>| -> Result<(), Fail> {
        let v: Text<32> = text(value).ok_or(Fail::PathTooLong)?;
        store_write(
            path(format_args!("{}/{leaf}", fe.as_str()))?.as_str(),
            v.as_str().as_bytes(),
        )
        .map_err(Fail::Store)
    };
    for (leaf, value) in numbers {
        write(leaf, format_args!("{value}"))?;
    }
    write("event-channel", format_args!("{port}"))?;
    for (leaf, value) in texts {
        write(leaf, format_args!("{value}"))?;
    }
    write(
        "state",
        format_args!("{}", XenbusState::Initialised.as_u32()),
    )?;
    let state = path(format_args!("{}/state", be.as_str()))?;
    wait_connected(state.as_str(), "badfront-connect", TIMEOUT_NS).map_err(Fail::NotConnected)?;
    write("state", format_args!("{}", XenbusState::Connected.as_u32()))?;
    Ok(Conn { be, port })
}
