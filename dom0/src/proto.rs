//! The dom0d control protocol: messages and framing (shared by `dom0d` and the `dom0` CLI).
//!
//! ## Framing
//!
//! A frame is a `u32` little-endian payload length followed by that many bytes of
//! [postcard](https://docs.rs/postcard)-encoded payload. Payloads longer than [`MAX_FRAME`]
//! are refused by both sides: dom0d answers with [`ApiError::FrameTooLarge`] and closes the
//! connection (it cannot skip the payload without reading it). A payload that does not
//! decode as exactly one message (including trailing bytes after it) is answered with
//! [`ApiError::Malformed`]; the connection stays usable, since the framing is intact.
//!
//! ## Conversation
//!
//! The client sends [`Request`]s, dom0d answers each with exactly one [`Response`], in order.
//! The first request must be [`Request::Hello`] carrying [`PROTOCOL_VERSION`]; dom0d answers
//! with its own [`Response::Hello`] and, if the versions differ, closes the connection.
//! Any other request before the hello is answered with [`ApiError::HandshakeRequired`].
//!
//! Variant 0 of both enums (`Hello`) is frozen: its index and fields never change, so every
//! version of the client and the service can read the other's hello and name both versions
//! in its error. Other variants may be added at the end within a version; incompatible
//! changes bump [`PROTOCOL_VERSION`]. A dom0d older than a request answers it with
//! [`ApiError::Malformed`] (it cannot decode the variant), so clients can tell "not
//! supported" from a failure: [`Request::Events`] was added this way, then
//! [`Request::Pause`], [`Request::Unpause`] and [`Request::Destroy`] (with
//! [`Response::Lifecycle`] and the lifecycle [`ApiError`] variants after
//! [`ApiError::Busy`]), then [`Request::Create`] (with [`Response::Created`] and
//! [`ApiError::Create`]), then the console requests [`Request::ConsoleStatus`],
//! [`Request::Logs`], [`Request::ConsoleAttach`], [`Request::ConsoleInput`] and
//! [`Request::ConsoleDetach`] (with [`Response::ConsoleStatus`],
//! [`Response::ConsoleOpened`], [`Response::ConsoleOutput`], [`Response::ConsoleEnd`] and
//! [`ApiError::UnknownDomain`], [`ApiError::NoConsole`], [`ApiError::ConsoleBusy`]), then
//! [`Request::Shutdown`] (with [`Response::ShutdownSent`],
//! [`ApiError::PvShutdownUnsupported`] and [`ApiError::GuestRequestNotApplicable`]).
//!
//! Protocol 2 appended `disks` to [`DomainConfig`] (so [`Request::Create`] and
//! [`Response::Created`] changed: an incompatible change) and [`ImageKind::Disk`], and
//! added [`Request::BlockList`] with [`Response::Blocks`].
//!
//! Protocol 3 appended `vifs` to [`DomainConfig`] (again changing [`Request::Create`] and
//! [`Response::Created`]) and added [`Request::NetworkList`] with [`Response::Networks`].
//!
//! ## Console streams
//!
//! [`Request::Logs`] and [`Request::ConsoleAttach`] turn the connection into a stream:
//! dom0d answers [`Response::ConsoleOpened`] (or an error, and the conversation goes on
//! as before), then sends the history and, when following or attached, new output as
//! [`Response::ConsoleOutput`] frames of raw bytes, and finally one
//! [`Response::ConsoleEnd`] saying why, after which it closes the connection. While
//! attached, the client sends [`Request::ConsoleInput`] frames (no replies) and
//! [`Request::ConsoleDetach`] to end the session; closing the connection ends it too.
#![forbid(unsafe_code)]

use std::io::{self, Read};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

pub use crate::config::DomainConfig;

/// Version of the control protocol. Both sides send it in their hello and refuse to talk
/// on a mismatch. Bumped by every incompatible change to the messages below.
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest payload either side accepts, in bytes.
pub const MAX_FRAME: usize = 64 * 1024;

/// Size of the length prefix.
pub const FRAME_HEADER: usize = 4;

/// Most domains dom0d puts in one [`Response::Domains`]; clients page with
/// [`Request::ListDomains::from`]. Keeps every reply far below [`MAX_FRAME`].
pub const MAX_DOMAINS_PER_REPLY: usize = 256;

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The handshake; must be the first request. Frozen (see the module docs).
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The client's name and version, for dom0d's log (e.g. `"dom0 0.1.0"`).
        software: String,
    },
    /// Versions of dom0d and the microvisor: [`Response::Version`].
    Version,
    /// Facts about the host: [`Response::HostInfo`].
    HostInfo,
    /// Domains with `domid >= from`, ascending: [`Response::Domains`].
    ListDomains {
        /// First domain id to report; 0 for the first page.
        from: u32,
    },
    /// One domain: [`Response::Domain`], or [`ApiError::NoSuchDomain`].
    DomainInfo {
        /// The domain id.
        domid: u32,
    },
    /// What dom0d has seen of the microvisor's events: [`Response::Events`]. Added within
    /// protocol 1; older dom0d answer [`ApiError::Malformed`].
    Events,
    /// Pause a domain: [`Response::Lifecycle`] once its state is `paused`. Added within
    /// protocol 1, like the two after it.
    Pause {
        /// The domain id (not 0).
        domid: u32,
    },
    /// Unpause a paused domain: [`Response::Lifecycle`] with its state afterwards.
    Unpause {
        /// The domain id (not 0).
        domid: u32,
    },
    /// Destroy a domain in any state: [`Response::Lifecycle`] once it is gone from the
    /// domain list.
    Destroy {
        /// The domain id (not 0).
        domid: u32,
    },
    /// Build a domain from `config` and start it: [`Response::Created`], or
    /// [`ApiError::Create`]. Appended within protocol 1, after the lifecycle requests.
    Create {
        /// The effective config (absolute paths; dom0d reads the files itself).
        config: DomainConfig,
        /// Run every check and report the plan, but create nothing.
        dry_run: bool,
        /// Leave the domain paused instead of unpausing it.
        paused: bool,
    },
    /// The console of a domain: [`Response::ConsoleStatus`] (`None` if dom0d serves no
    /// console for it). Appended within protocol 1, like the console requests after it.
    ConsoleStatus {
        /// The domain id.
        domid: u32,
    },
    /// The console history of a domain, as a stream (see "Console streams").
    Logs {
        /// A domid (all digits) or a name; the domain may be gone if dom0d still keeps
        /// its history.
        domain: String,
        /// Go on sending new output until the domain is destroyed.
        follow: bool,
    },
    /// Attach to a domain's console for input and output (see "Console streams"):
    /// [`ApiError::ConsoleBusy`] if another client is attached.
    ConsoleAttach {
        /// A domid (all digits) or a name.
        domain: String,
        /// Take the console over from an attached client.
        force: bool,
    },
    /// Bytes for the guest, while attached. Not answered.
    ConsoleInput(Vec<u8>),
    /// End the console session: dom0d answers [`ConsoleEnd::Detached`].
    ConsoleDetach,
    /// Ask the guest to power off or reboot, through its xenstore `control/shutdown` node:
    /// [`Response::ShutdownSent`] once the request is written (the guest acts on it in
    /// its own time), [`ApiError::PvShutdownUnsupported`] at once if the guest never
    /// announced support (or dom0d serves no xenstore for it),
    /// [`ApiError::GuestRequestNotApplicable`] for Domain-0 or a domain that has ended,
    /// [`ApiError::NoSuchDomain`]. Appended within protocol 1.
    Shutdown {
        /// The domain id (not 0).
        domid: u32,
        /// What to ask for.
        request: GuestRequest,
    },
    /// The disks dom0d serves a domain: [`Response::Blocks`] (empty if none),
    /// [`ApiError::NoSuchDomain`]. Added in protocol 2.
    BlockList {
        /// The domain id.
        domid: u32,
    },
    /// The network interfaces dom0d serves a domain: [`Response::Networks`] (empty if
    /// none), [`ApiError::NoSuchDomain`]. Added in protocol 3.
    NetworkList {
        /// The domain id.
        domid: u32,
    },
}

