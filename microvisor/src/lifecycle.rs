//! A DomU's scheduling state and the lifecycle requests domain 0 makes of it (pause,
//! unpause, destroy).
//!
//! Dom0 runs on pCPU 0 and the domain on its own pCPU, so a request cannot act on a running
//! vCPU directly: it records what is wanted and says what the caller must do ([`Effect`]);
//! the domain's pCPU applies it at the vCPU's next exit ([`SchedState::at_exit`]), which an
//! IPI makes immediate. A vCPU that is not on a run queue (blocked, paused) is acted on at
//! once. Portable and host-tested; `arch::x86_64::hv` keeps one [`SchedState`] per domain
//! under a short lock.
//!
//! Events wake a blocked vCPU ([`SchedState::wake`]). To never lose a wake-up, the sender
//! makes the event visible (pending bit, upcall byte, event counter) *before* it takes the
//! lock, and the vCPU checks for it *under* the lock before it blocks: either the check
//! sees the event or the sender sees the vCPU blocked.

use shared_abi::Errno;

/// Where a DomU's vCPU is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// On its pCPU's run queue, or running.
    Queued,
    /// Halted, off the run queue until an event wakes it.
    Blocked,
    /// Paused by Dom0, off the run queue.
    Paused {
        /// It was blocked when paused (unpausing leaves it blocked).
        was_blocked: bool,
    },
    /// Shut down or crashed: its memory is gone, only its record remains.
    Ended,
}

/// What a blocked vCPU waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// An upcall (HLT with interrupts enabled, `SCHEDOP_block`).
    Upcall,
    /// Any event reaching the domain, or the poll's timeout (`SCHEDOP_poll`).
    Poll,
    /// Nothing: HLT with interrupts disabled. Only Dom0's requests move it.
    Forever,
}

/// Why a vCPU is being woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Its upcall became pending.
    Upcall,
    /// One of its ports became pending without an upcall (masked, or already selected).
    Event,
    /// Its poll timed out.
    PollTimeout,
}

impl Wait {
    fn woken_by(self, why: Wake) -> bool {
        match self {
            Wait::Upcall => why == Wake::Upcall,
            Wait::Poll => true,
            Wait::Forever => false,
        }
    }
}

/// A DomU's scheduling state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedState {
    /// Where the vCPU is.
    pub run: RunState,
    /// While blocked (or paused while blocked): what it waits for.
    pub wait: Wait,
    /// Dom0 asked for a pause the pCPU has not applied yet.
    pub pause_requested: bool,
    /// Dom0 asked for destruction the pCPU has not applied yet.
    pub destroy_requested: bool,
    /// The vCPU has run at least once (its entry state is then fixed).
    pub started: bool,
}

/// What the caller of a request must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing more.
    None,
    /// Interrupt the domain's pCPU so that it applies the request at the next exit.
    Kick,
    /// Put the vCPU back on its pCPU's run queue and wake that pCPU.
    Requeue,
    /// The vCPU is off every queue: destroy the domain now, from the caller.
    DestroyNow,
    /// The domain had already ended: drop its record.
    Forget,
}

/// What the pCPU does with a vCPU at an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtExit {
    /// Keep running it.
    Continue,
    /// Stop: it is paused now.
    Pause,
    /// Stop and destroy it.
    Destroy,
}

impl Default for SchedState {
    fn default() -> Self {
        Self::new()
    }
}

impl SchedState {
    /// A new, runnable vCPU.
    pub const fn new() -> Self {
        Self {
            run: RunState::Queued,
            wait: Wait::Upcall,
            pause_requested: false,
            destroy_requested: false,
            started: false,
        }
    }

    /// A vCPU created paused, to be set up by Dom0's builder before it first runs.
    pub const fn created_paused() -> Self {
        Self {
            run: RunState::Paused { was_blocked: false },
            ..Self::new()
        }
    }

    /// Whether Dom0 may still set the entry state: paused and never run.
    pub fn entry_settable(&self) -> bool {
        !self.started
            && !self.destroy_requested
            && self.run == RunState::Paused { was_blocked: false }
    }

    /// The pCPU is about to run the vCPU: applies pending requests first (as
    /// [`SchedState::at_exit`]); if it runs, it counts as started.
    pub fn begin_run(&mut self) -> AtExit {
        let verdict = self.at_exit();
        if verdict == AtExit::Continue {
            self.started = true;
        }
        verdict
    }

    /// Whether Dom0 sees the domain as paused (requested or applied).
    pub fn paused(&self) -> bool {
        self.pause_requested || matches!(self.run, RunState::Paused { .. })
    }

