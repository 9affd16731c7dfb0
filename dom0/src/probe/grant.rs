//! `grant DOMID GREF`: grant mappings and copies of `/dev/microvisor`, end to end and
//! hostile, against a `hello grant-demo` guest.
//!
//! The guest grants domain 0 one page, writable, filled with the pattern byte `i` =
//! `i as u8 ^ 0x5a` ([`pattern_byte`]). The probe, through the foreign window's slot
//! [`GRANT_SLOT`] (the probes own the slots below the builder's, which start in the middle
//! of the window; `bad-foreign` and `release-domain` use 0, 1 and the last):
//!
//! 1. `HostInfo` (a window large enough that [`GRANT_SLOT`] lies below the builder's);
//! 2. `GrantMap` of reference [`BAD_GREF`] (beyond the guest's table) and of reference
//!    [`UNGRANTED_GREF`] (a reserved entry the guest never fills): `ENOENT` each;
//! 3. `GrantMap` GREF of DOMID into the slot, writable; again into the same slot:
//!    `EBUSY`; `ForeignUnmap` of the slot: `EINVAL` (it holds a grant);
//! 4. `mmap` the slot and find the pattern in the whole page;
//! 5. `GrantCopy` of 64 bytes from the grant at offset 0 into the call's buffer: one
//!    segment `GNTST_OKAY`, the bytes are the pattern; `GrantCopy` from offset 4096
//!    (beyond the page): status `GNTST_BAD_COPY_ARG`, no segment okay;
//! 6. write [`DOM0_MAGIC`] at offset 0 through the mapping; the guest then tries to revoke
//!    the grant, which must fail while mapped, and says so at offset 8 ([`ACK_REFUSED`],
//!    waited for up to [`ACK_TIMEOUT`]);
//! 7. `munmap`, `GrantUnmap` of the slot (0), and again (`ENOENT`). The unmap runs also
//!    after a failed step, so the guest can revoke its grant and power off.
//!
//! One `ok:` / `FAIL:` line per step and a summary; passes only if every step did.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use shared_abi::control::{ControlOp, GrantCopyPtr, GrantCopySegment, GrantMapRequest};
use shared_abi::grant_table::{GNTCOPY_SOURCE_GREF, GNTST_BAD_COPY_ARG, GNTST_OKAY};
use zerocopy::{FromBytes, IntoBytes};

use super::foreign::{Tally, Target, open, window_pages};
use crate::device::{Access, Mapping, SLOT_SIZE, Sharing};
use crate::microvisor::{Microvisor, foreign_unmap};
use crate::proto::errno_text;

const ENOENT: i32 = 2;
const EBUSY: i32 = 16;
const EINVAL: i32 = 22;

/// The foreign-window slot the grant probe maps into.
pub const GRANT_SLOT: u64 = 16;
/// A reference far beyond any table (4 frames of 512 entries).
pub const BAD_GREF: u32 = 9999;
/// A reserved reference that `hello grant-demo` never fills.
pub const UNGRANTED_GREF: u32 = 3;
/// What the probe writes at offset 0 of the granted page ("DVMGRANT").
pub const DOM0_MAGIC: u64 = 0x544e_4152_474d_5644;
/// What `hello grant-demo` writes at offset 8 once its revoke was refused ("REFUSED!").
pub const ACK_REFUSED: u64 = 0x2144_4553_5546_4552;
/// ... and once its revoke succeeded although the grant was mapped ("REVOKED!").
pub const ACK_REVOKED: u64 = 0x2144_454b_4f56_4552;
/// How long the probe waits for the guest's acknowledgement.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of the `GrantCopy` read.
const COPY_LEN: usize = 64;

/// Byte `i` of the page `hello grant-demo` grants.
#[must_use]
pub fn pattern_byte(i: usize) -> u8 {
    (i as u8) ^ 0x5a
}

/// The little-endian word at byte `offset` of the pattern.
#[must_use]
pub fn pattern_u64(offset: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, v) in b.iter_mut().enumerate() {
        *v = pattern_byte(offset + k);
    }
    u64::from_le_bytes(b)
}

/// `GrantMap`: maps reference `gref` of `domid` into `slot` (read-only if `readonly`).
///
/// # Errors
/// The errno of the failed call.
pub fn grant_map(
    mv: &dyn Microvisor,
    slot: u64,
    domid: u32,
    gref: u32,
    readonly: bool,
) -> Result<u64, i32> {
    let req = GrantMapRequest {
        domid,
        gref,
        flags: if readonly {
            shared_abi::control::GRANT_MAP_READONLY
        } else {
            0
        },
        reserved: 0,
    };
    let mut buf = [0u8; size_of::<GrantMapRequest>()];
    buf.copy_from_slice(req.as_bytes());
    mv.control(ControlOp::GrantMap as u64, slot, &mut buf)
}

/// `GrantUnmap` of `slot`.
///
/// # Errors
/// The errno of the failed call.
pub fn grant_unmap(mv: &dyn Microvisor, slot: u64) -> Result<u64, i32> {
    mv.control(ControlOp::GrantUnmap as u64, slot, &mut [])
}