/// A request to the guest itself, delivered through xenstore's `control/shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestRequest {
    /// Power off (`dom0 shutdown`).
    Poweroff,
    /// Reboot (`dom0 reboot`).
    Reboot,
}

impl GuestRequest {
    /// The value written to `control/shutdown`, and the feature suffix:
    /// `poweroff` or `reboot`.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            Self::Poweroff => "poweroff",
            Self::Reboot => "reboot",
        }
    }

    /// The CLI command: `shutdown` or `reboot`.
    #[must_use]
    pub fn command(self) -> &'static str {
        match self {
            Self::Poweroff => "shutdown",
            Self::Reboot => "reboot",
        }
    }

    /// The verb, for messages: `shut down` or `reboot`.
    #[must_use]
    pub fn verb(self) -> &'static str {
        match self {
            Self::Poweroff => "shut down",
            Self::Reboot => "reboot",
        }
    }
}

/// What [`Request::Shutdown`] did: the request is in the guest's xenstore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownSent {
    /// What was asked.
    pub request: GuestRequest,
    /// The domain id.
    pub domid: u32,
    /// Its name.
    pub name: String,
    /// Its state when the request was written.
    pub state: State,
}

impl Request {
    /// The lifecycle action this request asks for, if it is one.
    #[must_use]
    pub fn lifecycle(&self) -> Option<(Lifecycle, u32)> {
        match *self {
            Self::Pause { domid } => Some((Lifecycle::Pause, domid)),
            Self::Unpause { domid } => Some((Lifecycle::Unpause, domid)),
            Self::Destroy { domid } => Some((Lifecycle::Destroy, domid)),
            _ => None,
        }
    }
}

/// A lifecycle action on a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifecycle {
    /// Stop scheduling the domain.
    Pause,
    /// Resume scheduling a paused domain.
    Unpause,
    /// Tear the domain down and free its memory.
    Destroy,
}

impl Lifecycle {
    /// The verb, as the CLI command and in JSON: `pause`, `unpause`, `destroy`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Unpause => "unpause",
            Self::Destroy => "destroy",
        }
    }

    /// The past participle: `paused`, `unpaused`, `destroyed`.
    #[must_use]
    pub fn done(self) -> &'static str {
        match self {
            Self::Pause => "paused",
            Self::Unpause => "unpaused",
            Self::Destroy => "destroyed",
        }
    }

    /// The request asking for this action on `domid`.
    #[must_use]
    pub fn request(self, domid: u32) -> Request {
        match self {
            Self::Pause => Request::Pause { domid },
            Self::Unpause => Request::Unpause { domid },
            Self::Destroy => Request::Destroy { domid },
        }
    }
}

/// What a lifecycle request did ([`Response::Lifecycle`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleDone {
    /// The action.
    pub action: Lifecycle,
    /// The domain id.
    pub domid: u32,
    /// The domain's name (as it was before the action).
    pub name: String,
    /// The domain's state afterwards: `paused` after a pause, `running` or `blocked` after
    /// an unpause, `None` after a destroy (the domain no longer exists) or if it could not
    /// be read after an unpause.
    pub state: Option<State>,
}

/// `domain 3 (spin)`, or `domain 3` for a domain without a name.
#[must_use]
pub fn domain_label(domid: u32, name: &str) -> String {
    if name.is_empty() {
        format!("domain {domid}")
    } else {
        format!("domain {domid} ({name})")
    }
}

fn state_text(state: Option<State>, reason: Option<Reason>) -> String {
    match (state, reason) {
        (Some(State::Shutdown), Some(r)) => format!("shut down ({})", r.name()),
        (Some(State::Shutdown), None) => "shut down".to_owned(),
        (Some(s), _) => s.name().to_owned(),
        (None, _) => "in an unknown state".to_owned(),
    }
}

fn ended_text(
    domid: u32,
    name: &str,
    state: State,
    reason: Option<Reason>,
    action: Lifecycle,
) -> String {
    let what = if state == State::Crashed {
        "has crashed".to_owned()
    } else {
        format!("has {}", state_text(Some(state), reason))
    };
    format!(
        "{} {what}, so it cannot be {}",
        domain_label(domid, name),
        action.done()
    )
}

fn timed_out_text(
    action: Lifecycle,
    domid: u32,
    name: &str,
    waited_ms: u64,
    state: Option<State>,
) -> String {
    let label = domain_label(domid, name);
    let secs = format!("{}.{}", waited_ms / 1000, waited_ms % 1000 / 100);
    match action {
        Lifecycle::Destroy => format!(
            "{label} was still listed {secs} s after the microvisor destroyed it (state {})",
            state_text(state, None)
        ),
        _ => format!(
            "{label} was not {} within {secs} s (it is {})",
            action.done(),
            state_text(state, None)
        ),
    }
}

/// dom0d's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Hello`]. Frozen (see the module docs).
    Hello {
        /// dom0d's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// dom0d's name and version (e.g. `"dom0d 0.1.0"`).
        software: String,
    },
    /// The request failed.
    Error(ApiError),
    /// Answer to [`Request::Version`].
    Version(ServiceVersion),
    /// Answer to [`Request::HostInfo`].
    HostInfo(Host),
    /// Answer to [`Request::ListDomains`].
    Domains {
        /// Up to [`MAX_DOMAINS_PER_REPLY`] domains, ascending by domid.
        domains: Vec<Domain>,
        /// `Some(from)` for the next [`Request::ListDomains`] when more domains may
        /// follow; `None` when this page ends the list.
        next: Option<u32>,
    },
    /// Answer to [`Request::DomainInfo`].
    Domain(Domain),
    /// Answer to [`Request::Events`].
    Events(EventReport),
    /// Answer to [`Request::Pause`], [`Request::Unpause`] and [`Request::Destroy`].
    Lifecycle(LifecycleDone),
    /// Answer to [`Request::Create`].
    Created(CreateReport),
    /// Answer to [`Request::ConsoleStatus`].
    ConsoleStatus(Option<ConsoleSummary>),
    /// A console stream starts (answer to [`Request::Logs`] and
    /// [`Request::ConsoleAttach`]).
    ConsoleOpened(ConsoleOpened),
    /// Raw console output, in order.
    ConsoleOutput(Vec<u8>),
    /// The console stream is over; dom0d closes the connection.
    ConsoleEnd(ConsoleEnd),
    /// Answer to [`Request::Shutdown`]. Appended within protocol 1.
    ShutdownSent(ShutdownSent),
    /// Answer to [`Request::BlockList`]: the domain's disks in vdev order. Added in
    /// protocol 2.
    Blocks(Vec<BlockDevice>),
    /// Answer to [`Request::NetworkList`]: the domain's vifs in handle order. Added in
    /// protocol 3.
    Networks(Vec<NetworkDevice>),
}

/// One network interface dom0d's network back-end serves ([`Response::Networks`]).
/// Directions are the guest's, as netif names its rings: tx = frames the guest sent,
/// rx = frames delivered to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDevice {
    /// The domain id.
    pub domid: u32,
    /// The vif's handle (its index in the config's `vif` list).
    pub handle: u32,
    /// The guest's MAC.
    pub mac: String,
    /// The address hint given to the guest, if any.
    pub ip: Option<String>,
    /// The Dom0 bridge.
    pub bridge: String,
    /// The Dom0 interface (`vif3.0`).
    pub tap: String,
    /// The back-end's xenbus state (`backend/.../state`), 0 if unreadable.
    pub backend_state: u32,
    /// The front-end's xenbus state (`device/vif/.../state`), 0 if unreadable.
    pub frontend_state: u32,
    /// Whether the rings are connected.
    pub connected: bool,
    /// Stopped for breaking the protocol (never served again).
    pub stopped: bool,
    /// Packets the guest sent.
    pub tx_packets: u64,
    /// Bytes of those.
    pub tx_bytes: u64,
    /// Packets delivered to the guest.
    pub rx_packets: u64,
    /// Bytes of those.
    pub rx_bytes: u64,
    /// Frames for the guest that were dropped (queue full, too long, not connected).
    pub drops: u64,
    /// Packets from the guest answered with an error (refused by the device, too long).
    pub errors: u64,
}

