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

/// A host program (or file) xtask needs, with the Debian package that provides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostTool {
    /// `qemu-system-x86_64`, every run.
    Qemu,
    /// `gcc-12`: Debian 6.1's kernel headers build modules with exactly this compiler
    /// (`CC = gcc-12` in the headers' `.kernelvariables`).
    Gcc,
    /// `make`, for the kernel module build.
    Make,
    /// The C library headers (`libc6-dev`); `gcc` links host programs against them.
    LibcDev,
    /// `xz`, to decompress the kernel inside the bzImage.
    Xz,
    /// `mkfs.ext4`, to format Dom0's data disk.
    Mkfs,
    /// `dpkg-deb`, to unpack the Debian packages (part of dpkg, always on Debian).
    DpkgDeb,
    /// `libelf.so.1`: the kernel's `objtool` (from the unpacked, not installed,
    /// linux-kbuild package) links against it and runs on every module object.
    LibElf,
}

impl HostTool {
    /// Everything: QEMU and what Dom0 images need.
    pub(crate) const ALL: [HostTool; 8] = [
        HostTool::Qemu,
        HostTool::Gcc,
        HostTool::Make,
        HostTool::LibcDev,
        HostTool::Xz,
        HostTool::Mkfs,
        HostTool::DpkgDeb,
        HostTool::LibElf,
    ];

    /// What Dom0 images need, on top of QEMU.
    pub(crate) const DOM0: [HostTool; 7] = [
        HostTool::Gcc,
        HostTool::Make,
        HostTool::LibcDev,
        HostTool::Xz,
        HostTool::Mkfs,
        HostTool::DpkgDeb,
        HostTool::LibElf,
    ];

    /// The program looked up on `PATH` (and in the sbin directories), or a file.
    fn probe(self) -> &'static str {
        match self {
            HostTool::Qemu => QEMU_BINARY,
            HostTool::Gcc => "gcc-12",
            HostTool::Make => "make",
            HostTool::LibcDev => "/usr/include/stdio.h",
            HostTool::Xz => "xz",
            HostTool::Mkfs => "mkfs.ext4",
            HostTool::DpkgDeb => "dpkg-deb",
            HostTool::LibElf => "/usr/lib/x86_64-linux-gnu/libelf.so.1",
        }
    }

    /// The Debian package to install.
    pub(crate) fn package(self) -> &'static str {
        match self {
            HostTool::Qemu => QEMU_PACKAGE,
            HostTool::Gcc => "gcc-12",
            HostTool::Make => "make",
            HostTool::LibcDev => "libc6-dev",
            HostTool::Xz => "xz-utils",
            HostTool::Mkfs => "e2fsprogs",
            HostTool::DpkgDeb => "dpkg",
            HostTool::LibElf => "libelf1",
        }
    }

    /// Where the tool is, if it is installed.
    pub(crate) fn find(self) -> Option<PathBuf> {
        let probe = self.probe();
        if probe.starts_with('/') {
            return Path::new(probe).exists().then(|| PathBuf::from(probe));
        }
        find_in_path(probe).or_else(|| {
            // mkfs.ext4 lives in /sbin, which a non-root PATH may lack.
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|dir| Path::new(dir).join(probe))
                .find(|p| is_executable(p))
        })
    }
}

/// Whether `apt-get update` already ran in this xtask invocation.
static APT_UPDATED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);

/// Runs `apt-get update` the first time it is called in this process.
pub(crate) fn apt_update_once() -> Result<()> {
    let mut done = APT_UPDATED
        .lock()
        .map_err(|_| anyhow::anyhow!("the apt-get lock flag is poisoned"))?;
    if !*done {
        eprintln!("xtask: apt-get update");
        apt_get(&["update", "-q"], "update the package lists")?;
        *done = true;
    }
    Ok(())
}

