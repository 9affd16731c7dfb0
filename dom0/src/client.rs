//! The CLI's side of the control protocol: a blocking client over the Unix socket.
#![forbid(unsafe_code)]

use crate::proto::{BlockDevice, NetworkDevice};
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::DomainConfig;
use crate::proto::{
    self, ApiError, ConsoleEnd, ConsoleOpened, ConsoleSummary, CreateReport, Domain, EventReport,
    FrameError, GuestRequest, Host, Lifecycle, LifecycleDone, MAX_FRAME, PROTOCOL_VERSION, Request,
    Response, ServiceVersion, ShutdownSent,
};

/// Why talking to dom0d failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the socket failed.
    #[error("cannot reach dom0d at {}", socket.display())]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The `connect` error.
        #[source]
        source: io::Error,
    },
    /// dom0d speaks another protocol version.
    #[error(
        "dom0d at {} speaks control protocol {theirs} ({software}), this dom0 speaks {ours}",
        socket.display()
    )]
    VersionMismatch {
        /// The socket path.
        socket: PathBuf,
        /// Our [`PROTOCOL_VERSION`].
        ours: u32,
        /// dom0d's.
        theirs: u32,
        /// dom0d's software string.
        software: String,
    },
    /// No reply within the timeout.
    #[error("dom0d did not answer within {}s", timeout.as_secs_f64())]
    Timeout {
        /// The timeout.
        timeout: Duration,
    },
    /// Sending or receiving a frame failed.
    #[error("lost the connection to dom0d")]
    Frame(#[source] FrameError),
    /// dom0d closed the connection instead of answering.
    #[error("dom0d closed the connection without answering")]
    Closed,
    /// dom0d answered with something other than what was asked for.
    #[error("dom0d sent a {got} reply to a {expected} request")]
    Unexpected {
        /// What was asked for.
        expected: &'static str,
        /// The reply's kind.
        got: &'static str,
    },
    /// dom0d reported an error.
    #[error(transparent)]
    Api(ApiError),
    /// dom0d predates the request (it answered [`ApiError::Malformed`]).
    #[error("dom0d at {} ({server}) does not know the {request} request", socket.display())]
    Unsupported {
        /// The socket path.
        socket: PathBuf,
        /// dom0d's software string.
        server: String,
        /// The request's name.
        request: &'static str,
    },
}

/// A connection to dom0d, after a successful handshake.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    socket: PathBuf,
    timeout: Duration,
    server: String,
}