/// One disk dom0d's block back-end serves ([`Response::Blocks`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// The domain id.
    pub domid: u32,
    /// `xvda` ...
    pub vdev: String,
    /// The xenstore device id (`xvda` = 51712).
    pub devid: u32,
    /// The image file in Dom0.
    pub path: String,
    /// `access=ro`.
    pub read_only: bool,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// The back-end's xenbus state (`backend/.../state`), 0 if unreadable.
    pub backend_state: u32,
    /// The front-end's xenbus state (`device/vbd/.../state`), 0 if unreadable.
    pub frontend_state: u32,
    /// Whether the ring is connected.
    pub connected: bool,
    /// Stopped for breaking the protocol (never served again).
    pub stopped: bool,
}

/// A domain's console, as `dom0 info` shows it ([`Response::ConsoleStatus`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSummary {
    /// The domain id.
    pub domid: u32,
    /// Milliseconds from the create request to the first byte of console output dom0d
    /// received; `None` before the first byte.
    pub first_byte_ms: Option<u64>,
    /// Bytes of output received since the history began (a restart continues it).
    pub total_bytes: u64,
    /// Bytes of history kept (at most 64 KiB).
    pub history_bytes: u64,
    /// Why the console was disabled (the guest broke the ring protocol), if it was.
    pub disabled: Option<String>,
    /// Whether a client is attached for input.
    pub attached: bool,
}

/// The start of a console stream ([`Response::ConsoleOpened`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleOpened {
    /// The domain name (histories are kept per name).
    pub name: String,
    /// The domain writing to the console now; `None` if it is gone.
    pub domid: Option<u32>,
    /// The last domain that wrote to it.
    pub last_domid: u32,
    /// Bytes of history that follow.
    pub history_bytes: u64,
    /// Why the console was disabled, if it was.
    pub disabled: Option<String>,
    /// Whether this attach took the console over from another client.
    pub took_over: bool,
}

/// Why a console stream ended ([`Response::ConsoleEnd`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleEnd {
    /// The whole history was sent (`logs` without follow).
    Done,
    /// The client detached.
    Detached,
    /// Another client took the console over (`console --force`).
    TakenOver,
    /// The domain was destroyed.
    DomainGone,
    /// The console was disabled: the guest broke the ring protocol.
    Disabled {
        /// What it did.
        reason: String,
    },
}

impl Response {
    /// A short name of the variant, for "expected X, got Y" errors.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Error(_) => "error",
            Self::Version(_) => "version",
            Self::HostInfo(_) => "host info",
            Self::Domains { .. } => "domain list",
            Self::Domain(_) => "domain",
            Self::Events(_) => "events",
            Self::Lifecycle(_) => "lifecycle",
            Self::Created(_) => "create",
            Self::ConsoleStatus(_) => "console status",
            Self::ConsoleOpened(_) => "console opened",
            Self::ConsoleOutput(_) => "console output",
            Self::ConsoleEnd(_) => "console end",
            Self::ShutdownSent(_) => "shutdown sent",
            Self::Blocks(_) => "block devices",
            Self::Networks(_) => "network devices",
        }
    }
}

/// An error dom0d reports instead of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    /// The first request was not [`Request::Hello`].
    #[error("the client did not start with a hello")]
    HandshakeRequired,
    /// A frame's length exceeded [`MAX_FRAME`]; dom0d closes the connection.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Length the client announced.
        len: u32,
        /// The limit, [`MAX_FRAME`].
        max: u32,
    },
    /// A frame did not decode as one [`Request`].
    #[error("malformed request: {reason}")]
    Malformed {
        /// What the decoder said.
        reason: String,
    },
    /// No domain has this id.
    #[error("no domain with id {domid}")]
    NoSuchDomain {
        /// The id asked for.
        domid: u32,
    },
    /// The microvisor (or the kernel module in front of it) refused a control call.
    #[error("the microvisor's {op} call failed with {}", errno_text(*.errno))]
    Hypercall {
        /// The control operation (`HostInfo`, `DomainList`, `DomainInfo`).
        op: String,
        /// The positive errno (Linux numbering, which equals Xen's for these codes).
        errno: i32,
    },
    /// The microvisor returned a record that does not validate.
    #[error("the microvisor returned a bad record: {reason}")]
    BadRecord {
        /// What is wrong with it.
        reason: String,
    },
    /// dom0d is serving as many connections as it allows; try again later.
    #[error("dom0d is busy: too many connections")]
    Busy,
    /// A lifecycle request named domain 0, which dom0d refuses without asking the
    /// microvisor (which would refuse too, with `EPERM`).
    #[error("Domain-0 cannot be {}", .action.done())]
    DomainZero {
        /// What was asked.
        action: Lifecycle,
    },
    /// Pause of a domain that is already paused (`EBUSY`).
    #[error("{} is already paused", domain_label(*.domid, .name))]
    AlreadyPaused {
        /// The domain id.
        domid: u32,
        /// Its name.
        name: String,
    },
    /// Unpause of a domain that is not paused (`EBUSY`).
    #[error("{} is not paused (it is {})", domain_label(*.domid, .name), state_text(*.state, None))]
    NotPaused {
        /// The domain id.
        domid: u32,
        /// Its name.
        name: String,
        /// Its state, if it could be read.
        state: Option<State>,
    },
    /// Pause or unpause of a domain that has shut down or crashed (`EINVAL`): only destroy
    /// applies to it.
    #[error("{}", ended_text(*.domid, .name, *.state, *.reason, *.action))]
    DomainEnded {
        /// What was asked.
        action: Lifecycle,
        /// The domain id.
        domid: u32,
        /// Its name.
        name: String,
        /// [`State::Shutdown`] or [`State::Crashed`].
        state: State,
        /// For [`State::Shutdown`], why.
        reason: Option<Reason>,
    },
    /// The microvisor accepted the action, but the domain did not reach the expected
    /// state (paused, or gone for destroy) within dom0d's limit.
    #[error("{}", timed_out_text(*.action, *.domid, .name, *.waited_ms, *.state))]
    LifecycleTimeout {
        /// What was asked.
        action: Lifecycle,
        /// The domain id.
        domid: u32,
        /// Its name.
        name: String,
        /// How long dom0d waited, in milliseconds.
        waited_ms: u64,
        /// The state it last saw.
        state: Option<State>,
    },
    /// A create request failed ([`Request::Create`]); nothing is left behind unless
    /// [`CreateError::Failed`] says its cleanup failed.
    #[error(transparent)]
    Create(CreateError),
    /// No domain (and no kept console history) has this name or id.
    #[error("no domain {}", reference_text(.reference))]
    UnknownDomain {
        /// The reference as given.
        reference: String,
    },
    /// The domain exists, but dom0d serves no console for it (Domain-0, a boot-time
    /// domain, or one built without event channels).
    #[error("{} has no console that dom0d serves", domain_label(*.domid, .name))]
    NoConsole {
        /// The domain id.
        domid: u32,
        /// Its name.
        name: String,
    },
    /// Another client is attached to the console.
    #[error("the console of {} is in use by another `dom0 console`", console_label(*.domid, .name))]
    ConsoleBusy {
        /// The domain id, if the domain is still there.
        domid: Option<u32>,
        /// Its name.
        name: String,
    },
    /// A PV shutdown or reboot request cannot reach the guest: dom0d serves no xenstore
    /// for it (`node` is `None`: Domain-0's, a boot-time domain, one built without event
    /// channels), or the guest never wrote `node` (`control/feature-poweroff` or
    /// `control/feature-reboot`) = 1. Appended within protocol 1.
    #[error("{} {}", domain_label(*.domid, .name), pv_shutdown_text(*.request, .node.as_deref()))]
    PvShutdownUnsupported {
        /// What was asked.
        request: GuestRequest,
        /// The domain id.
        domid: u32,
        /// Its name.
        name: String,
        /// The feature node the guest did not write, if it has a xenstore at all.
        node: Option<String>,
    },
    /// A [`Request::Shutdown`] for Domain-0, or for a domain that has already shut down
    /// or crashed. Appended within protocol 1.
    #[error("{} cannot be sent a PV {} request: {}", domain_label(*.domid, .name), .request.command(), match .why {
        NotApplicable::DomainZero => "it is the control domain".to_owned(),
        NotApplicable::Ended(state) => format!("it has {}", match state { State::Crashed => "crashed", State::Dying => "been destroyed", _ => "shut down" }),
    })]
    GuestRequestNotApplicable {
        /// What was asked.
        request: GuestRequest,
        /// The domain id.
        domid: u32,
        /// Its name.
        name: String,
        /// Why not.
        why: NotApplicable,
    },
}

