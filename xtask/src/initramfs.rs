//! Dom0's initramfs: an uncompressed newc cpio archive assembled in memory.
//!
//! Contents:
//!
//! | path | from |
//! |---|---|
//! | `/init`, `/etc/profile`, `/etc/passwd`, `/etc/group` | `dom0/initramfs/` (copied as is) |
//! | `/bin/busybox`, `/bin/sh` | Debian's busybox-static (`/init` installs the applet links) |
//! | `/lib/modules/<release>/kernel/...` | the virtio, ext4 and crc32c modules with their dependencies |
//! | `/lib/modules/<release>/modules.dep` | for busybox modprobe |
//! | `/etc/mv/modules` | the modules in load order, for `/init` |
//! | `/lib/modules/<release>/extra/microvisor.ko` | `dom0/kmod`, built by [`crate::kmod`] |
//! | `/usr/bin/dom0`, `/usr/bin/dom0d`, `/usr/bin/dom0-probe` | the static musl builds |
//! | `/usr/lib/dom0/guests/<name>` | example DomU kernels (release builds), used by the configs in `/etc/dom0/examples/` (from `dom0/initramfs/`) |
//! | `/dev/console` | a device node, so PID 1 has a console before devtmpfs is mounted |
//!
//! Exec mode adds a second archive with `/etc/mv/exec` (the command) and `/etc/mv/nonce`;
//! Linux unpacks concatenated archives in order.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use crate::build::workspace_root;
use crate::cpio::CpioWriter;
use crate::debian::{DebianTree, KERNEL_RELEASE};
use crate::kmodules::ModuleIndex;

/// Modules Dom0 loads at boot; their dependencies are added in front of them. Virtio PCI
/// transport, disk and network; ext4 for the data disk; crc32c, which ext4 and jbd2 look
/// up through the crypto API for metadata checksums (no `depends=` names it); `tun` and
/// `bridge` (which pulls in `stp` and `llc`) for the PV network back-end's TAP vifs and
/// their bridge (`dom0::netdev`).
pub(crate) const DOM0_MODULES: [&str; 7] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "crc32c_generic",
    "ext4",
    "tun",
    "bridge",
];

/// The file listing the modules in load order (paths relative to the modules directory).
pub(crate) const MODULE_LIST: &str = "etc/mv/modules";
/// The exec-mode command.
pub(crate) const EXEC_FILE: &str = "etc/mv/exec";
/// The exec-mode nonce.
pub(crate) const NONCE_FILE: &str = "etc/mv/nonce";

/// The directory copied into the root of the initramfs.
pub(crate) fn overlay_dir() -> PathBuf {
    workspace_root().join("dom0/initramfs")
}

