//! The microvisor's events in dom0d: decoding the device's 8-byte masks, the task that
//! waits for them ([`watch`]), and what it has seen ([`EventMonitor`], reported by
//! [`Request::Events`](crate::proto::Request::Events)).
//!
//! `microvisor.ko` takes the event bits from the microvisor whenever the event function
//! interrupts Dom0 and ORs them into a mask per open file; `read` returns that mask as a
//! little-endian `u64` (exactly 8 bytes) and clears it, `poll` reports it. dom0d opens its
//! own `O_NONBLOCK` handle for this and waits with epoll (tokio's `AsyncFd`), so a device
//! that never becomes readable costs nothing.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use shared_abi::control::{EVENT_DOMAIN_STATE, EVENT_EVTCHN};

use crate::device::EventFd;
use crate::log::{self, Level};
use crate::proto::{EventReport, EventStatus, os_error_text};

/// Bytes of one event read.
pub const EVENT_READ_SIZE: usize = 8;

/// Why a read of the device is not an event mask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    /// The read returned nothing: the device (or, in tests, the pipe) has ended.
    #[error("the device reported end of file")]
    EndOfFile,
    /// The read returned another size than [`EVENT_READ_SIZE`].
    #[error("the device returned {0} bytes, expected {EVENT_READ_SIZE}")]
    WrongSize(usize),
    /// The read returned a mask without any bit (the module never does).
    #[error("the device returned an empty event mask")]
    Empty,
}

/// Decodes one read of the device: exactly [`EVENT_READ_SIZE`] bytes, a little-endian
/// `u64` with at least one bit set.
///
/// # Errors
/// [`MaskError`].
pub fn decode_mask(bytes: &[u8]) -> Result<u64, MaskError> {
    let raw: [u8; EVENT_READ_SIZE] = match bytes.len() {
        0 => return Err(MaskError::EndOfFile),
        _ => bytes
            .try_into()
            .map_err(|_| MaskError::WrongSize(bytes.len()))?,
    };
    match u64::from_le_bytes(raw) {
        0 => Err(MaskError::Empty),
        mask => Ok(mask),
    }
}

/// What a mask says, for the log: `domain state changed`, `event channels pending`, plus
/// `unknown bits 0x..` for bits this dom0d does not know.
#[must_use]
pub fn describe(mask: u64) -> String {
    let mut parts = Vec::new();
    if mask & EVENT_DOMAIN_STATE != 0 {
        parts.push("domain state changed".to_owned());
    }
    if mask & EVENT_EVTCHN != 0 {
        parts.push("event channels pending".to_owned());
    }
    let unknown = mask & !(EVENT_DOMAIN_STATE | EVENT_EVTCHN);
    if unknown != 0 {
        parts.push(format!("unknown bits {unknown:#x}"));
    }
    if parts.is_empty() {
        "no event".to_owned()
    } else {
        parts.join(", ")
    }
}

/// What dom0d has seen of the events; shared by [`watch`] and the request handler.
#[derive(Debug)]
pub struct EventMonitor {
    inner: Mutex<Inner>,
    /// Notified by [`EventMonitor::record`] for a mask with any bit but `EVENT_EVTCHN`,
    /// for the sweeps of `on_*` actions.
    changed: tokio::sync::Notify,
    /// Notified by [`EventMonitor::record`] for a mask with `EVENT_EVTCHN`, for the task
    /// that takes the pending ports.
    evtchn: tokio::sync::Notify,
}

#[derive(Debug)]
struct Inner {
    status: EventStatus,
    count: u64,
    last_mask: u64,
    last: Option<(Option<u64>, Instant)>,
}

impl EventMonitor {
    /// A monitor in `status`, with nothing seen yet.
    #[must_use]
    pub fn new(status: EventStatus) -> Self {
        Self {
            inner: Mutex::new(Inner {
                status,
                count: 0,
                last_mask: 0,
                last: None,
            }),
            changed: tokio::sync::Notify::new(),
            evtchn: tokio::sync::Notify::new(),
        }
    }

