//! The console behind `print!`/`println!`.
//!
//! Three sinks, chosen per write:
//!
//! 1. **The PV console ring**, once [`init_pv`] found one (`HVM_PARAM_CONSOLE_PFN` is not
//!    0; the Dom0 domain builder gives every DomU it builds one). Output is queued in the
//!    ring and the back-end is notified; while the ring is full the guest blocks on events
//!    (with a short timer as a backstop) until the back-end makes room. Input is read with
//!    [`read`] / [`read_blocking`].
//! 2. **`console_io(CONSOLEIO_write)`**, the hypervisor console (the microvisor log), when
//!    there is no ring (boot-time DomUs), when the ring failed, and always on the
//!    emergency path (panics, fatal exceptions, shutdown messages): see [`emergency`].
//! 3. **Port 0xE9**, QEMU's debug console, without a hypervisor (bare QEMU).
//!
//! Each `print!` is formatted into a 256-byte stack buffer, so a typical line is one
//! hypercall or one ring write.

use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicBool, Ordering};

use pv_drivers::MappedMem;
use shared_abi::Errno;
use shared_abi::console::CONSOLEIO_MAX_WRITE;
use shared_abi::guest::{console_write, evtchn_send, hvm_get_param};
use shared_abi::hvm::{HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN};

use crate::arch::{paging, phys, port};
use crate::fmt::BufWriter;
use crate::pvconsole::{self, PvConsole, Waker};

const LINE_BUFFER: usize = 256;

/// The ring page, mapped once by [`init_pv`] and never unmapped.
static PAGE: spin::Once<MappedMem> = spin::Once::new();
/// The PV console, once [`init_pv`] found one.
static PV: spin::Mutex<Option<PvConsole<&'static MappedMem>>> = spin::Mutex::new(None);
/// Set on the emergency path: no more waiting on the ring, output also to `console_io`.
///
/// ORDERING: one vCPU; set before the emergency output it governs, read by the same
/// code. Relaxed suffices.
static EMERGENCY: AtomicBool = AtomicBool::new(false);

/// How long one wait for the back-end lasts at most (a backstop in case its notification
/// is late or never comes).
const WAIT_SLICE_NS: u64 = 20_000_000;
/// How long the final flush before shutdown waits for the back-end at most, in slices.
const FLUSH_SLICES: u32 = 50;

/// Notifies through the event channel; waits on events with the timer as a backstop.
struct EventWaker;

impl Waker for EventWaker {
    fn notify(&mut self, port: u32) {
        let _ = evtchn_send(port);
    }

    fn wait(&mut self) -> bool {
        if EMERGENCY.load(Ordering::Relaxed) {
            return false;
        }
        let deadline = crate::time::deadline_after(crate::time::now_ns(), WAIT_SLICE_NS);
        if crate::time::wait_event_until(deadline).is_some() {
            return true;
        }
        // No timer: rely on the back-end's notification alone.
        if crate::events::initialised() {
            crate::events::wait_for_event();
            return true;
        }
        false
    }
}

/// What [`init_pv`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvStatus {
    /// The PV console is in use: `print!` goes to the ring.
    Active {
        /// Guest-physical address of the ring page.
        paddr: u64,
        /// The event channel port.
        port: u32,
    },
    /// No console page (`HVM_PARAM_CONSOLE_PFN` is 0, or no hypervisor): `print!` stays
    /// on `console_io`.
    Absent,
}

/// Why [`init_pv`] could not use the console page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvError {
    /// A hypercall failed (reading the parameters, or setting up events).
    Hypercall(Errno),
    /// The parameters name an unusable page or port.
    Page(pvconsole::PageError),
}

impl fmt::Display for PvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PvError::Hypercall(e) => write!(f, "hypercall failed: -{e}"),
            PvError::Page(e) => e.fmt(f),
        }
    }
}