/// Why a [`Request::Shutdown`] does not apply to the domain in its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotApplicable {
    /// It is Domain-0.
    DomainZero,
    /// It has shut down or crashed already.
    Ended(State),
}

fn pv_shutdown_text(request: GuestRequest, node: Option<&str>) -> String {
    match node {
        Some(node) => format!(
            "does not handle PV {} requests: the guest never wrote {node} = 1",
            request.command()
        ),
        None => format!(
            "cannot be sent a PV {} request: dom0d serves no xenstore for it",
            request.command()
        ),
    }
}

fn reference_text(reference: &str) -> String {
    if !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_digit()) {
        format!("with id {reference}")
    } else {
        format!("named {reference:?}")
    }
}

fn console_label(domid: Option<u32>, name: &str) -> String {
    match domid {
        Some(d) => domain_label(d, name),
        None => format!("\"{name}\""),
    }
}

/// Which file of a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageKind {
    /// `kernel`.
    Kernel,
    /// `ramdisk`.
    Ramdisk,
    /// A `disk` image. Added in protocol 2.
    Disk,
}

impl ImageKind {
    /// `kernel` or `ramdisk`, the config key.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Ramdisk => "ramdisk",
            Self::Disk => "disk",
        }
    }
}

/// Why a file could not be read, as far as the exit code cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileProblem {
    /// It does not exist (exit 3).
    NotFound,
    /// Reading it was refused (exit 8).
    PermissionDenied,
    /// Anything else (a directory, too large, an I/O error).
    Other,
}

/// What happened to a half-built domain after a failed create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cleanup {
    /// The failure came before the domain existed.
    NotNeeded,
    /// dom0d destroyed it; its memory is back.
    Destroyed,
    /// Destroying it failed too: it is still there.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Why a create request failed ([`ApiError::Create`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CreateError {
    /// The config breaks a rule of `config::DomainConfig::check` (dom0d repeats the CLI's
    /// checks).
    #[error("invalid config: {reason}")]
    InvalidConfig {
        /// What is wrong, naming the key.
        reason: String,
    },
    /// The kernel or ramdisk could not be read.
    #[error("cannot read {} {path}: {reason}", .what.name())]
    Unreadable {
        /// Which file.
        what: ImageKind,
        /// Its path.
        path: String,
        /// Why.
        reason: String,
        /// The kind of problem.
        problem: FileProblem,
    },
    /// The kernel is not a PVH kernel that fits the domain.
    #[error("kernel {path} cannot be used: {reason}")]
    BadKernel {
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
        /// How to fix it, if there is a concrete fix.
        fix: Option<String>,
    },
    /// The ramdisk does not fit the domain.
    #[error("ramdisk {path} cannot be used: {reason}")]
    BadRamdisk {
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
        /// How to fix it, if there is a concrete fix.
        fix: Option<String>,
    },
    /// The domain needs more memory than the host has free.
    #[error(
        "domain \"{name}\" needs {} MiB of memory, but the host has only {} MiB free",
        .needed_kib / 1024,
        .free_kib / 1024
    )]
    NotEnoughMemory {
        /// The domain's name.
        name: String,
        /// What it needs, KiB.
        needed_kib: u64,
        /// What is free, KiB.
        free_kib: u64,
    },
    /// Another domain has the name.
    #[error("{}", name_in_use_text(.name, *.domid))]
    NameInUse {
        /// The name.
        name: String,
        /// The domain that has it, if known.
        domid: Option<u32>,
    },
    /// The microvisor has no free domain id (`ENOSPC`).
    #[error("the microvisor has no free domain id")]
    NoFreeDomid,
    /// The microvisor offers no foreign window, so dom0d cannot write a domain's memory.
    #[error("the microvisor has no foreign window to write the domain's memory through")]
    NoForeignWindow,
    /// A step of the build failed.
    #[error("{step} failed: {reason}{}", cleanup_text(.cleanup, *.domid))]
    Failed {
        /// What dom0d was doing, e.g. `writing the domain's memory`.
        step: String,
        /// The errno of the failed call, if it was one.
        errno: Option<i32>,
        /// What went wrong.
        reason: String,
        /// The half-built domain, if it existed.
        domid: Option<u32>,
        /// What happened to it.
        cleanup: Cleanup,
    },
}

fn name_in_use_text(name: &str, domid: Option<u32>) -> String {
    match domid {
        Some(d) => format!("a domain named \"{name}\" already exists (domain {d})"),
        None => format!("a domain named \"{name}\" already exists"),
    }
}

fn cleanup_text(cleanup: &Cleanup, domid: Option<u32>) -> String {
    match (cleanup, domid) {
        (Cleanup::Failed { reason }, Some(d)) => {
            format!("; destroying the half-built domain {d} failed too: {reason}")
        }
        (Cleanup::Failed { reason }, None) => {
            format!("; destroying the half-built domain failed too: {reason}")
        }
        _ => String::new(),
    }
}

/// One kernel segment as the builder loads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentPlan {
    /// Guest-physical load address.
    pub paddr: u64,
    /// Bytes copied from the file.
    pub file_bytes: u64,
    /// Bytes in memory (the rest is zero).
    pub mem_bytes: u64,
}

/// Where the ramdisk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamdiskPlan {
    /// Guest-physical address (page-aligned, at the top of RAM).
    pub paddr: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// What the builder writes into a new domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// RAM at guest-physical `0..memory_mib` MiB.
    pub memory_mib: u32,
    /// PVH entry point (`EIP`).
    pub entry: u64,
    /// Guest-physical `hvm_start_info` (`EBX`), the boot page.
    pub start_info: u64,
    /// The kernel's loadable segments.
    pub segments: Vec<SegmentPlan>,
    /// The ramdisk, if any.
    pub ramdisk: Option<RamdiskPlan>,
}

/// What a create request did ([`Response::Created`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateReport {
    /// The new domain's id; `None` for a dry run.
    pub domid: Option<u32>,
    /// The effective config.
    pub config: DomainConfig,
    /// What was (or would be) written.
    pub plan: Plan,
    /// The domain's state afterwards (`paused`, `running`, `blocked`); `None` for a dry
    /// run, or if it could not be read.
    pub state: Option<State>,
    /// How long dom0d took, in milliseconds.
    pub took_ms: u64,
}

/// Symbolic name of the errno values the control path produces.
#[must_use]
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        5 => "EIO",
        6 => "ENXIO",
        7 => "E2BIG",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        19 => "ENODEV",
        22 => "EINVAL",
        25 => "ENOTTY",
        28 => "ENOSPC",
        34 => "ERANGE",
        38 => "ENOSYS",
        62 => "ETIME",
        95 => "EOPNOTSUPP",
        _ => return None,
    })
}

/// `EPERM (Operation not permitted)`, or `errno 4242` for numbers we do not know.
#[must_use]
pub fn errno_text(errno: i32) -> String {
    let text = os_error_text(&io::Error::from_raw_os_error(errno));
    match errno_name(errno) {
        Some(name) => format!("{name} ({text})"),
        None => format!("errno {errno}"),
    }
}

/// An I/O error's message without std's `" (os error N)"` suffix (CLI.md §7: no bare
/// numeric codes).
#[must_use]
pub fn os_error_text(e: &io::Error) -> String {
    let text = e.to_string();
    match (e.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(at)) => text[..at].to_owned(),
        _ => text,
    }
}

/// Versions dom0d reports ([`Request::Version`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceVersion {
    /// dom0d's crate version.
    pub dom0d: String,
    /// dom0d's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The `shared_abi::control::CONTROL_VERSION` dom0d was built against.
    pub control_version_built: u64,
    /// What the microvisor reported, or why it could not be asked.
    pub microvisor: Result<MicrovisorVersion, ApiError>,
}

