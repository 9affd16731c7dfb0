//! dom0d's grant operations (control operations 18..20): mapping a DomU's granted page
//! into a foreign-window slot, and copying between granted pages and dom0d's memory.
//!
//! [`copy_from`] and [`copy_to`] move bytes between a list of [`GrantPiece`]s (each within
//! one granted page) and a local buffer, splitting the work into as many `GrantCopy` calls
//! as the 4 KiB call buffer needs (each call carries its 24-byte segments and then the
//! data). Any segment that does not come back `GNTST_OKAY` fails the whole copy, naming the
//! reference and the status: for a back-end that means the front-end handed it a grant it
//! may not use.
#![forbid(unsafe_code)]

use shared_abi::control::{
    ControlOp, GRANT_MAP_READONLY, GrantCopyPtr, GrantCopySegment, GrantMapRequest, MAX_BUFFER,
};
use shared_abi::grant_table::{GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTST_OKAY};
use zerocopy::{FromBytes, IntoBytes};

use crate::microvisor::Microvisor;

/// `GrantMap`: maps `gref` of DomU `domid` into foreign-window `slot` (read-only if
/// `readonly`). Errnos as the ABI documents them (`ESRCH`, `EBUSY`, `ENOENT`, `EPERM`,
/// `ERANGE`, `EAGAIN`, `ENOSPC`, `EINVAL`).
///
/// # Errors
/// The errno of the failed call.
pub fn grant_map(
    mv: &dyn Microvisor,
    slot: u64,
    domid: u32,
    gref: u32,
    readonly: bool,
) -> Result<(), i32> {
    let req = GrantMapRequest {
        domid,
        gref,
        flags: if readonly { GRANT_MAP_READONLY } else { 0 },
        reserved: 0,
    };
    let mut buf = [0u8; size_of::<GrantMapRequest>()];
    buf.copy_from_slice(req.as_bytes());
    mv.control(ControlOp::GrantMap as u64, slot, &mut buf)
        .map(|_| ())
}

/// `GrantUnmap`: empties grant slot `slot` and releases the entry. `ENOENT` (empty slot),
/// `EINVAL` (a foreign mapping, or outside the window).
///
/// # Errors
/// The errno of the failed call.
pub fn grant_unmap(mv: &dyn Microvisor, slot: u64) -> Result<(), i32> {
    mv.control(ControlOp::GrantUnmap as u64, slot, &mut [])
        .map(|_| ())
}

/// `len` bytes at byte `offset` of the page DomU `domid` granted as `gref`
/// (`offset + len <= 4096`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantPiece {
    /// The granting DomU.
    pub domid: u16,
    /// The reference.
    pub gref: u32,
    /// Byte offset in the page.
    pub offset: u16,
    /// Bytes.
    pub len: u16,
}

/// Why a copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// The `GrantCopy` call itself failed.
    #[error("GrantCopy failed with errno {0}")]
    Call(i32),
    /// A segment came back with a `GNTST_*` status other than okay.
    #[error("grant {gref} of domain {domid}: copy status {status}")]
    Segment {
        /// The granter.
        domid: u16,
        /// The reference.
        gref: u32,
        /// The status.
        status: i16,
    },
    /// The pieces do not add up to the local buffer's length, or one crosses its page.
    #[error("copy pieces do not match the buffer")]
    Shape,
}

const SEG: usize = size_of::<GrantCopySegment>();

/// Direction of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    FromGrants,
    ToGrants,
}

/// Splits `pieces` into chunks that fit one call each: (piece index, offset in piece,
/// length).
fn plan(pieces: &[GrantPiece]) -> Vec<Vec<(usize, usize, usize)>> {
    let mut calls = Vec::new();
    let mut cur: Vec<(usize, usize, usize)> = Vec::new();
    let mut used = 0usize;
    for (i, p) in pieces.iter().enumerate() {
        let mut done = 0usize;
        let len = usize::from(p.len);
        while done < len {
            // Room for one more segment and at least one byte, else start a new call.
            if used + SEG + 1 > MAX_BUFFER {
                calls.push(std::mem::take(&mut cur));
                used = 0;
            }
            let take = (len - done).min(MAX_BUFFER - used - SEG);
            cur.push((i, done, take));
            used += SEG + take;
            done += take;
        }
    }
    if !cur.is_empty() {
        calls.push(cur);
    }
    calls
}

