//! The Debian packages Dom0 is made of: the stock 6.1 kernel (image, headers, kbuild) and
//! busybox, downloaded with `apt-get download` and unpacked with `dpkg-deb -x` into one
//! tree, then the vmlinux ELF extracted from the kernel's bzImage.
//!
//! Cache layout under `target/xtask/debian/`:
//!
//! ```text
//! debs/                      the .deb files (kept, so a rebuilt tree needs no network)
//! root/                      every package unpacked into one tree
//! root.stamp                 written last: one `name version` line per package
//! vmlinux-6.1.0-50-amd64     the kernel ELF, written after the tree is complete
//! ```
//!
//! A later run reuses the tree when the stamp lists exactly the pinned packages and the
//! files xtask uses are there; anything else rebuilds it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::build::{display_path, xtask_dir};
use crate::bzimage;
use crate::provision;

/// `uname -r` of the Dom0 kernel.
pub(crate) const KERNEL_RELEASE: &str = "6.1.0-50-amd64";
/// The Debian version of the kernel packages (kbuild must match it exactly: unpinned, its
/// name resolves to a newer security update; PLATFORM-FACTS 4.3).
pub(crate) const KERNEL_PACKAGE_VERSION: &str = "6.1.176-1";

/// One package of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DebPackage {
    /// Package name.
    pub(crate) name: &'static str,
    /// Exact version, or `None` for whatever apt offers.
    pub(crate) version: Option<&'static str>,
}

/// Everything unpacked into the tree.
pub(crate) const PACKAGES: [DebPackage; 5] = [
    DebPackage {
        name: "linux-image-6.1.0-50-amd64",
        version: Some(KERNEL_PACKAGE_VERSION),
    },
    DebPackage {
        name: "linux-headers-6.1.0-50-amd64",
        version: Some(KERNEL_PACKAGE_VERSION),
    },
    DebPackage {
        name: "linux-headers-6.1.0-50-common",
        version: Some(KERNEL_PACKAGE_VERSION),
    },
    DebPackage {
        name: "linux-kbuild-6.1",
        version: Some(KERNEL_PACKAGE_VERSION),
    },
    DebPackage {
        name: "busybox-static",
        version: None,
    },
];

impl DebPackage {
    /// The `apt-get download` argument.
    pub(crate) fn spec(&self) -> String {
        match self.version {
            Some(v) => format!("{}={v}", self.name),
            None => self.name.to_owned(),
        }
    }

    /// Whether a .deb of `version` satisfies this package.
    fn accepts(&self, version: &str) -> bool {
        self.version.is_none_or(|v| v == version)
    }
}

/// The unpacked tree.
#[derive(Clone, Debug)]
pub(crate) struct DebianTree {
    /// Its root directory.
    pub(crate) root: PathBuf,
}

impl DebianTree {
    /// The bzImage.
    pub(crate) fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{KERNEL_RELEASE}"))
    }

    /// The kernel configuration.
    pub(crate) fn config(&self) -> PathBuf {
        self.root.join(format!("boot/config-{KERNEL_RELEASE}"))
    }

    /// `lib/modules/<release>`.
    pub(crate) fn modules_dir(&self) -> PathBuf {
        self.root.join(format!("lib/modules/{KERNEL_RELEASE}"))
    }

    /// The headers directory to run `make -C` in.
    pub(crate) fn headers_dir(&self) -> PathBuf {
        self.root
            .join(format!("usr/src/linux-headers-{KERNEL_RELEASE}"))
    }

    /// The arch-independent headers, included by [`Self::headers_dir`]'s Makefile.
    fn common_headers_dir(&self) -> PathBuf {
        self.root.join("usr/src/linux-headers-6.1.0-50-common")
    }

    /// The static busybox.
    pub(crate) fn busybox(&self) -> PathBuf {
        self.root.join("bin/busybox")
    }

    /// Files that must exist in a complete tree.
    fn required_files(&self) -> Vec<PathBuf> {
        vec![
            self.vmlinuz(),
            self.config(),
            self.modules_dir()
                .join("kernel/drivers/virtio/virtio_pci.ko"),
            self.headers_dir().join("Makefile"),
            self.headers_dir().join("Module.symvers"),
            self.common_headers_dir().join("Makefile"),
            self.root
                .join("usr/lib/linux-kbuild-6.1/scripts/mod/modpost"),
            self.busybox(),
        ]
    }

    /// The one-line Makefile of the amd64 headers, pointed at the unpacked common headers
    /// instead of `/usr/src/...` (PLATFORM-FACTS 4.3).
    pub(crate) fn headers_makefile_text(&self) -> String {
        format!("include {}/Makefile\n", self.common_headers_dir().display())
    }

    /// Rewrites the headers' Makefile when it does not point into this tree (the tree was
    /// just unpacked, or the checkout moved).
    pub(crate) fn fix_headers_makefile(&self) -> Result<()> {
        let path = self.headers_dir().join("Makefile");
        let want = self.headers_makefile_text();
        let have = fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            fs::write(&path, want)
                .with_context(|| format!("could not write {}", path.display()))?;
        }
        Ok(())
    }
}

