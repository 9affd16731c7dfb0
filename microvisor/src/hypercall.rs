//! Hypercall decoding and dispatch for DomUs.
//!
//! Everything here is portable: the exit handler wraps the calling vCPU in a [`GuestEnv`]
//! (guest memory access and the console) and acts on the returned [`Outcome`]. Every
//! pointer argument is a claim checked by [`GuestEnv::copy_from_guest`] /
//! [`GuestEnv::copy_to_guest`]; nothing here touches guest memory directly.

use shared_abi::console::{CONSOLEIO_MAX_WRITE, CONSOLEIO_WRITE};
use shared_abi::sched::{SCHEDOP_SHUTDOWN, SCHEDOP_YIELD, SchedShutdown, ShutdownReason};
use shared_abi::version::{
    XENVER_EXTRAVERSION, XENVER_GET_FEATURES, XENVER_PAGESIZE, XENVER_VERSION, XenFeatureInfo,
    feature,
};
use shared_abi::{Errno, Hypercall, PAGE_SIZE, XEN_VERSION_MAJOR, XEN_VERSION_MINOR};
use zerocopy::{FromBytes, IntoBytes};

/// The extra-version string reported by `XENVER_extraversion`.
pub const EXTRAVERSION: &[u8] = b"-microvisor";

/// Feature submap 0: only what is actually implemented.
pub const FEATURES_SUBMAP0: u32 = 1 << feature::AUTO_TRANSLATED_PHYSMAP;

/// What the exit handler must provide for one call.
pub trait GuestEnv {
    /// Copies guest memory at linear address `la` into `buf`; `EFAULT` if any byte is not
    /// mapped by the guest or not backed by its own memory.
    fn copy_from_guest(&mut self, la: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Copies `buf` into guest memory at linear address `la`; `EFAULT` as above, or if the
    /// memory is not writable.
    fn copy_to_guest(&mut self, la: u64, buf: &[u8]) -> Result<(), Errno>;
    /// Emits console output of the calling domain.
    fn console_write(&mut self, bytes: &[u8]);
}

/// The registers of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypercallArgs {
    /// `RAX`.
    pub nr: u64,
    /// `RDI`, `RSI`, `RDX`, `R10`, `R8`.
    pub args: [u64; 5],
    /// The caller's CPL.
    pub cpl: u8,
}

/// What the vCPU does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Resume with this value in `RAX`.
    Return(i64),
    /// Resume with 0 in `RAX` after letting other vCPUs run.
    Yield,
    /// The domain shuts down with this reason.
    Shutdown(ShutdownReason),
}

fn ret(r: Result<u64, Errno>) -> Outcome {
    match r {
        Ok(v) => Outcome::Return(v as i64),
        Err(e) => Outcome::Return(e.to_ret()),
    }
}

/// Decodes and performs one DomU hypercall.
pub fn dispatch(env: &mut impl GuestEnv, call: HypercallArgs) -> Outcome {
    if call.cpl != 0 {
        return Outcome::Return(Errno::EPERM.to_ret());
    }
    let [a1, a2, a3, _, _] = call.args;
    match Hypercall::try_from(call.nr) {
        Ok(Hypercall::ConsoleIo) => ret(console_io(env, a1, a2, a3)),
        Ok(Hypercall::XenVersion) => ret(xen_version(env, a1, a2)),
        Ok(Hypercall::SchedOp) => sched_op(env, a1, a2),
        // Part of the planned subset, not implemented yet: say so truthfully.
        Ok(
            Hypercall::MemoryOp
            | Hypercall::SetTimerOp
            | Hypercall::GrantTableOp
            | Hypercall::VmAssist
            | Hypercall::VcpuOp
            | Hypercall::EventChannelOp
            | Hypercall::HvmOp,
        ) => Outcome::Return(Errno::ENOSYS.to_ret()),
        Err(e) => Outcome::Return(e.to_ret()),
    }
}

fn console_io(env: &mut impl GuestEnv, cmd: u64, count: u64, buf: u64) -> Result<u64, Errno> {
    if cmd != CONSOLEIO_WRITE {
        return Err(Errno::ENOSYS);
    }
    if count > CONSOLEIO_MAX_WRITE {
        return Err(Errno::EINVAL);
    }
    // Copy the whole buffer before emitting anything: a bad pointer writes nothing.
    let mut bytes = [0u8; CONSOLEIO_MAX_WRITE as usize];
    let bytes = &mut bytes[..count as usize];
    env.copy_from_guest(buf, bytes)?;
    env.console_write(bytes);
    Ok(0)
}

