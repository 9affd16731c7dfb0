//! The CLI's side of console streams: `dom0 logs DOM [-f]` and `dom0 console DOM
//! [--force]`.
//!
//! Output is written to stdout as raw bytes, unchanged, and flushed frame by frame.
//! `console` reads input on a thread of its own and sends it as it comes; `^]` (0x1d, also
//! in piped input) detaches. When stdin is a terminal it is put in raw mode for the
//! session ([`crate::term::RawMode`], restored on every exit path). When it is not (a
//! script), input is forwarded until end of file, then output is still printed for
//! [`GRACE`] before the session detaches, so the guest's answer to the last input shows.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::time::Duration;

use crate::client::{ConsoleInput, ConsoleStream, StreamItem};
use crate::error::CliError;
use crate::proto::{ConsoleEnd, ConsoleOpened};

/// The escape byte: `^]`.
pub const ESCAPE: u8 = 0x1d;
/// How long `console` keeps printing output after piped input ended.
pub const GRACE: Duration = Duration::from_secs(1);
/// Most input bytes per frame.
const INPUT_CHUNK: usize = 1024;

/// Copies a stream's output to `stdout` until its end; returns why it ended.
///
/// # Errors
/// [`CliError::Output`] if stdout fails, [`CliError::Request`] if the stream breaks.
pub fn copy_output(
    stream: &mut ConsoleStream,
    stdout: &mut dyn Write,
    what: &str,
) -> Result<ConsoleEnd, CliError> {
    loop {
        match stream.next_item() {
            Ok(StreamItem::Output(bytes)) => {
                stdout.write_all(&bytes).map_err(CliError::Output)?;
                stdout.flush().map_err(CliError::Output)?;
            }
            Ok(StreamItem::End(end)) => return Ok(end),
            Err(source) => {
                return Err(CliError::Request {
                    what: what.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Forwards `input` to the console until `^]`, end of file or a failure, then detaches
/// (after [`GRACE`] at end of file when `grace` is set).
pub fn forward_input(mut input: impl Read, mut to: ConsoleInput, grace: bool) {
    let mut buf = [0u8; INPUT_CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => {
                if grace {
                    std::thread::sleep(GRACE);
                }
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        let escape = chunk.iter().position(|&b| b == ESCAPE);
        let data = &chunk[..escape.unwrap_or(n)];
        if !data.is_empty() && to.write(data).is_err() {
            return;
        }
        if escape.is_some() {
            break;
        }
    }
    let _ = to.detach();
}

/// What `console` tells the user about the end of the session, if anything.
#[must_use]
pub fn end_message(end: &ConsoleEnd, opened: &ConsoleOpened) -> Option<String> {
    let name = &opened.name;
    match end {
        ConsoleEnd::Done | ConsoleEnd::Detached => None,
        ConsoleEnd::TakenOver => Some(format!(
            "detached: another `dom0 console --force` took over the console of {name}"
        )),
        ConsoleEnd::DomainGone => Some(format!("domain {name} is gone")),
        ConsoleEnd::Disabled { reason } => Some(format!(
            "the console of {name} is disabled: the guest broke its ring ({reason})"
        )),
    }
}

/// The banner `console` prints on stderr when it attaches.
#[must_use]
pub fn banner(opened: &ConsoleOpened) -> String {
    let mut text = match opened.domid {
        Some(d) => format!(
            "Connected to {} (domid {d}). Escape character is ^]",
            opened.name
        ),
        None => format!(
            "Connected to the console history of {} (domain {} is gone).",
            opened.name, opened.last_domid
        ),
    };
    if opened.took_over {
        text.push_str(" (took the console over from another client)");
    }
    text
}