/// The buffer of a one-segment `GrantCopy` of `len` bytes from `gref` of `domid` at
/// `offset` into the buffer right after the segment.
#[must_use]
pub fn copy_from_grant_request(domid: u16, gref: u32, offset: u16, len: u16) -> Vec<u8> {
    let seg = GrantCopySegment {
        source: GrantCopyPtr {
            u: gref,
            domid,
            offset,
        },
        dest: GrantCopyPtr {
            u: size_of::<GrantCopySegment>() as u32,
            domid: 0,
            offset: 0,
        },
        len,
        flags: GNTCOPY_SOURCE_GREF,
        status: 0,
        pad: 0,
    };
    let mut buf = seg.as_bytes().to_vec();
    buf.resize(size_of::<GrantCopySegment>() + usize::from(len), 0);
    buf
}

/// `GrantCopy` of one segment (see [`copy_from_grant_request`]): the call's result, the
/// segment's status and the data after it.
///
/// # Errors
/// The errno of the failed call.
pub fn copy_from_grant(
    mv: &dyn Microvisor,
    domid: u16,
    gref: u32,
    offset: u16,
    len: u16,
) -> Result<(u64, i16, Vec<u8>), i32> {
    let mut buf = copy_from_grant_request(domid, gref, offset, len);
    let n = mv.control(ControlOp::GrantCopy as u64, 1, &mut buf)?;
    let (seg, data) = buf.split_at(size_of::<GrantCopySegment>());
    let status = GrantCopySegment::read_from_bytes(seg).map_or(i16::MIN, |s| s.status);
    Ok((n, status, data.to_vec()))
}

/// `grant DOMID GREF` on the device node at `device`. Returns whether every check passed.
///
/// # Errors
/// Writing the report failed.
pub fn grant(device: &Path, domid: u32, gref: u32, out: &mut dyn Write) -> io::Result<bool> {
    let mut t = Tally::new(out);
    if let Some(dev) = open(device, &mut t)? {
        grant_checks(&dev, domid, gref, ACK_TIMEOUT, &mut t)?;
    }
    t.finish("grant")
}

/// `grant` on any [`Target`], for host tests. Returns whether every check passed.
///
/// # Errors
/// Writing the report failed.
pub fn grant_on(
    target: &dyn Target,
    domid: u32,
    gref: u32,
    ack_timeout: Duration,
    out: &mut dyn Write,
) -> io::Result<bool> {
    let mut t = Tally::new(out);
    grant_checks(target, domid, gref, ack_timeout, &mut t)?;
    t.finish("grant")
}

fn grant_checks(
    target: &dyn Target,
    domid: u32,
    gref: u32,
    ack_timeout: Duration,
    t: &mut Tally<'_>,
) -> io::Result<()> {
    let mv = target.mv();
    let slot = GRANT_SLOT;
    // The builder's slots start at half the window: stay below them.
    if window_pages(mv, 2 * (slot + 1), t)?.is_none() {
        return Ok(());
    }
    let Ok(domid16) = u16::try_from(domid) else {
        return t.fail(format_args!("domain {domid} is beyond 16 bits"));
    };
    t.expect(
        format!("GrantMap ref {BAD_GREF} of domain {domid} (beyond its table)"),
        grant_map(mv, slot, domid, BAD_GREF, false),
        Err(ENOENT),
    )?;
    t.expect(
        format!("GrantMap ref {UNGRANTED_GREF} of domain {domid} (not granted)"),
        grant_map(mv, slot, domid, UNGRANTED_GREF, false),
        Err(ENOENT),
    )?;
    let mapped = t.expect(
        format!("GrantMap ref {gref} of domain {domid} into slot {slot} (writable)"),
        grant_map(mv, slot, domid, gref, false),
        Ok(0),
    )?;
    if !mapped {
        return Ok(());
    }
    let mut mapping = None;
    mapped_steps(target, domid, domid16, gref, ack_timeout, t, &mut mapping)?;
    // Undo, also after a failed step.
    if let Some(m) = mapping {
        match m.unmap() {
            Ok(()) => t.pass(format_args!("munmap slot {slot}"))?,
            Err(errno) => t.fail(format_args!("munmap slot {slot}: {}", errno_text(errno)))?,
        }
    }
    if t.expect(
        format!("GrantUnmap slot {slot}"),
        grant_unmap(mv, slot),
        Ok(0),
    )? {
        t.expect(
            format!("GrantUnmap slot {slot} again (now empty)"),
            grant_unmap(mv, slot),
            Err(ENOENT),
        )?;
    }
    Ok(())
}

