//! Hypercall numbers (`xen/include/public/xen.h`).

use crate::Errno;

/// A hypercall number, passed in `RAX`.
///
/// The numbers are Xen's. Calls marked *not implemented* are part of the planned subset and
/// return `-ENOSYS` until they land; any number not listed here also returns `-ENOSYS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum Hypercall {
    /// `memory_op(cmd, arg)`: add_to_physmap for `shared_info`. See [`crate::memory`].
    MemoryOp = 12,
    /// `set_timer_op(deadline_ns)`: the single-shot timer. See [`crate::vcpu`].
    SetTimerOp = 15,
    /// `xen_version(cmd, arg)`: version information. See [`crate::version`].
    XenVersion = 17,
    /// `console_io(cmd, count, buffer)`: the hypervisor console. See [`crate::console`].
    ConsoleIo = 18,
    /// `grant_table_op(cmd, uop, count)`: query_size, set/get_version. See
    /// [`crate::grant_table`].
    GrantTableOp = 20,
    /// `vm_assist(cmd, type)`: not implemented.
    VmAssist = 21,
    /// `vcpu_op(cmd, vcpuid, arg)`: single-shot timer. See [`crate::vcpu`].
    VcpuOp = 24,
    /// `sched_op(cmd, arg)`: yield, block, poll, shutdown. See [`crate::sched`].
    SchedOp = 29,
    /// `event_channel_op(cmd, arg)`: 2-level event channels. See [`crate::event_channel`].
    EventChannelOp = 32,
    /// `hvm_op(cmd, arg)`: HVM parameters. See [`crate::hvm`].
    HvmOp = 34,
}

impl TryFrom<u64> for Hypercall {
    type Error = Errno;

    /// Decodes `RAX`. Unknown numbers are [`Errno::ENOSYS`].
    fn try_from(nr: u64) -> Result<Self, Errno> {
        Ok(match nr {
            12 => Hypercall::MemoryOp,
            15 => Hypercall::SetTimerOp,
            17 => Hypercall::XenVersion,
            18 => Hypercall::ConsoleIo,
            20 => Hypercall::GrantTableOp,
            21 => Hypercall::VmAssist,
            24 => Hypercall::VcpuOp,
            29 => Hypercall::SchedOp,
            32 => Hypercall::EventChannelOp,
            34 => Hypercall::HvmOp,
            _ => return Err(Errno::ENOSYS),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_listed_numbers() {
        for nr in 0..4096u64 {
            match Hypercall::try_from(nr) {
                Ok(call) => assert_eq!(call as u64, nr),
                Err(e) => assert_eq!(e, Errno::ENOSYS),
            }
        }
        assert_eq!(Hypercall::try_from(u64::MAX), Err(Errno::ENOSYS));
        assert_eq!(Hypercall::try_from(17 | 1 << 32), Err(Errno::ENOSYS));
    }
}