    /// Dom0 pauses the domain.
    pub fn pause(&mut self) -> Result<Effect, Errno> {
        if self.destroy_requested {
            return Err(Errno::ESRCH);
        }
        match self.run {
            RunState::Ended => Err(Errno::EINVAL),
            _ if self.paused() => Err(Errno::EBUSY),
            RunState::Blocked => {
                self.run = RunState::Paused { was_blocked: true };
                Ok(Effect::None)
            }
            _ => {
                self.pause_requested = true;
                Ok(Effect::Kick)
            }
        }
    }

    /// Dom0 unpauses the domain.
    pub fn unpause(&mut self) -> Result<Effect, Errno> {
        if self.destroy_requested {
            return Err(Errno::ESRCH);
        }
        match self.run {
            RunState::Ended => Err(Errno::EINVAL),
            _ if !self.paused() => Err(Errno::EBUSY),
            RunState::Paused { was_blocked } => {
                self.pause_requested = false;
                if was_blocked {
                    self.run = RunState::Blocked;
                    Ok(Effect::None)
                } else {
                    self.run = RunState::Queued;
                    Ok(Effect::Requeue)
                }
            }
            // Requested but not applied yet: withdrawing the request is enough.
            _ => {
                self.pause_requested = false;
                Ok(Effect::None)
            }
        }
    }

    /// Dom0 destroys the domain.
    pub fn destroy(&mut self) -> Result<Effect, Errno> {
        if self.destroy_requested {
            return Err(Errno::ESRCH);
        }
        self.destroy_requested = true;
        Ok(match self.run {
            RunState::Ended => Effect::Forget,
            RunState::Blocked | RunState::Paused { .. } => Effect::DestroyNow,
            RunState::Queued => Effect::Kick,
        })
    }

    /// The pCPU that owns the vCPU checks for requests (at each exit and before running
    /// it).
    pub fn at_exit(&mut self) -> AtExit {
        if self.destroy_requested {
            AtExit::Destroy
        } else if self.pause_requested {
            self.pause_requested = false;
            self.run = RunState::Paused { was_blocked: false };
            AtExit::Pause
        } else {
            AtExit::Continue
        }
    }

    /// The vCPU halted (waiting for an upcall). See [`SchedState::block_on`].
    pub fn block(&mut self) -> AtExit {
        self.block_on(Wait::Upcall)
    }

    /// The vCPU blocks until `wait` is satisfied; the caller has checked under the lock
    /// that it is not satisfied already. A request that arrived meanwhile wins: the vCPU
    /// is then paused (and stays blocked underneath) or destroyed.
    pub fn block_on(&mut self, wait: Wait) -> AtExit {
        self.wait = wait;
        if self.destroy_requested {
            return AtExit::Destroy;
        }
        if self.pause_requested {
            self.pause_requested = false;
            self.run = RunState::Paused { was_blocked: true };
            return AtExit::Pause;
        }
        self.run = RunState::Blocked;
        AtExit::Continue
    }

    /// An event for the vCPU. A blocked vCPU whose wait it satisfies becomes runnable
    /// ([`Effect::Requeue`]); one that is paused while blocked will run when unpaused; a
    /// runnable one is interrupted for an upcall ([`Effect::Kick`]) so the callback vector
    /// is injected at once if it is running on another pCPU.
    pub fn wake(&mut self, why: Wake) -> Effect {
        if self.destroy_requested {
            return Effect::None;
        }
        match self.run {
            RunState::Blocked if self.wait.woken_by(why) => {
                self.run = RunState::Queued;
                Effect::Requeue
            }
            RunState::Paused { was_blocked: true } if self.wait.woken_by(why) => {
                self.run = RunState::Paused { was_blocked: false };
                Effect::None
            }
            RunState::Queued if why == Wake::Upcall => Effect::Kick,
            _ => Effect::None,
        }
    }