/// The steps while the grant is mapped into [`GRANT_SLOT`], up to the first failure that
/// stops them; the process mapping, if made, is left in `mapping` for the caller to undo.
fn mapped_steps(
    target: &dyn Target,
    domid: u32,
    domid16: u16,
    gref: u32,
    ack_timeout: Duration,
    t: &mut Tally<'_>,
    mapping: &mut Option<Mapping>,
) -> io::Result<()> {
    let mv = target.mv();
    let slot = GRANT_SLOT;
    t.expect(
        format!("GrantMap ref {gref} into slot {slot} again (in use)"),
        grant_map(mv, slot, domid, gref, false),
        Err(EBUSY),
    )?;
    t.expect(
        format!("ForeignUnmap slot {slot} (holds a grant)"),
        foreign_unmap(mv, slot),
        Err(EINVAL),
    )?;
    let m = match target.map_slots(slot, 1, Access::ReadWrite, Sharing::Shared) {
        Ok(m) => {
            t.pass(format_args!("mmap slot {slot} (read-write, shared)"))?;
            mapping.insert(m)
        }
        Err(errno) => {
            return t.fail(format_args!(
                "mmap slot {slot} (read-write, shared): {}",
                errno_text(errno)
            ));
        }
    };
    let words = SLOT_SIZE / 8;
    let bad = (0..words).find(|&w| m.read_u64(w * 8) != Some(pattern_u64(w * 8)));
    match bad {
        None => t.pass(format_args!(
            "the mapped page holds the guest's pattern (byte i = i ^ 0x5a)"
        ))?,
        Some(w) => {
            return t.fail(format_args!(
                "the mapped page differs from the pattern at byte {}: {:?}, expected {:#018x}",
                w * 8,
                m.read_u64(w * 8).map(|v| format!("{v:#018x}")),
                pattern_u64(w * 8)
            ));
        }
    }
    match copy_from_grant(mv, domid16, gref, 0, COPY_LEN as u16) {
        Ok((1, GNTST_OKAY, data)) if data.iter().enumerate().all(|(i, &b)| b == pattern_byte(i)) => {
            t.pass(format_args!(
                "GrantCopy of {COPY_LEN} bytes from ref {gref}: okay, the pattern"
            ))?;
        }
        Ok((n, status, data)) => t.fail(format_args!(
            "GrantCopy of {COPY_LEN} bytes from ref {gref}: result {n}, status {status}, data {:02x?}..., expected 1, {GNTST_OKAY} and the pattern",
            &data[..data.len().min(8)]
        ))?,
        Err(errno) => t.fail(format_args!(
            "GrantCopy of {COPY_LEN} bytes from ref {gref}: {}",
            errno_text(errno)
        ))?,
    }
    match copy_from_grant(mv, domid16, gref, SLOT_SIZE as u16, 1) {
        Ok((0, GNTST_BAD_COPY_ARG, _)) => t.pass(format_args!(
            "GrantCopy from offset {SLOT_SIZE} of ref {gref} (beyond the page): bad_copy_arg"
        ))?,
        Ok((n, status, _)) => t.fail(format_args!(
            "GrantCopy from offset {SLOT_SIZE} of ref {gref}: result {n}, status {status}, expected 0 and {GNTST_BAD_COPY_ARG} (bad_copy_arg)"
        ))?,
        Err(errno) => t.fail(format_args!(
            "GrantCopy from offset {SLOT_SIZE} of ref {gref}: {}, expected status bad_copy_arg",
            errno_text(errno)
        ))?,
    }
    if m.write_u64(0, DOM0_MAGIC) && m.read_u64(0) == Some(DOM0_MAGIC) {
        t.pass(format_args!(
            "wrote {DOM0_MAGIC:#x} (\"DVMGRANT\") through the grant mapping"
        ))?;
    } else {
        return t.fail("could not write the magic through the grant mapping");
    }
    let deadline = Instant::now() + ack_timeout;
    loop {
        match m.read_u64(8) {
            Some(ACK_REFUSED) => {
                return t.pass("the guest's revoke of the mapped grant was refused");
            }
            Some(ACK_REVOKED) => {
                return t.fail("the guest revoked the grant while it was mapped");
            }
            _ if Instant::now() >= deadline => {
                return t.fail(format_args!(
                    "no answer from the guest within {:.1} s",
                    ack_timeout.as_secs_f64()
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_the_guest() {
        assert_eq!(pattern_byte(0), 0x5a);
        assert_eq!(pattern_byte(0x5a), 0);
        assert_eq!(pattern_byte(256), 0x5a);
        assert_eq!(pattern_u64(0), 0x5d5c_5f5e_5958_5b5a);
        assert_eq!(DOM0_MAGIC.to_le_bytes(), *b"DVMGRANT");
        assert_eq!(ACK_REFUSED.to_le_bytes(), *b"REFUSED!");
        assert_eq!(ACK_REVOKED.to_le_bytes(), *b"REVOKED!");
    }

    #[test]
    fn copy_request_layout() {
        let buf = copy_from_grant_request(5, 8, 16, 64);
        assert_eq!(buf.len(), 24 + 64);
        let seg = GrantCopySegment::read_from_bytes(&buf[..24]).unwrap();
        assert_eq!(
            (seg.source.u, seg.source.domid, seg.source.offset),
            (8, 5, 16)
        );
        assert_eq!((seg.dest.u, seg.dest.domid, seg.dest.offset), (24, 0, 0));
        assert_eq!((seg.len, seg.flags, seg.status, seg.pad), (64, 1, 0, 0));
    }
}
