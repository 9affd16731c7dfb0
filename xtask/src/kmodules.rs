//! Linux kernel modules: reading a `.ko`'s `.modinfo` section and ordering modules so each
//! comes after the modules it depends on.
//!
//! Debian's linux-image package ships no `modules.dep` (its postinst runs depmod), so the
//! order comes from the source depmod uses: each module's `depends=` field. The result is
//! the order `modprobe` would load them in, and xtask also writes a matching `modules.dep`
//! into the initramfs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

/// The `key=value` strings of a module's `.modinfo` section, in file order.
pub(crate) fn modinfo(ko: &[u8]) -> Result<Vec<(String, String)>> {
    let section = elf_section(ko, ".modinfo")?.context("no .modinfo section")?;
    Ok(section
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let text = String::from_utf8_lossy(s);
            let (k, v) = text.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect())
}

/// The first value of `key` in a module's `.modinfo`.
pub(crate) fn modinfo_field(info: &[(String, String)], key: &str) -> Option<String> {
    info.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// The contents of the section named `name` of an ELF64 little-endian relocatable file.
pub(crate) fn elf_section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    ensure!(
        elf.len() >= 64 && elf[..4] == *b"\x7fELF",
        "not an ELF file"
    );
    ensure!(
        elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |o: usize| -> Result<u16> {
        Ok(u16::from_le_bytes(
            elf.get(o..o + 2).context("truncated ELF")?.try_into()?,
        ))
    };
    let u32_at = |o: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            elf.get(o..o + 4).context("truncated ELF")?.try_into()?,
        ))
    };
    let u64_at = |o: usize| -> Result<usize> {
        let v = u64::from_le_bytes(elf.get(o..o + 8).context("truncated ELF")?.try_into()?);
        usize::try_from(v).context("ELF offset too large")
    };
    let shoff = u64_at(0x28)?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    ensure!(shentsize >= 64, "bad section header size");
    let section = |i: usize| -> Result<(u32, &'a [u8])> {
        let h = shoff + i * shentsize;
        let name = u32_at(h)?;
        let kind = u32_at(h + 4)?;
        let off = u64_at(h + 0x18)?;
        let size = u64_at(h + 0x20)?;
        // SHT_NOBITS has no file contents.
        let data = if kind == 8 {
            &[][..]
        } else {
            elf.get(off..off.checked_add(size).context("bad section size")?)
                .context("section past the end of the file")?
        };
        Ok((name, data))
    };
    ensure!(shstrndx < shnum, "bad section name table index");
    let (_, names) = section(shstrndx)?;
    for i in 0..shnum {
        let (name_off, data) = section(i)?;
        let rest = names.get(name_off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// Module names treat `-` and `_` alike (`crc32c-intel` is `crc32c_intel`).
pub(crate) fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Every module under a `lib/modules/<release>` directory, by normalized name.
#[derive(Debug, Default)]
pub(crate) struct ModuleIndex {
    /// name → path relative to the modules directory.
    paths: BTreeMap<String, PathBuf>,
    /// name → the names in its `depends=` field.
    deps: BTreeMap<String, Vec<String>>,
    root: PathBuf,
}

impl ModuleIndex {
    /// Finds every `.ko` under `modules_dir/kernel`. Dependencies are read lazily.
    pub(crate) fn scan(modules_dir: &Path) -> Result<Self> {
        let mut index = ModuleIndex {
            root: modules_dir.to_owned(),
            ..Default::default()
        };
        let mut stack = vec![modules_dir.join("kernel")];
        while let Some(dir) = stack.pop() {
            let entries =
                fs::read_dir(&dir).with_context(|| format!("could not read {}", dir.display()))?;
            for entry in entries {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(stem) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                {
                    let rel = path.strip_prefix(modules_dir)?.to_owned();
                    index.paths.insert(normalize(stem), rel);
                }
            }
        }
        ensure!(
            !index.paths.is_empty(),
            "no modules under {}",
            modules_dir.display()
        );
        Ok(index)
    }

    /// An index from a fixed table (tests).
    #[cfg(test)]
    fn from_table(table: &[(&str, &[&str])]) -> Self {
        let mut index = ModuleIndex::default();
        for (name, deps) in table {
            index
                .paths
                .insert((*name).into(), format!("kernel/{name}.ko").into());
            index
                .deps
                .insert((*name).into(), deps.iter().map(|d| (*d).into()).collect());
        }
        index
    }

    /// The path of module `name`, relative to the modules directory.
    pub(crate) fn path(&self, name: &str) -> Option<&Path> {
        self.paths.get(&normalize(name)).map(PathBuf::as_path)
    }

    fn depends(&mut self, name: &str) -> Result<Vec<String>> {
        if let Some(d) = self.deps.get(name) {
            return Ok(d.clone());
        }
        let rel = self
            .paths
            .get(name)
            .with_context(|| format!("no module named `{name}`"))?;
        let path = self.root.join(rel);
        let bytes =
            fs::read(&path).with_context(|| format!("could not read {}", path.display()))?;
        let info = modinfo(&bytes).with_context(|| format!("in {}", path.display()))?;
        let deps: Vec<String> = modinfo_field(&info, "depends")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(normalize)
            .collect();
        self.deps.insert(name.to_owned(), deps.clone());
        Ok(deps)
    }

    /// `wanted` and everything they depend on, each after its dependencies; otherwise in
    /// the order asked. Returns normalized names.
    pub(crate) fn load_order(&mut self, wanted: &[&str]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for name in wanted {
            let mut path = Vec::new();
            self.visit(&normalize(name), &mut order, &mut done, &mut path)?;
        }
        Ok(order)
    }

    fn visit(
        &mut self,
        name: &str,
        order: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            bail!("module dependency cycle: {} -> {name}", path.join(" -> "));
        }
        if !self.paths.contains_key(name) {
            match path.last() {
                Some(parent) => bail!("module `{parent}` depends on `{name}`, which is missing"),
                None => bail!("no module named `{name}` in the kernel package"),
            }
        }
        path.push(name.to_owned());
        for dep in self.depends(name)? {
            self.visit(&dep, order, done, path)?;
        }
        path.pop();
        done.insert(name.to_owned());
        order.push(name.to_owned());
        Ok(())
    }

    /// A `modules.dep` for `names` (busybox modprobe reads it): one line per module,
    /// `path: dep-path ...` with every transitive dependency, nearest first.
    pub(crate) fn modules_dep(&mut self, names: &[String]) -> Result<String> {
        let mut out = String::new();
        for name in names {
            let mut all = self.load_order(&[name.as_str()])?;
            all.pop(); // the module itself
            all.reverse();
            let own = self
                .path(name)
                .context("unknown module")?
                .display()
                .to_string();
            let deps: Vec<String> = all
                .iter()
                .filter_map(|d| self.path(d).map(|p| p.display().to_string()))
                .collect();
            out.push_str(&own);
            out.push(':');
            for d in deps {
                out.push(' ');
                out.push_str(&d);
            }
            out.push('\n');
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 relocatable file with a `.modinfo` section holding `info`.
    pub(crate) fn fake_ko(info: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for s in info {
            modinfo.extend_from_slice(s.as_bytes());
            modinfo.push(0);
        }
        let shstrtab = b"\0.modinfo\0.shstrtab\0".to_vec();
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[6] = 1;
        let modinfo_off = elf.len();
        elf.extend_from_slice(&modinfo);
        let strtab_off = elf.len();
        elf.extend_from_slice(&shstrtab);
        while !elf.len().is_multiple_of(8) {
            elf.push(0);
        }
        let shoff = elf.len();
        // Section 0: null; 1: .modinfo; 2: .shstrtab.
        let mut sh = |name: u32, kind: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0, 0);
        sh(1, 1, modinfo_off, modinfo.len());
        sh(10, 3, strtab_off, shstrtab.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_modinfo_fields() {
        let ko = fake_ko(&[
            "license=GPL",
            "depends=virtio_ring,virtio",
            "vermagic=6.1.0-50-amd64 SMP preempt mod_unload modversions ",
        ]);
        let info = modinfo(&ko).unwrap();
        assert_eq!(
            modinfo_field(&info, "depends").as_deref(),
            Some("virtio_ring,virtio")
        );
        assert!(
            modinfo_field(&info, "vermagic")
                .unwrap()
                .starts_with("6.1.0-50-amd64 ")
        );
        assert_eq!(modinfo_field(&info, "nope"), None);
        assert!(elf_section(&ko, ".text").unwrap().is_none());
        assert!(modinfo(b"not an elf at all, sorry, not at all, no, not an ELF file, no").is_err());
    }

    fn debian_like() -> ModuleIndex {
        ModuleIndex::from_table(&[
            ("virtio", &[]),
            ("virtio_ring", &[]),
            ("virtio_pci_modern_dev", &[]),
            ("virtio_pci_legacy_dev", &[]),
            (
                "virtio_pci",
                &[
                    "virtio_ring",
                    "virtio_pci_modern_dev",
                    "virtio_pci_legacy_dev",
                    "virtio",
                ],
            ),
            ("virtio_blk", &["virtio", "virtio_ring"]),
            ("failover", &[]),
            ("net_failover", &["failover"]),
            ("virtio_net", &["virtio_ring", "virtio", "net_failover"]),
            ("crc32c_intel", &[]),
        ])
    }

    #[test]
    fn dependencies_come_first() {
        let mut index = debian_like();
        let order = index
            .load_order(&["virtio_pci", "virtio_blk", "virtio_net", "crc32c-intel"])
            .unwrap();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio",
                "virtio_pci",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net",
                "crc32c_intel",
            ]
        );
        for (i, name) in order.iter().enumerate() {
            for dep in index.depends(name).unwrap() {
                let j = order.iter().position(|n| *n == dep).unwrap();
                assert!(j < i, "{dep} must precede {name}");
            }
        }
    }

    #[test]
    fn modules_dep_lists_transitive_dependencies() {
        let mut index = debian_like();
        let dep = index
            .modules_dep(&["virtio_net".into(), "virtio".into()])
            .unwrap();
        assert_eq!(
            dep,
            "kernel/virtio_net.ko: kernel/net_failover.ko kernel/failover.ko kernel/virtio.ko \
             kernel/virtio_ring.ko\nkernel/virtio.ko:\n"
        );
    }

    #[test]
    fn missing_modules_and_cycles_are_errors() {
        let mut index = ModuleIndex::from_table(&[("a", &["b"]), ("c", &["d"]), ("d", &["c"])]);
        let e = index.load_order(&["a"]).unwrap_err().to_string();
        assert!(e.contains("`a` depends on `b`, which is missing"), "{e}");
        let e = index.load_order(&["zz"]).unwrap_err().to_string();
        assert!(e.contains("no module named `zz`"), "{e}");
        let e = index.load_order(&["c"]).unwrap_err().to_string();
        assert!(e.contains("cycle"), "{e}");
    }
}
