//! `release-domain` and `bad-foreign`: foreign mappings and events of `/dev/microvisor`,
//! end to end and hostile.
//!
//! - `release-domain DOMID` (the Dom0 scenario's end-to-end check; DOMID is a `hello` guest
//!   started with `wait-for-dom0`): `HostInfo` (a foreign window of at least 2 slots);
//!   `ForeignMap` slot 0 ← (DOMID, gfn 1), `mmap` it read-only and find the PVH start-info
//!   magic [`START_INFO_MAGIC`] in its first 4 bytes (that page is the guest's
//!   `hvm_start_info`); `ForeignMap` slot 1 ← (DOMID, gfn 2), `mmap` it read-write and
//!   write [`RELEASE_MAGIC`] (`"MVGO"`) at offset 0, which releases the guest; `poll` the
//!   device (up to `--timeout`, 60 s) and `read` the 8-byte event mask, which must have
//!   `EVENT_DOMAIN_STATE`; `DomainInfo` then says the domain shut down with `poweroff`
//!   (waiting for further events within the same deadline while it has not yet). Then,
//!   also after a failed step: `munmap` both mappings, `ForeignUnmap` both slots (0 each)
//!   and slot 0 once more (`ENOENT`).
//! - `bad-foreign DOMID` (DOMID must be a running domain with at least 2 pages of RAM):
//!   `ForeignMap`/`ForeignUnmap` with a slot outside the window, domain 0 or a missing
//!   domain, a reserved field set, a gfn beyond the domain's RAM, a slot in use, an empty
//!   slot and a short buffer; `mmap` beyond the window and `MAP_PRIVATE`; `read` with a
//!   4-byte buffer and, non-blocking, with no event pending. Each must fail with its
//!   documented errno; a valid map, unmap and `mmap` must succeed, so a device that
//!   refuses everything cannot pass. Finally a child process maps the window's last
//!   (empty) slot and reads it: it must die of SIGSEGV (the microvisor injects #GP), and
//!   Dom0 and the probe go on.
#![forbid(unsafe_code)]

use std::fmt::Display;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use shared_abi::control::{ControlOp, EVENT_DOMAIN_STATE};

use super::{Check, report};
use crate::device::{Access, Device, Mapping, SLOT_SIZE, Sharing};
use crate::events::{EVENT_READ_SIZE, decode_mask, describe};
use crate::microvisor::{self, Microvisor, foreign_map, foreign_map_request, foreign_unmap};
use crate::proto::{errno_text, os_error_text};

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EAGAIN: i32 = 11;
const EBUSY: i32 = 16;
const EINVAL: i32 = 22;

/// `hvm_start_info.magic` (`XEN_HVM_START_MAGIC_VALUE`), the first 4 bytes of a PVH
/// guest's start-info page.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// The guest frame holding a DomU's `hvm_start_info` (its boot page at 0x1000).
pub const START_INFO_GFN: u64 = 1;
/// What `hello wait-for-dom0` waits for at guest-physical 0x2000 ("MVGO").
pub const RELEASE_MAGIC: u64 = 0x4F47_564D;
/// The guest frame `hello wait-for-dom0` watches.
pub const RELEASE_GFN: u64 = 2;
/// How long `release-domain` waits for the guest's shutdown event by default.
pub const DEFAULT_EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// A domain id that does not exist.
const MISSING_DOMID: u32 = 4000;
/// A frame far beyond any domain's RAM (4 TiB), yet inside the guest-physical space.
const FAR_GFN: u64 = 0x4000_0000;

/// What the probes need of `/dev/microvisor`: the control call, `mmap` of window slots,
/// `poll` and `read`. [`Device`] is the real one; host tests put the fake microvisor, a
/// file and a socket behind it.
pub trait Target {
    /// The control call.
    fn mv(&self) -> &dyn Microvisor;
    /// `mmap` of `pages` slots from `first_slot`; see [`Device::map_slots`].
    ///
    /// # Errors
    /// The errno.
    fn map_slots(
        &self,
        first_slot: u64,
        pages: usize,
        access: Access,
        sharing: Sharing,
    ) -> Result<Mapping, i32>;
    /// `poll` for readability; see [`Device::poll_readable`].
    ///
    /// # Errors
    /// The errno.
    fn poll_readable(&self, timeout: Duration) -> Result<bool, i32>;
    /// One `read`; see [`Device::read_raw`].
    ///
    /// # Errors
    /// The errno.
    fn read_raw(&self, buf: &mut [u8]) -> Result<usize, i32>;
}

