//! Builds the `microvisor` kernel module (`dom0/kmod/`) out of tree against the unpacked
//! Debian headers (PLATFORM-FACTS 4.3): copy the sources to `target/xtask/kmod/`, run
//! `make -C <headers> M=<copy> modules`, check the `.ko`'s vermagic.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::build::{display_path, workspace_root, xtask_dir};
use crate::debian::{DebianTree, KERNEL_RELEASE};
use crate::kmodules;

/// The module's name (and `.ko` file stem).
pub(crate) const MODULE_NAME: &str = "microvisor";

/// The module sources in the workspace.
pub(crate) fn source_dir() -> PathBuf {
    workspace_root().join("dom0/kmod")
}

/// Where the copy is built.
pub(crate) fn build_dir() -> PathBuf {
    xtask_dir("kmod")
}

/// Copies the regular files of `from` (recursively) into `to`, which is emptied first.
fn copy_sources(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        fs::remove_dir_all(to).with_context(|| format!("could not remove {}", to.display()))?;
    }
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("could not read {}", from.display()))? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_sources(&src, &dst)?;
        } else if kind.is_file() {
            fs::copy(&src, &dst).with_context(|| {
                format!("could not copy {} to {}", src.display(), dst.display())
            })?;
        }
    }
    Ok(())
}

/// The `make` command line.
pub(crate) fn make_args(tree: &DebianTree, module_dir: &Path) -> Vec<String> {
    vec![
        "-C".into(),
        tree.headers_dir().display().to_string(),
        format!("M={}", module_dir.display()),
        "modules".into(),
    ]
}

/// Checks that a built module is for the Dom0 kernel (its vermagic starts with the
/// release).
pub(crate) fn check_vermagic(ko: &[u8]) -> Result<()> {
    let info = kmodules::modinfo(ko)?;
    let vermagic = kmodules::modinfo_field(&info, "vermagic").unwrap_or_default();
    ensure!(
        vermagic.split_whitespace().next() == Some(KERNEL_RELEASE),
        "the module's vermagic is `{vermagic}`, not for {KERNEL_RELEASE}"
    );
    Ok(())
}

/// Builds `microvisor.ko` and returns its path.
pub(crate) fn build(tree: &DebianTree) -> Result<PathBuf> {
    let src = source_dir();
    if !src.is_dir() {
        bail!(
            "the kernel module sources {} do not exist yet; Dom0 needs microvisor.ko",
            display_path(&src)
        );
    }
    let dir = build_dir();
    copy_sources(&src, &dir)?;
    tree.fix_headers_makefile()?;
    eprintln!("xtask: building {MODULE_NAME}.ko against the Linux {KERNEL_RELEASE} headers");
    let out = Command::new("make")
        .args(make_args(tree, &dir))
        // Make variables from an outer make (or cargo's jobserver) must not leak in.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .output()
        .context("could not run make (package make)")?;
    let log = dir.join("build.log");
    let mut text = out.stdout.clone();
    text.extend_from_slice(&out.stderr);
    fs::write(&log, &text).with_context(|| format!("could not write {}", log.display()))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&text);
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        for line in tail.iter().rev() {
            eprintln!("    | {line}");
        }
        bail!(
            "building the kernel module failed ({}); full log: {}",
            out.status,
            display_path(&log)
        );
    }
    let ko = dir.join(format!("{MODULE_NAME}.ko"));
    let bytes = fs::read(&ko).with_context(|| {
        format!(
            "make succeeded but {} is missing; does dom0/kmod's Kbuild build `{MODULE_NAME}.o`?",
            display_path(&ko)
        )
    })?;
    check_vermagic(&bytes).with_context(|| format!("in {}", display_path(&ko)))?;
    Ok(ko)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmodules::tests::fake_ko;

    #[test]
    fn make_runs_in_the_headers_with_the_copy() {
        let tree = DebianTree {
            root: "/t/root".into(),
        };
        assert_eq!(
            make_args(&tree, Path::new("/t/kmod")),
            [
                "-C",
                "/t/root/usr/src/linux-headers-6.1.0-50-amd64",
                "M=/t/kmod",
                "modules"
            ]
        );
    }

    #[test]
    fn vermagic_must_name_the_dom0_kernel() {
        check_vermagic(&fake_ko(&[
            "vermagic=6.1.0-50-amd64 SMP preempt mod_unload modversions ",
        ]))
        .unwrap();
        let e = check_vermagic(&fake_ko(&["vermagic=6.12.0 SMP"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not for 6.1.0-50-amd64"), "{e}");
        assert!(check_vermagic(&fake_ko(&["license=GPL"])).is_err());
    }

    #[test]
    fn copies_nested_sources() {
        let base = std::env::temp_dir().join(format!("xtask-kmod-{}", std::process::id()));
        let from = base.join("from");
        fs::create_dir_all(from.join("sub")).unwrap();
        fs::write(from.join("Kbuild"), "obj-m := microvisor.o\n").unwrap();
        fs::write(from.join("sub/x.h"), "#define X 1\n").unwrap();
        let to = base.join("to");
        fs::create_dir_all(&to).unwrap();
        fs::write(to.join("stale.o"), "old").unwrap();
        copy_sources(&from, &to).unwrap();
        assert!(to.join("Kbuild").is_file());
        assert!(to.join("sub/x.h").is_file());
        assert!(!to.join("stale.o").exists());
        fs::remove_dir_all(&base).unwrap();
    }
}
