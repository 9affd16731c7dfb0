//! dom0d's startup and lifetime: open the device (once for control calls, once
//! non-blocking for events), adopt the domains an earlier dom0d built ([`crate::state`]),
//! start the event task, bind the socket, serve until SIGTERM or SIGINT, save the state,
//! remove the socket.
#![forbid(unsafe_code)]

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

use crate::device::{DEVICE_PATH, Device};
use crate::events::{self, EventMonitor};
use crate::log::{self, Level};
use crate::microvisor::{self, Microvisor};
use crate::proto::{PROTOCOL_VERSION, os_error_text};
use crate::server::{self, DEFAULT_SOCKET, DOM0D_VERSION, Limits, Service};
use crate::state::DEFAULT_STATE_DIR;

/// The dom0 control service: serves the control API on a Unix socket for the `dom0` CLI.
///
/// The socket (mode 0600) appears only once dom0d is ready to serve. dom0d logs to stderr
/// (including one line per microvisor event) and runs until SIGTERM or SIGINT, then saves
/// its state, removes its socket and exits 0, leaving its domains running. It exits 1 if
/// the device cannot be opened or the socket cannot be created.
///
/// dom0d keeps the state of the domains it builds in DIR/state.json and their console
/// histories in DIR/consoles/ (--state-dir), so a dom0d started again, after a crash,
/// `kill -9` or SIGTERM, adopts them: it serves their consoles, xenstore, disks and vifs
/// again, the domains run on and their I/O resumes. An unusable state file is logged and
/// ignored.
#[derive(Debug, Parser)]
#[command(name = "dom0d", version)]
pub struct Args {
    /// Where to serve the control API
    #[arg(long, env = "DOM0_SOCKET", value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// The microvisor kernel module's device node
    #[arg(long, value_name = "PATH", default_value = DEVICE_PATH)]
    pub device: PathBuf,

    /// Where to keep the state a restarted dom0d needs (state.json, consoles/)
    #[arg(long, env = "DOM0_STATE_DIR", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Also log every connection and request
    #[arg(short, long)]
    pub verbose: bool,
}

/// Why dom0d could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The device node could not be opened.
    #[error("cannot open {}", path.display())]
    OpenDevice {
        /// The device path.
        path: PathBuf,
        /// The `open` error.
        #[source]
        source: io::Error,
    },
    /// The control socket could not be created.
    #[error("cannot serve on {}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The runtime or the signal handlers could not be set up.
    #[error("cannot start the runtime")]
    Runtime(#[source] io::Error),
}

impl DaemonError {
    /// The message for the log: what failed, why, and what to do.
    #[must_use]
    pub fn render(&self) -> String {
        let (why, hint) = match self {
            Self::OpenDevice { source, .. } => (
                source,
                match source.kind() {
                    io::ErrorKind::PermissionDenied => {
                        "dom0d must run as root (it needs CAP_SYS_ADMIN)"
                    }
                    _ => "is the microvisor module loaded? (insmod microvisor.ko)",
                },
            ),
            Self::Socket { source, .. } => (
                source,
                "check --socket / DOM0_SOCKET and that its directory is writable",
            ),
            Self::Runtime(source) => (source, "this is a bug or a resource limit"),
        };
        format!("{self}: {} — {hint}", os_error_text(why))
    }
}

/// Runs dom0d with `args` until a termination signal.
///
/// # Errors
/// [`DaemonError`] if startup fails.
pub fn run(args: &Args) -> Result<(), DaemonError> {
    if args.verbose {
        log::set_max_level(Level::Debug);
    }
    let device = Device::open(&args.device).map_err(|source| DaemonError::OpenDevice {
        path: args.device.clone(),
        source,
    })?;
    let mv: Arc<dyn Microvisor> = Arc::new(device);
    match microvisor::host_info(&*mv) {
        Ok(h) => log::write(
            Level::Info,
            format_args!(
                "microvisor {} (control version {}), {} pCPUs, {} MiB free of {} MiB",
                h.microvisor_version,
                h.control_version,
                h.pcpus,
                h.mem_free_kib / 1024,
                h.mem_total_kib / 1024
            ),
        ),
        // Keep serving: the CLI reports the same error per request, with a hint.
        Err(e) => log::write(
            Level::Error,
            format_args!("the microvisor does not answer control calls: {e}"),
        ),
    }
    // A second handle of its own for events: each open file of the module has its own
    // event mask, and this one is non-blocking for the event task.
    let events_file = Device::open_nonblocking(&args.device).map(Device::into_file);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
        let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
        let socket_error = |source| DaemonError::Socket {
            path: args.socket.clone(),
            source,
        };
        let bound = server::bind_socket(&args.socket).map_err(socket_error)?;
        let (listener, guard) = bound.into_tokio().map_err(socket_error)?;
        log::write(
            Level::Info,
            format_args!(
                "dom0d {DOM0D_VERSION} ready on {} (protocol {PROTOCOL_VERSION})",
                args.socket.display()
            ),
        );
        let monitor = match events_file {
            Ok(file) => {
                let monitor = Arc::new(EventMonitor::unavailable("not started yet"));
                tokio::spawn(events::watch(file, Arc::clone(&monitor)));
                monitor
            }
            Err(e) => {
                let reason = format!(
                    "cannot open {} for events: {}",
                    args.device.display(),
                    os_error_text(&e)
                );
                log::write(Level::Warn, format_args!("events unavailable: {reason}"));
                Arc::new(EventMonitor::unavailable(reason))
            }
        };
        let service = Service::with_events(mv, monitor).with_state_dir(&args.state_dir);
        // Before anything is served or built: the domains an earlier dom0d built.
        service.restore();
        let service = Arc::new(service);
        // on_poweroff / on_reboot / on_crash: a sweep now, after each create and event.
        tokio::spawn(Arc::clone(&service).supervise());
        // Console output: pending event-channel ports, and a slow poll.
        tokio::spawn(Arc::clone(&service).pump_evtchn());
        // Frames from the vifs' TAPs to their guests.
        tokio::spawn(Arc::clone(&service).pump_net());
        server::serve(listener, Arc::clone(&service), Limits::default(), async {
            tokio::select! {
                _ = term.recv() => log::write(Level::Info, format_args!("SIGTERM: stopping")),
                _ = int.recv() => log::write(Level::Info, format_args!("SIGINT: stopping")),
            }
        })
        .await;
        // Everything stays as it is for the next dom0d: no page is unmapped, no port
        // closed; only the state file is brought up to date.
        service.persist();
        drop(guard);
        Ok(())
    })
}