fn run(
    mv: &dyn Microvisor,
    pieces: &[GrantPiece],
    local: &mut [u8],
    dir: Dir,
) -> Result<(), CopyError> {
    let total: usize = pieces.iter().map(|p| usize::from(p.len)).sum();
    if total != local.len()
        || pieces
            .iter()
            .any(|p| usize::from(p.offset) + usize::from(p.len) > 4096)
    {
        return Err(CopyError::Shape);
    }
    // Where each piece starts in `local`.
    let starts: Vec<usize> = pieces
        .iter()
        .scan(0usize, |at, p| {
            let s = *at;
            *at += usize::from(p.len);
            Some(s)
        })
        .collect();
    let mut buf = vec![0u8; MAX_BUFFER];
    for call in plan(pieces) {
        let n = call.len();
        let mut data_at = n * SEG;
        let mut where_: Vec<(usize, usize, usize)> = Vec::with_capacity(n);
        for (k, &(i, off, len)) in call.iter().enumerate() {
            let p = pieces[i];
            let grant = GrantCopyPtr {
                u: p.gref,
                domid: p.domid,
                // Lossless: offset + len <= 4096 checked above.
                offset: p.offset + off as u16,
            };
            let local_ptr = GrantCopyPtr {
                u: data_at as u32,
                domid: 0,
                offset: 0,
            };
            let (source, dest, flags) = match dir {
                Dir::FromGrants => (grant, local_ptr, GNTCOPY_SOURCE_GREF),
                Dir::ToGrants => (local_ptr, grant, GNTCOPY_DEST_GREF),
            };
            let seg = GrantCopySegment {
                source,
                dest,
                len: len as u16,
                flags,
                status: 0,
                pad: 0,
            };
            buf[k * SEG..(k + 1) * SEG].copy_from_slice(seg.as_bytes());
            let l = starts[i] + off;
            if dir == Dir::ToGrants {
                buf[data_at..data_at + len].copy_from_slice(&local[l..l + len]);
            }
            where_.push((data_at, l, len));
            data_at += len;
        }
        mv.control(ControlOp::GrantCopy as u64, n as u64, &mut buf[..data_at])
            .map_err(CopyError::Call)?;
        for (k, &(i, _, _)) in call.iter().enumerate() {
            let seg = GrantCopySegment::read_from_bytes(&buf[k * SEG..(k + 1) * SEG])
                .map_err(|_| CopyError::Shape)?;
            if seg.status != GNTST_OKAY {
                return Err(CopyError::Segment {
                    domid: pieces[i].domid,
                    gref: pieces[i].gref,
                    status: seg.status,
                });
            }
        }
        if dir == Dir::FromGrants {
            for (d, l, len) in where_ {
                local[l..l + len].copy_from_slice(&buf[d..d + len]);
            }
        }
    }
    Ok(())
}

/// Copies the granted `pieces`, in order, into `dst` (whose length is their total).
///
/// # Errors
/// [`CopyError`]; `dst` may be partly written then.
pub fn copy_from(
    mv: &dyn Microvisor,
    pieces: &[GrantPiece],
    dst: &mut [u8],
) -> Result<(), CopyError> {
    run(mv, pieces, dst, Dir::FromGrants)
}

/// Copies `src` (whose length is the pieces' total) into the granted `pieces`, in order.
///
/// # Errors
/// [`CopyError`]; some pieces may be written then.
pub fn copy_to(mv: &dyn Microvisor, pieces: &[GrantPiece], src: &[u8]) -> Result<(), CopyError> {
    let mut local = src.to_vec();
    run(mv, pieces, &mut local, Dir::ToGrants)
}

#[cfg(test)]
mod tests {
    use shared_abi::grant_table::{
        GNTST_BAD_COPY_ARG, GNTST_BAD_GNTREF, GNTST_PERMISSION_DENIED, GTF_PERMIT_ACCESS,
        GTF_READING, GTF_WRITING,
    };

    use super::*;
    use crate::fake::FakeMicrovisor;

    const EINVAL: i32 = 22;
    const ENOENT: i32 = 2;
    const EPERM: i32 = 1;
    const ESRCH: i32 = 3;
    const EBUSY: i32 = 16;
    const ERANGE: i32 = 34;

    /// hello1 (16 MiB) with its table at gfn 100, granting gfn 200+i as ref 8+i.
    fn granted() -> FakeMicrovisor {
        let fake = FakeMicrovisor::new();
        assert!(fake.place_grant_frame(1, 0, 100));
        for i in 0..4u32 {
            assert!(fake.grant_access(1, 8 + i, 200 + u64::from(i), false));
        }
        fake
    }

