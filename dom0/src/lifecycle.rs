//! dom0d's lifecycle operations: pause, unpause and destroy a domain.
//!
//! [`perform`] is what [`Request::Pause`](crate::proto::Request::Pause) and its siblings
//! do:
//!
//! 1. Domain 0 is refused at once ([`ApiError::DomainZero`]); the microvisor is not asked.
//! 2. `DomainInfo` reads the domain: an unknown domid is [`ApiError::NoSuchDomain`], and
//!    the name and state make the log line and any error specific.
//! 3. The control operation (`DomainPause`, `DomainUnpause`, `DomainDestroy`) is issued.
//!    Its errno becomes a typed error (`shared_abi::control`, "Lifecycle errors"):
//!    `ESRCH` [`ApiError::NoSuchDomain`], `EPERM` on domain 0 [`ApiError::DomainZero`],
//!    `EBUSY` [`ApiError::AlreadyPaused`] or [`ApiError::NotPaused`], `EINVAL`
//!    [`ApiError::DomainEnded`]; anything else stays [`ApiError::Hypercall`].
//! 4. A reply means done (CLI.md §1): after a pause dom0d polls `DomainInfo` until the
//!    state is `paused` (the microvisor stops the domain at its next exit), after a
//!    destroy until the domain is gone, both within [`Waits`]; past the limit the answer
//!    is [`ApiError::LifecycleTimeout`]. An unpause takes effect at once; dom0d reads the
//!    state once for the reply.
//!
//! Each action is logged (rate-limited, since clients cause them).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use shared_abi::control::ControlOp;

use crate::log::{self, Level};
use crate::microvisor::{self, ESRCH, Microvisor};
use crate::proto::{ApiError, Domain, Lifecycle, LifecycleDone, State, domain_label};

const EPERM: i32 = 1;
const EBUSY: i32 = 16;
const EINVAL: i32 = 22;

/// How long dom0d waits for an accepted action to show in `DomainInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    /// Limit for a paused domain to show as `paused` (default 2 s).
    pub pause: Duration,
    /// Limit for a destroyed domain to disappear (default 5 s).
    pub destroy: Duration,
    /// Time between two `DomainInfo` polls (default 5 ms).
    pub poll: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            pause: Duration::from_secs(2),
            destroy: Duration::from_secs(5),
            poll: Duration::from_millis(5),
        }
    }
}

/// The control operation of `action`.
#[must_use]
pub fn control_op(action: Lifecycle) -> ControlOp {
    match action {
        Lifecycle::Pause => ControlOp::DomainPause,
        Lifecycle::Unpause => ControlOp::DomainUnpause,
        Lifecycle::Destroy => ControlOp::DomainDestroy,
    }
}

/// Issues `action`'s control operation on `domid` (no buffer) and returns the raw result
/// or the positive errno.
///
/// # Errors
/// The errno of the failed call.
pub fn call(mv: &dyn Microvisor, action: Lifecycle, domid: u32) -> Result<u64, i32> {
    mv.control(control_op(action) as u64, u64::from(domid), &mut [])
}

/// Maps the errno of a failed lifecycle call to a typed error. `before` is the domain as
/// read before the call; `now` reads it again, for the state that made the call fail.
fn refusal(
    action: Lifecycle,
    before: &Domain,
    errno: i32,
    now: impl FnOnce() -> Result<Domain, ApiError>,
) -> ApiError {
    let domid = before.domid;
    let name = before.name.clone();
    match errno {
        ESRCH => ApiError::NoSuchDomain { domid },
        EPERM if domid == 0 => ApiError::DomainZero { action },
        EBUSY if action == Lifecycle::Pause => ApiError::AlreadyPaused { domid, name },
        EBUSY | EINVAL => {
            let current = now().unwrap_or_else(|_| before.clone());
            match (errno, current.state) {
                (EINVAL, state @ (State::Shutdown | State::Crashed)) => ApiError::DomainEnded {
                    action,
                    domid,
                    name,
                    state,
                    reason: current.reason,
                },
                (EBUSY, state) => ApiError::NotPaused {
                    domid,
                    name,
                    state: Some(state),
                },
                // EINVAL although the domain looks alive: report the call as it failed.
                _ => ApiError::Hypercall {
                    op: format!("{:?}", control_op(action)),
                    errno,
                },
            }
        }
        _ => ApiError::Hypercall {
            op: format!("{:?}", control_op(action)),
            errno,
        },
    }
}

/// What one poll of the domain found, for the wait after an accepted action.
enum Seen {
    /// The action shows: done.
    Done(Option<State>),
    /// Not yet; the state last seen.
    Pending(Option<State>),
}