fn xen_version(env: &mut impl GuestEnv, cmd: u64, arg: u64) -> Result<u64, Errno> {
    match cmd {
        XENVER_VERSION => Ok((u64::from(XEN_VERSION_MAJOR) << 16) | u64::from(XEN_VERSION_MINOR)),
        XENVER_EXTRAVERSION => {
            let mut s = [0u8; 16];
            s[..EXTRAVERSION.len()].copy_from_slice(EXTRAVERSION);
            env.copy_to_guest(arg, &s).map(|()| 0)
        }
        XENVER_GET_FEATURES => {
            let mut raw = [0u8; 8];
            env.copy_from_guest(arg, &mut raw)?;
            let mut info = XenFeatureInfo::read_from_bytes(&raw).map_err(|_| Errno::EFAULT)?;
            info.submap = if info.submap_idx == 0 {
                FEATURES_SUBMAP0
            } else {
                0
            };
            env.copy_to_guest(arg, info.as_bytes()).map(|()| 0)
        }
        XENVER_PAGESIZE => Ok(PAGE_SIZE as u64),
        _ => Err(Errno::ENOSYS),
    }
}

fn sched_op(env: &mut impl GuestEnv, cmd: u64, arg: u64) -> Outcome {
    match cmd {
        SCHEDOP_YIELD => Outcome::Yield,
        SCHEDOP_SHUTDOWN => {
            let mut raw = [0u8; 4];
            if let Err(e) = env.copy_from_guest(arg, &mut raw) {
                return Outcome::Return(e.to_ret());
            }
            let reason = SchedShutdown::read_from_bytes(&raw)
                .map(|s| s.reason)
                .unwrap_or(u32::MAX);
            match ShutdownReason::try_from(reason) {
                Ok(ShutdownReason::Suspend | ShutdownReason::SoftReset) => {
                    Outcome::Return(Errno::ENOSYS.to_ret())
                }
                Ok(reason) => Outcome::Shutdown(reason),
                Err(e) => Outcome::Return(e.to_ret()),
            }
        }
        _ => Outcome::Return(Errno::ENOSYS.to_ret()),
    }
}