impl Target for Device {
    fn mv(&self) -> &dyn Microvisor {
        self
    }
    fn map_slots(
        &self,
        first_slot: u64,
        pages: usize,
        access: Access,
        sharing: Sharing,
    ) -> Result<Mapping, i32> {
        Device::map_slots(self, first_slot, pages, access, sharing)
    }
    fn poll_readable(&self, timeout: Duration) -> Result<bool, i32> {
        Device::poll_readable(self, timeout)
    }
    fn read_raw(&self, buf: &mut [u8]) -> Result<usize, i32> {
        Device::read_raw(self, buf)
    }
}

/// Counts the `ok:` and `FAIL:` lines of one command.
pub(super) struct Tally<'a> {
    out: &'a mut dyn Write,
    passed: usize,
    failed: usize,
}

impl<'a> Tally<'a> {
    pub(super) fn new(out: &'a mut dyn Write) -> Self {
        Self {
            out,
            passed: 0,
            failed: 0,
        }
    }

    pub(super) fn pass(&mut self, what: impl Display) -> io::Result<()> {
        self.passed += 1;
        writeln!(self.out, "ok: {what}")
    }

    pub(super) fn fail(&mut self, what: impl Display) -> io::Result<()> {
        self.failed += 1;
        writeln!(self.out, "FAIL: {what}")
    }