    /// A monitor nobody feeds ([`EventStatus::Unavailable`] with `reason`).
    #[must_use]
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::new(EventStatus::Unavailable {
            reason: reason.into(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the status.
    pub fn set_status(&self, status: EventStatus) {
        self.lock().status = status;
    }

    /// Records one mask received now; returns how many have been received.
    pub fn record(&self, mask: u64) -> u64 {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok());
        let mut inner = self.lock();
        inner.count = inner.count.saturating_add(1);
        inner.last_mask = mask;
        inner.last = Some((unix_ms, Instant::now()));
        let count = inner.count;
        drop(inner);
        if mask & !EVENT_EVTCHN != 0 {
            self.changed.notify_one();
        }
        if mask & EVENT_EVTCHN != 0 {
            self.evtchn.notify_one();
        }
        count
    }

    /// Waits until [`Self::record`] is called with a mask that has a bit other than
    /// `EVENT_EVTCHN` (returns at once if that happened since the last wait ended).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Waits until [`Self::record`] is called with `EVENT_EVTCHN` in the mask (returns at
    /// once if that happened since the last wait ended).
    pub async fn evtchn(&self) {
        self.evtchn.notified().await;
    }

    /// The report for [`Request::Events`](crate::proto::Request::Events), ages counted
    /// to now.
    #[must_use]
    pub fn report(&self) -> EventReport {
        let inner = self.lock();
        EventReport {
            status: inner.status.clone(),
            count: inner.count,
            last_mask: inner.last_mask,
            last_unix_ms: inner.last.and_then(|(unix_ms, _)| unix_ms),
            last_age_ms: inner
                .last
                .map(|(_, at)| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// Waits for events on `file` (the device opened with `O_NONBLOCK`) until it fails,
/// logging and recording each mask in `monitor`. See [`listen`].
///
/// If the file cannot be polled at all (a module without `poll`: `EPERM`), it sets
/// [`EventStatus::Unavailable`] and returns at once.
pub async fn watch(file: File, monitor: Arc<EventMonitor>) {
    match EventFd::register(file) {
        Ok(fd) => listen(fd, monitor).await,
        Err(e) => {
            let reason = format!(
                "the device cannot be polled ({}); is microvisor.ko older than dom0d?",
                os_error_text(&e)
            );
            log::write(Level::Warn, format_args!("events unavailable: {reason}"));
            monitor.set_status(EventStatus::Unavailable { reason });
        }
    }
}

/// Reads event masks from `fd` until it fails, logging and recording each in `monitor`.
///
/// The task sleeps in epoll until the descriptor becomes readable and reads one mask per
/// read, so it never spins: a source that never becomes readable costs one registration.
/// It ends, with [`EventStatus::Stopped`] and an error line, at end of file, on a read
/// error other than `EINTR`, or on a read that is not one mask (a misbehaving source would
/// otherwise be read in a loop).
pub async fn listen(mut fd: EventFd, monitor: Arc<EventMonitor>) {
    monitor.set_status(EventStatus::Listening);
    log::write(Level::Info, format_args!("listening for microvisor events"));
    let reason = loop {
        let mut buf = [0u8; EVENT_READ_SIZE];
        match fd.read(&mut buf).await {
            Ok(n) => match decode_mask(&buf[..n]) {
                Ok(mask) => {
                    let count = monitor.record(mask);
                    // Console traffic raises EVENT_EVTCHN all the time: only at debug.
                    let level = if mask == EVENT_EVTCHN {
                        Level::Debug
                    } else {
                        Level::Info
                    };
                    log::limited(
                        level,
                        format_args!("event: {} (mask {mask:#x}, {count} so far)", describe(mask)),
                    );
                }
                Err(e) => break e.to_string(),
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break format!("reading an event failed: {}", os_error_text(&e)),
        }
    };
    log::write(
        Level::Error,
        format_args!("stopped listening for microvisor events: {reason}"),
    );
    monitor.set_status(EventStatus::Stopped { reason });
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;

    #[test]
    fn masks_are_eight_little_endian_bytes_with_a_bit_set() {
        assert_eq!(decode_mask(&1u64.to_le_bytes()), Ok(EVENT_DOMAIN_STATE));
        assert_eq!(decode_mask(&[0, 0, 0, 0, 0, 0, 0, 0x80]), Ok(1 << 63));
        assert_eq!(decode_mask(&[]), Err(MaskError::EndOfFile));
        assert_eq!(decode_mask(&[1, 0, 0, 0]), Err(MaskError::WrongSize(4)));
        assert_eq!(decode_mask(&[1; 9]), Err(MaskError::WrongSize(9)));
        assert_eq!(decode_mask(&[0; 8]), Err(MaskError::Empty));
        assert_eq!(
            MaskError::WrongSize(4).to_string(),
            "the device returned 4 bytes, expected 8"
        );
    }

    #[test]
    fn masks_are_described() {
        assert_eq!(describe(EVENT_DOMAIN_STATE), "domain state changed");
        assert_eq!(
            describe(EVENT_DOMAIN_STATE | EVENT_EVTCHN),
            "domain state changed, event channels pending"
        );
        assert_eq!(
            describe(EVENT_DOMAIN_STATE | 0x30),
            "domain state changed, unknown bits 0x30"
        );
        assert_eq!(describe(1 << 40), "unknown bits 0x10000000000");
        assert_eq!(describe(0), "no event");
    }

    #[test]
    fn the_monitor_counts_and_dates_masks() {
        let m = EventMonitor::unavailable("nothing");
        let r = m.report();
        assert_eq!(r.count, 0);
        assert_eq!((r.last_unix_ms, r.last_age_ms), (None, None));
        assert_eq!(r.status.reason(), Some("nothing"));
        m.set_status(EventStatus::Listening);
        assert_eq!(m.record(1), 1);
        assert_eq!(m.record(3), 2);
        let r = m.report();
        assert_eq!(
            (r.status, r.count, r.last_mask),
            (EventStatus::Listening, 2, 3)
        );
        // Each mask wakes the waiters its bits concern.
        let rt = runtime();
        rt.block_on(async {
            let soon = Duration::from_millis(50);
            assert!(tokio::time::timeout(soon, m.changed()).await.is_ok());
            assert!(tokio::time::timeout(soon, m.evtchn()).await.is_ok());
            m.record(EVENT_EVTCHN);
            assert!(tokio::time::timeout(soon, m.changed()).await.is_err());
            assert!(tokio::time::timeout(soon, m.evtchn()).await.is_ok());
            m.record(EVENT_DOMAIN_STATE);
            assert!(tokio::time::timeout(soon, m.evtchn()).await.is_err());
            assert!(tokio::time::timeout(soon, m.changed()).await.is_ok());
        });
        assert!(r.last_unix_ms.is_some_and(|ms| ms > 1_600_000_000_000));
        assert!(r.last_age_ms.is_some_and(|ms| ms < 10_000));
    }

    /// A non-blocking socket standing in for the device, and the other end.
    fn source() -> (File, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (File::from(std::os::fd::OwnedFd::from(ours)), theirs)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Waits (driving the runtime) until `cond` holds, for at most 5 s.
    async fn until(cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not reached in 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn events_are_counted_and_a_quiet_device_is_not_read_in_a_loop() {
        let rt = runtime();
        let (src, mut device) = source();
        let monitor = Arc::new(EventMonitor::unavailable("not started"));
        rt.block_on(async {
            let fd = EventFd::register(src).unwrap();
            let reads = fd.read_counter();
            let task = tokio::spawn(listen(fd, Arc::clone(&monitor)));
            until(|| monitor.report().status == EventStatus::Listening).await;
            // Nothing to read: the task sleeps instead of retrying.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(reads.load(Ordering::Relaxed) <= 1, "{reads:?}");

            device.write_all(&1u64.to_le_bytes()).unwrap();
            until(|| monitor.report().count == 1).await;
            device.write_all(&3u64.to_le_bytes()).unwrap();
            until(|| monitor.report().count == 2).await;
            let r = monitor.report();
            assert_eq!(r.last_mask, 3);
            assert!(r.last_age_ms.is_some());
            let settled = reads.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                reads.load(Ordering::Relaxed) <= settled + 1,
                "reads went on without data"
            );

            // The device going away ends the task, with the reason.
            drop(device);
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the task ends at end of file")
                .unwrap();
        });
        let r = monitor.report();
        assert_eq!(
            r.status,
            EventStatus::Stopped {
                reason: "the device reported end of file".into()
            }
        );
        assert_eq!(r.count, 2);
    }

    #[test]
    fn a_malformed_read_stops_the_task_instead_of_looping() {
        let rt = runtime();
        let (src, mut device) = source();
        let monitor = Arc::new(EventMonitor::unavailable("not started"));
        rt.block_on(async {
            let task = tokio::spawn(watch(src, Arc::clone(&monitor)));
            device.write_all(&0u64.to_le_bytes()).unwrap();
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the task ends on an empty mask")
                .unwrap();
        });
        assert_eq!(
            monitor.report().status.reason(),
            Some("the device returned an empty event mask")
        );
        assert_eq!(monitor.report().count, 0);
    }

    #[test]
    fn a_source_that_cannot_be_polled_is_unavailable() {
        // Regular files cannot be registered with epoll (EPERM), like a module without
        // `poll`.
        let file = tempfile::tempfile().unwrap();
        let monitor = Arc::new(EventMonitor::unavailable("not started"));
        runtime().block_on(watch(file, Arc::clone(&monitor)));
        match monitor.report().status {
            EventStatus::Unavailable { reason } => {
                assert!(
                    reason.starts_with("the device cannot be polled ("),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
