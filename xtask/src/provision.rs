//! Detects (and where possible installs) the tools xtask needs before it needs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::build::{BARE_METAL_TARGET, workspace_root};

/// The QEMU binary every run uses.
pub(crate) const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The Debian package that provides [`QEMU_BINARY`].
const QEMU_PACKAGE: &str = "qemu-system-x86";

/// Finds `program` in the directories of `PATH`.
pub(crate) fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether xtask runs as root (`id -u` prints 0).
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The command a non-root user must run to get QEMU.
pub(crate) fn qemu_install_hint() -> String {
    format!("sudo apt-get update && sudo apt-get install -y {QEMU_PACKAGE}")
}

/// Returns the path of `qemu-system-x86_64`, installing it with apt-get first when it is
/// missing and xtask runs as root (as on a fresh CI machine). A non-root user gets an error
/// naming the command to run.
pub(crate) fn ensure_qemu() -> Result<PathBuf> {
    if let Some(path) = find_in_path(QEMU_BINARY) {
        return Ok(path);
    }
    if !running_as_root() {
        bail!(
            "{QEMU_BINARY} is not on PATH and xtask is not running as root, so it cannot \
             install it; run: {}",
            qemu_install_hint()
        );
    }
    eprintln!("xtask: {QEMU_BINARY} not found; installing {QEMU_PACKAGE} with apt-get");
    apt_get(&["update"])?;
    // The package's hard dependencies (seabios, qemu-system-data with pvh.bin) are all a
    // headless run needs; its recommends pull in the GTK front end and friends.
    apt_get(&["install", "-y", "--no-install-recommends", QEMU_PACKAGE])?;
    let path = find_in_path(QEMU_BINARY).with_context(|| {
        format!(
            "apt-get installed {QEMU_PACKAGE} but {QEMU_BINARY} is still not on PATH \
             (PATH={:?})",
            std::env::var_os("PATH").unwrap_or_default()
        )
    })?;
    eprintln!("xtask: installed {}", path.display());
    Ok(path)
}

fn apt_get(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context(
            "could not start apt-get; install QEMU by hand: apt-get install -y qemu-system-x86",
        )?;
    if !status.success() {
        bail!(
            "`apt-get {}` failed ({status}); install {QEMU_PACKAGE} by hand and rerun",
            args.join(" ")
        );
    }
    Ok(())
}

/// Makes sure rustup has the bare-metal target for the pinned toolchain.
/// rust-toolchain.toml lists it, so this normally finds it installed already.
pub(crate) fn ensure_target() -> Result<()> {
    let Some(rustup) = find_in_path("rustup") else {
        eprintln!(
            "xtask: warning: rustup not found on PATH; assuming the toolchain already has \
             {BARE_METAL_TARGET}"
        );
        return Ok(());
    };
    let out = Command::new(&rustup)
        .args(["target", "list", "--installed"])
        .current_dir(workspace_root())
        .output()
        .context("could not run `rustup target list --installed`")?;
    if !out.status.success() {
        bail!(
            "`rustup target list --installed` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == BARE_METAL_TARGET)
    {
        return Ok(());
    }
    eprintln!("xtask: adding the {BARE_METAL_TARGET} target with rustup");
    let status = Command::new(&rustup)
        .args(["target", "add", BARE_METAL_TARGET])
        .current_dir(workspace_root())
        .status()
        .context("could not run `rustup target add`")?;
    if !status.success() {
        bail!(
            "`rustup target add {BARE_METAL_TARGET}` failed ({status}); run it by hand and rerun"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_but_not_nonsense() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-program-xtask-test").is_none());
    }

    #[test]
    fn hint_is_the_documented_command() {
        assert_eq!(
            qemu_install_hint(),
            "sudo apt-get update && sudo apt-get install -y qemu-system-x86"
        );
    }
}