    /// Reports `check`; returns whether it passed.
    fn check(&mut self, check: &Check) -> io::Result<bool> {
        let pass = report(check, self.out)?;
        if pass {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        Ok(pass)
    }

    /// Reports a result against its expectation; returns whether it matched.
    pub(super) fn expect(
        &mut self,
        what: impl Into<String>,
        result: Result<u64, i32>,
        expected: Result<u64, i32>,
    ) -> io::Result<bool> {
        self.check(&Check {
            what: what.into(),
            result,
            expected,
        })
    }

    /// Prints the summary line; returns whether every check passed.
    pub(super) fn finish(self, command: &str) -> io::Result<bool> {
        let total = self.passed + self.failed;
        writeln!(self.out, "{command}: {} of {total} checks ok", self.passed)?;
        Ok(self.failed == 0 && self.passed > 0)
    }
}

pub(super) fn open(device: &Path, t: &mut Tally<'_>) -> io::Result<Option<Device>> {
    match Device::open(device) {
        Ok(d) => Ok(Some(d)),
        Err(e) => {
            t.fail(format_args!(
                "open {}: {} (is microvisor.ko loaded, and is dom0-probe root?)",
                device.display(),
                os_error_text(&e)
            ))?;
            Ok(None)
        }
    }
}

/// The foreign window's size from `HostInfo`, reported as one check; `None` if it failed
/// or the window is smaller than `needed` slots.
pub(super) fn window_pages(
    mv: &dyn Microvisor,
    needed: u64,
    t: &mut Tally<'_>,
) -> io::Result<Option<u64>> {
    match microvisor::host_record(mv) {
        Ok(h) if h.foreign_window_pages >= needed => {
            t.pass(format_args!(
                "HostInfo: foreign window of {} slots at {:#x}",
                h.foreign_window_pages, h.foreign_window_gpa
            ))?;
            Ok(Some(h.foreign_window_pages))
        }
        Ok(h) => {
            t.fail(format_args!(
                "HostInfo: foreign window of {} slots at {:#x}, need at least {needed}",
                h.foreign_window_pages, h.foreign_window_gpa
            ))?;
            Ok(None)
        }
        Err(e) => {
            t.fail(format_args!("HostInfo: {e}"))?;
            Ok(None)
        }
    }
}

/// `release-domain` on the device node at `device`. Returns whether every check passed.
///
/// # Errors
/// Writing the report failed.
pub fn release_domain(
    device: &Path,
    domid: u32,
    timeout: Duration,
    out: &mut dyn Write,
) -> io::Result<bool> {
    let mut t = Tally::new(out);
    if let Some(dev) = open(device, &mut t)? {
        release_on(&dev, domid, timeout, &mut t)?;
    }
    t.finish("release-domain")
}

/// `release-domain` on any [`Target`], for host tests. Returns whether every check passed.
///
/// # Errors
/// Writing the report failed.
pub fn release_domain_on(
    target: &dyn Target,
    domid: u32,
    timeout: Duration,
    out: &mut dyn Write,
) -> io::Result<bool> {
    let mut t = Tally::new(out);
    release_on(target, domid, timeout, &mut t)?;
    t.finish("release-domain")
}

/// What `release-domain` must undo.
#[derive(Default)]
struct Held {
    /// Slots filled with `ForeignMap`.
    slots: Vec<u64>,
    /// Slots mapped into this process.
    maps: Vec<(u64, Mapping)>,
}

fn release_on(
    target: &dyn Target,
    domid: u32,
    timeout: Duration,
    t: &mut Tally<'_>,
) -> io::Result<()> {
    let mut held = Held::default();
    release_steps(target, domid, timeout, t, &mut held)?;
    // Undo, also after a failed step: mappings first, then the slots.
    for (slot, mapping) in held.maps.drain(..) {
        match mapping.unmap() {
            Ok(()) => t.pass(format_args!("munmap slot {slot}"))?,
            Err(errno) => t.fail(format_args!("munmap slot {slot}: {}", errno_text(errno)))?,
        }
    }
    let mut slot0_emptied = false;
    for slot in held.slots.drain(..) {
        let ok = t.expect(
            format!("ForeignUnmap slot {slot}"),
            foreign_unmap(target.mv(), slot),
            Ok(0),
        )?;
        slot0_emptied |= ok && slot == 0;
    }
    if slot0_emptied {
        t.expect(
            "ForeignUnmap slot 0 again (now empty)",
            foreign_unmap(target.mv(), 0),
            Err(ENOENT),
        )?;
    }
    Ok(())
}

/// Maps `gfn` of `domid` into `slot` and the slot into this process; reports both.
fn map_frame(
    target: &dyn Target,
    slot: u64,
    domid: u32,
    gfn: u64,
    access: Access,
    t: &mut Tally<'_>,
    held: &mut Held,
) -> io::Result<bool> {
    let mapped = t.expect(
        format!("ForeignMap slot {slot} <- domain {domid} gfn {gfn}"),
        foreign_map(target.mv(), slot, domid, gfn),
        Ok(0),
    )?;
    if !mapped {
        return Ok(false);
    }
    held.slots.push(slot);
    let what = match access {
        Access::ReadOnly => "read-only",
        Access::ReadWrite => "read-write",
    };
    match target.map_slots(slot, 1, access, Sharing::Shared) {
        Ok(m) => {
            t.pass(format_args!("mmap slot {slot} ({what}, shared)"))?;
            held.maps.push((slot, m));
            Ok(true)
        }
        Err(errno) => {
            t.fail(format_args!(
                "mmap slot {slot} ({what}, shared): {}",
                errno_text(errno)
            ))?;
            Ok(false)
        }
    }
}

/// The mapping of `slot` in `held`.
fn mapping(held: &mut Held, slot: u64) -> Option<&mut Mapping> {
    held.maps
        .iter_mut()
        .find(|(s, _)| *s == slot)
        .map(|(_, m)| m)
}

/// The steps up to the first failure (the caller undoes what `held` records).
fn release_steps(
    target: &dyn Target,
    domid: u32,
    timeout: Duration,
    t: &mut Tally<'_>,
    held: &mut Held,
) -> io::Result<()> {
    if window_pages(target.mv(), 2, t)?.is_none() {
        return Ok(());
    }
    if !map_frame(target, 0, domid, START_INFO_GFN, Access::ReadOnly, t, held)? {
        return Ok(());
    }
    match mapping(held, 0).and_then(|m| m.read_u32(0)) {
        Some(START_INFO_MAGIC) => t.pass(format_args!(
            "slot 0 starts with the PVH start-info magic {START_INFO_MAGIC:#x}"
        ))?,
        other => {
            t.fail(format_args!(
                "slot 0 starts with {}, expected the PVH start-info magic {START_INFO_MAGIC:#x}",
                other.map_or_else(|| "nothing readable".to_owned(), |v| format!("{v:#x}"))
            ))?;
            return Ok(());
        }
    }
    if !map_frame(target, 1, domid, RELEASE_GFN, Access::ReadWrite, t, held)? {
        return Ok(());
    }
    let written = mapping(held, 1)
        .is_some_and(|m| m.write_u64(0, RELEASE_MAGIC) && m.read_u64(0) == Some(RELEASE_MAGIC));
    if written {
        t.pass(format_args!(
            "wrote the release magic {RELEASE_MAGIC:#x} (\"MVGO\") to domain {domid} gfn {RELEASE_GFN}"
        ))?;
    } else {
        t.fail(format_args!(
            "could not write the release magic to domain {domid} gfn {RELEASE_GFN}"
        ))?;
        return Ok(());
    }

    let start = Instant::now();
    let deadline = start + timeout;
    let mask = match next_event(target, deadline) {
        Ok(Some(mask)) => mask,
        Ok(None) => {
            t.fail(format_args!(
                "poll: no event within {:.1} s",
                timeout.as_secs_f64()
            ))?;
            return Ok(());
        }
        Err(why) => {
            t.fail(why)?;
            return Ok(());
        }
    };
    t.pass(format_args!(
        "poll: the device became readable after {:.1} s",
        start.elapsed().as_secs_f64()
    ))?;
    if mask & EVENT_DOMAIN_STATE == 0 {
        t.fail(format_args!(
            "read: event mask {mask:#x} ({}) lacks EVENT_DOMAIN_STATE",
            describe(mask)
        ))?;
        return Ok(());
    }
    t.pass(format_args!(
        "read: event mask {mask:#x} has EVENT_DOMAIN_STATE"
    ))?;
    wait_for_poweroff(target, domid, deadline, t)
}

/// Waits until the device is readable (or `deadline`) and reads one mask. `Ok(None)`: the
/// deadline passed; `Err`: a `poll` or `read` failure or a malformed mask, described.
fn next_event(target: &dyn Target, deadline: Instant) -> Result<Option<u64>, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match target.poll_readable(left) {
            Ok(true) => break,
            Ok(false) => {}
            Err(errno) => return Err(format!("poll: {}", errno_text(errno))),
        }
    }
    let mut buf = [0u8; EVENT_READ_SIZE];
    let n = target
        .read_raw(&mut buf)
        .map_err(|errno| format!("read: {}", errno_text(errno)))?;
    decode_mask(&buf[..n])
        .map(Some)
        .map_err(|e| format!("read: {e}"))
}