/// Performs `action` on `domid` as the module docs describe, waiting (asynchronously, so
/// other clients are served meanwhile) for it to take effect.
///
/// # Errors
/// [`ApiError::DomainZero`], [`ApiError::NoSuchDomain`], [`ApiError::AlreadyPaused`],
/// [`ApiError::NotPaused`], [`ApiError::DomainEnded`], [`ApiError::LifecycleTimeout`],
/// [`ApiError::Hypercall`] or [`ApiError::BadRecord`].
pub async fn perform(
    mv: &dyn Microvisor,
    action: Lifecycle,
    domid: u32,
    waits: &Waits,
) -> Result<LifecycleDone, ApiError> {
    if domid == 0 {
        return Err(ApiError::DomainZero { action });
    }
    let before = microvisor::domain_info(mv, domid)?;
    let label = domain_label(domid, &before.name);
    let started = Instant::now();
    if let Err(errno) = call(mv, action, domid) {
        return Err(refusal(action, &before, errno, || {
            microvisor::domain_info(mv, domid)
        }));
    }
    let limit = match action {
        Lifecycle::Pause => waits.pause,
        Lifecycle::Destroy => waits.destroy,
        Lifecycle::Unpause => Duration::ZERO,
    };
    let state = loop {
        let seen = match (action, microvisor::domain_info(mv, domid)) {
            (Lifecycle::Destroy, Err(ApiError::NoSuchDomain { .. })) => Seen::Done(None),
            (Lifecycle::Destroy, Ok(d)) => Seen::Pending(Some(d.state)),
            (Lifecycle::Pause, Ok(d)) if d.state == State::Paused => Seen::Done(Some(d.state)),
            // It ended before its next exit: it will never show as paused.
            (Lifecycle::Pause, Ok(d)) if matches!(d.state, State::Shutdown | State::Crashed) => {
                return Err(ApiError::DomainEnded {
                    action,
                    domid,
                    name: before.name,
                    state: d.state,
                    reason: d.reason,
                });
            }
            (Lifecycle::Pause, Ok(d)) => Seen::Pending(Some(d.state)),
            (Lifecycle::Unpause, Ok(d)) => Seen::Done(Some(d.state)),
            // Unpaused, then destroyed by someone else before we looked: still unpaused.
            (Lifecycle::Unpause, Err(ApiError::NoSuchDomain { .. })) => Seen::Done(None),
            (_, Err(e)) => return Err(e),
        };
        match seen {
            Seen::Done(state) => break state,
            Seen::Pending(state) if started.elapsed() >= limit => {
                let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                log::limited(
                    Level::Error,
                    format_args!(
                        "{}: the microvisor accepted it, but after {waited_ms} ms {label} is still {}",
                        action.name(),
                        match (action, state) {
                            (Lifecycle::Destroy, Some(s)) => format!("listed ({})", s.name()),
                            (_, Some(s)) => s.name().to_owned(),
                            (_, None) => "listed".to_owned(),
                        }
                    ),
                );
                return Err(ApiError::LifecycleTimeout {
                    action,
                    domid,
                    name: before.name,
                    waited_ms,
                    state,
                });
            }
            Seen::Pending(_) => tokio::time::sleep(waits.poll).await,
        }
    };
    let took = started.elapsed();
    log::limited(
        Level::Info,
        format_args!(
            "{}: {label} {} (was {}, now {}; {} ms)",
            action.name(),
            action.done(),
            before.state.name(),
            state.map_or("gone", State::name),
            took.as_millis()
        ),
    );
    Ok(LifecycleDone {
        action,
        domid,
        name: before.name,
        state,
    })
}

#[cfg(test)]
mod tests {
    use shared_abi::control::DomainState;

    use super::*;
    use crate::fake::{FakeMicrovisor, Fault, domain_record};

    fn fake() -> FakeMicrovisor {
        let fake = FakeMicrovisor::new();
        let mut off = domain_record(5, "off", DomainState::Shutdown, 1024);
        off.shutdown_reason = 0;
        fake.insert(off);
        fake.insert(domain_record(6, "boom", DomainState::Crashed, 1024));
        fake
    }

    fn quick() -> Waits {
        Waits {
            pause: Duration::from_millis(100),
            destroy: Duration::from_millis(100),
            poll: Duration::from_millis(1),
        }
    }

    async fn run(
        fake: &FakeMicrovisor,
        action: Lifecycle,
        domid: u32,
    ) -> Result<LifecycleDone, ApiError> {
        perform(fake, action, domid, &quick()).await
    }

    fn state(fake: &FakeMicrovisor, domid: u32) -> State {
        microvisor::domain_info(fake, domid).unwrap().state
    }