    #[test]
    fn map_pins_and_unmap_releases_as_the_abi_says() {
        let fake = granted();
        assert!(fake.grant_access(1, 20, 300, true));
        assert_eq!(grant_map(&fake, 5, 1, 8, false), Ok(()));
        assert_eq!(
            fake.grant_flags(1, 8),
            Some(GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING)
        );
        assert!(!fake.end_access(1, 8), "no revoke while mapped");
        assert_eq!(grant_map(&fake, 5, 1, 9, false), Err(EBUSY));
        assert_eq!(grant_map(&fake, 6, 1, 7, false), Err(ENOENT), "not granted");
        assert_eq!(
            grant_map(&fake, 6, 1, 600, false),
            Err(ENOENT),
            "beyond the table"
        );
        assert_eq!(
            grant_map(&fake, 6, 1, 20, false),
            Err(EPERM),
            "read-only grant"
        );
        assert_eq!(grant_map(&fake, 6, 0, 8, false), Err(ESRCH));
        assert_eq!(grant_map(&fake, 6, 9, 8, false), Err(ESRCH));
        assert!(
            fake.grant_access(1, 21, 100, false),
            "the table frame itself"
        );
        assert_eq!(grant_map(&fake, 6, 1, 21, false), Err(ERANGE));
        assert_eq!(grant_map(&fake, 6, 1, 20, true), Ok(()));
        assert_eq!(fake.grant_flags(1, 20), Some(1 | 4 | GTF_READING));
        // The mapping shows the guest's page.
        fake.write_guest(1, 200 * 4096, b"ring");
        let page = fake.map_page(5).unwrap();
        let mut b = [0u8; 4];
        page.read_bytes(0, &mut b).unwrap();
        assert_eq!(&b, b"ring");
        drop(page);
        assert_eq!(crate::microvisor::foreign_unmap(&fake, 5), Err(EINVAL));
        assert_eq!(grant_unmap(&fake, 5), Ok(()));
        assert_eq!(grant_unmap(&fake, 5), Err(ENOENT));
        assert_eq!(grant_unmap(&fake, 6), Ok(()));
        assert_eq!(fake.grant_flags(1, 8), Some(GTF_PERMIT_ACCESS));
        assert!(fake.end_access(1, 8));
        assert_eq!(fake.grants_in_use(1), 0);
        crate::microvisor::foreign_map(&fake, 7, 1, 3).unwrap();
        assert_eq!(grant_unmap(&fake, 7), Err(EINVAL));
    }

    #[test]
    fn copies_split_into_calls_and_round_trip() {
        let fake = granted();
        let pieces: Vec<GrantPiece> = (0..4u32)
            .map(|i| GrantPiece {
                domid: 1,
                gref: 8 + i,
                offset: if i == 1 { 512 } else { 0 },
                len: if i == 1 { 3584 } else { 4096 },
            })
            .collect();
        let data: Vec<u8> = (0..4096 * 3 + 3584).map(|i| (i % 251) as u8).collect();
        let calls_before = fake.calls();
        copy_to(&fake, &pieces, &data).unwrap();
        assert!(fake.calls() - calls_before >= 4, "a page per call at most");
        assert_eq!(
            fake.read_guest(1, 201 * 4096 + 512, 3584).unwrap(),
            &data[4096..7680]
        );
        let mut back = vec![0u8; data.len()];
        copy_from(&fake, &pieces, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(fake.grants_in_use(1), 0, "pins last only for the segment");
        assert_eq!(fake.grant_flags(1, 9), Some(GTF_PERMIT_ACCESS));
    }

    #[test]
    fn bad_grants_fail_the_copy_with_their_status() {
        let fake = granted();
        assert!(fake.grant_access(1, 20, 300, true));
        let p = |gref, len| GrantPiece {
            domid: 1,
            gref,
            offset: 0,
            len,
        };
        let mut buf = vec![0u8; 512];
        assert_eq!(
            copy_from(&fake, &[p(7, 512)], &mut buf),
            Err(CopyError::Segment {
                domid: 1,
                gref: 7,
                status: GNTST_BAD_GNTREF
            })
        );
        copy_from(&fake, &[p(20, 512)], &mut buf).unwrap();
        assert_eq!(
            copy_to(&fake, &[p(20, 512)], &buf),
            Err(CopyError::Segment {
                domid: 1,
                gref: 20,
                status: GNTST_PERMISSION_DENIED
            })
        );
        assert_eq!(copy_to(&fake, &[p(8, 100)], &buf), Err(CopyError::Shape));
        let off = GrantPiece {
            offset: 4000,
            ..p(8, 512)
        };
        assert_eq!(copy_to(&fake, &[off], &buf), Err(CopyError::Shape));
        // A raw segment crossing its page is refused by the (fake) microvisor.
        let seg = GrantCopySegment {
            source: GrantCopyPtr {
                u: 8,
                domid: 1,
                offset: 4000,
            },
            dest: GrantCopyPtr {
                u: 24,
                domid: 0,
                offset: 0,
            },
            len: 512,
            flags: GNTCOPY_SOURCE_GREF,
            status: 0,
            pad: 0,
        };
        let mut raw = vec![0u8; 24 + 512];
        raw[..24].copy_from_slice(seg.as_bytes());
        assert_eq!(
            fake.control(ControlOp::GrantCopy as u64, 1, &mut raw),
            Ok(0)
        );
        let out = GrantCopySegment::read_from_bytes(&raw[..24]).unwrap();
        assert_eq!(out.status, GNTST_BAD_COPY_ARG);
        assert_eq!(
            fake.control(ControlOp::GrantCopy as u64, 0, &mut raw),
            Err(EINVAL)
        );
    }
}