/// `target/xtask/debian`.
pub(crate) fn cache_dir() -> PathBuf {
    xtask_dir("debian")
}

/// The stamp text for a set of (name, version) pairs.
fn stamp_text(got: &[(String, String)]) -> String {
    got.iter().map(|(n, v)| format!("{n} {v}\n")).collect()
}

/// Whether a stamp lists exactly the packages of [`PACKAGES`] in acceptable versions.
fn stamp_matches(stamp: &str) -> bool {
    let lines: Vec<(&str, &str)> = stamp.lines().filter_map(|l| l.split_once(' ')).collect();
    lines.len() == PACKAGES.len()
        && PACKAGES
            .iter()
            .all(|p| lines.iter().any(|(n, v)| *n == p.name && p.accepts(v)))
}

/// `Package` and `Version` of a .deb file.
fn deb_identity(deb: &Path) -> Result<(String, String)> {
    let out = Command::new("dpkg-deb")
        .args(["--show", "--showformat=${Package} ${Version}\\n"])
        .arg(deb)
        .output()
        .context("could not run dpkg-deb")?;
    ensure!(
        out.status.success(),
        "{} is not a readable .deb: {}",
        deb.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (name, version) = text
        .trim()
        .split_once(' ')
        .with_context(|| format!("unexpected dpkg-deb output for {}", deb.display()))?;
    Ok((name.to_owned(), version.to_owned()))
}

/// The cached .deb that satisfies `pkg`, if there is one.
fn find_deb(debs: &Path, pkg: &DebPackage) -> Result<Option<(PathBuf, String)>> {
    let prefix = format!("{}_", pkg.name);
    let Ok(dir) = fs::read_dir(debs) else {
        return Ok(None);
    };
    let mut candidates: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    candidates.sort();
    for deb in candidates {
        // A truncated download fails here and is fetched again.
        if let Ok((name, version)) = deb_identity(&deb)
            && name == pkg.name
            && pkg.accepts(&version)
        {
            return Ok(Some((deb, version)));
        }
    }
    Ok(None)
}

/// Downloads what is missing, unpacks every package into a fresh tree and writes the stamp.
fn build_tree(cache: &Path, tree: &DebianTree) -> Result<()> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("could not create {}", debs.display()))?;
    let mut missing = Vec::new();
    for pkg in &PACKAGES {
        if find_deb(&debs, pkg)?.is_none() {
            missing.push(pkg.spec());
        }
    }
    if !missing.is_empty() {
        provision::apt_download(&debs, &missing)?;
    }
    let staging = cache.join("root.tmp");
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("could not remove {}", staging.display()))?;
    }
    fs::create_dir_all(&staging)?;
    let mut got = Vec::new();
    for pkg in &PACKAGES {
        let (deb, version) = find_deb(&debs, pkg)?.with_context(|| {
            format!(
                "apt-get download did not produce {} (wanted {})",
                pkg.name,
                pkg.spec()
            )
        })?;
        eprintln!("xtask: unpacking {} {version}", pkg.name);
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&staging)
            .status()
            .context("could not run dpkg-deb")?;
        ensure!(
            status.success(),
            "`dpkg-deb -x {}` failed ({status})",
            deb.display()
        );
        got.push((pkg.name.to_owned(), version));
    }
    if tree.root.exists() {
        fs::remove_dir_all(&tree.root)
            .with_context(|| format!("could not remove {}", tree.root.display()))?;
    }
    fs::rename(&staging, &tree.root)
        .with_context(|| format!("could not move the tree to {}", tree.root.display()))?;
    tree.fix_headers_makefile()?;
    for file in tree.required_files() {
        ensure!(
            file.exists(),
            "the unpacked packages lack {}; the package contents changed?",
            file.display()
        );
    }
    check_kernel_version(tree)?;
    fs::write(cache.join("root.stamp"), stamp_text(&got))?;
    Ok(())
}

/// Fails unless the bzImage is the kernel xtask expects.
fn check_kernel_version(tree: &DebianTree) -> Result<()> {
    let image = fs::read(tree.vmlinuz())
        .with_context(|| format!("could not read {}", tree.vmlinuz().display()))?;
    let header = bzimage::SetupHeader::parse(&image)
        .with_context(|| format!("{} is not a bzImage", tree.vmlinuz().display()))?;
    check_release(header.release(), header.kernel_version.as_deref())
}

