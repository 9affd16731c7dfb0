//! dom0d's side of a console stream ([`Request::Logs`] and [`Request::ConsoleAttach`], see
//! "Console streams" in [`crate::proto`]): the history, then new output as it arrives,
//! input from an attached client into the guest, and the end.
//!
//! A session costs one connection and no queue: it follows the history by position
//! ([`Consoles::read_since`](crate::console::Consoles::read_since)), so a client that
//! reads slowly skips what the bounded history dropped, and one that stops reading is
//! disconnected after [`Limits::write_timeout`]. Input is written into the guest's ring as room appears; while
//! a frame of input waits, the session reads no further frames from the client, so input is
//! bounded by one frame.
#![forbid(unsafe_code)]

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::console::{InputRefused, LogRef, Opened};
use crate::microvisor;
use crate::proto::{
    self, ApiError, ConsoleEnd, ConsoleOpened, FrameError, MAX_FRAME, Request, Response,
};
use crate::server::{Limits, Service};

/// Most output bytes per [`Response::ConsoleOutput`] frame.
pub const OUTPUT_CHUNK: usize = 16 * 1024;
/// How often waiting input is retried when no console event arrives.
pub const INPUT_RETRY: Duration = Duration::from_millis(20);

/// An opened console stream, before its first frame is sent.
#[derive(Debug)]
pub struct Session {
    opened: Opened,
    /// The writer token of an attached client.
    token: Option<u64>,
    took_over: bool,
    follow: bool,
}

impl Service {
    /// Opens the stream a [`Request::Logs`] or [`Request::ConsoleAttach`] asks for.
    ///
    /// # Errors
    /// [`ApiError::UnknownDomain`], [`ApiError::NoConsole`] (the domain exists, but dom0d
    /// serves no console for it), [`ApiError::ConsoleBusy`]; other requests are
    /// [`ApiError::Malformed`].
    pub fn open_console(&self, req: &Request) -> Result<Session, ApiError> {
        let (reference, attach, follow) = match req {
            Request::Logs { domain, follow } => (domain, None, *follow),
            Request::ConsoleAttach { domain, force } => (domain, Some(*force), true),
            _ => {
                return Err(ApiError::Malformed {
                    reason: "not a console stream request".to_owned(),
                });
            }
        };
        let consoles = &self.consoles;
        let log = consoles
            .resolve(reference)
            .ok_or_else(|| self.no_console(reference))?;
        let opened = consoles
            .open(&log)
            .ok_or_else(|| self.no_console(reference))?;
        let (token, took_over) = match attach {
            None => (None, false),
            Some(force) => {
                let (token, took_over) =
                    consoles
                        .attach(&log, force)
                        .map_err(|busy| ApiError::ConsoleBusy {
                            domid: busy.domid,
                            name: log.name.clone(),
                        })?;
                (Some(token), took_over)
            }
        };
        Ok(Session {
            opened,
            token,
            took_over,
            follow,
        })
    }

    /// The error for a reference without a console: [`ApiError::NoConsole`] if it names a
    /// domain, [`ApiError::UnknownDomain`] otherwise.
    fn no_console(&self, reference: &str) -> ApiError {
        let mv = &*self.mv;
        let found = if !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_digit()) {
            reference
                .parse()
                .ok()
                .and_then(|domid| microvisor::domain_info(mv, domid).ok())
        } else {
            let mut from = Some(0);
            let mut found = None;
            while let Some(f) = from {
                let Ok((domains, next)) = microvisor::list_domains(mv, f) else {
                    break;
                };
                found = domains.into_iter().find(|d| d.name == reference);
                from = next.filter(|_| found.is_none());
            }
            found
        };
        match found {
            Some(d) => ApiError::NoConsole {
                domid: d.domid,
                name: d.name,
            },
            None => ApiError::UnknownDomain {
                reference: reference.to_owned(),
            },
        }
    }
}