/// Checks that `domid` shut down with `poweroff`, waiting for further events until
/// `deadline` while it is still running (an earlier event may have been another domain's).
fn wait_for_poweroff(
    target: &dyn Target,
    domid: u32,
    deadline: Instant,
    t: &mut Tally<'_>,
) -> io::Result<()> {
    loop {
        let raw = match microvisor::domain_info(target.mv(), domid) {
            Ok(d) => d,
            Err(e) => return t.fail(format_args!("DomainInfo for domain {domid}: {e}")),
        };
        match (raw.state, raw.reason) {
            (crate::proto::State::Shutdown, Some(crate::proto::Reason::Poweroff)) => {
                return t.pass(format_args!("domain {domid} shut down (poweroff)"));
            }
            (crate::proto::State::Shutdown | crate::proto::State::Crashed, reason) => {
                return t.fail(format_args!(
                    "domain {domid} ended as {} ({}), expected shutdown (poweroff)",
                    raw.state.name(),
                    reason.map_or("no reason", crate::proto::Reason::name)
                ));
            }
            (state, _) => match next_event(target, deadline) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return t.fail(format_args!(
                        "domain {domid} is still {} at the deadline, expected shutdown (poweroff)",
                        state.name()
                    ));
                }
                Err(why) => return t.fail(why),
            },
        }
    }
}