/// Looks for a PV console; if there is one, sets up events ([`crate::events::init`]) and
/// sends `print!` there from now on. Idempotent.
///
/// A guest without a console page (`HVM_PARAM_CONSOLE_PFN` reads 0, or `hvm_op` is not
/// implemented) gets [`PvStatus::Absent`] and nothing changes: events are *not* set up.
///
/// # Errors
/// [`PvError`] when there is a page but it cannot be used; output stays on `console_io`.
pub fn init_pv() -> Result<PvStatus, PvError> {
    if let Some(pv) = PV.lock().as_ref() {
        let paddr = PAGE.get().map_or(0, |p| p.base().as_ptr().addr() as u64);
        return Ok(PvStatus::Active {
            paddr,
            port: pv.port(),
        });
    }
    if !crate::rt::hypervisor_present() {
        return Ok(PvStatus::Absent);
    }
    let pfn = match hvm_get_param(HVM_PARAM_CONSOLE_PFN) {
        Ok(0) | Err(Errno::ENOSYS) => return Ok(PvStatus::Absent),
        Ok(pfn) => pfn,
        Err(e) => return Err(PvError::Hypercall(e)),
    };
    let port = hvm_get_param(HVM_PARAM_CONSOLE_EVTCHN).map_err(PvError::Hypercall)?;
    let (paddr, port) =
        pvconsole::check_page(pfn, port, paging::IDENTITY_MAP_END, phys::image_range())
            .map_err(PvError::Page)?;
    crate::events::init().map_err(PvError::Hypercall)?;
    let page = PAGE.call_once(|| phys::shared_page(paddr));
    let con = PvConsole::new(page, port)
        .map_err(|_| PvError::Page(pvconsole::PageError::OutsideMap(paddr)))?;
    *PV.lock() = Some(con);
    // Anything the back-end queued before we looked is ours to read; tell it we are here.
    let _ = evtchn_send(port);
    // A domain built by dom0d has a xenstore too: obey `dom0 shutdown`/`dom0 reboot`.
    if let Err(e) = crate::control::init() {
        crate::println!(
            "guest-rt: xenstore unusable (-{e}); PV shutdown requests will not be seen"
        );
    }
    Ok(PvStatus::Active { paddr, port })
}

/// Whether a console write or read is in progress (it may be waiting for events).
pub fn busy() -> bool {
    PV.is_locked()
}

/// Whether `print!` goes to the PV console ring.
pub fn pv_active() -> bool {
    PV.lock().as_ref().is_some_and(|pv| pv.error().is_none())
}

fn hypervisor_write(bytes: &[u8]) {
    if crate::rt::hypervisor_present() {
        for chunk in bytes.chunks(CONSOLEIO_MAX_WRITE as usize) {
            let _ = console_write(chunk);
        }
    } else {
        port::debugcon_write(bytes);
    }
}

/// Writes raw bytes to the console. Errors (e.g. rate limiting) are ignored: there is
/// nowhere to report them.
///
/// With a PV console this blocks while the ring is full. On the emergency path it never
/// waits: the bytes go to `console_io` and, as far as they fit without waiting, to the
/// ring too.
pub fn write_bytes(bytes: &[u8]) {
    if EMERGENCY.load(Ordering::Relaxed) {
        hypervisor_write(bytes);
        // Never spin on the lock here: the emergency may have interrupted a ring write.
        if let Some(mut guard) = PV.try_lock()
            && let Some(pv) = guard.as_mut()
        {
            pv.write_nonblocking(bytes, &mut EventWaker);
        }
        return;
    }
    let written = match PV.lock().as_mut() {
        Some(pv) => pv.write_all(bytes, &mut EventWaker),
        None => 0,
    };
    if written < bytes.len() {
        hypervisor_write(&bytes[written..]);
    }
}

/// Switches the console to the emergency path for good (see [`write_bytes`]). The
/// runtime calls it on panics, fatal exceptions and shutdown.
pub fn emergency() {
    EMERGENCY.store(true, Ordering::Relaxed);
}

/// Takes up to `buf.len()` bytes of console input without waiting; 0 when there is none
/// (or no PV console).
pub fn read(buf: &mut [u8]) -> usize {
    match PV.lock().as_mut() {
        Some(pv) => pv.read(buf, &mut EventWaker),
        None => 0,
    }
}

/// Takes at least one byte of console input, blocking on events until some arrives.
/// Returns 0 only when there is no working PV console (or it cannot block).
pub fn read_blocking(buf: &mut [u8]) -> usize {
    if buf.is_empty() {
        return 0;
    }
    loop {
        let n = read(buf);
        if n != 0 || !pv_active() || !crate::events::initialised() {
            return n;
        }
        crate::events::wait_for_event();
    }
}

/// Waits until the back-end has consumed all output (bounded, about one second). The
/// runtime calls it before shutting down after `main` returns.
pub fn flush() {
    if EMERGENCY.load(Ordering::Relaxed) {
        return;
    }
    if let Some(pv) = PV.lock().as_mut() {
        pv.flush(&mut EventWaker, FLUSH_SLICES);
    }
}

/// Formats `args` to the console. Used by [`crate::print!`] and [`crate::println!`].
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut w = BufWriter::<LINE_BUFFER, _>::new(write_bytes);
    // Our writer never fails; a failing Display impl only cuts the output short.
    let _ = w.write_fmt(args);
}