/// The bytes of a Xen-style hypercall page: 128 stubs of 32 bytes, stub `i` being
/// `mov eax, i; vmmcall; ret`. Stub 23 (`iret`, a PV-only call) is `ud2`.
pub fn hypercall_page() -> [u8; PAGE_SIZE] {
    let mut page = [0xCCu8; PAGE_SIZE];
    for (i, stub) in page.chunks_exact_mut(32).enumerate() {
        if i == 23 {
            stub[..2].copy_from_slice(&[0x0F, 0x0B]);
            continue;
        }
        stub[0] = 0xB8;
        stub[1..5].copy_from_slice(&(i as u32).to_le_bytes());
        stub[5..9].copy_from_slice(&[0x0F, 0x01, 0xD9, 0xC3]);
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest memory: identity-mapped linear addresses over a small RAM.
    struct FakeGuest {
        ram: std::vec::Vec<u8>,
        console: std::vec::Vec<u8>,
    }

    impl FakeGuest {
        fn new() -> Self {
            Self {
                ram: std::vec![0; 0x10000],
                console: std::vec::Vec::new(),
            }
        }
        fn range(&self, la: u64, len: usize) -> Result<core::ops::Range<usize>, Errno> {
            let start = usize::try_from(la).map_err(|_| Errno::EFAULT)?;
            let end = start.checked_add(len).ok_or(Errno::EFAULT)?;
            if end > self.ram.len() {
                return Err(Errno::EFAULT);
            }
            Ok(start..end)
        }
    }

    impl GuestEnv for FakeGuest {
        fn copy_from_guest(&mut self, la: u64, buf: &mut [u8]) -> Result<(), Errno> {
            let r = self.range(la, buf.len())?;
            buf.copy_from_slice(&self.ram[r]);
            Ok(())
        }
        fn copy_to_guest(&mut self, la: u64, buf: &[u8]) -> Result<(), Errno> {
            let r = self.range(la, buf.len())?;
            self.ram[r].copy_from_slice(buf);
            Ok(())
        }
        fn console_write(&mut self, bytes: &[u8]) {
            self.console.extend_from_slice(bytes);
        }
    }

    fn call(g: &mut FakeGuest, nr: u64, a1: u64, a2: u64, a3: u64) -> Outcome {
        dispatch(
            g,
            HypercallArgs {
                nr,
                args: [a1, a2, a3, 0, 0],
                cpl: 0,
            },
        )
    }
    const E: fn(Errno) -> Outcome = |e| Outcome::Return(e.to_ret());

    #[test]
    fn console_write_copies_then_emits() {
        let mut g = FakeGuest::new();
        g.ram[0x100..0x105].copy_from_slice(b"hello");
        assert_eq!(call(&mut g, 18, 0, 5, 0x100), Outcome::Return(0));
        assert_eq!(g.console, b"hello");
        // A buffer that runs off the end of RAM emits nothing.
        assert_eq!(call(&mut g, 18, 0, 16, 0xFFF8), E(Errno::EFAULT));
        assert_eq!(call(&mut g, 18, 0, 1 << 40, 0x100), E(Errno::EINVAL));
        assert_eq!(call(&mut g, 18, 0, 1, u64::MAX), E(Errno::EFAULT));
        assert_eq!(call(&mut g, 18, 99, 1, 0x100), E(Errno::ENOSYS));
        assert_eq!(g.console, b"hello");
    }

    #[test]
    fn version_and_features() {
        let mut g = FakeGuest::new();
        assert_eq!(call(&mut g, 17, 0, 0, 0), Outcome::Return(0x0004_0013));
        assert_eq!(
            call(&mut g, 17, XENVER_PAGESIZE, 0, 0),
            Outcome::Return(4096)
        );
        assert_eq!(
            call(&mut g, 17, XENVER_GET_FEATURES, 0x200, 0),
            Outcome::Return(0)
        );
        assert_eq!(&g.ram[0x204..0x208], &FEATURES_SUBMAP0.to_le_bytes());
        assert_eq!(
            call(&mut g, 17, XENVER_GET_FEATURES, 0xFFFC, 0),
            E(Errno::EFAULT)
        );
        assert_eq!(
            call(&mut g, 17, XENVER_EXTRAVERSION, 0x300, 0),
            Outcome::Return(0)
        );
        assert_eq!(&g.ram[0x300..0x30B], EXTRAVERSION);
        assert_eq!(call(&mut g, 17, 4242, 0, 0), E(Errno::ENOSYS));
    }

    #[test]
    fn sched_shutdown_validates_reason_and_pointer() {
        let mut g = FakeGuest::new();
        g.ram[0x400..0x404].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            call(&mut g, 29, 2, 0x400, 0),
            Outcome::Shutdown(ShutdownReason::Poweroff)
        );
        g.ram[0x400..0x404].copy_from_slice(&77u32.to_le_bytes());
        assert_eq!(call(&mut g, 29, 2, 0x400, 0), E(Errno::EINVAL));
        g.ram[0x400..0x404].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(call(&mut g, 29, 2, 0x400, 0), E(Errno::ENOSYS));
        assert_eq!(call(&mut g, 29, 2, 0x1_0000, 0), E(Errno::EFAULT));
        assert_eq!(call(&mut g, 29, 0, 0, 0), Outcome::Yield);
        assert_eq!(call(&mut g, 29, 99, 0, 0), E(Errno::ENOSYS));
    }

    #[test]
    fn unknown_and_unprivileged_calls_fail() {
        let mut g = FakeGuest::new();
        for nr in [0, 1, 11, 64, 0xFFFF, u64::MAX, (1 << 32) | 17, 12, 32] {
            assert_eq!(call(&mut g, nr, 0, 0, 0), E(Errno::ENOSYS), "nr {nr:#x}");
        }
        let user = HypercallArgs {
            nr: 17,
            args: [0; 5],
            cpl: 3,
        };
        assert_eq!(dispatch(&mut g, user), E(Errno::EPERM));
    }

    #[test]
    fn hypercall_page_stubs() {
        let page = hypercall_page();
        assert_eq!(
            &page[32 * 18..32 * 18 + 9],
            &[0xB8, 18, 0, 0, 0, 0x0F, 0x01, 0xD9, 0xC3]
        );
        assert_eq!(&page[32 * 23..32 * 23 + 2], &[0x0F, 0x0B]);
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(nr in 0u64..64, a in proptest::array::uniform5(proptest::num::u64::ANY), cpl in 0u8..4) {
            let mut g = FakeGuest::new();
            let _ = dispatch(&mut g, HypercallArgs { nr, args: a, cpl });
        }
    }
}