/// The control-call checks of `bad-foreign` against `mv`, for domain `domid` (running,
/// at least 2 pages of RAM) and a window of `pages` slots, in order. They leave every slot
/// as they found it, provided slot 0 was empty.
#[must_use]
pub fn control_checks(mv: &dyn Microvisor, domid: u32, pages: u64) -> Vec<Check> {
    let map = |slot, domid, gfn| foreign_map(mv, slot, domid, gfn);
    let raw_map = |buf: &mut [u8]| mv.control(ControlOp::ForeignMap as u64, 0, buf);
    let gfn = START_INFO_GFN;
    let mut checks = Vec::new();
    let mut push = |what: String, result, expected| {
        checks.push(Check {
            what,
            result,
            expected,
        });
    };
    push(
        format!("ForeignMap slot {pages} (one past the window)"),
        map(pages, domid, gfn),
        Err(EINVAL),
    );
    push(
        format!("ForeignMap slot {:#x}", u64::MAX),
        map(u64::MAX, domid, gfn),
        Err(EINVAL),
    );
    push(
        "ForeignMap of domain 0".to_owned(),
        map(0, 0, gfn),
        Err(ESRCH),
    );
    push(
        format!("ForeignMap of domain {MISSING_DOMID} (no such domain)"),
        map(0, MISSING_DOMID, gfn),
        Err(ESRCH),
    );
    push(
        "ForeignMap with the reserved field set".to_owned(),
        raw_map(&mut foreign_map_request(domid, 1, gfn)),
        Err(EINVAL),
    );
    push(
        format!("ForeignMap of gfn {FAR_GFN:#x} (far beyond the domain's RAM)"),
        map(0, domid, FAR_GFN),
        Err(EINVAL),
    );
    push(
        format!("ForeignMap of gfn {:#x}", u64::MAX),
        map(0, domid, u64::MAX),
        Err(EINVAL),
    );
    push(
        "ForeignMap with an 8-byte buffer".to_owned(),
        raw_map(&mut foreign_map_request(domid, 0, gfn)[..8]),
        Err(EINVAL),
    );
    push(
        format!("ForeignMap slot 0 <- domain {domid} gfn {gfn}"),
        map(0, domid, gfn),
        Ok(0),
    );
    push(
        "ForeignMap slot 0 again (in use)".to_owned(),
        map(0, domid, RELEASE_GFN),
        Err(EBUSY),
    );
    push(
        "ForeignUnmap slot 0".to_owned(),
        foreign_unmap(mv, 0),
        Ok(0),
    );
    push(
        "ForeignUnmap slot 0 again (empty)".to_owned(),
        foreign_unmap(mv, 0),
        Err(ENOENT),
    );
    push(
        format!("ForeignUnmap slot {pages} (outside the window)"),
        foreign_unmap(mv, pages),
        Err(EINVAL),
    );
    checks
}

