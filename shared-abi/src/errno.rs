//! Error numbers returned (negated) in `RAX`, in Xen's numbering (`xen/include/public/errno.h`).

/// A hypercall error. Hypercalls return `-(errno as i64)` in `RAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Errno {
    /// Operation not permitted (e.g. a call from CPL > 0, or a privileged call from a DomU).
    EPERM = 1,
    /// No such file or entry.
    ENOENT = 2,
    /// No such domain (Xen's `ESRCH`).
    ESRCH = 3,
    /// I/O error.
    EIO = 5,
    /// Argument list too long.
    E2BIG = 7,
    /// Bad file number / handle.
    EBADF = 9,
    /// Try again.
    EAGAIN = 11,
    /// Out of memory.
    ENOMEM = 12,
    /// Permission denied.
    EACCES = 13,
    /// Bad address: a pointer argument is not mapped or not owned by the caller.
    EFAULT = 14,
    /// Device or resource busy.
    EBUSY = 16,
    /// Already exists.
    EEXIST = 17,
    /// No such device.
    ENODEV = 19,
    /// Invalid argument.
    EINVAL = 22,
    /// No space left.
    ENOSPC = 28,
    /// Result out of range.
    ERANGE = 34,
    /// Function not implemented: unknown hypercall or sub-operation.
    ENOSYS = 38,
    /// Timer expired (e.g. a single-shot timer set in the past with the "future" flag).
    ETIME = 62,
    /// Operation not supported.
    EOPNOTSUPP = 95,
}

impl Errno {
    const ALL: [Errno; 19] = [
        Errno::EPERM,
        Errno::ENOENT,
        Errno::ESRCH,
        Errno::EIO,
        Errno::E2BIG,
        Errno::EBADF,
        Errno::EAGAIN,
        Errno::ENOMEM,
        Errno::EACCES,
        Errno::EFAULT,
        Errno::EBUSY,
        Errno::EEXIST,
        Errno::ENODEV,
        Errno::EINVAL,
        Errno::ENOSPC,
        Errno::ERANGE,
        Errno::ENOSYS,
        Errno::ETIME,
        Errno::EOPNOTSUPP,
    ];

    /// The value placed in `RAX`: the negated error number.
    pub const fn to_ret(self) -> i64 {
        -(self as i32 as i64)
    }

    /// Decodes a hypercall return value: `Ok(value)` for a non-negative result, `Err` for a
    /// negated errno. A negative value that is not one of ours decodes as [`Errno::EIO`].
    pub fn from_ret(ret: i64) -> Result<u64, Errno> {
        if ret >= 0 {
            return Ok(ret as u64);
        }
        let code = ret.unsigned_abs();
        Err(Self::ALL
            .into_iter()
            .find(|e| *e as i32 as u64 == code)
            .unwrap_or(Errno::EIO))
    }

    /// The conventional name, e.g. `"ENOSYS"`.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::ESRCH => "ESRCH",
            Errno::EIO => "EIO",
            Errno::E2BIG => "E2BIG",
            Errno::EBADF => "EBADF",
            Errno::EAGAIN => "EAGAIN",
            Errno::ENOMEM => "ENOMEM",
            Errno::EACCES => "EACCES",
            Errno::EFAULT => "EFAULT",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::ENODEV => "ENODEV",
            Errno::EINVAL => "EINVAL",
            Errno::ENOSPC => "ENOSPC",
            Errno::ERANGE => "ERANGE",
            Errno::ENOSYS => "ENOSYS",
            Errno::ETIME => "ETIME",
            Errno::EOPNOTSUPP => "EOPNOTSUPP",
        }
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_errno() {
        for e in Errno::ALL {
            assert_eq!(Errno::from_ret(e.to_ret()), Err(e));
        }
        assert_eq!(Errno::ENOSYS.to_ret(), -38);
        assert_eq!(Errno::from_ret(0), Ok(0));
        assert_eq!(Errno::from_ret(-9999), Err(Errno::EIO));
    }
}