/// The microvisor's versions, from its host information.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MicrovisorVersion {
    /// The microvisor's version string (e.g. `"0.1.0"`).
    pub version: String,
    /// The microvisor's `CONTROL_VERSION`.
    pub control_version: u32,
}

/// Facts about the host ([`Request::HostInfo`]), validated from the microvisor's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Physical CPUs the microvisor runs on.
    pub pcpus: u32,
    /// The pCPU dedicated to domain 0.
    pub dom0_pcpu: u32,
    /// Usable RAM of the machine, in KiB.
    pub mem_total_kib: u64,
    /// RAM not given to any domain nor used by the microvisor, in KiB.
    pub mem_free_kib: u64,
    /// TSC frequency in kHz.
    pub tsc_khz: u64,
    /// Time since the microvisor started, in nanoseconds.
    pub uptime_ns: u64,
    /// The microvisor's version string.
    pub microvisor_version: String,
    /// The microvisor's control ABI version.
    pub control_version: u32,
}

/// Whether dom0d receives the microvisor's events ([`EventReport::status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventStatus {
    /// dom0d waits for events on the device.
    Listening,
    /// dom0d never listened (e.g. the device cannot be polled: an older module).
    Unavailable {
        /// Why.
        reason: String,
    },
    /// dom0d listened, then stopped (the device failed or misbehaved).
    Stopped {
        /// Why.
        reason: String,
    },
}

impl EventStatus {
    /// `listening`, `unavailable` or `stopped`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Listening => "listening",
            Self::Unavailable { .. } => "unavailable",
            Self::Stopped { .. } => "stopped",
        }
    }

    /// Why dom0d does not listen, if it does not.
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Listening => None,
            Self::Unavailable { reason } | Self::Stopped { reason } => Some(reason),
        }
    }
}

/// What dom0d has seen of the microvisor's events ([`Request::Events`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventReport {
    /// Whether dom0d listens.
    pub status: EventStatus,
    /// Event masks received since dom0d started (one per `read` of the device; several
    /// microvisor events between two reads arrive as one mask).
    pub count: u64,
    /// The last mask received (`shared_abi::control::EVENT_*` bits), 0 before the first.
    pub last_mask: u64,
    /// When the last mask arrived, in milliseconds since the Unix epoch (Dom0's clock).
    pub last_unix_ms: Option<u64>,
    /// How long before this reply the last mask arrived, in milliseconds (monotonic).
    pub last_age_ms: Option<u64>,
}

/// Run state of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Runnable or running.
    Running,
    /// Waiting for an event.
    Blocked,
    /// Paused by the toolstack.
    Paused,
    /// Shut down by itself; see [`Domain::reason`].
    Shutdown,
    /// Crashed.
    Crashed,
    /// Destroyed, but kept by the microvisor until Dom0 releases its grant mappings of it.
    /// Appended within protocol 1.
    Dying,
}

impl State {
    /// The lowercase word used in JSON and by `--state`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Blocked => "blocked",
            Self::Paused => "paused",
            Self::Shutdown => "shutdown",
            Self::Crashed => "crashed",
            Self::Dying => "dying",
        }
    }

    /// Whether the domain has ended (shut down, crashed or dying): it will not run again.
    #[must_use]
    pub fn ended(self) -> bool {
        matches!(self, Self::Shutdown | Self::Crashed | Self::Dying)
    }
}

/// Why a domain shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Clean power-off.
    Poweroff,
    /// Reboot request.
    Reboot,
    /// Suspend for save/restore.
    Suspend,
    /// The guest reported a crash.
    Crash,
    /// A watchdog expired.
    Watchdog,
    /// Soft reset.
    SoftReset,
}

impl Reason {
    /// The lowercase word used in JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Poweroff => "poweroff",
            Self::Reboot => "reboot",
            Self::Suspend => "suspend",
            Self::Crash => "crash",
            Self::Watchdog => "watchdog",
            Self::SoftReset => "soft_reset",
        }
    }

    /// The letter in the fifth column of the `list` state flags (CLI.md §5).
    #[must_use]
    pub fn letter(self) -> char {
        match self {
            Self::Poweroff => 'o',
            Self::Reboot => 'r',
            Self::Suspend => 's',
            Self::Crash => 'c',
            Self::Watchdog => 'w',
            Self::SoftReset => 'x',
        }
    }
}

/// One domain, validated from the microvisor's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// Domain id.
    pub domid: u32,
    /// Name: printable ASCII, at most 31 bytes, possibly empty.
    pub name: String,
    /// Run state.
    pub state: State,
    /// For [`State::Shutdown`], why; otherwise `None`.
    pub reason: Option<Reason>,
    /// Whether this is the privileged control domain.
    pub privileged: bool,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// The pCPU its vCPU runs on.
    pub pcpu: u32,
    /// Memory given to the domain, in KiB.
    pub mem_kib: u64,
    /// Time its vCPUs spent in guest mode, in nanoseconds.
    pub cpu_time_ns: u64,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed (including timeouts).
    #[error("connection error")]
    Io(#[source] io::Error),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The announced payload length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced (or, when encoding, actual) payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not one valid message.
    #[error("cannot decode message")]
    Decode(#[source] postcard::Error),
    /// The payload holds a valid message followed by extra bytes.
    #[error("{extra} unexpected bytes after the message")]
    Trailing {
        /// How many bytes were left over.
        extra: usize,
    },
    /// The message could not be encoded.
    #[error("cannot encode message")]
    Encode(#[source] postcard::Error),
}

/// Encodes `msg` as one frame (length prefix plus payload).
///
/// # Errors
/// [`FrameError::Encode`] if serialisation fails, [`FrameError::TooLarge`] if the payload
/// exceeds [`MAX_FRAME`].
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0u8; FRAME_HEADER];
    frame = postcard::to_extend(msg, frame).map_err(FrameError::Encode)?;
    let len = frame.len() - FRAME_HEADER;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let len = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: MAX_FRAME,
    })?;
    frame[..FRAME_HEADER].copy_from_slice(&len.to_le_bytes());
    Ok(frame)
}

/// Decodes one payload as exactly one `T`.
///
/// # Errors
/// [`FrameError::Decode`] if it is not a `T`, [`FrameError::Trailing`] if bytes are left.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(FrameError::Decode)?;
    if rest.is_empty() {
        Ok(msg)
    } else {
        Err(FrameError::Trailing { extra: rest.len() })
    }
}

/// Checks a length prefix against `max` and returns the payload length.
///
/// # Errors
/// [`FrameError::TooLarge`].
pub fn payload_len(header: [u8; FRAME_HEADER], max: usize) -> Result<usize, FrameError> {
    let len = usize::try_from(u32::from_le_bytes(header)).unwrap_or(usize::MAX);
    if len > max {
        Err(FrameError::TooLarge { len, max })
    } else {
        Ok(len)
    }
}

/// Reads one frame's payload from a blocking reader. `Ok(None)` means the peer closed the
/// connection cleanly between frames.
///
/// # Errors
/// See [`FrameError`]; the payload is not read if its length exceeds `max`.
pub fn read_frame<R: Read>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let mut payload = vec![0u8; payload_len(header, max)?];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(Some(payload))
}