/// Gives up the writer role when the session ends, however it ends.
struct Detach<'a> {
    service: &'a Service,
    log: LogRef,
    token: Option<u64>,
}

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.token {
            self.service.consoles.detach(&self.log, token);
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    resp: &Response,
    limits: &Limits,
) -> Result<(), String> {
    let frame = proto::encode(resp).map_err(|e| format!("cannot encode: {e}"))?;
    match tokio::time::timeout(limits.write_timeout, w.write_all(&frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err("the client stopped reading".to_owned()),
    }
}

/// Serves `session` on `stream` until it ends; returns why, for the log. dom0d closes the
/// connection afterwards.
pub async fn run(
    stream: &mut UnixStream,
    service: &Service,
    session: Session,
    limits: &Limits,
) -> String {
    let Session {
        opened,
        token,
        took_over,
        follow,
    } = session;
    let _detach = Detach {
        service,
        log: opened.log.clone(),
        token,
    };
    let (mut rd, mut wr) = stream.split();
    let (tx, mut frames) = tokio::sync::mpsc::channel::<Result<Option<Vec<u8>>, FrameError>>(1);
    // Frames are read by one future that lives as long as the session, so a partly read
    // frame is never lost to a `select!`; the channel of one holds the next frame back
    // while input waits for room.
    let reader = async move {
        loop {
            let frame = proto::read_frame_async(&mut rd, MAX_FRAME).await;
            let last = !matches!(frame, Ok(Some(_)));
            if tx.send(frame).await.is_err() || last {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let serve = async {
        let hello = Response::ConsoleOpened(ConsoleOpened {
            name: opened.log.name.clone(),
            domid: opened.domid,
            last_domid: opened.last_domid,
            history_bytes: opened.history_bytes,
            disabled: opened.disabled.clone(),
            took_over,
        });
        send(&mut wr, &hello, limits).await?;
        let consoles = &service.consoles;
        let log = &opened.log;
        let mut changes = opened.changes;
        let mut at = opened.start;
        let mut input: Vec<u8> = Vec::new();
        loop {
            // Everything new, in frames.
            let end = loop {
                let update = consoles.read_since(log, at, OUTPUT_CHUNK);
                at = update.next;
                if !update.bytes.is_empty() {
                    send(&mut wr, &Response::ConsoleOutput(update.bytes), limits).await?;
                }
                if let Some(token) = token
                    && update.owner != Some(token)
                    && update.end.is_none()
                {
                    break Some(ConsoleEnd::TakenOver);
                }
                if !update.more {
                    break update.end;
                }
            };
            let end = end.or((!follow).then_some(ConsoleEnd::Done));
            if let Some(end) = end {
                let why = format!("console stream of {:?} ended: {end:?}", log.name);
                send(&mut wr, &Response::ConsoleEnd(end), limits).await?;
                return Ok(why);
            }
            // Input that waits for room in the guest's ring.
            if let Some(token) = token
                && !input.is_empty()
            {
                match consoles.write_input(&*service.mv, log, token, &input) {
                    Ok(n) => {
                        input.drain(..n);
                    }
                    // The next round reports the takeover.
                    Err(InputRefused::NotOwner) => continue,
                    // The console is gone or disabled: the input has nowhere to go.
                    Err(InputRefused::NoConsole) => input.clear(),
                }
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        // A new domain of the name replaced the history.
                        send(&mut wr, &Response::ConsoleEnd(ConsoleEnd::DomainGone), limits)
                            .await?;
                        return Ok("the history was replaced".to_owned());
                    }
                }
                () = tokio::time::sleep(INPUT_RETRY), if !input.is_empty() => {}
                frame = frames.recv(), if input.is_empty() => {
                    let payload = match frame {
                        Some(Ok(Some(payload))) => payload,
                        Some(Ok(None)) | None => return Ok("client closed".to_owned()),
                        Some(Err(e)) => return Err(format!("read failed: {e}")),
                    };
                    match proto::decode::<Request>(&payload) {
                        Ok(Request::ConsoleInput(bytes)) if token.is_some() => {
                            input = bytes;
                        }
                        Ok(Request::ConsoleDetach) => {
                            send(&mut wr, &Response::ConsoleEnd(ConsoleEnd::Detached), limits)
                                .await?;
                            return Ok("client detached".to_owned());
                        }
                        Ok(other) => {
                            return Err(format!("unexpected request in a console session: {other:?}"));
                        }
                        Err(e) => return Err(format!("malformed frame in a console session: {e}")),
                    }
                }
            }
        }
    };
    tokio::select! {
        () = reader => "the reader stopped".to_owned(),
        result = serve => result.unwrap_or_else(|e| e),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream as StdStream;
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::builder::test_elf::{Seg, pvh_elf};
    use crate::config::{DomainConfig, OnEvent};
    use crate::console::Consoles;
    use crate::events::EventMonitor;
    use crate::fake::FakeMicrovisor;
    use crate::microvisor::Microvisor;
    use crate::proto::{PROTOCOL_VERSION, State};
    use crate::server::{BackgroundServer, spawn_service};

    struct Fixture {
        fake: Arc<FakeMicrovisor>,
        consoles: Arc<Consoles>,
        monitor: Arc<EventMonitor>,
        server: BackgroundServer,
        dir: tempfile::TempDir,
    }

    fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeMicrovisor::new());
        let mv: Arc<dyn Microvisor> = fake.clone();
        let monitor = Arc::new(EventMonitor::unavailable("test"));
        let service = Service::with_events(mv, Arc::clone(&monitor));
        let consoles = Arc::clone(service.consoles());
        let server = spawn_service(&dir.path().join("s.sock"), service, Limits::default()).unwrap();
        Fixture {
            fake,
            consoles,
            monitor,
            server,
            dir,
        }
    }

    fn send(s: &mut StdStream, req: &Request) {
        use std::io::Write;
        s.write_all(&proto::encode(req).unwrap()).unwrap();
    }

    fn recv(s: &mut StdStream) -> Option<Response> {
        proto::read_frame(s, MAX_FRAME)
            .unwrap()
            .map(|p| proto::decode(&p).unwrap())
    }

    fn ask(s: &mut StdStream, req: &Request) -> Response {
        send(s, req);
        recv(s).expect("a reply")
    }

    fn assert_closed(s: &mut StdStream) {
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection still open: {other:?}"),
        }
    }

    impl Fixture {
        fn conn(&self) -> StdStream {
            let mut s = StdStream::connect(self.server.path()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let hello = Request::Hello {
                protocol: PROTOCOL_VERSION,
                software: "test".into(),
            };
            assert!(matches!(ask(&mut s, &hello), Response::Hello { .. }));
            s
        }

        /// `dom0 create` of a 2 MiB domain `name`; returns its domid.
        fn create(&self, name: &str) -> u32 {
            let kernel = self.dir.path().join("k.elf");
            let seg = Seg {
                paddr: 0x10_0000,
                data: vec![0x90; 16],
                mem: 4096,
            };
            std::fs::write(&kernel, pvh_elf(0x10_0000, &[seg])).unwrap();
            let config = DomainConfig {
                name: name.into(),
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
            let req = Request::Create {
                config,
                dry_run: false,
                paused: false,
            };
            match ask(&mut self.conn(), &req) {
                Response::Created(r) => {
                    assert_eq!(r.state, Some(State::Running));
                    r.domid.unwrap()
                }
                other => panic!("{other:?}"),
            }
        }

        /// The guest prints `bytes`, and dom0d drains it (as on its event).
        fn print(&self, domid: u32, bytes: &[u8]) {
            assert_eq!(self.fake.console_write(domid, bytes), Some(bytes.len()));
            self.consoles.drain_all(&*self.fake);
        }
    }

    fn opened(s: &mut StdStream) -> ConsoleOpened {
        match recv(s) {
            Some(Response::ConsoleOpened(o)) => o,
            other => panic!("{other:?}"),
        }
    }

    /// Reads output frames until `want` bytes arrived.
    fn output(s: &mut StdStream, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < want {
            match recv(s) {
                Some(Response::ConsoleOutput(b)) => got.extend(b),
                other => panic!("after {got:?}: {other:?}"),
            }
        }
        got
    }

    fn end(s: &mut StdStream) -> ConsoleEnd {
        match recv(s) {
            Some(Response::ConsoleEnd(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn logs_send_the_history_then_the_end() {
        let f = start();
        let domid = f.create("web");
        f.print(domid, b"hello\r\n");
        let mut s = f.conn();
        send(
            &mut s,
            &Request::Logs {
                domain: "web".into(),
                follow: false,
            },
        );
        let o = opened(&mut s);
        assert_eq!(
            (o.name.as_str(), o.domid, o.history_bytes, o.took_over),
            ("web", Some(domid), 7, false)
        );
        assert_eq!(output(&mut s, 7), b"hello\r\n");
        assert_eq!(end(&mut s), ConsoleEnd::Done);
        assert_closed(&mut s);
        // By domid too; an empty history is just the end.
        let other = f.create("quiet");
        let mut s = f.conn();
        send(
            &mut s,
            &Request::Logs {
                domain: other.to_string(),
                follow: false,
            },
        );
        assert_eq!(opened(&mut s).history_bytes, 0);
        assert_eq!(end(&mut s), ConsoleEnd::Done);
    }

    #[test]
    fn unknown_domains_and_domains_without_a_console_are_errors() {
        let f = start();
        let mut s = f.conn();
        let logs = |d: &str| Request::Logs {
            domain: d.into(),
            follow: false,
        };
        assert_eq!(
            ask(&mut s, &logs("nope")),
            Response::Error(ApiError::UnknownDomain {
                reference: "nope".into()
            })
        );
        assert_eq!(
            ask(&mut s, &logs("4000")),
            Response::Error(ApiError::UnknownDomain {
                reference: "4000".into()
            })
        );
        assert_eq!(
            ask(&mut s, &logs("0")),
            Response::Error(ApiError::NoConsole {
                domid: 0,
                name: "Domain-0".into()
            })
        );
        assert_eq!(
            ask(
                &mut s,
                &Request::ConsoleAttach {
                    domain: "hello1".into(),
                    force: true
                }
            ),
            Response::Error(ApiError::NoConsole {
                domid: 1,
                name: "hello1".into()
            })
        );
        // The connection goes on as usual after a refusal, and input outside a session is
        // malformed.
        assert!(matches!(
            ask(&mut s, &Request::ConsoleInput(b"x".to_vec())),
            Response::Error(ApiError::Malformed { .. })
        ));
        assert!(matches!(
            ask(&mut s, &Request::HostInfo),
            Response::HostInfo(_)
        ));
    }

    #[test]
    fn following_ends_when_the_domain_is_destroyed() {
        let f = start();
        let domid = f.create("web");
        f.print(domid, b"one ");
        let mut s = f.conn();
        send(
            &mut s,
            &Request::Logs {
                domain: "web".into(),
                follow: true,
            },
        );
        opened(&mut s);
        assert_eq!(output(&mut s, 4), b"one ");
        f.print(domid, b"two ");
        assert_eq!(output(&mut s, 4), b"two ");
        // The guest prints its last words and is destroyed before dom0d drains them: the
        // final drain after the destroy still delivers them, then the end.
        assert_eq!(f.fake.console_write(domid, b"bye"), Some(3));
        match ask(&mut f.conn(), &Request::Destroy { domid }) {
            Response::Lifecycle(done) => assert_eq!(done.state, None),
            other => panic!("{other:?}"),
        }
        assert_eq!(output(&mut s, 3), b"bye");
        assert_eq!(end(&mut s), ConsoleEnd::DomainGone);
        assert_closed(&mut s);
        // The history stays readable by name after the destroy, and everything is freed.
        let mut s = f.conn();
        send(
            &mut s,
            &Request::Logs {
                domain: "web".into(),
                follow: true,
            },
        );
        let o = opened(&mut s);
        assert_eq!((o.domid, o.last_domid), (None, domid));
        assert_eq!(output(&mut s, 11), b"one two bye");
        assert_eq!(end(&mut s), ConsoleEnd::DomainGone);
        assert_eq!(f.fake.page_maps(), 0);
        assert!(f.fake.dom0_ports().is_empty());
    }

    #[test]
    fn output_arrives_through_the_event_path() {
        let f = start();
        let domid = f.create("web");
        let mut s = f.conn();
        send(
            &mut s,
            &Request::Logs {
                domain: "web".into(),
                follow: true,
            },
        );
        opened(&mut s);
        // The guest prints; the microvisor raises EVENT_EVTCHN, the event task records it
        // and dom0d takes the pending port (no manual drain here).
        let started = Instant::now();
        assert_eq!(f.fake.console_write(domid, b"via event"), Some(9));
        f.monitor.record(f.fake.take_events());
        assert_eq!(output(&mut s, 9), b"via event");
        assert!(
            started.elapsed() < crate::console::POLL_INTERVAL,
            "took {:?}: the poll, not the event",
            started.elapsed()
        );
        // Without an event the poll still picks output up.
        assert_eq!(f.fake.console_write(domid, b"polled"), Some(6));
        f.fake.take_events();
        assert_eq!(output(&mut s, 6), b"polled");
    }

    #[test]
    fn attach_forwards_input_and_allows_one_writer() {
        let f = start();
        let domid = f.create("echo");
        f.print(domid, b"login: ");
        let attach = |force| Request::ConsoleAttach {
            domain: "echo".into(),
            force,
        };
        let mut a = f.conn();
        send(&mut a, &attach(false));
        assert!(!opened(&mut a).took_over);
        assert_eq!(output(&mut a, 7), b"login: ");
        // Input reaches the guest's ring.
        send(&mut a, &Request::ConsoleInput(b"root\r".to_vec()));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut typed = Vec::new();
        while typed.len() < 5 {
            typed.extend(f.fake.console_read_input(domid).unwrap());
            assert!(Instant::now() < deadline, "input never arrived: {typed:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(typed, b"root\r");
        // A second client is refused without --force.
        let mut b = f.conn();
        assert_eq!(
            ask(&mut b, &attach(false)),
            Response::Error(ApiError::ConsoleBusy {
                domid: Some(domid),
                name: "echo".into()
            })
        );
        // With --force it takes over: it gets the history, the first client is told.
        send(&mut b, &attach(true));
        assert!(opened(&mut b).took_over);
        assert_eq!(output(&mut b, 7), b"login: ");
        assert_eq!(end(&mut a), ConsoleEnd::TakenOver);
        assert_closed(&mut a);
        // Input larger than the ring arrives as the guest makes room.
        let big: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
        send(&mut b, &Request::ConsoleInput(big.clone()));
        let mut typed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while typed.len() < big.len() {
            typed.extend(f.fake.console_read_input(domid).unwrap());
            assert!(Instant::now() < deadline, "got {} bytes", typed.len());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(typed, big);
        // Output still flows while attached; a detach ends the session.
        f.print(domid, b"# ");
        assert_eq!(output(&mut b, 2), b"# ");
        send(&mut b, &Request::ConsoleDetach);
        assert_eq!(end(&mut b), ConsoleEnd::Detached);
        assert_closed(&mut b);
        // The console is free again; a client that just goes away frees it too.
        let mut c = f.conn();
        send(&mut c, &attach(false));
        opened(&mut c);
        drop(c);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut d = f.conn();
            match ask(&mut d, &attach(false)) {
                Response::ConsoleOpened(_) => break,
                Response::Error(ApiError::ConsoleBusy { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_replay_is_the_last_64_kib() {
        let f = start();
        let domid = f.create("chatty");
        // 100 KiB of output: the history keeps the last 64 KiB.
        let mut sent = Vec::new();
        for i in 0..50u8 {
            let chunk = [b'a' + i % 26; 2048];
            f.print(domid, &chunk);
            sent.extend_from_slice(&chunk);
        }
        let mut s = f.conn();
        send(
            &mut s,
            &Request::Logs {
                domain: "chatty".into(),
                follow: false,
            },
        );
        let o = opened(&mut s);
        assert_eq!(o.history_bytes, crate::console::HISTORY_BYTES as u64);
        let got = output(&mut s, crate::console::HISTORY_BYTES);
        assert_eq!(got, sent[sent.len() - crate::console::HISTORY_BYTES..]);
        assert_eq!(end(&mut s), ConsoleEnd::Done);
    }
}