/// The version check, on the bzImage's version string.
fn check_release(release: Option<&str>, full: Option<&str>) -> Result<()> {
    match release {
        Some(KERNEL_RELEASE) => Ok(()),
        Some(other) => bail!(
            "the downloaded kernel is {other} (`{}`), but Dom0 needs {KERNEL_RELEASE} \
             (package version {KERNEL_PACKAGE_VERSION}); check the apt sources",
            full.unwrap_or_default()
        ),
        None => {
            bail!("the downloaded bzImage carries no version string; Dom0 needs {KERNEL_RELEASE}")
        }
    }
}

/// Returns the unpacked tree, downloading and unpacking it first when the cache is missing
/// or incomplete.
pub(crate) fn ensure_tree() -> Result<DebianTree> {
    let cache = cache_dir();
    let tree = DebianTree {
        root: cache.join("root"),
    };
    let stamp = fs::read_to_string(cache.join("root.stamp")).unwrap_or_default();
    let complete = stamp_matches(&stamp) && tree.required_files().iter().all(|f| f.exists());
    if complete {
        tree.fix_headers_makefile()?;
        return Ok(tree);
    }
    eprintln!(
        "xtask: preparing the Dom0 packages in {}/ (Linux {KERNEL_RELEASE}, busybox)",
        display_path(&cache)
    );
    // Anything derived from an old tree is stale now.
    let _ = fs::remove_file(cache.join("root.stamp"));
    let _ = fs::remove_file(vmlinux_path());
    build_tree(&cache, &tree)?;
    Ok(tree)
}

/// Where the extracted vmlinux is cached.
pub(crate) fn vmlinux_path() -> PathBuf {
    cache_dir().join(format!("vmlinux-{KERNEL_RELEASE}"))
}

/// Returns the vmlinux ELF of the tree's kernel, extracting it on first use.
pub(crate) fn vmlinux(tree: &DebianTree) -> Result<PathBuf> {
    let path = vmlinux_path();
    if let Ok(elf) = fs::read(&path)
        && bzimage::check_pvh_elf(&elf).is_ok()
    {
        return Ok(path);
    }
    let image = fs::read(tree.vmlinuz())
        .with_context(|| format!("could not read {}", tree.vmlinuz().display()))?;
    let header = bzimage::SetupHeader::parse(&image)?;
    eprintln!(
        "xtask: extracting vmlinux from {} (boot protocol {}, XZ payload of {} bytes)",
        display_path(&tree.vmlinuz()),
        header.version_string(),
        header.payload_len
    );
    let (elf, entry) = bzimage::extract_vmlinux(&image).with_context(|| {
        format!(
            "could not extract vmlinux from {}",
            tree.vmlinuz().display()
        )
    })?;
    eprintln!(
        "xtask: vmlinux is {} MiB, PVH entry 0x{entry:x}",
        elf.len() >> 20
    );
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, &elf).with_context(|| format!("could not write {}", tmp.display()))?;
    fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_pin_the_kernel_packages() {
        let specs: Vec<String> = PACKAGES.iter().map(DebPackage::spec).collect();
        assert_eq!(
            specs,
            [
                "linux-image-6.1.0-50-amd64=6.1.176-1",
                "linux-headers-6.1.0-50-amd64=6.1.176-1",
                "linux-headers-6.1.0-50-common=6.1.176-1",
                "linux-kbuild-6.1=6.1.176-1",
                "busybox-static",
            ]
        );
    }

    #[test]
    fn stamp_must_list_exactly_the_pinned_packages() {
        let good: Vec<(String, String)> = PACKAGES
            .iter()
            .map(|p| {
                (
                    p.name.to_owned(),
                    p.version.unwrap_or("1:1.35.0-4+b1").to_owned(),
                )
            })
            .collect();
        assert!(stamp_matches(&stamp_text(&good)));
        assert!(!stamp_matches(""));
        let mut newer = good.clone();
        newer[3].1 = "6.1.192-2".into();
        assert!(!stamp_matches(&stamp_text(&newer)));
        let mut short = good.clone();
        short.pop();
        assert!(!stamp_matches(&stamp_text(&short)));
        let mut extra = good;
        extra.push(("other".into(), "1".into()));
        assert!(!stamp_matches(&stamp_text(&extra)));
    }

    #[test]
    fn release_check_names_both_versions() {
        check_release(Some(KERNEL_RELEASE), None).unwrap();
        let e = check_release(Some("6.1.0-51-amd64"), Some("6.1.0-51-amd64 (x) #1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("6.1.0-51-amd64") && e.contains(KERNEL_RELEASE),
            "{e}"
        );
        assert!(check_release(None, None).is_err());
    }

    #[test]
    fn headers_makefile_points_into_the_tree() {
        let tree = DebianTree {
            root: "/t/debian/root".into(),
        };
        assert_eq!(
            tree.headers_makefile_text(),
            "include /t/debian/root/usr/src/linux-headers-6.1.0-50-common/Makefile\n"
        );
        assert!(
            tree.headers_dir()
                .ends_with("usr/src/linux-headers-6.1.0-50-amd64")
        );
    }
}