    #[tokio::test]
    async fn pause_unpause_destroy() {
        let fake = fake();
        let done = run(&fake, Lifecycle::Pause, 2).await.unwrap();
        assert_eq!(
            done,
            LifecycleDone {
                action: Lifecycle::Pause,
                domid: 2,
                name: "hello2".into(),
                state: Some(State::Paused),
            }
        );
        assert_eq!(state(&fake, 2), State::Paused);
        let done = run(&fake, Lifecycle::Unpause, 2).await.unwrap();
        assert_eq!(done.state, Some(State::Running));
        let done = run(&fake, Lifecycle::Destroy, 2).await.unwrap();
        assert_eq!(done.state, None);
        assert_eq!(done.name, "hello2");
        assert_eq!(
            microvisor::domain_info(&fake, 2),
            Err(ApiError::NoSuchDomain { domid: 2 })
        );
    }

    #[tokio::test]
    async fn domain_zero_is_refused_without_a_call() {
        let fake = fake();
        for action in [Lifecycle::Pause, Lifecycle::Unpause, Lifecycle::Destroy] {
            let e = run(&fake, action, 0).await.unwrap_err();
            assert_eq!(e, ApiError::DomainZero { action });
        }
        assert_eq!(fake.calls(), 0);
        assert_eq!(
            ApiError::DomainZero {
                action: Lifecycle::Pause
            }
            .to_string(),
            "Domain-0 cannot be paused"
        );
    }

    #[tokio::test]
    async fn the_microvisor_refusing_domain_zero_is_mapped_too() {
        // Should dom0d's own check ever be bypassed, EPERM on domain 0 means the same.
        let before = microvisor::domain_info(&fake(), 0).unwrap();
        let e = refusal(Lifecycle::Destroy, &before, EPERM, || unreachable!());
        assert_eq!(
            e,
            ApiError::DomainZero {
                action: Lifecycle::Destroy
            }
        );
    }

    #[tokio::test]
    async fn wrong_states_are_typed_errors() {
        let fake = fake();
        run(&fake, Lifecycle::Pause, 1).await.unwrap();
        let e = run(&fake, Lifecycle::Pause, 1).await.unwrap_err();
        assert_eq!(e.to_string(), "domain 1 (hello1) is already paused");
        let e = run(&fake, Lifecycle::Unpause, 2).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "domain 2 (hello2) is not paused (it is running)"
        );
        let e = run(&fake, Lifecycle::Pause, 5).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "domain 5 (off) has shut down (poweroff), so it cannot be paused"
        );
        let e = run(&fake, Lifecycle::Unpause, 6).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "domain 6 (boom) has crashed, so it cannot be unpaused"
        );
        // Destroy works in every state.
        for domid in [1, 5, 6] {
            run(&fake, Lifecycle::Destroy, domid).await.unwrap();
        }
        for (action, domid) in [(Lifecycle::Pause, 4000), (Lifecycle::Destroy, 5)] {
            let e = run(&fake, action, domid).await.unwrap_err();
            assert_eq!(e, ApiError::NoSuchDomain { domid });
        }
    }

    #[tokio::test]
    async fn other_errnos_name_the_operation() {
        let fake = fake();
        let before = microvisor::domain_info(&fake, 2).unwrap();
        let e = refusal(Lifecycle::Pause, &before, 38, || unreachable!());
        assert_eq!(
            e.to_string(),
            "the microvisor's DomainPause call failed with ENOSYS (Function not implemented)"
        );
        // EINVAL on a domain that looks alive is reported as it came.
        let e = refusal(Lifecycle::Unpause, &before, EINVAL, || Ok(before.clone()));
        assert!(
            matches!(e, ApiError::Hypercall { errno: EINVAL, .. }),
            "{e:?}"
        );
        // A microvisor without the operations.
        fake.set_fault(Fault::Errno(1));
        assert!(matches!(
            run(&fake, Lifecycle::Pause, 2).await,
            Err(ApiError::Hypercall { errno: 1, .. })
        ));
    }

    #[tokio::test]
    async fn dom0d_waits_for_the_pause_to_show() {
        let fake = fake();
        fake.set_lag(5);
        let done = run(&fake, Lifecycle::Pause, 2).await.unwrap();
        assert_eq!(done.state, Some(State::Paused));
        let done = run(&fake, Lifecycle::Destroy, 2).await.unwrap();
        assert_eq!(done.state, None);
    }

    #[tokio::test]
    async fn a_pause_that_never_shows_times_out() {
        let fake = fake();
        fake.set_lag(u32::MAX);
        let e = run(&fake, Lifecycle::Pause, 2).await.unwrap_err();
        match &e {
            ApiError::LifecycleTimeout {
                action: Lifecycle::Pause,
                domid: 2,
                state: Some(State::Running),
                waited_ms,
                ..
            } => assert!(*waited_ms >= 100, "{waited_ms}"),
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string()
                .starts_with("domain 2 (hello2) was not paused within 0.1 s (it is running)"),
            "{e}"
        );
        let e = run(&fake, Lifecycle::Destroy, 1).await.unwrap_err();
        assert!(
            e.to_string().starts_with(
                "domain 1 (hello1) was still listed 0.1 s after the microvisor destroyed it (state blocked)"
            ),
            "{e}"
        );
    }
}