impl Client {
    /// Connects to `socket` and exchanges hellos. `timeout` bounds each reply.
    ///
    /// # Errors
    /// [`ClientError::Connect`] if nothing answers, [`ClientError::VersionMismatch`] if
    /// dom0d speaks another protocol, and the errors of [`Client::call`].
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
        // A zero timeout means "none" to std; the CLI never asks for one.
        let t = Some(timeout).filter(|t| !t.is_zero());
        let frame_error = |e| ClientError::Frame(FrameError::Io(e));
        stream.set_read_timeout(t).map_err(frame_error)?;
        stream.set_write_timeout(t).map_err(frame_error)?;
        let mut client = Self {
            stream,
            socket: socket.to_path_buf(),
            timeout,
            server: String::new(),
        };
        let hello = Request::Hello {
            protocol: PROTOCOL_VERSION,
            software: format!("dom0 {}", crate::CLI_VERSION),
        };
        match client.call(&hello)? {
            Response::Hello { protocol, software } if protocol == PROTOCOL_VERSION => {
                client.server = software;
                Ok(client)
            }
            Response::Hello { protocol, software } => Err(ClientError::VersionMismatch {
                socket: socket.to_path_buf(),
                ours: PROTOCOL_VERSION,
                theirs: protocol,
                software,
            }),
            Response::Error(e) => Err(ClientError::Api(e)),
            other => Err(ClientError::Unexpected {
                expected: "hello",
                got: other.kind(),
            }),
        }
    }

    /// dom0d's software string from its hello (e.g. `"dom0d 0.1.0"`).
    #[must_use]
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The socket this client is connected to.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and reads its reply. An error reply is returned as a reply.
    ///
    /// # Errors
    /// [`ClientError::Timeout`], [`ClientError::Closed`] or [`ClientError::Frame`].
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let frame = proto::encode(req).map_err(ClientError::Frame)?;
        if let Err(e) = self.stream.write_all(&frame) {
            // dom0d may have answered and closed without reading the request (a `Busy`
            // refusal is sent right after accept): its reply is still readable.
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) && let Ok(Some(payload)) = proto::read_frame(&mut self.stream, MAX_FRAME)
                && let Ok(reply) = proto::decode(&payload)
            {
                return Ok(reply);
            }
            return Err(self.io_error(e));
        }
        match proto::read_frame(&mut self.stream, MAX_FRAME) {
            Ok(Some(payload)) => proto::decode(&payload).map_err(ClientError::Frame),
            Ok(None) => Err(ClientError::Closed),
            Err(FrameError::Io(e)) => Err(self.io_error(e)),
            Err(e) => Err(ClientError::Frame(e)),
        }
    }

    fn io_error(&self, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                timeout: self.timeout,
            },
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ClientError::Closed,
            _ => ClientError::Frame(FrameError::Io(e)),
        }
    }

    /// dom0d's and the microvisor's versions.
    ///
    /// # Errors
    /// See [`Client::call`]; an error reply becomes [`ClientError::Api`].
    pub fn version(&mut self) -> Result<ServiceVersion, ClientError> {
        match self.call(&Request::Version)? {
            Response::Version(v) => Ok(v),
            other => Err(unexpected("version", other)),
        }
    }

    /// The host's facts.
    ///
    /// # Errors
    /// See [`Client::version`].
    pub fn host_info(&mut self) -> Result<Host, ClientError> {
        match self.call(&Request::HostInfo)? {
            Response::HostInfo(h) => Ok(h),
            other => Err(unexpected("host info", other)),
        }
    }

    /// What dom0d has seen of the microvisor's events; `None` if this dom0d predates the
    /// request (it answers [`ApiError::Malformed`]).
    ///
    /// # Errors
    /// See [`Client::version`].
    pub fn events(&mut self) -> Result<Option<EventReport>, ClientError> {
        match self.call(&Request::Events)? {
            Response::Events(r) => Ok(Some(r)),
            Response::Error(ApiError::Malformed { .. }) => Ok(None),
            other => Err(unexpected("events", other)),
        }
    }

    /// Pauses, unpauses or destroys domain `domid`; returns once dom0d reports it done.
    ///
    /// # Errors
    /// See [`Client::version`]; dom0d's refusals are [`ClientError::Api`] (e.g.
    /// [`ApiError::AlreadyPaused`]), and a dom0d that predates lifecycle requests is
    /// [`ClientError::Unsupported`].
    pub fn lifecycle(
        &mut self,
        action: Lifecycle,
        domid: u32,
    ) -> Result<LifecycleDone, ClientError> {
        match self.call(&action.request(domid))? {
            Response::Lifecycle(done) => Ok(done),
            Response::Error(ApiError::Malformed { .. }) => Err(ClientError::Unsupported {
                socket: self.socket.clone(),
                server: self.server.clone(),
                request: action.name(),
            }),
            other => Err(unexpected("lifecycle", other)),
        }
    }

    /// Asks domain `domid`'s guest to power off or reboot ([`Request::Shutdown`]);
    /// returns once the request is written.
    ///
    /// # Errors
    /// See [`Client::version`]; a dom0d that predates the request is
    /// [`ClientError::Unsupported`].
    pub fn shutdown(
        &mut self,
        domid: u32,
        request: GuestRequest,
    ) -> Result<ShutdownSent, ClientError> {
        match self.call(&Request::Shutdown { domid, request })? {
            Response::ShutdownSent(sent) => Ok(sent),
            Response::Error(ApiError::Malformed { .. }) => Err(ClientError::Unsupported {
                socket: self.socket.clone(),
                server: self.server.clone(),
                request: request.command(),
            }),
            other => Err(unexpected("shutdown", other)),
        }
    }

    /// Builds (or with `dry_run` only checks and plans) the domain `config` describes;
    /// returns once it runs (or, with `paused`, is built and paused).
    ///
    /// # Errors
    /// See [`Client::version`]; dom0d's refusals are [`ClientError::Api`] with
    /// [`ApiError::Create`], and a dom0d that predates the request is
    /// [`ClientError::Unsupported`].
    pub fn create(
        &mut self,
        config: &DomainConfig,
        dry_run: bool,
        paused: bool,
    ) -> Result<CreateReport, ClientError> {
        let req = Request::Create {
            config: config.clone(),
            dry_run,
            paused,
        };
        match self.call(&req)? {
            Response::Created(report) => Ok(report),
            Response::Error(ApiError::Malformed { .. }) => Err(ClientError::Unsupported {
                socket: self.socket.clone(),
                server: self.server.clone(),
                request: "create",
            }),
            other => Err(unexpected("create", other)),
        }
    }

    /// One domain by id.
    ///
    /// # Errors
    /// See [`Client::version`]; an unknown domain is [`ApiError::NoSuchDomain`].
    pub fn domain_info(&mut self, domid: u32) -> Result<Domain, ClientError> {
        match self.call(&Request::DomainInfo { domid })? {
            Response::Domain(d) => Ok(d),
            other => Err(unexpected("domain info", other)),
        }
    }

    /// The disks dom0d serves domain `domid` (empty if none).
    ///
    /// # Errors
    /// See [`Client::version`]; an unknown domain is [`ApiError::NoSuchDomain`].
    pub fn block_list(&mut self, domid: u32) -> Result<Vec<BlockDevice>, ClientError> {
        match self.call(&Request::BlockList { domid })? {
            Response::Blocks(b) => Ok(b),
            other => Err(unexpected("block devices", other)),
        }
    }

    /// The network interfaces dom0d serves domain `domid` (empty if none).
    ///
    /// # Errors
    /// See [`Client::version`]; an unknown domain is [`ApiError::NoSuchDomain`].
    pub fn network_list(&mut self, domid: u32) -> Result<Vec<NetworkDevice>, ClientError> {
        match self.call(&Request::NetworkList { domid })? {
            Response::Networks(n) => Ok(n),
            other => Err(unexpected("network devices", other)),
        }
    }

    /// Every domain, ascending by id, gathered page by page.
    ///
    /// # Errors
    /// See [`Client::version`]; also [`ClientError::Unexpected`] if dom0d's pages do not
    /// advance.
    pub fn list_domains(&mut self) -> Result<Vec<Domain>, ClientError> {
        let mut all: Vec<Domain> = Vec::new();
        let mut from = 0;
        loop {
            match self.call(&Request::ListDomains { from })? {
                Response::Domains { domains, next } => {
                    all.extend(domains);
                    match next {
                        Some(n) if n > from => from = n,
                        Some(_) => {
                            return Err(ClientError::Unexpected {
                                expected: "advancing domain list",
                                got: "repeated domain list page",
                            });
                        }
                        None => return Ok(all),
                    }
                }
                other => return Err(unexpected("domain list", other)),
            }
        }
    }
}

