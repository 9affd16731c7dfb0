//! Boot bundles: the one `-initrd` file holding every domain the microvisor starts.
//!
//! The format belongs to `microvisor::bundle`; this module only decides what goes in.
//! Domains get ids in bundle order, starting at 1 (`d1` is the first entry).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow};
use microvisor::bundle::BundleBuilder;

use crate::build::{Artifact, Guest, Profile, artifact_path};

/// Memory of each domain started by `run` and the scenarios.
pub(crate) const DEFAULT_MEM_MIB: u32 = 16;

/// Name of the bundle file inside an output directory.
pub(crate) const BUNDLE_FILE: &str = "bundle.img";

/// One domain in a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DomainSpec {
    /// Domain name (1-31 printable ASCII bytes).
    pub(crate) name: String,
    /// Which guest kernel it runs.
    pub(crate) guest: Guest,
    /// Memory in MiB.
    pub(crate) mem_mib: u32,
    /// Guest kernel command line (at most 63 bytes).
    pub(crate) cmdline: String,
}

/// A `--guests` list item: `GUEST` or `GUEST:CMDLINE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GuestArg {
    /// The guest kernel.
    pub(crate) guest: Guest,
    /// Its command line (may be empty).
    pub(crate) cmdline: String,
}

impl FromStr for GuestArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, cmdline) = s.split_once(':').unwrap_or((s, ""));
        let guest = Guest::from_name(name.trim()).ok_or_else(|| {
            let known: Vec<&str> = Guest::ALL.iter().map(|g| g.name()).collect();
            format!("unknown guest `{name}`; known guests: {}", known.join(", "))
        })?;
        Ok(GuestArg {
            guest,
            cmdline: cmdline.to_owned(),
        })
    }
}

impl fmt::Display for GuestArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.guest.name())?;
        if !self.cmdline.is_empty() {
            write!(f, ":{}", self.cmdline)?;
        }
        Ok(())
    }
}

/// Turns a `--guests` list into domains: a guest listed once is named after itself; a guest
/// listed several times gets `<guest>-1`, `<guest>-2`, ... in list order.
pub(crate) fn domains_from_guest_list(list: &[GuestArg]) -> Vec<DomainSpec> {
    let mut seen = std::collections::HashMap::<Guest, usize>::new();
    list.iter()
        .map(|arg| {
            let total = list.iter().filter(|a| a.guest == arg.guest).count();
            let n = seen.entry(arg.guest).or_insert(0);
            *n += 1;
            let name = if total == 1 {
                arg.guest.name().to_owned()
            } else {
                format!("{}-{n}", arg.guest.name())
            };
            DomainSpec {
                name,
                guest: arg.guest,
                mem_mib: DEFAULT_MEM_MIB,
                cmdline: arg.cmdline.clone(),
            }
        })
        .collect()
}

/// Lays out a bundle from ELF images already in memory.
pub(crate) fn bundle_bytes(domains: &[(&DomainSpec, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut builder = BundleBuilder::new();
    for (domain, elf) in domains {
        builder
            .add_domu(&domain.name, &domain.cmdline, domain.mem_mib, elf.clone())
            .map_err(|e| anyhow!("cannot add domain `{}` to the bundle: {e}", domain.name))?;
    }
    Ok(builder.build())
}

/// Reads the guest ELF of each domain, built with `profile`.
fn read_guest_images(profile: Profile, domains: &[DomainSpec]) -> Result<Vec<Vec<u8>>> {
    domains
        .iter()
        .map(|domain| {
            let elf_path = artifact_path(profile, Artifact::Guest(domain.guest));
            std::fs::read(&elf_path).with_context(|| {
                format!(
                    "could not read guest `{}` for domain `{}` from {}; build it with `cargo \
                     xtask build`",
                    domain.guest.name(),
                    domain.name,
                    elf_path.display()
                )
            })
        })
        .collect()
}

/// Adds `domains` as boot-time DomUs to a bundle (after Dom0, if it has one).
pub(crate) fn add_domus(
    builder: &mut BundleBuilder,
    profile: Profile,
    domains: &[DomainSpec],
) -> Result<()> {
    for (domain, elf) in domains.iter().zip(read_guest_images(profile, domains)?) {
        builder
            .add_domu(&domain.name, &domain.cmdline, domain.mem_mib, elf)
            .map_err(|e| anyhow!("cannot add domain `{}` to the bundle: {e}", domain.name))?;
    }
    Ok(())
}

/// Reads the guest ELFs built with `profile` and writes the bundle to `path`.
pub(crate) fn write_bundle(profile: Profile, domains: &[DomainSpec], path: &Path) -> Result<()> {
    let images = read_guest_images(profile, domains)?;
    let pairs: Vec<(&DomainSpec, Vec<u8>)> = domains.iter().zip(images).collect();
    let bytes = bundle_bytes(&pairs)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("could not write {}", path.display()))
}

/// The bundle path inside an output directory.
pub(crate) fn bundle_path(out_dir: &Path) -> PathBuf {
    out_dir.join(BUNDLE_FILE)
}

#[cfg(test)]
mod tests {
    use microvisor::bundle::Bundle;

    use super::*;

    fn args(list: &str) -> Vec<GuestArg> {
        list.split(',').map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn guest_args_parse_with_optional_cmdline() {
        assert_eq!(
            "hostile:attack=npf".parse::<GuestArg>(),
            Ok(GuestArg {
                guest: Guest::Hostile,
                cmdline: "attack=npf".into()
            })
        );
        assert_eq!(
            "hello".parse::<GuestArg>(),
            Ok(GuestArg {
                guest: Guest::Hello,
                cmdline: String::new()
            })
        );
        let err = "nope".parse::<GuestArg>().unwrap_err();
        assert!(err.contains("hello, hostile, bench"), "{err}");
        assert_eq!(args("hostile:a=b")[0].to_string(), "hostile:a=b");
    }

    #[test]
    fn repeated_guests_are_numbered() {
        let names: Vec<String> = domains_from_guest_list(&args("hello,hello,hostile,hello"))
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["hello-1", "hello-2", "hostile", "hello-3"]);
        let d = &domains_from_guest_list(&args("bench"))[0];
        assert_eq!(
            (d.name.as_str(), d.mem_mib, d.cmdline.as_str()),
            ("bench", 16, "")
        );
    }

    #[test]
    fn bundle_round_trips_through_the_microvisor_parser() {
        let domains = domains_from_guest_list(&args("hello,hostile:attack=npf"));
        let bytes = bundle_bytes(&[
            (&domains[0], vec![0x7f, b'E']),
            (&domains[1], vec![1; 5000]),
        ])
        .unwrap();
        let bundle = Bundle::parse(&bytes).unwrap();
        let images: Vec<_> = bundle.images().collect();
        assert_eq!(images.len(), 2);
        assert_eq!(
            (images[0].name, images[0].cmdline, images[0].mem_mib),
            ("hello", "", 16)
        );
        assert_eq!(images[1].cmdline, "attack=npf");
        assert_eq!(images[1].payload.len(), 5000);
    }

    #[test]
    fn bad_names_are_reported() {
        let mut d = domains_from_guest_list(&args("hello")).remove(0);
        d.name = "x".repeat(40);
        let err = bundle_bytes(&[(&d, vec![])]).unwrap_err().to_string();
        assert!(err.contains("cannot add domain"), "{err}");
    }
}
