//! A writer for the `newc` cpio format (the "new ASCII" format, magic `070701`), the one
//! format Linux unpacks into its initramfs (`init/initramfs.c`).
//!
//! Each entry is a 110-byte ASCII header (the magic and thirteen 8-digit hex fields), the
//! NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes. The archive ends
//! with an entry named `TRAILER!!!`. Linux accepts several archives concatenated, so an
//! extra archive appended later adds or replaces files.
//!
//! Owners are root, timestamps 0, so the same inputs give the same bytes.

use std::collections::BTreeSet;

use anyhow::{Result, bail};

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";
/// Length of a header.
const HEADER_LEN: usize = 110;
/// The largest size a header field can carry.
const MAX_FIELD: u64 = u32::MAX as u64;

/// Builds one archive in memory.
#[derive(Debug, Default)]
pub(crate) struct CpioWriter {
    out: Vec<u8>,
    next_ino: u32,
    /// Every path written, to refuse duplicates and to check that parents exist.
    paths: BTreeSet<String>,
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Checks an archive path: relative, no `.`/`..`/empty components, no NUL.
fn check_path(path: &str) -> Result<()> {
    if path.is_empty() || path.starts_with('/') || path.ends_with('/') {
        bail!("cpio path `{path}` must be relative, without a leading or trailing slash");
    }
    if path.contains('\0')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("cpio path `{path}` has an empty, `.` or `..` component or a NUL byte");
    }
    Ok(())
}

impl CpioWriter {
    /// An empty archive.
    pub(crate) fn new() -> Self {
        Self {
            out: Vec::new(),
            next_ino: 1,
            paths: BTreeSet::new(),
        }
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        if path != TRAILER {
            check_path(path)?;
            if let Some((parent, _)) = path.rsplit_once('/')
                && !self.paths.contains(parent)
            {
                bail!("cpio entry `{path}`: add its directory `{parent}` first");
            }
            if !self.paths.insert(path.to_owned()) {
                bail!("cpio entry `{path}` added twice");
            }
        }
        let size = data.len() as u64;
        if size > MAX_FIELD {
            bail!("cpio entry `{path}` is larger than 4 GiB");
        }
        let ino = if path == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let fields: [u64; 13] = [
            u64::from(ino),
            u64::from(mode),
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            u64::from(rdev.0),
            u64::from(rdev.1),
            path.len() as u64 + 1, // namesize, with the NUL
            0,                     // check (only for the 070702 format)
        ];
        let start = self.out.len();
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        debug_assert_eq!(self.out.len() - start, HEADER_LEN);
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        pad4(&mut self.out);
        self.out.extend_from_slice(data);
        pad4(&mut self.out);
        Ok(())
    }

    /// Adds a directory; its parent must exist already.
    pub(crate) fn dir(&mut self, path: &str, perm: u32) -> Result<()> {
        self.entry(path, S_IFDIR | (perm & 0o7777), (0, 0), &[])
    }

    /// Adds a directory and any missing parents (all with mode 0755).
    pub(crate) fn dir_all(&mut self, path: &str) -> Result<()> {
        check_path(path)?;
        let mut prefix = String::new();
        for component in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            if !self.paths.contains(&prefix) {
                self.dir(&prefix.clone(), 0o755)?;
            }
        }
        Ok(())
    }

    /// Adds a regular file with permission bits `perm` (e.g. 0o755).
    pub(crate) fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.entry(path, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    /// Adds a symbolic link to `target`.
    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        if target.is_empty() || target.contains('\0') {
            bail!("symlink `{path}` needs a non-empty target without NUL");
        }
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// Adds a character device node (e.g. `dev/console`, 5:1).
    pub(crate) fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.entry(path, S_IFCHR | (perm & 0o7777), (major, minor), &[])
    }

    /// Whether `path` was added.
    #[cfg(test)]
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.paths.contains(path)
    }

    /// Ends the archive with the trailer and returns its bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        // The trailer name is fixed and the size is 0, so this cannot fail.
        let _ = self.entry(TRAILER, 0, (0, 0), &[]);
        self.out
    }
}

/// One entry read back from an archive (for tests and checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CpioEntry {
    /// Path inside the archive.
    pub(crate) path: String,
    /// `st_mode` (type and permission bits).
    pub(crate) mode: u32,
    /// Device numbers of a device node.
    pub(crate) rdev: (u32, u32),
    /// Contents (the target of a symlink).
    pub(crate) data: Vec<u8>,
}