/// `bad-foreign` on the device node at `device`. Returns whether every check passed.
///
/// # Errors
/// Writing the report failed.
pub fn bad_foreign(device: &Path, domid: u32, out: &mut dyn Write) -> io::Result<bool> {
    let mut t = Tally::new(out);
    let Some(dev) = open(device, &mut t)? else {
        return t.finish("bad-foreign");
    };
    let Some(pages) = window_pages(&dev, 1, &mut t)? else {
        return t.finish("bad-foreign");
    };
    for check in control_checks(&dev, domid, pages) {
        t.check(&check)?;
    }

    let slot = SLOT_SIZE as u64;
    let map = |first, count, sharing| {
        dev.map_slots(first, count, Access::ReadOnly, sharing)
            .map(|m| m.len() as u64)
    };
    t.expect(
        format!("mmap of slot {pages} (one past the window)"),
        map(pages, 1, Sharing::Shared),
        Err(EINVAL),
    )?;
    t.expect(
        format!(
            "mmap of 2 slots from slot {} (crossing the window's end)",
            pages - 1
        ),
        map(pages - 1, 2, Sharing::Shared),
        Err(EINVAL),
    )?;
    t.expect(
        "MAP_PRIVATE mmap of slot 0",
        map(0, 1, Sharing::Private),
        Err(EINVAL),
    )?;
    // Mapping an empty slot is allowed (touching it would fault); nothing touches it.
    t.expect(
        "MAP_SHARED mmap of slot 0 (not touched)",
        map(0, 1, Sharing::Shared),
        Ok(slot),
    )?;

    let mut short = [0u8; 4];
    t.expect(
        "read with a 4-byte buffer",
        dev.read_raw(&mut short).map(|n| n as u64),
        Err(EINVAL),
    )?;
    touch_empty_slot(device, pages - 1, &mut t)?;
    // A fresh handle: its event mask starts empty.
    match Device::open_nonblocking(device) {
        Ok(nb) => {
            let mut buf = [0u8; EVENT_READ_SIZE];
            t.expect(
                "O_NONBLOCK read with no event pending",
                nb.read_raw(&mut buf).map(|n| n as u64),
                Err(EAGAIN),
            )?;
        }
        Err(e) => t.fail(format_args!(
            "open {} with O_NONBLOCK: {}",
            device.display(),
            os_error_text(&e)
        ))?,
    }
    t.finish("bad-foreign")
}

/// The hidden subcommand the empty-slot child runs: `__touch-slot DEVICE SLOT`.
pub const TOUCH_SUBCOMMAND: &str = "__touch-slot";

/// Exit codes of the empty-slot child when it survives.
mod touch_exit {
    pub(super) const READ: i32 = 20;
    pub(super) const NOT_MAPPED: i32 = 21;
}

/// Runs in the child: maps `slot` read-only and reads it. The slot holds no frame, so the
/// read should kill this process (SIGSEGV); the exit code says what happened otherwise.
#[must_use]
pub fn child_touch(device: &Path, slot: u64) -> i32 {
    let mapping = Device::open(device)
        .map_err(|e| os_error_text(&e))
        .and_then(|d| {
            d.map_slots(slot, 1, Access::ReadOnly, Sharing::Shared)
                .map_err(errno_text)
        });
    match mapping {
        Ok(m) => {
            let value = m.read_u32(0);
            eprintln!("child: read {value:x?} from empty slot {slot}");
            touch_exit::READ
        }
        Err(why) => {
            eprintln!("child: cannot map slot {slot}: {why}");
            touch_exit::NOT_MAPPED
        }
    }
}