/// Installs the packages of every tool in `tools` that is missing, with one `apt-get
/// install` (after `apt-get update`). Without root, the error names the command to run.
pub(crate) fn ensure_tools(tools: &[HostTool]) -> Result<()> {
    let mut missing: Vec<HostTool> = tools
        .iter()
        .copied()
        .filter(|t| t.find().is_none())
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|t| t.package()).collect();
    packages.sort_unstable();
    packages.dedup();
    let names: Vec<&str> = missing.iter().map(|t| t.probe()).collect();
    if !running_as_root() {
        bail!(
            "missing {} and xtask is not running as root, so it cannot install them; run: \
             sudo apt-get update && sudo apt-get install -y {}",
            names.join(", "),
            packages.join(" ")
        );
    }
    eprintln!(
        "xtask: missing {}; installing {} with apt-get",
        names.join(", "),
        packages.join(" ")
    );
    apt_update_once()?;
    // Hard dependencies are all a headless run needs; recommends pull in GUIs and more.
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&packages);
    apt_get(&args, "install the missing tools")?;
    for tool in missing {
        if tool.find().is_none() {
            bail!(
                "apt-get installed {} but {} is still missing (PATH={:?})",
                tool.package(),
                tool.probe(),
                std::env::var_os("PATH").unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Returns the path of `qemu-system-x86_64`, installing it with apt-get first when it is
/// missing and xtask runs as root (as on a fresh CI machine). A non-root user gets an error
/// naming the command to run.
pub(crate) fn ensure_qemu() -> Result<PathBuf> {
    if let Some(path) = HostTool::Qemu.find() {
        return Ok(path);
    }
    if !running_as_root() {
        bail!(
            "{QEMU_BINARY} is not on PATH and xtask is not running as root, so it cannot \
             install it; run: {}",
            qemu_install_hint()
        );
    }
    ensure_tools(&[HostTool::Qemu])?;
    let path = HostTool::Qemu
        .find()
        .context("qemu-system-x86_64 is still missing after apt-get install")?;
    eprintln!("xtask: installed {}", path.display());
    Ok(path)
}

/// Downloads `.deb` files into `dir` with `apt-get download` (specs are `NAME` or
/// `NAME=VERSION`), after `apt-get update`.
pub(crate) fn apt_download(dir: &Path, specs: &[String]) -> Result<()> {
    apt_update_once()?;
    eprintln!("xtask: apt-get download {}", specs.join(" "));
    let mut cmd = Command::new("apt-get");
    // apt's download sandbox user cannot write into a root-owned target/ directory.
    cmd.args(["download", "-q", "-o", "APT::Sandbox::User=root"])
        .args(specs)
        .current_dir(dir)
        .env("DEBIAN_FRONTEND", "noninteractive")
        // stdout belongs to `run --exec` output; progress goes to stderr.
        .stdout(std::process::Stdio::from(std::io::stderr()));
    let status = run_with_retry(cmd, "download packages")?;
    if !status.success() {
        bail!(
            "`apt-get download {}` failed ({status}); are Debian 12 (bookworm) package \
             sources configured?",
            specs.join(" ")
        );
    }
    Ok(())
}

/// Attempts per apt-get command: a mirror hiccup should not fail a CI run.
const APT_ATTEMPTS: u32 = 2;

/// Runs `cmd` up to [`APT_ATTEMPTS`] times until it succeeds; returns the last status.
fn run_with_retry(mut cmd: Command, what: &str) -> Result<std::process::ExitStatus> {
    let mut attempt = 1;
    loop {
        let status = cmd
            .status()
            .with_context(|| format!("could not start apt-get to {what}"))?;
        if status.success() || attempt == APT_ATTEMPTS {
            return Ok(status);
        }
        eprintln!("xtask: apt-get failed ({status}); retrying in 5 s");
        std::thread::sleep(std::time::Duration::from_secs(5));
        attempt += 1;
    }
}

fn apt_get(args: &[&str], what: &str) -> Result<()> {
    let mut cmd = Command::new("apt-get");
    cmd.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(std::process::Stdio::from(std::io::stderr()));
    let status = run_with_retry(cmd, what)?;
    if !status.success() {
        bail!(
            "`apt-get {}` failed ({status}); run it by hand and rerun",
            args.join(" ")
        );
    }
    Ok(())
}

/// The musl target the Dom0 userspace is built for.
pub(crate) const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Makes sure rustup has the bare-metal target for the pinned toolchain.
pub(crate) fn ensure_target() -> Result<()> {
    ensure_rust_targets(&[BARE_METAL_TARGET])
}

/// Makes sure rustup has `targets` for the pinned toolchain. rust-toolchain.toml lists
/// them, so this normally finds them installed already.
pub(crate) fn ensure_rust_targets(targets: &[&str]) -> Result<()> {
    let Some(rustup) = find_in_path("rustup") else {
        eprintln!(
            "xtask: warning: rustup not found on PATH; assuming the toolchain already has \
             {}",
            targets.join(", ")
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
    let installed = String::from_utf8_lossy(&out.stdout);
    for &target in targets {
        if installed.lines().any(|l| l.trim() == target) {
            continue;
        }
        eprintln!("xtask: adding the {target} target with rustup");
        let status = Command::new(&rustup)
            .args(["target", "add", target])
            .current_dir(workspace_root())
            .status()
            .context("could not run `rustup target add`")?;
        if !status.success() {
            bail!("`rustup target add {target}` failed ({status}); run it by hand and rerun");
        }
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
    fn tools_map_to_debian_packages() {
        assert_eq!(HostTool::Qemu.package(), "qemu-system-x86");
        assert_eq!(HostTool::Xz.package(), "xz-utils");
        assert_eq!(HostTool::Mkfs.package(), "e2fsprogs");
        assert_eq!(HostTool::Gcc.package(), "gcc-12");
        assert_eq!(HostTool::DpkgDeb.package(), "dpkg");
        assert!(HostTool::LibcDev.probe().starts_with('/'));
    }

    #[test]
    fn hint_is_the_documented_command() {
        assert_eq!(
            qemu_install_hint(),
            "sudo apt-get update && sudo apt-get install -y qemu-system-x86"
        );
    }
}