/// Reads every entry of one or more concatenated newc archives (zero padding between
/// archives is skipped, as Linux does).
pub(crate) fn read_all(mut bytes: &[u8]) -> Result<Vec<CpioEntry>> {
    let mut entries = Vec::new();
    let mut consumed = 0usize;
    loop {
        // Skip padding between archives.
        while let [0, rest @ ..] = bytes {
            bytes = rest;
            consumed += 1;
        }
        if bytes.is_empty() {
            return Ok(entries);
        }
        if bytes.len() < HEADER_LEN || &bytes[..6] != b"070701" {
            bail!("no newc header at offset {consumed}");
        }
        let field = |i: usize| -> Result<u32> {
            let text = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i])?;
            Ok(u32::from_str_radix(text, 16)?)
        };
        let mode = field(1)?;
        let size = field(6)? as usize;
        let rdev = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        let name_end = HEADER_LEN + namesize;
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start + size;
        if namesize == 0 || bytes.len() < data_end {
            bail!("truncated entry at offset {consumed}");
        }
        let name = std::str::from_utf8(&bytes[HEADER_LEN..name_end - 1])?.to_owned();
        let next = data_end.next_multiple_of(4).min(bytes.len());
        let data = bytes[data_start..data_end].to_vec();
        bytes = &bytes[next..];
        consumed += next;
        if name != TRAILER {
            entries.push(CpioEntry {
                path: name,
                mode,
                rdev,
                data,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new();
        w.dir("bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, b"\x7fELF...").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.dir_all("dev").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        w.finish()
    }

    #[test]
    fn header_layout_matches_the_newc_format() {
        let bytes = sample();
        // First entry: "bin", a directory with ino 1.
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(&bytes[6..14], b"00000001"); // ino
        assert_eq!(&bytes[14..22], b"000041ed"); // mode 040755
        assert_eq!(&bytes[38..46], b"00000002"); // nlink
        assert_eq!(&bytes[54..62], b"00000000"); // filesize
        assert_eq!(&bytes[94..102], b"00000004"); // namesize "bin\0"
        assert_eq!(&bytes[110..114], b"bin\0");
        // Header and name are padded to a multiple of 4: the next header is at 116.
        assert_eq!(&bytes[114..116], b"\0\0");
        assert_eq!(&bytes[116..122], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        // The archive ends with the trailer.
        let tail = String::from_utf8_lossy(&bytes[bytes.len() - 16..]).into_owned();
        assert!(tail.contains("TRAILER!!!"), "{tail:?}");
    }

    #[test]
    fn round_trips_through_the_reader() {
        let entries = read_all(&sample()).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "init"]
        );
        assert_eq!(entries[1].mode, 0o100_755);
        assert_eq!(entries[1].data, b"\x7fELF...");
        assert_eq!(entries[2].mode, 0o120_777);
        assert_eq!(entries[2].data, b"busybox");
        assert_eq!(entries[4].mode, 0o020_600);
        assert_eq!(entries[4].rdev, (5, 1));
        assert_eq!(entries[5].data, b"#!/bin/sh\n");
    }

    #[test]
    fn data_of_every_length_is_padded() {
        for len in 0..9 {
            let mut w = CpioWriter::new();
            let data = vec![b'x'; len];
            w.file("a", 0o644, &data).unwrap();
            w.file("bb", 0o644, &data).unwrap();
            let bytes = w.finish();
            assert_eq!(bytes.len() % 4, 0);
            let e = read_all(&bytes).unwrap();
            assert_eq!(e.len(), 2);
            assert_eq!(e[0].data, data);
            assert_eq!(e[1].data, data);
        }
    }

    #[test]
    fn concatenated_archives_read_as_one() {
        let mut second = CpioWriter::new();
        second.dir("etc", 0o755).unwrap();
        second.file("etc/x", 0o600, b"1").unwrap();
        let mut both = sample();
        both.extend_from_slice(&[0; 512]);
        both.extend(second.finish());
        let entries = read_all(&both).unwrap();
        assert_eq!(entries.len(), 8);
        assert_eq!(entries[7].path, "etc/x");
    }

    #[test]
    fn bad_paths_duplicates_and_orphans_are_refused() {
        let mut w = CpioWriter::new();
        for bad in ["", "/abs", "a/", "a//b", "a/../b", "./a", "a\0b"] {
            assert!(w.file(bad, 0o644, b"").is_err(), "{bad:?} accepted");
        }
        let err = w.file("no/parent", 0o644, b"").unwrap_err().to_string();
        assert!(err.contains("add its directory `no`"), "{err}");
        w.file("a", 0o644, b"").unwrap();
        assert!(w.file("a", 0o644, b"").is_err());
        assert!(w.symlink("l", "").is_err());
        w.dir_all("x/y/z").unwrap();
        w.dir_all("x/y/w").unwrap();
        assert!(w.contains("x/y") && w.contains("x/y/w"));
    }

    #[test]
    fn matches_the_system_cpio_when_installed() {
        // Cross-check with GNU cpio when the host has it (not required).
        let Some(cpio) = crate::provision::find_in_path("cpio") else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("a.cpio");
        std::fs::write(&archive, sample()).unwrap();
        let out = std::process::Command::new(cpio)
            .args(["-t", "--quiet", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "{out:?}");
        let listing = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = listing.lines().collect();
        assert_eq!(
            names,
            ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "init"]
        );
    }
}