/// Reads one frame's payload from an async reader; see [`read_frame`].
///
/// # Errors
/// See [`FrameError`].
pub async fn read_frame_async<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        match r.read(&mut header[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let mut payload = vec![0u8; payload_len(header, max)?];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_domain(domid: u32) -> Domain {
        Domain {
            domid,
            name: format!("guest{domid}"),
            state: State::Shutdown,
            reason: Some(Reason::Watchdog),
            privileged: false,
            vcpus: 2,
            pcpu: 1,
            mem_kib: 65_536,
            cpu_time_ns: u64::MAX,
        }
    }

    fn all_requests() -> Vec<Request> {
        vec![
            Request::Hello {
                protocol: PROTOCOL_VERSION,
                software: "dom0 0.1.0".into(),
            },
            Request::Version,
            Request::HostInfo,
            Request::ListDomains { from: 0 },
            Request::ListDomains { from: u32::MAX },
            Request::DomainInfo { domid: 4000 },
            Request::Events,
            Request::Pause { domid: 3 },
            Request::Unpause { domid: u32::MAX },
            Request::Destroy { domid: 0 },
            Request::Create {
                config: sample_config(),
                dry_run: true,
                paused: false,
            },
            Request::ConsoleStatus { domid: 3 },
            Request::Logs {
                domain: "web".into(),
                follow: true,
            },
            Request::ConsoleAttach {
                domain: "7".into(),
                force: false,
            },
            Request::ConsoleInput(b"ls\r\x1b[A\0\xff".to_vec()),
            Request::ConsoleDetach,
            Request::Shutdown {
                domid: 3,
                request: GuestRequest::Poweroff,
            },
            Request::Shutdown {
                domid: u32::MAX,
                request: GuestRequest::Reboot,
            },
        ]
    }

    fn sample_config() -> DomainConfig {
        DomainConfig {
            name: "web".into(),
            kernel: "/k".into(),
            ramdisk: Some("/r".into()),
            cmdline: None,
            memory_mib: 16,
            vcpus: 1,
            on_poweroff: crate::config::OnEvent::Destroy,
            on_reboot: crate::config::OnEvent::Restart,
            on_crash: crate::config::OnEvent::Preserve,
            disks: Vec::new(),
            vifs: Vec::new(),
        }
    }

    fn sample_plan() -> Plan {
        Plan {
            memory_mib: 16,
            entry: 0x10_0000,
            start_info: 0x1000,
            segments: vec![SegmentPlan {
                paddr: 0x10_0000,
                file_bytes: 5,
                mem_bytes: 4096,
            }],
            ramdisk: Some(RamdiskPlan {
                paddr: 0xff_f000,
                bytes: 9,
            }),
        }
    }

    fn all_responses() -> Vec<Response> {
        let host = Host {
            pcpus: 2,
            dom0_pcpu: 0,
            mem_total_kib: 1 << 22,
            mem_free_kib: 1 << 20,
            tsc_khz: 2_500_000,
            uptime_ns: 1,
            microvisor_version: "0.1.0".into(),
            control_version: 1,
        };
        vec![
            Response::Hello {
                protocol: 7,
                software: "dom0d 9.9.9".into(),
            },
            Response::Error(ApiError::NoSuchDomain { domid: 4000 }),
            Response::Error(ApiError::Hypercall {
                op: "DomainList".into(),
                errno: 1,
            }),
            Response::Error(ApiError::FrameTooLarge { len: 1, max: 2 }),
            Response::Error(ApiError::Malformed { reason: "x".into() }),
            Response::Error(ApiError::BadRecord { reason: "y".into() }),
            Response::Error(ApiError::HandshakeRequired),
            Response::Error(ApiError::Busy),
            Response::Error(ApiError::DomainZero {
                action: Lifecycle::Destroy,
            }),
            Response::Error(ApiError::AlreadyPaused {
                domid: 3,
                name: "spin".into(),
            }),
            Response::Error(ApiError::NotPaused {
                domid: 3,
                name: String::new(),
                state: Some(State::Blocked),
            }),
            Response::Error(ApiError::DomainEnded {
                action: Lifecycle::Unpause,
                domid: 3,
                name: "spin".into(),
                state: State::Shutdown,
                reason: Some(Reason::Crash),
            }),
            Response::Error(ApiError::LifecycleTimeout {
                action: Lifecycle::Pause,
                domid: 3,
                name: "spin".into(),
                waited_ms: 2000,
                state: None,
            }),
            Response::Lifecycle(LifecycleDone {
                action: Lifecycle::Pause,
                domid: 3,
                name: "spin".into(),
                state: Some(State::Paused),
            }),
            Response::Lifecycle(LifecycleDone {
                action: Lifecycle::Destroy,
                domid: 3,
                name: "spin".into(),
                state: None,
            }),
            Response::Version(ServiceVersion {
                dom0d: "0.1.0".into(),
                protocol: 1,
                control_version_built: 1,
                microvisor: Ok(MicrovisorVersion {
                    version: "0.1.0".into(),
                    control_version: 1,
                }),
            }),
            Response::Version(ServiceVersion {
                dom0d: "0.1.0".into(),
                protocol: 1,
                control_version_built: 1,
                microvisor: Err(ApiError::Hypercall {
                    op: "HostInfo".into(),
                    errno: 13,
                }),
            }),
            Response::HostInfo(host),
            Response::Domains {
                domains: (0..3).map(sample_domain).collect(),
                next: Some(3),
            },
            Response::Domains {
                domains: Vec::new(),
                next: None,
            },
            Response::Domain(sample_domain(0)),
            Response::Created(CreateReport {
                domid: Some(3),
                config: sample_config(),
                plan: sample_plan(),
                state: Some(State::Running),
                took_ms: 12,
            }),
            Response::Error(ApiError::Create(CreateError::Failed {
                step: "x".into(),
                errno: Some(22),
                reason: "y".into(),
                domid: Some(3),
                cleanup: Cleanup::Failed { reason: "z".into() },
            })),
            Response::Error(ApiError::Create(CreateError::Unreadable {
                what: ImageKind::Ramdisk,
                path: "/r".into(),
                reason: "gone".into(),
                problem: FileProblem::NotFound,
            })),
            Response::Error(ApiError::Create(CreateError::NoForeignWindow)),
            Response::Events(EventReport {
                status: EventStatus::Listening,
                count: 3,
                last_mask: 1,
                last_unix_ms: Some(1_700_000_000_000),
                last_age_ms: Some(4200),
            }),
            Response::Events(EventReport {
                status: EventStatus::Stopped {
                    reason: "gone".into(),
                },
                count: 0,
                last_mask: 0,
                last_unix_ms: None,
                last_age_ms: None,
            }),
            Response::ConsoleStatus(None),
            Response::ConsoleStatus(Some(ConsoleSummary {
                domid: 3,
                first_byte_ms: Some(85),
                total_bytes: 100_000,
                history_bytes: 65_536,
                disabled: Some("overrun".into()),
                attached: true,
            })),
            Response::ConsoleOpened(ConsoleOpened {
                name: "web".into(),
                domid: None,
                last_domid: 3,
                history_bytes: 12,
                disabled: None,
                took_over: true,
            }),
            Response::ConsoleOutput((0..=255).collect()),
            Response::ConsoleEnd(ConsoleEnd::Done),
            Response::ConsoleEnd(ConsoleEnd::Disabled { reason: "x".into() }),
            Response::Error(ApiError::UnknownDomain {
                reference: "web".into(),
            }),
            Response::Error(ApiError::NoConsole {
                domid: 0,
                name: "Domain-0".into(),
            }),
            Response::Error(ApiError::ConsoleBusy {
                domid: Some(3),
                name: "web".into(),
            }),
            Response::Events(EventReport {
                status: EventStatus::Unavailable {
                    reason: "no poll".into(),
                },
                count: u64::MAX,
                last_mask: u64::MAX,
                last_unix_ms: Some(0),
                last_age_ms: Some(u64::MAX),
            }),
            Response::ShutdownSent(ShutdownSent {
                request: GuestRequest::Reboot,
                domid: 3,
                name: "web".into(),
                state: State::Blocked,
            }),
            Response::Error(ApiError::PvShutdownUnsupported {
                request: GuestRequest::Poweroff,
                domid: 3,
                name: "web".into(),
                node: Some("control/feature-poweroff".into()),
            }),
            Response::Error(ApiError::PvShutdownUnsupported {
                request: GuestRequest::Reboot,
                domid: 1,
                name: "hello1".into(),
                node: None,
            }),
            Response::Error(ApiError::GuestRequestNotApplicable {
                request: GuestRequest::Poweroff,
                domid: 0,
                name: "Domain-0".into(),
                why: NotApplicable::DomainZero,
            }),
            Response::Error(ApiError::GuestRequestNotApplicable {
                request: GuestRequest::Reboot,
                domid: 5,
                name: "off".into(),
                why: NotApplicable::Ended(State::Crashed),
            }),
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_frame() {
        for req in all_requests() {
            let frame = encode(&req).unwrap();
            let payload = read_frame(&mut frame.as_slice(), MAX_FRAME)
                .unwrap()
                .unwrap();
            assert_eq!(payload.len() + FRAME_HEADER, frame.len());
            assert_eq!(decode::<Request>(&payload).unwrap(), req);
        }
        for resp in all_responses() {
            let frame = encode(&resp).unwrap();
            let payload = read_frame(&mut frame.as_slice(), MAX_FRAME)
                .unwrap()
                .unwrap();
            assert_eq!(decode::<Response>(&payload).unwrap(), resp);
        }
    }

    #[test]
    fn hello_is_variant_zero_with_fixed_fields() {
        // The frozen layout: variant 0, varint protocol, length-prefixed string.
        let frame = encode(&Request::Hello {
            protocol: 1,
            software: "ab".into(),
        })
        .unwrap();
        assert_eq!(frame, [5, 0, 0, 0, 0, 1, 2, b'a', b'b']);
        let frame = encode(&Response::Hello {
            protocol: 300,
            software: String::new(),
        })
        .unwrap();
        assert_eq!(frame, [4, 0, 0, 0, 0, 0xac, 0x02, 0]);
    }

    #[test]
    fn events_were_appended_so_protocol_1_encodings_did_not_move() {
        // Variants are encoded by index: the requests and replies of the first protocol 1
        // release keep their bytes, and Events comes last.
        assert_eq!(postcard::to_stdvec(&Request::Version).unwrap(), [1]);
        assert_eq!(postcard::to_stdvec(&Request::HostInfo).unwrap(), [2]);
        assert_eq!(
            postcard::to_stdvec(&Request::DomainInfo { domid: 7 }).unwrap(),
            [4, 7]
        );
        assert_eq!(postcard::to_stdvec(&Request::Events).unwrap(), [5]);
        let reply = Response::Events(EventReport {
            status: EventStatus::Listening,
            count: 2,
            last_mask: 1,
            last_unix_ms: None,
            last_age_ms: Some(5),
        });
        assert_eq!(postcard::to_stdvec(&reply).unwrap(), [6, 0, 2, 1, 0, 1, 5]);
    }

    #[test]
    fn lifecycle_was_appended_after_events() {
        // Requests, the reply and the errors all come after what existed before, so every
        // earlier encoding keeps its bytes.
        assert_eq!(
            postcard::to_stdvec(&Request::Pause { domid: 7 }).unwrap(),
            [6, 7]
        );
        assert_eq!(
            postcard::to_stdvec(&Request::Unpause { domid: 7 }).unwrap(),
            [7, 7]
        );
        assert_eq!(
            postcard::to_stdvec(&Request::Destroy { domid: 7 }).unwrap(),
            [8, 7]
        );
        let done = Response::Lifecycle(LifecycleDone {
            action: Lifecycle::Unpause,
            domid: 7,
            name: "a".into(),
            state: Some(State::Running),
        });
        assert_eq!(
            postcard::to_stdvec(&done).unwrap(),
            [7, 1, 7, 1, b'a', 1, 0]
        );
        assert_eq!(
            postcard::to_stdvec(&Response::Error(ApiError::Busy)).unwrap(),
            [1, 6]
        );
        let zero = Response::Error(ApiError::DomainZero {
            action: Lifecycle::Pause,
        });
        assert_eq!(postcard::to_stdvec(&zero).unwrap(), [1, 7, 0]);
        for (action, domid) in [
            (Lifecycle::Pause, 1),
            (Lifecycle::Unpause, 2),
            (Lifecycle::Destroy, 3),
        ] {
            assert_eq!(action.request(domid).lifecycle(), Some((action, domid)));
        }
        assert_eq!(Request::Events.lifecycle(), None);
    }

    #[test]
    fn create_was_appended_after_the_lifecycle_requests() {
        let req = postcard::to_stdvec(&Request::Create {
            config: sample_config(),
            dry_run: false,
            paused: true,
        })
        .unwrap();
        assert_eq!(req[0], 9);
        let reply = postcard::to_stdvec(&Response::Created(CreateReport {
            domid: None,
            config: sample_config(),
            plan: sample_plan(),
            state: None,
            took_ms: 0,
        }))
        .unwrap();
        assert_eq!(reply[0], 8);
        let err = postcard::to_stdvec(&Response::Error(ApiError::Create(CreateError::NoFreeDomid)))
            .unwrap();
        assert_eq!(err, [1, 12, 6]);
    }

    #[test]
    fn console_messages_were_appended_after_create() {
        let req = |r: &Request| postcard::to_stdvec(r).unwrap();
        assert_eq!(req(&Request::ConsoleStatus { domid: 7 }), [10, 7]);
        assert_eq!(
            req(&Request::Logs {
                domain: "a".into(),
                follow: true
            }),
            [11, 1, b'a', 1]
        );
        assert_eq!(
            req(&Request::ConsoleAttach {
                domain: "a".into(),
                force: false
            }),
            [12, 1, b'a', 0]
        );
        assert_eq!(req(&Request::ConsoleInput(vec![0x1d, 0])), [13, 2, 0x1d, 0]);
        assert_eq!(req(&Request::ConsoleDetach), [14]);
        let resp = |r: &Response| postcard::to_stdvec(r).unwrap();
        assert_eq!(resp(&Response::ConsoleStatus(None)), [9, 0]);
        assert_eq!(resp(&Response::ConsoleOutput(vec![b'x'])), [11, 1, b'x']);
        assert_eq!(resp(&Response::ConsoleEnd(ConsoleEnd::TakenOver)), [12, 2]);
        let e = Response::Error(ApiError::UnknownDomain {
            reference: "a".into(),
        });
        assert_eq!(resp(&e), [1, 13, 1, b'a']);
    }

    #[test]
    fn shutdown_messages_were_appended_after_the_console_ones() {
        let req = |r: &Request| postcard::to_stdvec(r).unwrap();
        assert_eq!(
            req(&Request::Shutdown {
                domid: 7,
                request: GuestRequest::Poweroff
            }),
            [15, 7, 0]
        );
        assert_eq!(
            req(&Request::Shutdown {
                domid: 7,
                request: GuestRequest::Reboot
            }),
            [15, 7, 1]
        );
        let resp = |r: &Response| postcard::to_stdvec(r).unwrap();
        assert_eq!(
            resp(&Response::ShutdownSent(ShutdownSent {
                request: GuestRequest::Poweroff,
                domid: 3,
                name: "a".into(),
                state: State::Running,
            }))[..4],
            [13, 0, 3, 1]
        );
        let e = Response::Error(ApiError::PvShutdownUnsupported {
            request: GuestRequest::Poweroff,
            domid: 3,
            name: "a".into(),
            node: None,
        });
        assert_eq!(resp(&e), [1, 16, 0, 3, 1, b'a', 0]);
        let e = Response::Error(ApiError::GuestRequestNotApplicable {
            request: GuestRequest::Reboot,
            domid: 0,
            name: String::new(),
            why: NotApplicable::DomainZero,
        });
        assert_eq!(resp(&e), [1, 17, 1, 0, 0, 0]);
    }

    #[test]
    fn device_lists_come_last_and_round_trip() {
        let req = |r: &Request| postcard::to_stdvec(r).unwrap();
        assert_eq!(req(&Request::BlockList { domid: 7 }), [16, 7]);
        assert_eq!(req(&Request::NetworkList { domid: 7 }), [17, 7]);
        let vif = NetworkDevice {
            domid: 3,
            handle: 0,
            mac: "00:16:3e:01:02:03".into(),
            ip: Some("10.0.0.2/24".into()),
            bridge: "br0".into(),
            tap: "vif3.0".into(),
            backend_state: 4,
            frontend_state: 4,
            connected: true,
            stopped: false,
            tx_packets: 1,
            tx_bytes: 60,
            rx_packets: 2,
            rx_bytes: 120,
            drops: 0,
            errors: 0,
        };
        let resp = Response::Networks(vec![vif]);
        let bytes = postcard::to_stdvec(&resp).unwrap();
        assert_eq!(bytes[..2], [15, 1]);
        assert_eq!(decode::<Response>(&bytes).unwrap(), resp);
        assert_eq!(resp.kind(), "network devices");
        // The config's vifs follow its disks.
        let mut c = sample_config();
        c.vifs = vec![crate::config::parse_vif("", "x", 0).unwrap()];
        let bytes = postcard::to_stdvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<DomainConfig>(&bytes).unwrap(), c);
    }

    #[test]
    fn shutdown_error_messages() {
        let e = ApiError::PvShutdownUnsupported {
            request: GuestRequest::Reboot,
            domid: 3,
            name: "web".into(),
            node: Some("control/feature-reboot".into()),
        };
        assert_eq!(
            e.to_string(),
            "domain 3 (web) does not handle PV reboot requests: the guest never wrote control/feature-reboot = 1"
        );
        let e = ApiError::GuestRequestNotApplicable {
            request: GuestRequest::Poweroff,
            domid: 5,
            name: "off".into(),
            why: NotApplicable::Ended(State::Shutdown),
        };
        assert_eq!(
            e.to_string(),
            "domain 5 (off) cannot be sent a PV shutdown request: it has shut down"
        );
        assert_eq!(
            (GuestRequest::Poweroff.word(), GuestRequest::Reboot.word()),
            ("poweroff", "reboot")
        );
        assert_eq!(
            (GuestRequest::Poweroff.verb(), GuestRequest::Reboot.verb()),
            ("shut down", "reboot")
        );
    }

    #[test]
    fn console_error_messages() {
        let e = ApiError::UnknownDomain {
            reference: "42".into(),
        };
        assert_eq!(e.to_string(), "no domain with id 42");
        let e = ApiError::UnknownDomain {
            reference: "web".into(),
        };
        assert_eq!(e.to_string(), "no domain named \"web\"");
        let e = ApiError::NoConsole {
            domid: 0,
            name: "Domain-0".into(),
        };
        assert_eq!(
            e.to_string(),
            "domain 0 (Domain-0) has no console that dom0d serves"
        );
        let e = ApiError::ConsoleBusy {
            domid: Some(3),
            name: "echo".into(),
        };
        assert_eq!(
            e.to_string(),
            "the console of domain 3 (echo) is in use by another `dom0 console`"
        );
    }

    #[test]
    fn create_error_messages() {
        let e = CreateError::Failed {
            step: "writing the domain's memory".into(),
            errno: Some(22),
            reason: "ForeignMap failed".into(),
            domid: Some(4),
            cleanup: Cleanup::Destroyed,
        };
        assert_eq!(
            e.to_string(),
            "writing the domain's memory failed: ForeignMap failed"
        );
        let e = CreateError::NotEnoughMemory {
            name: "web".into(),
            needed_kib: 65536,
            free_kib: 1000,
        };
        assert_eq!(
            e.to_string(),
            "domain \"web\" needs 64 MiB of memory, but the host has only 0 MiB free"
        );
        let e = ApiError::Create(CreateError::NameInUse {
            name: "web".into(),
            domid: None,
        });
        assert_eq!(e.to_string(), "a domain named \"web\" already exists");
    }

    #[test]
    fn lifecycle_error_messages() {
        let e = ApiError::NotPaused {
            domid: 4,
            name: String::new(),
            state: Some(State::Blocked),
        };
        assert_eq!(e.to_string(), "domain 4 is not paused (it is blocked)");
        let e = ApiError::DomainEnded {
            action: Lifecycle::Pause,
            domid: 4,
            name: "web".into(),
            state: State::Shutdown,
            reason: Some(Reason::Reboot),
        };
        assert_eq!(
            e.to_string(),
            "domain 4 (web) has shut down (reboot), so it cannot be paused"
        );
        let e = ApiError::LifecycleTimeout {
            action: Lifecycle::Pause,
            domid: 4,
            name: "web".into(),
            waited_ms: 2017,
            state: None,
        };
        assert_eq!(
            e.to_string(),
            "domain 4 (web) was not paused within 2.0 s (it is in an unknown state)"
        );
    }

    #[test]
    fn a_full_page_of_domains_fits_a_frame() {
        let mut d = sample_domain(u32::MAX);
        d.name = "x".repeat(31);
        let resp = Response::Domains {
            domains: vec![d; MAX_DOMAINS_PER_REPLY],
            next: Some(u32::MAX),
        };
        let frame = encode(&resp).unwrap();
        assert!(frame.len() < MAX_FRAME / 2, "{}", frame.len());
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_the_payload() {
        let mut wire = u32::try_from(MAX_FRAME + 1).unwrap().to_le_bytes().to_vec();
        wire.extend_from_slice(&[0; 16]);
        match read_frame(&mut wire.as_slice(), MAX_FRAME) {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!((len, max), (MAX_FRAME + 1, MAX_FRAME));
            }
            other => panic!("{other:?}"),
        }
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(
            read_frame(&mut huge.as_slice(), MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
        // Exactly the limit is fine.
        let mut wire = u32::try_from(MAX_FRAME).unwrap().to_le_bytes().to_vec();
        wire.resize(FRAME_HEADER + MAX_FRAME, 0);
        assert_eq!(
            read_frame(&mut wire.as_slice(), MAX_FRAME)
                .unwrap()
                .map(|p| p.len()),
            Some(MAX_FRAME)
        );
    }

    #[test]
    fn encoding_refuses_oversized_messages() {
        let big = Request::Hello {
            protocol: 1,
            software: "x".repeat(MAX_FRAME),
        };
        assert!(matches!(encode(&big), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn garbage_payloads_are_decode_errors_not_panics() {
        for payload in [
            &[][..],
            &[0xff],
            &[10], // the first request index not (yet) defined
            &[9],  // Create without its config
            &[6],  // Pause without its domid
            &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0, 1, 200, b'a'],
            &[4],
            &[4, 0x80],
        ] {
            assert!(
                matches!(decode::<Request>(payload), Err(FrameError::Decode(_))),
                "{payload:?}"
            );
        }
        // Invalid UTF-8 in the hello's string.
        assert!(decode::<Request>(&[0, 1, 1, 0xff]).is_err());
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut payload = postcard::to_stdvec(&Request::Version).unwrap();
        payload.push(0);
        assert!(matches!(
            decode::<Request>(&payload),
            Err(FrameError::Trailing { extra: 1 })
        ));
    }

    #[test]
    fn truncated_frames_and_clean_ends_are_told_apart() {
        assert!(read_frame(&mut [].as_slice(), MAX_FRAME).unwrap().is_none());
        assert!(matches!(
            read_frame(&mut [1, 0].as_slice(), MAX_FRAME),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut [3, 0, 0, 0, 1].as_slice(), MAX_FRAME),
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder() {
        // A small deterministic fuzz: every 1- and 2-byte payload, and pseudo-random longer
        // ones.
        for a in 0..=255u8 {
            let _ = decode::<Request>(&[a]);
            for b in 0..=255u8 {
                let _ = decode::<Request>(&[a, b]);
                let _ = decode::<Response>(&[a, b]);
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()[0]
                })
                .collect();
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        }
    }

    #[test]
    fn errno_texts() {
        assert_eq!(errno_name(3), Some("ESRCH"));
        assert!(errno_text(1).starts_with("EPERM ("), "{}", errno_text(1));
        assert!(!errno_text(1).contains("os error"));
        assert_eq!(errno_text(4242), "errno 4242");
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(os_error_text(&e), "No such file or directory");
        assert_eq!(os_error_text(&io::Error::other("plain")), "plain");
    }

    #[tokio::test]
    async fn async_reader_agrees_with_the_blocking_one() {
        let frame = encode(&Request::DomainInfo { domid: 7 }).unwrap();
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let mut r = two.as_slice();
        for _ in 0..2 {
            let p = read_frame_async(&mut r, MAX_FRAME).await.unwrap().unwrap();
            assert_eq!(
                decode::<Request>(&p).unwrap(),
                Request::DomainInfo { domid: 7 }
            );
        }
        assert!(read_frame_async(&mut r, MAX_FRAME).await.unwrap().is_none());
        let mut big = &u32::MAX.to_le_bytes()[..];
        assert!(matches!(
            read_frame_async(&mut big, MAX_FRAME).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut cut = &[9u8, 0, 0, 0, 1, 2][..];
        assert!(matches!(
            read_frame_async(&mut cut, MAX_FRAME).await,
            Err(FrameError::Truncated)
        ));
    }
}
