//! Getting the ELF `vmlinux` out of a Linux bzImage (x86 boot protocol 2.08 and later).
//!
//! The bzImage starts with the real-mode setup code; its setup header (at 0x1f1) says how
//! many 512-byte setup sectors follow the boot sector (`setup_sects`). The protected-mode
//! code starts at `(setup_sects + 1) * 512`, and inside it `payload_offset` /
//! `payload_length` (0x248 / 0x24c, protocol 2.08+) locate the compressed kernel, which
//! ends with the uncompressed size as a little-endian `u32` (the kernel's `size_append`).
//! Debian compresses it with XZ (with the x86 BCJ filter), which `xz -dc` undoes.
//! Reference: Documentation/arch/x86/boot.rst in the Linux tree.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

/// Offset of `setup_sects` (u8).
const SETUP_SECTS: usize = 0x1f1;
/// Offset of the `HdrS` magic.
const HEADER_MAGIC_OFFSET: usize = 0x202;
/// Offset of the boot protocol version (u16).
const VERSION: usize = 0x206;
/// Offset of `kernel_version` (u16): the version string is at this value + 0x200.
const KERNEL_VERSION: usize = 0x20e;
/// Offset of `payload_offset` (u32), relative to the protected-mode code.
const PAYLOAD_OFFSET: usize = 0x248;
/// Offset of `payload_length` (u32).
const PAYLOAD_LENGTH: usize = 0x24c;
/// The oldest protocol with `payload_offset`/`payload_length`.
const MIN_VERSION: u16 = 0x0208;
/// `setup_sects == 0` means 4 (boot.rst).
const DEFAULT_SETUP_SECTS: u8 = 4;
/// XZ stream magic.
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];

/// The facts xtask needs from a bzImage's setup header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SetupHeader {
    /// Boot protocol version (e.g. 0x020f for 2.15).
    pub(crate) version: u16,
    /// Setup sectors after the boot sector.
    pub(crate) setup_sects: u8,
    /// Offset of the protected-mode code in the file.
    pub(crate) pm_offset: usize,
    /// Offset of the compressed payload in the file.
    pub(crate) payload_start: usize,
    /// Length of the compressed payload (including the 4-byte size trailer).
    pub(crate) payload_len: usize,
    /// The kernel version string (`6.1.0-50-amd64 (debian-kernel@...) #1 SMP ...`).
    pub(crate) kernel_version: Option<String>,
}

fn u16_at(bytes: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(off..off + 2)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(off..off + 4)?.try_into().ok()?,
    ))
}

impl SetupHeader {
    /// Parses and checks the setup header of `image`.
    pub(crate) fn parse(image: &[u8]) -> Result<Self> {
        ensure!(
            image.get(HEADER_MAGIC_OFFSET..HEADER_MAGIC_OFFSET + 4) == Some(b"HdrS"),
            "not a bzImage: no `HdrS` magic at 0x202"
        );
        let version = u16_at(image, VERSION).context("truncated setup header")?;
        ensure!(
            version >= MIN_VERSION,
            "boot protocol {}.{:02} is older than 2.08 and has no payload fields",
            version >> 8,
            version & 0xff
        );
        let setup_sects = match image[SETUP_SECTS] {
            0 => DEFAULT_SETUP_SECTS,
            n => n,
        };
        let pm_offset = (usize::from(setup_sects) + 1) * 512;
        let payload_offset = u32_at(image, PAYLOAD_OFFSET).context("truncated setup header")?;
        let payload_len = u32_at(image, PAYLOAD_LENGTH).context("truncated setup header")?;
        let payload_start = pm_offset
            .checked_add(payload_offset as usize)
            .context("payload offset overflows")?;
        let payload_end = payload_start
            .checked_add(payload_len as usize)
            .context("payload length overflows")?;
        ensure!(
            payload_end <= image.len(),
            "the payload (0x{payload_start:x}..0x{payload_end:x}) runs past the end of the \
             {}-byte image",
            image.len()
        );
        let kernel_version = u16_at(image, KERNEL_VERSION)
            .filter(|&v| v != 0)
            .and_then(|v| {
                let start = usize::from(v) + 0x200;
                let rest = image.get(start..)?;
                let end = rest.iter().take(256).position(|&b| b == 0)?;
                std::str::from_utf8(&rest[..end]).ok().map(str::to_owned)
            });
        Ok(Self {
            version,
            setup_sects,
            pm_offset,
            payload_start,
            payload_len: payload_len as usize,
            kernel_version,
        })
    }

