//! dom0d's side of a console stream ([`Request::Logs`] and [`Request::ConsoleAttach`], see
//! "Console streams" in [`crate::proto`]): the history, then new output as it arrives,
//! input from an attached client into the guest, and the end.
//!
//! A session costs one connection and no queue: it follows the history by position
//! ([`Consoles::read_since`]), so a client that reads slowly skips what the bounded history
//! dropped, and one that stops reading is disconnected after
//! [`Limits::write_timeout`]. Input is written into the guest's ring as room appears; while
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