/// Re-executes this binary to read empty slot `slot`; passes if only the child dies, with
/// SIGSEGV (the microvisor's #GP for an access to an unmapped window page).
fn touch_empty_slot(device: &Path, slot: u64, t: &mut Tally<'_>) -> io::Result<()> {
    use std::os::unix::process::ExitStatusExt;
    let what = format!("reading empty slot {slot} kills only the reader");
    let exe = std::env::current_exe().unwrap_or_else(|_| "dom0-probe".into());
    let status = std::process::Command::new(exe)
        .arg(TOUCH_SUBCOMMAND)
        .arg(device)
        .arg(slot.to_string())
        .status();
    match status {
        Ok(s) if s.signal() == Some(libc::SIGSEGV) => t.pass(format_args!("{what}: SIGSEGV")),
        Ok(s) => t.fail(format_args!(
            "{what}: the child ended with {s}, expected SIGSEGV"
        )),
        Err(e) => t.fail(format_args!(
            "{what}: cannot start the child: {}",
            os_error_text(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write as _;
    use std::os::unix::fs::FileExt;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    use shared_abi::control::DomainState;

    use super::*;
    use crate::fake::{FAKE_WINDOW_PAGES, FakeMicrovisor, domain_record};

    /// The fake microvisor for control calls, a file for the window (slot N at offset
    /// N × 4096) and a socket for events.
    struct Simulated {
        fake: Arc<FakeMicrovisor>,
        window: Device,
        events: Device,
    }

    impl Target for Simulated {
        fn mv(&self) -> &dyn Microvisor {
            &*self.fake
        }
        fn map_slots(
            &self,
            first_slot: u64,
            pages: usize,
            access: Access,
            sharing: Sharing,
        ) -> Result<Mapping, i32> {
            self.window.map_slots(first_slot, pages, access, sharing)
        }
        fn poll_readable(&self, timeout: Duration) -> Result<bool, i32> {
            self.events.poll_readable(timeout)
        }
        fn read_raw(&self, buf: &mut [u8]) -> Result<usize, i32> {
            self.events.read_raw(buf)
        }
    }

    /// A simulated device whose slot 0 shows a start-info page; returns it, the window
    /// file and the microvisor's end of the event socket.
    fn simulated() -> (Simulated, File, UnixStream) {
        let window = tempfile::tempfile().unwrap();
        window.set_len(4 * SLOT_SIZE as u64).unwrap();
        window
            .write_all_at(&START_INFO_MAGIC.to_le_bytes(), 0)
            .unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let sim = Simulated {
            fake: Arc::new(FakeMicrovisor::new()),
            window: Device::from_file(window.try_clone().unwrap()),
            events: Device::from_file(File::from(std::os::fd::OwnedFd::from(ours))),
        };
        (sim, window, theirs)
    }

    fn run(sim: &Simulated, timeout: Duration) -> (bool, String) {
        let mut out = Vec::new();
        let ok = release_domain_on(sim, 1, timeout, &mut out).unwrap();
        (ok, String::from_utf8(out).unwrap())
    }

    #[test]
    fn release_domain_end_to_end_against_a_simulated_guest() {
        let (sim, window, mut events) = simulated();
        let fake = Arc::clone(&sim.fake);
        let guest = std::thread::spawn(move || {
            // hello wait-for-dom0: spin on gfn 2 (slot 1 here) for the magic.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let mut v = [0u8; 8];
                window.read_exact_at(&mut v, SLOT_SIZE as u64).unwrap();
                if u64::from_le_bytes(v) == RELEASE_MAGIC {
                    break;
                }
                assert!(Instant::now() < deadline, "never released");
                std::thread::sleep(Duration::from_millis(5));
            }
            // First someone else's event, then the guest's own shutdown.
            events.write_all(&EVENT_DOMAIN_STATE.to_le_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            fake.insert(domain_record(1, "hello1", DomainState::Shutdown, 0));
            events.write_all(&EVENT_DOMAIN_STATE.to_le_bytes()).unwrap();
            events
        });
        let (ok, text) = run(&sim, Duration::from_secs(10));
        let _events = guest.join().unwrap();
        assert!(ok, "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let expected_start = [
            format!("ok: HostInfo: foreign window of {FAKE_WINDOW_PAGES} slots at 0x1000000000"),
            "ok: ForeignMap slot 0 <- domain 1 gfn 1: success (0)".to_owned(),
            "ok: mmap slot 0 (read-only, shared)".to_owned(),
            "ok: slot 0 starts with the PVH start-info magic 0x336ec578".to_owned(),
            "ok: ForeignMap slot 1 <- domain 1 gfn 2: success (0)".to_owned(),
            "ok: mmap slot 1 (read-write, shared)".to_owned(),
            "ok: wrote the release magic 0x4f47564d (\"MVGO\") to domain 1 gfn 2".to_owned(),
        ];
        assert_eq!(lines[..7], expected_start, "{text}");
        assert!(lines[7].starts_with("ok: poll: the device became readable after "));
        assert_eq!(
            lines[8..],
            [
                "ok: read: event mask 0x1 has EVENT_DOMAIN_STATE",
                "ok: domain 1 shut down (poweroff)",
                "ok: munmap slot 0",
                "ok: munmap slot 1",
                "ok: ForeignUnmap slot 0: success (0)",
                "ok: ForeignUnmap slot 1: success (0)",
                "ok: ForeignUnmap slot 0 again (now empty): ENOENT",
                "release-domain: 15 of 15 checks ok",
            ],
            "{text}"
        );
        assert!(sim.fake.foreign_slots().is_empty());
    }

    #[test]
    fn release_domain_fails_without_an_event_and_still_cleans_up() {
        let (sim, _window, _events) = simulated();
        let (ok, text) = run(&sim, Duration::from_millis(200));
        assert!(!ok, "{text}");
        assert!(
            text.contains("\nFAIL: poll: no event within 0.2 s\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "ok: munmap slot 0\nok: munmap slot 1\n\
                 ok: ForeignUnmap slot 0: success (0)\nok: ForeignUnmap slot 1: success (0)\n\
                 ok: ForeignUnmap slot 0 again (now empty): ENOENT\n\
                 release-domain: 12 of 13 checks ok\n"
            ),
            "{text}"
        );
        assert!(sim.fake.foreign_slots().is_empty());
    }

    #[test]
    fn release_domain_stops_at_a_wrong_start_info_page() {
        let (sim, window, _events) = simulated();
        window.write_all_at(&[0; 4], 0).unwrap();
        let (ok, text) = run(&sim, Duration::from_secs(1));
        assert!(!ok);
        assert!(
            text.contains(
                "FAIL: slot 0 starts with 0x0, expected the PVH start-info magic 0x336ec578\n"
            ),
            "{text}"
        );
        // Slot 1 was never touched; slot 0 is undone.
        assert!(!text.contains("slot 1"), "{text}");
        assert!(text.contains("ok: ForeignUnmap slot 0 again (now empty): ENOENT"));
        assert!(sim.fake.foreign_slots().is_empty());
    }

    #[test]
    fn release_domain_of_a_missing_domain_fails_at_the_first_map() {
        let (sim, _window, _events) = simulated();
        let mut out = Vec::new();
        assert!(!release_domain_on(&sim, 4000, Duration::from_secs(1), &mut out).unwrap());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().nth(1),
            Some(
                "FAIL: ForeignMap slot 0 <- domain 4000 gfn 1: got ESRCH (No such process), \
                 expected success (0)"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("release-domain: 1 of 2 checks ok\n"),
            "{text}"
        );
    }

    #[test]
    fn bad_foreign_control_checks_match_the_abi() {
        let fake = FakeMicrovisor::new();
        let checks = control_checks(&fake, 1, FAKE_WINDOW_PAGES);
        for c in &checks {
            assert_eq!(c.result, c.expected, "{}", c.what);
        }
        assert_eq!(checks.len(), 13);
        assert!(
            fake.foreign_slots().is_empty(),
            "the checks leave no slot filled"
        );

        // A domain that has ended can no longer be mapped: the valid map fails, and the
        // checks show it.
        fake.insert(domain_record(1, "hello1", DomainState::Shutdown, 0));
        let failed: Vec<String> = control_checks(&fake, 1, FAKE_WINDOW_PAGES)
            .into_iter()
            .filter(|c| c.result != c.expected)
            .map(|c| c.what)
            .collect();
        assert_eq!(
            failed,
            [
                "ForeignMap of gfn 0x40000000 (far beyond the domain's RAM)",
                "ForeignMap of gfn 0xffffffffffffffff",
                "ForeignMap slot 0 <- domain 1 gfn 1",
                "ForeignMap slot 0 again (in use)",
                "ForeignUnmap slot 0",
            ]
        );
    }

    #[test]
    fn the_map_request_is_16_little_endian_bytes() {
        assert_eq!(
            foreign_map_request(0x0102_0304, 0, 0x1122_3344_5566_7788),
            [
                4, 3, 2, 1, 0, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11
            ]
        );
        assert_eq!(foreign_map_request(1, 7, 2)[4], 7);
    }
}