    /// The release (`uname -r`) from the version string: its first word.
    pub(crate) fn release(&self) -> Option<&str> {
        self.kernel_version.as_deref()?.split_whitespace().next()
    }

    /// The protocol version as `2.15`.
    pub(crate) fn version_string(&self) -> String {
        format!("{}.{:02}", self.version >> 8, self.version & 0xff)
    }
}

/// The compressed kernel inside `image`, split into the XZ stream and the uncompressed size
/// that follows it.
pub(crate) fn xz_payload<'a>(image: &'a [u8], header: &SetupHeader) -> Result<(&'a [u8], u32)> {
    let payload = &image[header.payload_start..header.payload_start + header.payload_len];
    ensure!(
        payload.starts_with(&XZ_MAGIC),
        "the bzImage payload is not XZ-compressed (starts with {:02x?}); only XZ kernels \
         (Debian's) are supported",
        &payload[..payload.len().min(6)]
    );
    ensure!(
        payload.len() > XZ_MAGIC.len() + 4,
        "the XZ payload is truncated"
    );
    let (stream, trailer) = payload.split_at(payload.len() - 4);
    let size = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    Ok((stream, size))
}

/// Decompresses an XZ stream with the `xz` command-line tool.
pub(crate) fn xz_decompress(stream: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("xz")
        .args(["--decompress", "--stdout", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start `xz` (package xz-utils)")?;
    let mut stdin = child.stdin.take().context("xz stdin was not piped")?;
    // Feed stdin from a thread so a full stdout pipe cannot deadlock us.
    let input = stream.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("could not wait for xz")?;
    let fed = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the xz feeder panicked"))?;
    if !out.status.success() {
        bail!(
            "`xz -dc` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    fed.context("could not write the payload to xz")?;
    Ok(out.stdout)
}

/// Extracts and checks the vmlinux ELF of a bzImage: decompresses the payload, checks its
/// length against the size trailer and that it is a PVH-bootable ELF (Xen ELF note 18,
/// `XEN_ELFNOTE_PHYS32_ENTRY`). Returns the ELF and its PVH entry point.
pub(crate) fn extract_vmlinux(image: &[u8]) -> Result<(Vec<u8>, u32)> {
    let header = SetupHeader::parse(image)?;
    let (stream, size) = xz_payload(image, &header)?;
    let elf = xz_decompress(stream)?;
    ensure!(
        elf.len() == size as usize,
        "the decompressed kernel is {} bytes, but the bzImage says {size}",
        elf.len()
    );
    let entry = check_pvh_elf(&elf)?;
    Ok((elf, entry))
}

/// Checks that `elf` is a PVH kernel, as the microvisor's loader does; returns its entry.
pub(crate) fn check_pvh_elf(elf: &[u8]) -> Result<u32> {
    let image = microvisor::elf::PvhImage::parse(elf)
        .map_err(|e| anyhow::anyhow!("the vmlinux is not a PVH-bootable kernel: {e}"))?;
    Ok(image.entry)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fake bzImage: boot sector + `setup_sects` sectors of setup, then protected-mode
    /// code holding `payload` at `payload_offset`.
    pub(crate) fn synthetic_bzimage(
        setup_sects: u8,
        payload_offset: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        let sects = if setup_sects == 0 { 4 } else { setup_sects };
        let pm = (usize::from(sects) + 1) * 512;
        let mut img = vec![0u8; pm + payload_offset as usize + payload.len() + 100];
        img[SETUP_SECTS] = setup_sects;
        img[HEADER_MAGIC_OFFSET..HEADER_MAGIC_OFFSET + 4].copy_from_slice(b"HdrS");
        img[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        // Version string at 0x300 (kernel_version = 0x100).
        img[KERNEL_VERSION..KERNEL_VERSION + 2].copy_from_slice(&0x100u16.to_le_bytes());
        let version = b"6.1.0-50-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        img[0x300..0x300 + version.len()].copy_from_slice(version);
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&payload_offset.to_le_bytes());
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let start = pm + payload_offset as usize;
        img[start..start + payload.len()].copy_from_slice(payload);
        img
    }

    fn fake_payload() -> Vec<u8> {
        let mut p = XZ_MAGIC.to_vec();
        p.extend_from_slice(b"compressed bytes");
        p.extend_from_slice(&1234u32.to_le_bytes());
        p
    }

    #[test]
    fn parses_the_setup_header() {
        let img = synthetic_bzimage(39, 0x2cc, &fake_payload());
        let h = SetupHeader::parse(&img).unwrap();
        assert_eq!(h.version, 0x020f);
        assert_eq!(h.version_string(), "2.15");
        assert_eq!(h.setup_sects, 39);
        assert_eq!(h.pm_offset, 40 * 512);
        assert_eq!(h.payload_start, 40 * 512 + 0x2cc);
        assert_eq!(h.payload_len, fake_payload().len());
        assert_eq!(h.release(), Some("6.1.0-50-amd64"));
        let (stream, size) = xz_payload(&img, &h).unwrap();
        assert_eq!(size, 1234);
        assert_eq!(stream, &fake_payload()[..fake_payload().len() - 4]);
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let img = synthetic_bzimage(0, 0x10, &fake_payload());
        let h = SetupHeader::parse(&img).unwrap();
        assert_eq!(h.setup_sects, 4);
        assert_eq!(h.payload_start, 5 * 512 + 0x10);
    }

    #[test]
    fn rejects_bad_images() {
        let good = synthetic_bzimage(39, 0x2cc, &fake_payload());

        let mut bad = good.clone();
        bad[HEADER_MAGIC_OFFSET] = b'X';
        let e = SetupHeader::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("HdrS"), "{e}");

        let mut old = good.clone();
        old[VERSION..VERSION + 2].copy_from_slice(&0x0206u16.to_le_bytes());
        let e = SetupHeader::parse(&old).unwrap_err().to_string();
        assert!(e.contains("2.06"), "{e}");

        let mut long = good.clone();
        long[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = SetupHeader::parse(&long).unwrap_err().to_string();
        assert!(e.contains("past the end"), "{e}");

        let gz = synthetic_bzimage(39, 0x2cc, &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        let h = SetupHeader::parse(&gz).unwrap();
        let e = xz_payload(&gz, &h).unwrap_err().to_string();
        assert!(e.contains("not XZ-compressed"), "{e}");

        assert!(SetupHeader::parse(&good[..0x100]).is_err());
    }

    #[test]
    fn extracts_a_real_xz_payload_when_xz_is_installed() {
        if crate::provision::find_in_path("xz").is_none() {
            return;
        }
        // Compress a fake "kernel" with the host xz, wrap it like the kernel build does,
        // and check the size trailer and the PVH check.
        let kernel = b"not an ELF at all, but compressible compressible compressible".to_vec();
        let mut child = Command::new("xz")
            .args(["--format=xz", "--check=crc32", "--stdout"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&kernel).unwrap();
        let mut payload = child.wait_with_output().unwrap().stdout;
        payload.extend_from_slice(&(kernel.len() as u32).to_le_bytes());
        let img = synthetic_bzimage(30, 0x200, &payload);
        let h = SetupHeader::parse(&img).unwrap();
        let (stream, size) = xz_payload(&img, &h).unwrap();
        assert_eq!(xz_decompress(stream).unwrap(), kernel);
        assert_eq!(size as usize, kernel.len());
        let e = extract_vmlinux(&img).unwrap_err().to_string();
        assert!(e.contains("not a PVH-bootable kernel"), "{e}");
    }
}