impl Client {
    /// The console of `domid` as dom0d serves it; `None` if it serves none, or if this
    /// dom0d predates the request.
    ///
    /// # Errors
    /// See [`Client::version`].
    pub fn console_status(&mut self, domid: u32) -> Result<Option<ConsoleSummary>, ClientError> {
        match self.call(&Request::ConsoleStatus { domid })? {
            Response::ConsoleStatus(s) => Ok(s),
            Response::Error(ApiError::Malformed { .. }) => Ok(None),
            other => Err(unexpected("console status", other)),
        }
    }

    /// Starts a console stream (`req` is [`Request::Logs`] or [`Request::ConsoleAttach`]):
    /// returns what dom0d opened and the stream, which has no read timeout (output may
    /// take as long as the guest likes).
    ///
    /// # Errors
    /// See [`Client::version`]; dom0d's refusals are [`ClientError::Api`] (e.g.
    /// [`ApiError::UnknownDomain`], [`ApiError::ConsoleBusy`]), and a dom0d that predates
    /// console streams is [`ClientError::Unsupported`].
    pub fn open_console(
        mut self,
        req: &Request,
    ) -> Result<(ConsoleOpened, ConsoleStream), ClientError> {
        let request = match req {
            Request::Logs { .. } => "logs",
            _ => "console",
        };
        match self.call(req)? {
            Response::ConsoleOpened(opened) => {
                self.stream
                    .set_read_timeout(None)
                    .map_err(|e| ClientError::Frame(FrameError::Io(e)))?;
                Ok((
                    opened,
                    ConsoleStream {
                        stream: self.stream,
                        timeout: self.timeout,
                    },
                ))
            }
            Response::Error(ApiError::Malformed { .. }) => Err(ClientError::Unsupported {
                socket: self.socket.clone(),
                server: self.server.clone(),
                request,
            }),
            other => Err(unexpected("console", other)),
        }
    }
}