/// Everything the initramfs is made of.
#[derive(Clone, Debug)]
pub(crate) struct Inputs {
    /// The unpacked Debian packages.
    pub(crate) tree: DebianTree,
    /// `microvisor.ko`.
    pub(crate) kmod: PathBuf,
    /// `(name, path)` of each static binary for `/usr/bin`.
    pub(crate) binaries: Vec<(&'static str, PathBuf)>,
    /// The `dom0/initramfs/` directory.
    pub(crate) overlay: PathBuf,
    /// `(name, path)` of each example guest kernel for `/usr/lib/dom0/guests`.
    pub(crate) guests: Vec<(&'static str, PathBuf)>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("could not read {}", path.display()))
}

/// Adds the files below `dir` at `prefix` (`""` is the root), directories first, in name
/// order. Executable files get 0755, others 0644.
fn add_tree(w: &mut CpioWriter, dir: &Path, prefix: &str) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("could not read {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        let name = name
            .to_str()
            .with_context(|| format!("non-UTF-8 file name in {}", dir.display()))?;
        let path = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = entry.metadata()?;
        if meta.is_dir() {
            w.dir_all(&path)?;
            add_tree(w, &entry.path(), &path)?;
        } else if meta.is_file() {
            let perm = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            w.file(&path, perm, &read(&entry.path())?)?;
        }
    }
    Ok(())
}

/// The module load order and `modules.dep` for [`DOM0_MODULES`].
pub(crate) fn module_plan(tree: &DebianTree) -> Result<(ModuleIndex, Vec<String>)> {
    let mut index = ModuleIndex::scan(&tree.modules_dir())?;
    let order = index.load_order(&DOM0_MODULES)?;
    Ok((index, order))
}

/// Where the example guest kernels go.
const GUEST_DIR: &str = "usr/lib/dom0/guests";

/// Builds the base archive (everything but the exec files).
pub(crate) fn build(inputs: &Inputs) -> Result<Vec<u8>> {
    let mut w = CpioWriter::new();
    for dir in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var",
        "var/log",
        "data",
        "root",
        "etc",
        "etc/mv",
        "lib",
        "lib/modules",
    ] {
        w.dir(dir, if dir == "tmp" { 0o1777 } else { 0o755 })?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.file("bin/busybox", 0o755, &read(&inputs.tree.busybox())?)?;
    w.symlink("bin/sh", "busybox")?;

    ensure!(
        inputs.overlay.join("init").is_file(),
        "{} is missing",
        inputs.overlay.join("init").display()
    );
    add_tree(&mut w, &inputs.overlay, "")?;

    let moddir = format!("lib/modules/{KERNEL_RELEASE}");
    w.dir(&moddir, 0o755)?;
    let (mut index, order) = module_plan(&inputs.tree)?;
    let mut list = String::new();
    for name in &order {
        let rel = index
            .path(name)
            .with_context(|| format!("module {name} vanished"))?
            .to_owned();
        let rel_str = rel.to_string_lossy().into_owned();
        if let Some((parent, _)) = rel_str.rsplit_once('/') {
            w.dir_all(&format!("{moddir}/{parent}"))?;
        }
        w.file(
            &format!("{moddir}/{rel_str}"),
            0o644,
            &read(&inputs.tree.modules_dir().join(&rel))?,
        )?;
        list.push_str(&rel_str);
        list.push('\n');
    }
    w.file(MODULE_LIST, 0o644, list.as_bytes())?;
    let mut dep = index.modules_dep(&order)?;
    dep.push_str("extra/microvisor.ko:\n");
    w.file(&format!("{moddir}/modules.dep"), 0o644, dep.as_bytes())?;
    w.dir(&format!("{moddir}/extra"), 0o755)?;
    w.file(
        &format!("{moddir}/extra/microvisor.ko"),
        0o644,
        &read(&inputs.kmod)?,
    )?;

    for (name, path) in &inputs.binaries {
        w.file(&format!("usr/bin/{name}"), 0o755, &read(path)?)?;
    }
    w.dir_all(GUEST_DIR)?;
    for (name, path) in &inputs.guests {
        w.file(&format!("{GUEST_DIR}/{name}"), 0o644, &read(path)?)?;
    }
    let archive = w.finish();
    check(&archive, inputs)?;
    Ok(archive)
}

/// Reads the archive back and checks that what `/init` relies on is there.
fn check(archive: &[u8], inputs: &Inputs) -> Result<()> {
    let entries = crate::cpio::read_all(archive).context("the initramfs does not read back")?;
    let mut wanted = vec![
        "init".to_owned(),
        "bin/busybox".to_owned(),
        "dev/console".to_owned(),
        MODULE_LIST.to_owned(),
        format!("lib/modules/{KERNEL_RELEASE}/extra/microvisor.ko"),
    ];
    wanted.extend(inputs.binaries.iter().map(|(n, _)| format!("usr/bin/{n}")));
    wanted.extend(
        inputs
            .guests
            .iter()
            .map(|(n, _)| format!("{GUEST_DIR}/{n}")),
    );
    for path in wanted {
        ensure!(
            entries.iter().any(|e| e.path == path),
            "the initramfs lacks {path}"
        );
    }
    Ok(())
}

/// The second archive of an exec-mode boot: the command and the nonce.
pub(crate) fn exec_archive(command: &str, nonce: &str) -> Result<Vec<u8>> {
    let mut w = CpioWriter::new();
    // The directories exist in the base archive; listing them again is harmless and keeps
    // this archive valid on its own.
    w.dir("etc", 0o755)?;
    w.dir("etc/mv", 0o755)?;
    w.file(EXEC_FILE, 0o644, command.as_bytes())?;
    w.file(NONCE_FILE, 0o644, nonce.as_bytes())?;
    Ok(w.finish())
}

/// `base` followed by the exec archive.
pub(crate) fn with_exec(base: &[u8], command: &str, nonce: &str) -> Result<Vec<u8>> {
    let mut out = base.to_vec();
    out.extend(exec_archive(command, nonce)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::read_all;

    #[test]
    fn exec_archive_appends_the_command_and_nonce() {
        let mut base = CpioWriter::new();
        base.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        let all = with_exec(&base.finish(), "echo 'hi'; false", "abc123").unwrap();
        let entries = read_all(&all).unwrap();
        let get = |p: &str| entries.iter().find(|e| e.path == p).unwrap().data.clone();
        assert_eq!(get("etc/mv/exec"), b"echo 'hi'; false");
        assert_eq!(get("etc/mv/nonce"), b"abc123");
        assert_eq!(get("init"), b"#!/bin/sh\n");
    }

    #[test]
    fn overlay_has_an_executable_init_and_the_shell_files() {
        let dir = overlay_dir();
        let init = dir.join("init");
        let mode = fs::metadata(&init).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "dom0/initramfs/init must be executable");
        let text = fs::read_to_string(&init).unwrap();
        assert!(text.starts_with("#!/bin/busybox sh\n"));
        // The protocol strings xtask parses must match the script.
        assert!(text.contains("@@MV-DOM0-READY $uptime $nonce@@"));
        assert!(text.contains(r"printf '\n@@MV-EXEC-EXIT %d %s@@\n' "));
        assert!(text.contains(EXEC_FILE) && text.contains(NONCE_FILE));
        assert!(text.contains(MODULE_LIST));
        for f in ["etc/profile", "etc/passwd", "etc/group"] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        // The overlay packs without clashing with the fixed entries.
        let mut w = CpioWriter::new();
        for d in ["etc", "etc/mv"] {
            w.dir(d, 0o755).unwrap();
        }
        add_tree(&mut w, &dir, "").unwrap();
        let entries = read_all(&w.finish()).unwrap();
        let init = entries.iter().find(|e| e.path == "init").unwrap();
        assert_eq!(init.mode, 0o100_755);
    }

    #[test]
    fn init_script_parses_with_sh() {
        let Some(sh) = crate::provision::find_in_path("sh") else {
            return;
        };
        let out = std::process::Command::new(sh)
            .arg("-n")
            .arg(overlay_dir().join("init"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}