    /// The domain shut down or crashed.
    pub fn end(&mut self) {
        self.run = RunState::Ended;
        self.pause_requested = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_unpause_a_running_domain() {
        let mut s = SchedState::new();
        assert_eq!(s.pause(), Ok(Effect::Kick));
        assert!(s.paused());
        assert_eq!(s.pause(), Err(Errno::EBUSY), "double pause");
        assert_eq!(s.at_exit(), AtExit::Pause);
        assert_eq!(s.run, RunState::Paused { was_blocked: false });
        assert_eq!(s.at_exit(), AtExit::Continue, "applied once");
        assert_eq!(s.unpause(), Ok(Effect::Requeue));
        assert_eq!(
            s.unpause(),
            Err(Errno::EBUSY),
            "unpause of a running domain"
        );
        assert_eq!(s.run, RunState::Queued);
    }

    #[test]
    fn a_pause_withdrawn_before_it_applies() {
        let mut s = SchedState::new();
        s.pause().unwrap();
        assert_eq!(s.unpause(), Ok(Effect::None));
        assert_eq!(s.at_exit(), AtExit::Continue);
    }

    #[test]
    fn a_built_domain_takes_its_entry_until_it_runs() {
        let mut s = SchedState::created_paused();
        assert!(s.entry_settable());
        assert_eq!(s.unpause(), Ok(Effect::Requeue));
        assert!(!s.entry_settable(), "queued: too late");
        assert_eq!(s.begin_run(), AtExit::Continue);
        assert!(s.started);
        s.pause().unwrap();
        assert_eq!(s.at_exit(), AtExit::Pause);
        assert!(!s.entry_settable(), "it has run");
    }

    #[test]
    fn a_request_racing_a_halt_wins() {
        let mut s = SchedState::new();
        s.pause().unwrap();
        assert_eq!(s.block(), AtExit::Pause);
        assert_eq!(s.unpause(), Ok(Effect::None));
        assert_eq!(s.run, RunState::Blocked);
        let mut s = SchedState::new();
        s.destroy().unwrap();
        assert_eq!(s.block(), AtExit::Destroy);
    }

    #[test]
    fn blocked_domains_are_acted_on_at_once() {
        let mut s = SchedState::new();
        assert_eq!(s.block(), AtExit::Continue);
        assert_eq!(s.pause(), Ok(Effect::None));
        assert_eq!(s.unpause(), Ok(Effect::None));
        assert_eq!(s.run, RunState::Blocked, "unpause leaves it blocked");
        s.pause().unwrap();
        assert_eq!(s.destroy(), Ok(Effect::DestroyNow));
        assert_eq!(s.destroy(), Err(Errno::ESRCH), "already being destroyed");
        assert_eq!(s.pause(), Err(Errno::ESRCH));
    }

    #[test]
    fn wake_requeues_only_what_the_wait_allows() {
        let mut s = SchedState::new();
        assert_eq!(s.wake(Wake::Upcall), Effect::Kick, "runnable: inject now");
        assert_eq!(s.wake(Wake::Event), Effect::None);
        assert_eq!(s.block_on(Wait::Upcall), AtExit::Continue);
        assert_eq!(
            s.wake(Wake::Event),
            Effect::None,
            "masked events do not wake"
        );
        assert_eq!(
            s.wake(Wake::PollTimeout),
            Effect::None,
            "stale poll timeout"
        );
        assert_eq!(s.wake(Wake::Upcall), Effect::Requeue);
        assert_eq!(s.run, RunState::Queued);
        assert_eq!(s.wake(Wake::Upcall), Effect::Kick, "woken once");

        assert_eq!(s.block_on(Wait::Poll), AtExit::Continue);
        assert_eq!(
            s.wake(Wake::Event),
            Effect::Requeue,
            "a poll wakes on any event"
        );
        s.block_on(Wait::Poll);
        assert_eq!(s.wake(Wake::PollTimeout), Effect::Requeue);

        s.block_on(Wait::Forever);
        for why in [Wake::Upcall, Wake::Event, Wake::PollTimeout] {
            assert_eq!(s.wake(why), Effect::None);
        }
        assert_eq!(s.run, RunState::Blocked);
    }

    #[test]
    fn wake_while_paused_or_dying() {
        let mut s = SchedState::new();
        s.block_on(Wait::Upcall);
        s.pause().unwrap();
        assert_eq!(
            s.wake(Wake::Upcall),
            Effect::None,
            "paused: stays off the queue"
        );
        assert_eq!(s.run, RunState::Paused { was_blocked: false });
        assert_eq!(s.unpause(), Ok(Effect::Requeue), "runs once unpaused");

        let mut s = SchedState::new();
        s.block_on(Wait::Upcall);
        assert_eq!(s.destroy(), Ok(Effect::DestroyNow));
        assert_eq!(
            s.wake(Wake::Upcall),
            Effect::None,
            "never requeue a dying vCPU"
        );
        assert_eq!(s.run, RunState::Blocked);

        let mut s = SchedState::new();
        s.pause().unwrap();
        assert_eq!(s.wake(Wake::Upcall), Effect::Kick, "pause not applied yet");
        assert_eq!(s.block_on(Wait::Upcall), AtExit::Pause);
        s.end();
        assert_eq!(s.wake(Wake::Upcall), Effect::None);
    }

    #[test]
    fn destroy_of_running_and_ended_domains() {
        let mut s = SchedState::new();
        assert_eq!(s.destroy(), Ok(Effect::Kick));
        assert_eq!(s.at_exit(), AtExit::Destroy);
        let mut ended = SchedState::new();
        ended.end();
        assert_eq!(ended.pause(), Err(Errno::EINVAL));
        assert_eq!(ended.unpause(), Err(Errno::EINVAL));
        assert_eq!(ended.destroy(), Ok(Effect::Forget));
    }
}