/// What a console stream delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// Raw console output.
    Output(Vec<u8>),
    /// The end, and why; dom0d closes the connection after it.
    End(ConsoleEnd),
}

/// A console stream from dom0d ([`Client::open_console`]).
#[derive(Debug)]
pub struct ConsoleStream {
    stream: UnixStream,
    timeout: Duration,
}

impl ConsoleStream {
    /// Waits for the next output or the end.
    ///
    /// # Errors
    /// [`ClientError::Closed`] if dom0d closed the connection without an end,
    /// [`ClientError::Frame`], or [`ClientError::Unexpected`] for another reply.
    pub fn next_item(&mut self) -> Result<StreamItem, ClientError> {
        let payload = match proto::read_frame(&mut self.stream, MAX_FRAME) {
            Ok(Some(payload)) => payload,
            Ok(None) => return Err(ClientError::Closed),
            Err(FrameError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                return Err(ClientError::Closed);
            }
            Err(e) => return Err(ClientError::Frame(e)),
        };
        match proto::decode(&payload).map_err(ClientError::Frame)? {
            Response::ConsoleOutput(bytes) => Ok(StreamItem::Output(bytes)),
            Response::ConsoleEnd(end) => Ok(StreamItem::End(end)),
            other => Err(unexpected("console output", other)),
        }
    }

    /// A handle that sends input and the detach on the same connection, from another
    /// thread.
    ///
    /// # Errors
    /// [`ClientError::Frame`] if the socket cannot be duplicated.
    pub fn input(&self) -> Result<ConsoleInput, ClientError> {
        let stream = self
            .stream
            .try_clone()
            .map_err(|e| ClientError::Frame(FrameError::Io(e)))?;
        Ok(ConsoleInput {
            stream,
            timeout: self.timeout,
        })
    }
}

/// Sends input to an attached console ([`ConsoleStream::input`]).
#[derive(Debug)]
pub struct ConsoleInput {
    stream: UnixStream,
    timeout: Duration,
}

impl ConsoleInput {
    fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let frame = proto::encode(req).map_err(ClientError::Frame)?;
        self.stream.write_all(&frame).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                timeout: self.timeout,
            },
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ClientError::Closed,
            _ => ClientError::Frame(FrameError::Io(e)),
        })
    }

    /// Sends `bytes` for the guest.
    ///
    /// # Errors
    /// [`ClientError::Closed`] once the session is over, or another send failure.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send(&Request::ConsoleInput(bytes.to_vec()))
    }

    /// Asks dom0d to end the session; it answers [`ConsoleEnd::Detached`] on the stream.
    ///
    /// # Errors
    /// As [`Self::write`].
    pub fn detach(&mut self) -> Result<(), ClientError> {
        self.send(&Request::ConsoleDetach)
    }
}

fn unexpected(expected: &'static str, got: Response) -> ClientError {
    match got {
        Response::Error(e) => ClientError::Api(e),
        other => ClientError::Unexpected {
            expected,
            got: other.kind(),
        },
    }
}
