//! Domain config files: TOML with xl's key names (CLI.md §6), `--set KEY=VALUE`
//! overrides, and the checks every config must pass.
//!
//! ```toml
//! name    = "web"                        # required
//! type    = "pvh"                        # optional; the only type
//! kernel  = "kernels/hello.elf"          # required; relative to this file's directory
//! ramdisk = "/var/lib/dom0/initrd.img"   # optional
//! cmdline = "console=hvc0 quiet"         # optional
//! memory  = "64M"                        # MiB, or a size string; default 16
//! vcpus   = 1                            # default 1; only 1 for now
//! on_poweroff = "destroy"                # destroy | restart | preserve
//! on_reboot   = "restart"
//! on_crash    = "destroy"
//! disk = ["path=/var/lib/dom0/disks/d1.img,vdev=xvda,access=rw"]  # optional
//! vif  = ["bridge=br0,mac=00:16:3e:01:02:03,ip=10.0.0.2/24"]      # optional
//! ```
//!
//! `disk` is a list of strings of `key=value` pairs separated by commas: `path` (absolute,
//! required), `vdev` (`xvda` ... `xvdz`, required, one disk per vdev) and `access` (`rw`,
//! the default, or `ro`). `--set 'disk=["path=...,vdev=xvda"]'` replaces the list, as
//! `--set` replaces any key; `--set disk=path=...,vdev=xvda` (not TOML) is taken as a list
//! of that one disk, and `--set 'disk=[]'` removes every disk.
//!
//! `vif` is a list of network interfaces, one string each, in the same `key=value,...`
//! form; every key is optional and `""` is an interface with all defaults. `bridge` is the
//! Dom0 bridge its TAP joins (default `br0`, which dom0d creates with 10.0.0.1/24 when
//! missing; an interface name of letters, digits, `.`, `-`, `_`); `mac` the guest's
//! unicast MAC (default: generated from the domain name and the interface's index with
//! Xen's `00:16:3e` prefix, so a config always gets the same one; unique within the
//! domain); `ip` an IPv4 address with prefix (`10.0.0.2/24`), passed to the guest in
//! xenstore as a hint for guests without DHCP (unique within the domain; not the
//! address of `br0` itself). At most 8 interfaces; the first is handle 0. `--set` works as
//! for `disk` (`--set vif=bridge=br1`, `--set 'vif=[]'`).
//!
//! Every error names where the bad value came from: `web.toml:3: unknown key "colour"`,
//! or `--set memory=x: ...` for an override. Keys of xl that are not supported yet get
//! their own message (`web.toml:7: "maxmem" is not supported yet`), and nothing is
//! silently ignored.
//!
//! [`parse`] turns text into a [`DomainConfig`]; [`DomainConfig::check`] repeats the
//! semantic checks on a config that arrived some other way (dom0d checks what the CLI
//! sends it).
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use shared_abi::control::{MAX_DOMAIN_MEM_MIB, MIN_DOMAIN_MEM_MIB};
use toml::de::{DeTable, DeValue};

use crate::netback::MAX_VIFS;
use crate::netdev::{Ipv4Cidr, Mac};

pub use crate::blkback::DiskSpec;
pub use crate::netback::VifSpec;

/// Where `create NAME` looks for `NAME.toml` when NAME has no slash and no `.toml` suffix.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/dom0/domains";
/// Memory of a domain whose config has no `memory` key, MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 16;
/// Longest domain name (the ABI's 32-byte field keeps a NUL).
pub const MAX_NAME_LEN: usize = 31;
/// Longest kernel command line, bytes (what fits the boot page).
pub const MAX_CMDLINE: usize = ::microvisor::domain::MAX_CMDLINE;
/// Largest config file read, bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The keys a config may have, in the order they are documented.
pub const KEYS: [&str; 12] = [
    "name",
    "type",
    "kernel",
    "ramdisk",
    "cmdline",
    "memory",
    "vcpus",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "disk",
    "vif",
];

/// xl keys that are valid in xl.cfg but not supported here yet, each refused with its own
/// message rather than as an unknown key.
const NOT_YET: [&str; 19] = [
    "maxmem",
    "maxvcpus",
    "cpus",
    "cpus_soft",
    "cpu_weight",
    "cap",
    "reservation",
    "uuid",
    "on_watchdog",
    "on_soft_reset",
    "root",
    "extra",
    "vnc",
    "sdl",
    "vfb",
    "pci",
    "serial",
    "bootloader",
    "device_model_version",
];

/// What to do when the domain powers off, reboots or crashes (xl's `on_*` actions).
///
/// dom0d applies them to the domains it built; see [`crate::supervisor`] for which key
/// applies to which way of ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnEvent {
    /// Destroy the domain.
    Destroy,
    /// Destroy it and create it again from the same config.
    Restart,
    /// Keep it in its final state for inspection.
    Preserve,
}

impl OnEvent {
    /// The word used in configs and JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Destroy => "destroy",
            Self::Restart => "restart",
            Self::Preserve => "preserve",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "destroy" => Self::Destroy,
            "restart" => Self::Restart,
            "preserve" => Self::Preserve,
            _ => return None,
        })
    }
}

/// A domain's effective config: the file with its overrides applied, paths made
/// absolute, defaults filled in. This is what the CLI sends dom0d and what
/// `validate`/`create --dry-run` print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainConfig {
    /// Domain name: 1 to 31 of `A-Z a-z 0-9 - _ . +`, not starting with `-`, not all
    /// digits (so never a domid, nor a UUID, which is longer).
    pub name: String,
    /// Absolute path of the PVH kernel (an ELF with the PVH entry note), in Dom0.
    pub kernel: String,
    /// Absolute path of the initial ramdisk, if any.
    pub ramdisk: Option<String>,
    /// Kernel command line, if any (never empty).
    pub cmdline: Option<String>,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Number of vCPUs (1).
    pub vcpus: u32,
    /// Action on power-off (default `destroy`).
    pub on_poweroff: OnEvent,
    /// Action on reboot (default `restart`).
    pub on_reboot: OnEvent,
    /// Action on crash (default `destroy`).
    pub on_crash: OnEvent,
    /// Disks served by dom0d's block back-end, in config order (`disk`; empty by
    /// default). Appended in protocol 2.
    pub disks: Vec<DiskSpec>,
    /// Network interfaces served by dom0d's network back-end, handle = index (`vif`;
    /// empty by default; MACs filled in). Appended in protocol 3.
    pub vifs: Vec<VifSpec>,
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Line `line` (1-based) of `file`.
    File {
        /// The config file, as the user named it.
        file: String,
        /// 1-based line.
        line: usize,
    },
    /// A `--set` argument (`KEY=VALUE`, as given).
    Set {
        /// The argument.
        arg: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { file, line } => write!(f, "{file}:{line}"),
            Self::Set { arg } => write!(f, "--set {arg}"),
        }
    }
}

/// Why a config is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {file}")]
    Read {
        /// The file, as the user named it.
        file: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`] or not UTF-8.
    #[error("{file}: {reason}")]
    NotText {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The file is not valid TOML.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// A key no config has.
    #[error("{at}: unknown key \"{key}\"")]
    UnknownKey {
        /// Where.
        at: Origin,
        /// The key.
        key: String,
        /// A known key with a similar spelling.
        suggestion: Option<&'static str>,
    },
    /// An xl key that is not supported yet.
    #[error("{at}: \"{key}\" is not supported yet")]
    NotSupported {
        /// Where.
        at: Origin,
        /// The key.
        key: String,
    },
    /// An xl spelling that has another name here.
    #[error("{at}: \"{key}\" is spelt \"{instead}\" here")]
    Renamed {
        /// Where.
        at: Origin,
        /// The key used.
        key: String,
        /// The key to use.
        instead: &'static str,
    },
    /// A value of the wrong type or out of range.
    #[error("{at}: {message}")]
    Invalid {
        /// Where.
        at: Origin,
        /// The key.
        key: &'static str,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A required key is absent.
    #[error("{file}: \"{key}\" is required")]
    Missing {
        /// The file.
        file: String,
        /// The key.
        key: &'static str,
    },
}

impl ConfigError {
    /// Whether the config file itself is missing (exit 3 rather than 7).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// Whether reading the file was refused (exit 8).
    #[must_use]
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Self::Read { source, .. }
            if source.kind() == io::ErrorKind::PermissionDenied)
    }

    /// A concrete next step, when there is one.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::UnknownKey {
                suggestion: Some(s),
                ..
            } => Some(format!("did you mean \"{s}\"?")),
            Self::UnknownKey { .. } => Some(format!("the keys are: {}", KEYS.join(", "))),
            Self::Renamed { instead, .. } => Some(format!("use \"{instead}\"")),
            Self::Missing { key, .. } => Some(format!("add a line like {}", example(key))),
            Self::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => Some(format!(
                "check the path (a bare name, without a slash or .toml, is looked up as {DEFAULT_CONFIG_DIR}/NAME.toml)"
            )),
            _ => None,
        }
    }
}

fn example(key: &str) -> &'static str {
    match key {
        "name" => "name = \"web\"",
        _ => "kernel = \"/etc/dom0/kernels/guest.elf\"",
    }
}

/// One `--set KEY=VALUE` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The key (a dotted path; configs have only top-level keys for now).
    pub key: String,
    /// The value text: parsed as a TOML value, or taken as a string if that fails.
    pub value: String,
}

impl Override {
    /// The argument as the user wrote it.
    #[must_use]
    pub fn arg(&self) -> String {
        format!("{}={}", self.key, self.value)
    }
}

impl FromStr for Override {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(Self {
                key: key.trim().to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(format!(
                "{s:?} is not KEY=VALUE (e.g. --set memory=64M or --set vcpus=1)"
            )),
        }
    }
}

/// The path of the config `create`/`validate` read for `arg`: as given if it has a slash
/// or ends in `.toml`, else `dir/ARG.toml` (CLI.md §6; `dir` is normally
/// [`DEFAULT_CONFIG_DIR`]).
#[must_use]
pub fn config_path(arg: &str, dir: &Path) -> PathBuf {
    if arg.contains('/') || arg.ends_with(".toml") {
        PathBuf::from(arg)
    } else {
        dir.join(format!("{arg}.toml"))
    }
}

/// Reads the config at `path`, applies `overrides` and checks the result. Relative paths
/// in the file are resolved against the file's directory, those in overrides against the
/// current directory.
///
/// # Errors
/// [`ConfigError`].
pub fn load(path: &Path, overrides: &[Override]) -> Result<DomainConfig, ConfigError> {
    use std::io::Read;
    let file = path.display().to_string();
    let read_error = |source| ConfigError::Read {
        file: file.clone(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read_error)?;
    if f.metadata().map_err(read_error)?.is_dir() {
        return Err(ConfigError::NotText {
            file,
            reason: "is a directory, not a config file".to_owned(),
        });
    }
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::NotText {
            file,
            reason: format!(
                "larger than {} KiB; not a config file",
                MAX_CONFIG_BYTES >> 10
            ),
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::NotText {
        file: file.clone(),
        reason: format!(
            "not UTF-8 text (bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    let base = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/"));
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    parse(&text, &file, &base, &cwd, overrides)
}

/// A value with a type we care about, detached from the parser.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    /// An array: each element and where it is.
    List(Vec<(Value, Origin)>),
    /// Anything else, by the name of its TOML type.
    Other(&'static str),
}

impl Value {
    fn from_de(v: &DeValue<'_>) -> Self {
        match v {
            DeValue::String(s) => Self::Str(s.to_string()),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Self::Int(n),
                Err(_) => Self::Other("an integer out of range"),
            },
            DeValue::Float(_) => Self::Other("a float"),
            DeValue::Boolean(_) => Self::Other("a boolean"),
            DeValue::Datetime(_) => Self::Other("a date"),
            DeValue::Array(_) => Self::Other("an array"),
            DeValue::Table(_) => Self::Other("a table"),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Str(_) => "a string",
            Self::Int(_) => "an integer",
            Self::List(_) => "an array",
            Self::Other(k) => k,
        }
    }
}

/// A key's value and where it came from; paths resolve against `base`.
struct Entry {
    value: Value,
    at: Origin,
    base: PathBuf,
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Classifies a key: `Ok(known key)`, or the error for it.
fn known_key(key: &str, at: &Origin) -> Result<&'static str, ConfigError> {
    if let Some(k) = KEYS.iter().find(|k| **k == key) {
        return Ok(k);
    }
    if NOT_YET.contains(&key) {
        return Err(ConfigError::NotSupported {
            at: at.clone(),
            key: key.to_owned(),
        });
    }
    if key == "builder" {
        return Err(ConfigError::Renamed {
            at: at.clone(),
            key: key.to_owned(),
            instead: "type",
        });
    }
    let suggestion = KEYS
        .iter()
        .map(|k| (crate::edit_distance(k, key), *k))
        .filter(|&(d, _)| d <= 2)
        .min()
        .map(|(_, k)| k);
    Err(ConfigError::UnknownKey {
        at: at.clone(),
        key: key.to_owned(),
        suggestion,
    })
}

/// Parses config `text` (from `file`, whose relative paths resolve against `base`),
/// applies `overrides` (whose relative paths resolve against `cwd`) in order, and checks
/// the result.
///
/// # Errors
/// [`ConfigError`]: the first problem found, in file order, then override order.
pub fn parse(
    text: &str,
    file: &str,
    base: &Path,
    cwd: &Path,
    overrides: &[Override],
) -> Result<DomainConfig, ConfigError> {
    let doc = DeTable::parse(text).map_err(|e| {
        let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
        ConfigError::Syntax {
            file: file.to_owned(),
            line,
            column,
            message: e.message().trim_end().to_owned(),
        }
    })?;
    // Keys in file order, so the first bad line is reported first.
    let mut items: Vec<_> = doc.get_ref().iter().collect();
    items.sort_by_key(|(k, _)| k.span().start);
    let mut entries: Vec<(&'static str, Entry)> = Vec::new();
    for (key, value) in items {
        let (line, _) = line_column(text, key.span().start);
        let at = Origin::File {
            file: file.to_owned(),
            line,
        };
        let key = known_key(key.get_ref(), &at)?;
        let value = match value.get_ref() {
            DeValue::Array(items) => Value::List(
                items
                    .iter()
                    .map(|item| {
                        let (line, _) = line_column(text, item.span().start);
                        let at = Origin::File {
                            file: file.to_owned(),
                            line,
                        };
                        (Value::from_de(item.get_ref()), at)
                    })
                    .collect(),
            ),
            other => Value::from_de(other),
        };
        entries.push((
            key,
            Entry {
                value,
                at,
                base: base.to_path_buf(),
            },
        ));
    }
    for o in overrides {
        let at = Origin::Set { arg: o.arg() };
        let key = known_key(&o.key, &at)?;
        let value = match DeValue::parse(&o.value) {
            Ok(v) => match v.get_ref() {
                DeValue::Array(items) => Value::List(
                    items
                        .iter()
                        .map(|item| (Value::from_de(item.get_ref()), at.clone()))
                        .collect(),
                ),
                other => Value::from_de(other),
            },
            // `--set disk=path=...,vdev=xvda`: one disk.
            Err(_) if key == "disk" || key == "vif" => {
                Value::List(vec![(Value::Str(o.value.clone()), at.clone())])
            }
            Err(_) => Value::Str(o.value.clone()),
        };
        entries.retain(|(k, _)| *k != key);
        entries.push((
            key,
            Entry {
                value,
                at,
                base: cwd.to_path_buf(),
            },
        ));
    }
    build(file, &entries)
}

fn invalid(at: &Origin, key: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid {
        at: at.clone(),
        key,
        message,
    }
}

fn string<'a>(key: &'static str, e: &'a Entry) -> Result<&'a str, ConfigError> {
    match &e.value {
        Value::Str(s) => Ok(s),
        other => Err(invalid(
            &e.at,
            key,
            format!("\"{key}\" must be a string, not {}", other.kind()),
        )),
    }
}

fn path(key: &'static str, e: &Entry) -> Result<String, ConfigError> {
    let s = string(key, e)?;
    if s.is_empty() {
        return Err(invalid(&e.at, key, format!("\"{key}\" is empty")));
    }
    if s.contains('\0') {
        return Err(invalid(
            &e.at,
            key,
            format!("\"{key}\" contains a NUL byte"),
        ));
    }
    let p = e.base.join(s);
    let p = std::path::absolute(&p).unwrap_or(p);
    p.into_os_string()
        .into_string()
        .map_err(|_| invalid(&e.at, key, format!("\"{key}\" is not UTF-8")))
}

fn on_event(key: &'static str, e: &Entry) -> Result<OnEvent, ConfigError> {
    let s = string(key, e)?;
    OnEvent::from_name(s).ok_or_else(|| {
        invalid(
            &e.at,
            key,
            format!("\"{key}\" must be \"destroy\", \"restart\" or \"preserve\", not {s:?}"),
        )
    })
}

fn memory(e: &Entry) -> Result<u32, ConfigError> {
    let mib = match &e.value {
        Value::Int(n) => u64::try_from(*n).map_err(|_| {
            invalid(
                &e.at,
                "memory",
                format!("\"memory\" must be positive, not {n}"),
            )
        })?,
        Value::Str(s) => parse_size_mib(s).map_err(|why| invalid(&e.at, "memory", why))?,
        other => {
            return Err(invalid(
                &e.at,
                "memory",
                format!(
                    "\"memory\" must be MiB as an integer or a size like \"512M\", not {}",
                    other.kind()
                ),
            ));
        }
    };
    let mib = u32::try_from(mib).unwrap_or(u32::MAX);
    check_memory(mib).map_err(|why| invalid(&e.at, "memory", why))?;
    Ok(mib)
}

fn vcpus(e: &Entry) -> Result<u32, ConfigError> {
    let n = match &e.value {
        Value::Int(n) => *n,
        other => {
            return Err(invalid(
                &e.at,
                "vcpus",
                format!("\"vcpus\" must be an integer, not {}", other.kind()),
            ));
        }
    };
    let n = u32::try_from(n).map_err(|_| {
        let why = if n < 0 {
            format!("\"vcpus\" must be at least 1, not {n}")
        } else {
            format!("\"vcpus\" is {n}; only 1 vCPU per domain is supported for now")
        };
        invalid(&e.at, "vcpus", why)
    })?;
    check_vcpus(n).map_err(|why| invalid(&e.at, "vcpus", why))?;
    Ok(n)
}

/// Assembles and checks the config from its entries (each key at most once).
fn build(file: &str, entries: &[(&'static str, Entry)]) -> Result<DomainConfig, ConfigError> {
    let get = |key: &str| entries.iter().find(|(k, _)| *k == key).map(|(_, e)| e);
    let required = |key: &'static str| {
        get(key).ok_or_else(|| ConfigError::Missing {
            file: file.to_owned(),
            key,
        })
    };
    // Checked in documentation order.
    let name_entry = required("name")?;
    let name = string("name", name_entry)?.to_owned();
    check_name(&name).map_err(|why| invalid(&name_entry.at, "name", why))?;
    if let Some(e) = get("type") {
        let t = string("type", e)?;
        if t != "pvh" {
            return Err(invalid(
                &e.at,
                "type",
                format!("\"type\" must be \"pvh\" (the only domain type), not {t:?}"),
            ));
        }
    }
    let kernel = path("kernel", required("kernel")?)?;
    let ramdisk = get("ramdisk").map(|e| path("ramdisk", e)).transpose()?;
    let cmdline = match get("cmdline") {
        Some(e) => {
            let c = string("cmdline", e)?;
            check_cmdline(c).map_err(|why| invalid(&e.at, "cmdline", why))?;
            Some(c.to_owned()).filter(|c| !c.is_empty())
        }
        None => None,
    };
    let memory_mib = get("memory").map_or(Ok(DEFAULT_MEMORY_MIB), memory)?;
    let vcpus = get("vcpus").map_or(Ok(1), vcpus)?;
    let action = |key: &'static str, default| get(key).map_or(Ok(default), |e| on_event(key, e));
    let on_poweroff = action("on_poweroff", OnEvent::Destroy)?;
    let on_reboot = action("on_reboot", OnEvent::Restart)?;
    let on_crash = action("on_crash", OnEvent::Destroy)?;
    let disks = get("disk").map_or(Ok(Vec::new()), disks)?;
    let vifs = get("vif").map_or(Ok(Vec::new()), |e| vifs(e, &name))?;
    Ok(DomainConfig {
        name,
        kernel,
        ramdisk,
        cmdline,
        memory_mib,
        vcpus,
        on_poweroff,
        on_reboot,
        on_crash,
        disks,
        vifs,
    })
}

/// The `disk` list: strings of `path=...,vdev=...,access=...`.
fn disks(e: &Entry) -> Result<Vec<DiskSpec>, ConfigError> {
    let Value::List(items) = &e.value else {
        return Err(invalid(
            &e.at,
            "disk",
            format!(
                "\"disk\" must be an array of strings like [\"path=/var/lib/dom0/disks/d1.img,vdev=xvda\"], not {}",
                e.value.kind()
            ),
        ));
    };
    let mut out: Vec<DiskSpec> = Vec::new();
    for (value, at) in items {
        let Value::Str(text) = value else {
            return Err(invalid(
                at,
                "disk",
                format!("each \"disk\" entry must be a string, not {}", value.kind()),
            ));
        };
        let disk = parse_disk(text).map_err(|why| invalid(at, "disk", why))?;
        if let Some(prev) = out.iter().find(|d| d.vdev == disk.vdev) {
            return Err(invalid(
                at,
                "disk",
                format!(
                    "\"disk\": vdev {} is used twice ({} and {})",
                    disk.vdev, prev.path, disk.path
                ),
            ));
        }
        out.push(disk);
    }
    Ok(out)
}

/// Parses one `disk` entry: `path=ABSOLUTE,vdev=xvdX[,access=rw|ro]`, keys in any order.
///
/// # Errors
/// A message naming the key `disk` and what is wrong.
pub fn parse_disk(text: &str) -> Result<DiskSpec, String> {
    let (mut path, mut vdev, mut access) = (None, None, None);
    for part in text.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!(
                "\"disk\" entry {text:?}: {part:?} is not key=value (the keys are path, vdev and access)"
            ));
        };
        let slot = match k.trim() {
            "path" => &mut path,
            "vdev" => &mut vdev,
            "access" => &mut access,
            other => {
                return Err(format!(
                    "\"disk\" entry {text:?}: unknown key {other:?} (the keys are path, vdev and access)"
                ));
            }
        };
        if slot.is_some() {
            return Err(format!(
                "\"disk\" entry {text:?}: {:?} is given twice",
                k.trim()
            ));
        }
        *slot = Some(v.trim().to_owned());
    }
    let path = path.ok_or_else(|| format!("\"disk\" entry {text:?} has no path="))?;
    let vdev = vdev.ok_or_else(|| format!("\"disk\" entry {text:?} has no vdev="))?;
    let read_only = match access.as_deref() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err(format!(
                "\"disk\" entry {text:?}: access must be \"rw\" or \"ro\", not {other:?}"
            ));
        }
    };
    let disk = DiskSpec {
        path,
        vdev,
        read_only,
    };
    check_disk(&disk)?;
    Ok(disk)
}

/// Checks one disk: an absolute path and a vdev of `xvda` ... `xvdz`.
///
/// # Errors
/// Why the disk is refused.
pub fn check_disk(d: &DiskSpec) -> Result<(), String> {
    if !d.path.starts_with('/') {
        return Err(format!(
            "\"disk\" path {:?} is not an absolute path",
            d.path
        ));
    }
    if d.path.contains('\0') {
        return Err("\"disk\" path contains a NUL byte".to_owned());
    }
    if crate::blkback::devid_of(&d.vdev).is_none() {
        return Err(format!("\"disk\" vdev {:?} is not xvda ... xvdz", d.vdev));
    }
    Ok(())
}

/// The `vif` list: strings of `bridge=...,mac=...,ip=...` (all optional); MACs not given
/// are generated from `name` and the index, avoiding the others.
fn vifs(e: &Entry, name: &str) -> Result<Vec<VifSpec>, ConfigError> {
    let Value::List(items) = &e.value else {
        return Err(invalid(
            &e.at,
            "vif",
            format!(
                "\"vif\" must be an array of strings like [\"bridge=br0,mac=00:16:3e:01:02:03\"], not {}",
                e.value.kind()
            ),
        ));
    };
    if items.len() > MAX_VIFS {
        return Err(invalid(
            &e.at,
            "vif",
            format!(
                "\"vif\" has {} entries; at most {MAX_VIFS} are supported",
                items.len()
            ),
        ));
    }
    let mut parsed: Vec<(VifEntry, &Origin)> = Vec::new();
    for (value, at) in items {
        let Value::Str(text) = value else {
            return Err(invalid(
                at,
                "vif",
                format!("each \"vif\" entry must be a string, not {}", value.kind()),
            ));
        };
        let v = parse_vif_entry(text).map_err(|why| invalid(at, "vif", why))?;
        for (prev, _) in &parsed {
            if v.mac.is_some() && prev.mac == v.mac {
                return Err(invalid(
                    at,
                    "vif",
                    format!(
                        "\"vif\": mac {} is used twice",
                        v.mac.map_or(String::new(), |m| m.to_string())
                    ),
                ));
            }
            if v.ip.is_some() && prev.ip.map(|c| c.addr) == v.ip.map(|c| c.addr) {
                return Err(invalid(
                    at,
                    "vif",
                    format!(
                        "\"vif\": ip {} is used twice",
                        v.ip.map_or(String::new(), |c| c.addr.to_string())
                    ),
                ));
            }
        }
        parsed.push((v, at));
    }
    let mut taken: Vec<Mac> = parsed.iter().filter_map(|(v, _)| v.mac).collect();
    let mut out = Vec::with_capacity(parsed.len());
    for (index, (v, _)) in parsed.into_iter().enumerate() {
        let mac = match v.mac {
            Some(m) => m,
            None => {
                let m = generated_mac(name, index, &taken);
                taken.push(m);
                m
            }
        };
        out.push(VifSpec {
            bridge: v.bridge,
            mac: mac.to_string(),
            ip: v.ip.map(|c| c.to_string()),
        });
    }
    Ok(out)
}

/// The MAC generated for vif `index` of domain `name`: [`Mac::generated`] from
/// `NAME/vifINDEX`, with `/N` appended until it differs from every MAC in `taken`.
#[must_use]
pub fn generated_mac(name: &str, index: usize, taken: &[Mac]) -> Mac {
    let seed = format!("{name}/vif{index}");
    let mut mac = Mac::generated(seed.as_bytes());
    let mut n = 1u32;
    while taken.contains(&mac) {
        mac = Mac::generated(format!("{seed}/{n}").as_bytes());
        n += 1;
    }
    mac
}

/// One parsed `vif` entry, before defaults.
#[derive(Debug)]
struct VifEntry {
    bridge: String,
    mac: Option<Mac>,
    ip: Option<Ipv4Cidr>,
}

/// Parses one `vif` entry: `[bridge=NAME][,mac=MAC][,ip=A.B.C.D/N]`, keys in any order,
/// `""` for all defaults.
fn parse_vif_entry(text: &str) -> Result<VifEntry, String> {
    const KEYS_TEXT: &str = "the keys are bridge, mac and ip";
    let (mut bridge, mut mac, mut ip) = (None, None, None);
    if !text.trim().is_empty() {
        for part in text.split(',') {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!(
                    "\"vif\" entry {text:?}: {part:?} is not key=value ({KEYS_TEXT})"
                ));
            };
            let slot = match k.trim() {
                "bridge" => &mut bridge,
                "mac" => &mut mac,
                "ip" => &mut ip,
                other => {
                    return Err(format!(
                        "\"vif\" entry {text:?}: unknown key {other:?} ({KEYS_TEXT})"
                    ));
                }
            };
            if slot.is_some() {
                return Err(format!(
                    "\"vif\" entry {text:?}: {:?} is given twice",
                    k.trim()
                ));
            }
            let v = v.trim();
            if v.is_empty() {
                return Err(format!(
                    "\"vif\" entry {text:?}: {:?} has no value",
                    k.trim()
                ));
            }
            *slot = Some(v.to_owned());
        }
    }
    let bridge = bridge.unwrap_or_else(|| crate::netdev::DEFAULT_BRIDGE.to_owned());
    let mac = mac
        .map(|m| {
            let mac: Mac = m.parse().map_err(|e| format!("\"vif\" mac: {e}"))?;
            check_mac(mac)?;
            Ok::<_, String>(mac)
        })
        .transpose()?;
    let ip = ip
        .map(|t| {
            let c: Ipv4Cidr = t.parse().map_err(|e| format!("\"vif\" ip: {e}"))?;
            check_vif_ip(&bridge, c)?;
            Ok::<_, String>(c)
        })
        .transpose()?;
    check_bridge(&bridge)?;
    Ok(VifEntry { bridge, mac, ip })
}

/// Parses one `vif` entry as vif `index` of domain `name` (a missing MAC is generated).
///
/// # Errors
/// A message naming the key `vif` and what is wrong.
pub fn parse_vif(text: &str, name: &str, index: usize) -> Result<VifSpec, String> {
    let v = parse_vif_entry(text)?;
    Ok(VifSpec {
        bridge: v.bridge,
        mac: v
            .mac
            .unwrap_or_else(|| generated_mac(name, index, &[]))
            .to_string(),
        ip: v.ip.map(|c| c.to_string()),
    })
}

fn check_bridge(bridge: &str) -> Result<(), String> {
    crate::netdev::check_ifname(bridge)
        .map_err(|why| format!("\"vif\" bridge {bridge:?} is not an interface name: {why}"))
}

fn check_mac(mac: Mac) -> Result<(), String> {
    if !mac.is_unicast() || mac.is_zero() {
        return Err(format!(
            "\"vif\" mac {mac} is not a unicast address (the first byte must be even, and not all zero)"
        ));
    }
    Ok(())
}

fn check_vif_ip(bridge: &str, c: Ipv4Cidr) -> Result<(), String> {
    let a = c.addr;
    if c.prefix == 0 || c.prefix > 32 {
        return Err(format!("\"vif\" ip {c}: the prefix must be 1 to 32"));
    }
    if a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback() {
        return Err(format!(
            "\"vif\" ip {c}: not an address a guest interface can have"
        ));
    }
    if bridge == crate::netdev::DEFAULT_BRIDGE
        && let Ok(br) = crate::netdev::DEFAULT_BRIDGE_ADDR.parse::<Ipv4Cidr>()
        && br.addr == a
    {
        return Err(format!(
            "\"vif\" ip {c}: {} is the address of {bridge} itself",
            br.addr
        ));
    }
    Ok(())
}

/// Checks one vif as dom0d receives it: a valid bridge name, a unicast MAC, and if given
/// an IPv4 address with prefix.
///
/// # Errors
/// Why the vif is refused.
pub fn check_vif(v: &VifSpec) -> Result<(), String> {
    check_bridge(&v.bridge)?;
    let mac: Mac = v.mac.parse().map_err(|e| format!("\"vif\" mac: {e}"))?;
    check_mac(mac)?;
    if let Some(ip) = &v.ip {
        let c: Ipv4Cidr = ip.parse().map_err(|e| format!("\"vif\" ip: {e}"))?;
        check_vif_ip(&v.bridge, c)?;
    }
    Ok(())
}

/// Parses a size: an integer (MiB) or a number with a binary unit (`K`, `M`, `G`, `T`,
/// optionally followed by `iB`; case-insensitive), which must come to whole MiB.
///
/// # Errors
/// A message naming the key `memory` and the accepted forms.
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!("\"memory\" must be MiB or a size like \"512M\", \"2G\" or \"1536MiB\", not {s:?}")
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let kib: u64 = match unit.as_str() {
        "" | "m" | "mib" => 1024,
        "k" | "kib" => 1,
        "g" | "gib" => 1024 * 1024,
        "t" | "tib" => 1024 * 1024 * 1024,
        "kb" | "mb" | "gb" | "tb" => {
            return Err(format!(
                "\"memory\": {s:?} has a decimal unit; use binary units (K, M, G or KiB, MiB, GiB)"
            ));
        }
        _ => return Err(bad()),
    };
    let total_kib = n.checked_mul(kib).ok_or_else(bad)?;
    if total_kib % 1024 != 0 {
        return Err(format!("\"memory\" must be whole MiB, not {s:?}"));
    }
    Ok(total_kib / 1024)
}

/// Checks a domain name: 1 to [`MAX_NAME_LEN`] of `A-Z a-z 0-9 - _ . +`, not starting
/// with `-` and not all digits (those are domain ids; CLI.md §4). A UUID (36 bytes) never
/// fits, so names cannot be mistaken for UUIDs either.
///
/// # Errors
/// Why the name is refused.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("\"name\" is empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "\"name\" is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+')))
    {
        return Err(format!(
            "\"name\" {name:?} contains {c:?}; names use letters, digits, '-', '_', '.' and '+'"
        ));
    }
    if name.starts_with('-') {
        return Err(format!("\"name\" {name:?} starts with '-'"));
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "\"name\" {name:?} is all digits, which would read as a domain id"
        ));
    }
    Ok(())
}

/// Checks a memory size against the ABI's bounds.
///
/// # Errors
/// Why the size is refused.
pub fn check_memory(mib: u32) -> Result<(), String> {
    if (MIN_DOMAIN_MEM_MIB..=MAX_DOMAIN_MEM_MIB).contains(&mib) {
        Ok(())
    } else {
        Err(format!(
            "\"memory\" is {mib} MiB; it must be {MIN_DOMAIN_MEM_MIB} to {MAX_DOMAIN_MEM_MIB} MiB"
        ))
    }
}

/// Checks a vCPU count: only 1 for now.
///
/// # Errors
/// Why the count is refused.
pub fn check_vcpus(n: u32) -> Result<(), String> {
    match n {
        1 => Ok(()),
        0 => Err("\"vcpus\" is 0; a domain needs at least 1 vCPU".to_owned()),
        n => Err(format!(
            "\"vcpus\" is {n}; only 1 vCPU per domain is supported for now"
        )),
    }
}

/// Checks a kernel command line: at most [`MAX_CMDLINE`] bytes, no control characters.
///
/// # Errors
/// Why the command line is refused.
pub fn check_cmdline(c: &str) -> Result<(), String> {
    if c.len() > MAX_CMDLINE {
        return Err(format!(
            "\"cmdline\" is {} bytes long; the limit is {MAX_CMDLINE}",
            c.len()
        ));
    }
    if let Some(ch) = c.chars().find(|ch| ch.is_control()) {
        return Err(format!("\"cmdline\" contains the control character {ch:?}"));
    }
    Ok(())
}

fn check_path(key: &str, p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("\"{key}\" {p:?} is not an absolute path"));
    }
    if p.contains('\0') {
        return Err(format!("\"{key}\" contains a NUL byte"));
    }
    Ok(())
}

impl DomainConfig {
    /// Repeats every check [`parse`] makes, for a config that arrived some other way
    /// (dom0d checks what clients send). Paths must be absolute.
    ///
    /// # Errors
    /// The first problem, as a message naming the key.
    pub fn check(&self) -> Result<(), String> {
        check_name(&self.name)?;
        check_path("kernel", &self.kernel)?;
        if let Some(r) = &self.ramdisk {
            check_path("ramdisk", r)?;
        }
        if let Some(c) = &self.cmdline {
            if c.is_empty() {
                return Err("\"cmdline\" is empty (leave it out instead)".to_owned());
            }
            check_cmdline(c)?;
        }
        check_memory(self.memory_mib)?;
        check_vcpus(self.vcpus)?;
        for (i, d) in self.disks.iter().enumerate() {
            check_disk(d)?;
            if self.disks[..i].iter().any(|p| p.vdev == d.vdev) {
                return Err(format!("\"disk\": vdev {} is used twice", d.vdev));
            }
        }
        if self.vifs.len() > MAX_VIFS {
            return Err(format!(
                "\"vif\" has {} entries; at most {MAX_VIFS} are supported",
                self.vifs.len()
            ));
        }
        let mut macs: Vec<Mac> = Vec::new();
        for v in &self.vifs {
            check_vif(v)?;
            let mac: Mac = v.mac.parse().map_err(|e| format!("\"vif\" mac: {e}"))?;
            if macs.contains(&mac) {
                return Err(format!("\"vif\": mac {mac} is used twice"));
            }
            macs.push(mac);
        }
        Ok(())
    }

    /// The command line, `""` if there is none.
    #[must_use]
    pub fn cmdline_str(&self) -> &str {
        self.cmdline.as_deref().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<DomainConfig, ConfigError> {
        parse(
            text,
            "web.toml",
            Path::new("/etc/dom0/domains"),
            Path::new("/root"),
            &[],
        )
    }

    fn with(text: &str, sets: &[&str]) -> Result<DomainConfig, ConfigError> {
        let overrides: Vec<Override> = sets.iter().map(|s| s.parse().unwrap()).collect();
        parse(
            text,
            "web.toml",
            Path::new("/etc/dom0/domains"),
            Path::new("/root"),
            &overrides,
        )
    }

    const MINIMAL: &str = "name = \"web\"\nkernel = \"/k/hello.elf\"\n";

    #[test]
    fn a_minimal_config_gets_the_defaults() {
        let c = p(MINIMAL).unwrap();
        assert_eq!(
            c,
            DomainConfig {
                name: "web".into(),
                kernel: "/k/hello.elf".into(),
                ramdisk: None,
                cmdline: None,
                memory_mib: DEFAULT_MEMORY_MIB,
                vcpus: 1,
                on_poweroff: OnEvent::Destroy,
                on_reboot: OnEvent::Restart,
                on_crash: OnEvent::Destroy,
                disks: Vec::new(),
                vifs: Vec::new(),
            }
        );
        c.check().unwrap();
    }

    #[test]
    fn every_key() {
        let c = p(r#"
            # a comment
            name = "web-1.b_c+d"
            type = "pvh"
            kernel = "kernels/hello.elf"
            ramdisk = "../initrd.img"
            cmdline = "console=hvc0 quiet"
            memory = "64M"
            vcpus = 1
            on_poweroff = "preserve"
            on_reboot = "destroy"
            on_crash = "restart"
        "#)
        .unwrap();
        assert_eq!(c.name, "web-1.b_c+d");
        assert_eq!(c.kernel, "/etc/dom0/domains/kernels/hello.elf");
        // Lexically absolute: `..` is kept (the file system resolves it).
        assert_eq!(
            c.ramdisk.as_deref(),
            Some("/etc/dom0/domains/../initrd.img")
        );
        assert_eq!(c.cmdline.as_deref(), Some("console=hvc0 quiet"));
        assert_eq!(c.memory_mib, 64);
        assert_eq!(
            (c.on_poweroff, c.on_reboot, c.on_crash),
            (OnEvent::Preserve, OnEvent::Destroy, OnEvent::Restart)
        );
        c.check().unwrap();
    }

    #[test]
    fn unknown_keys_name_file_and_line() {
        let e = p("name = \"web\"\nkernel = \"/k\"\n\ncolour = \"red\"\n").unwrap_err();
        assert_eq!(e.to_string(), "web.toml:4: unknown key \"colour\"");
        assert_eq!(
            e.hint().unwrap(),
            "the keys are: name, type, kernel, ramdisk, cmdline, memory, vcpus, on_poweroff, on_reboot, on_crash, disk, vif"
        );
        let e = p("name = \"web\"\nmemroy = 4\n").unwrap_err();
        assert_eq!(e.to_string(), "web.toml:2: unknown key \"memroy\"");
        assert_eq!(e.hint().unwrap(), "did you mean \"memory\"?");
        // Tables are keys too.
        let e = p("name = \"web\"\n[extra_stuff]\na = 1\n").unwrap_err();
        assert_eq!(e.to_string(), "web.toml:2: unknown key \"extra_stuff\"");
        // The first bad key in the file is the one reported.
        let e = p("zzz = 1\naaa = 2\n").unwrap_err();
        assert_eq!(e.to_string(), "web.toml:1: unknown key \"zzz\"");
    }

    #[test]
    fn disks() {
        let c = p(&format!(
            "{MINIMAL}disk = [\n  \"path=/d/a.img,vdev=xvda\",\n  \"vdev=xvdb, access=ro, path=/d/b.img\",\n]\n"
        ))
        .unwrap();
        assert_eq!(
            c.disks,
            [
                DiskSpec {
                    path: "/d/a.img".into(),
                    vdev: "xvda".into(),
                    read_only: false
                },
                DiskSpec {
                    path: "/d/b.img".into(),
                    vdev: "xvdb".into(),
                    read_only: true
                }
            ]
        );
        c.check().unwrap();
        assert!(p(MINIMAL).unwrap().disks.is_empty());
        // Bad entries name the line of the entry.
        for (entry, why) in [
            ("vdev=xvda", "has no path="),
            ("path=/d/a.img", "has no vdev="),
            ("path=d/a.img,vdev=xvda", "is not an absolute path"),
            ("path=/d/a.img,vdev=hda", "is not xvda ... xvdz"),
            ("path=/d/a.img,vdev=xvdA", "is not xvda ... xvdz"),
            ("path=/d/a.img,vdev=xvda,access=rwx", "access must be"),
            (
                "path=/d/a.img,vdev=xvda,target=/x",
                "unknown key \"target\"",
            ),
            ("path=/d/a.img,vdev=xvda,", "is not key=value"),
            ("/d/a.img,xvda", "is not key=value"),
            ("path=/a,path=/b,vdev=xvda", "is given twice"),
        ] {
            let e = p(&format!("{MINIMAL}disk = [\n\"{entry}\"]\n")).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("web.toml:4: \"disk\""), "{entry}: {text}");
            assert!(text.contains(why), "{entry}: {text}");
        }
        let e = p(&format!(
            "{MINIMAL}disk = [\"path=/a,vdev=xvda\", \"path=/b,vdev=xvda\"]\n"
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "web.toml:3: \"disk\": vdev xvda is used twice (/a and /b)"
        );
        for (value, kind) in [("\"path=/a,vdev=xvda\"", "a string"), ("{}", "a table")] {
            let e = p(&format!("{MINIMAL}disk = {value}\n")).unwrap_err();
            assert!(e.to_string().contains(&format!("not {kind}")), "{e}");
        }
        let e = p(&format!("{MINIMAL}disk = [1]\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "web.toml:3: each \"disk\" entry must be a string, not an integer"
        );
        // Overrides: a TOML array replaces the list, a bare entry is a list of one.
        let c = with(MINIMAL, &["disk=[\"path=/x.img,vdev=xvdc\"]"]).unwrap();
        assert_eq!(c.disks[0].vdev, "xvdc");
        let c = with(MINIMAL, &["disk=path=/y.img,vdev=xvdd,access=ro"]).unwrap();
        assert_eq!(
            (c.disks[0].path.as_str(), c.disks[0].read_only),
            ("/y.img", true)
        );
        let c = with(
            &format!("{MINIMAL}disk = [\"path=/a,vdev=xvda\"]\n"),
            &["disk=[]"],
        )
        .unwrap();
        assert!(c.disks.is_empty());
        let e = with(MINIMAL, &["disk=path=/y.img"]).unwrap_err();
        assert!(e.to_string().starts_with("--set disk=path=/y.img: "), "{e}");
        // dom0d repeats the checks.
        let mut c = p(MINIMAL).unwrap();
        c.disks = vec![
            DiskSpec {
                path: "/a".into(),
                vdev: "xvda".into(),
                read_only: false,
            };
            2
        ];
        assert!(c.check().unwrap_err().contains("used twice"));
        c.disks[1].vdev = "sda".into();
        assert!(c.check().is_err());
        c.disks[1].vdev = "xvdb".into();
        c.disks[1].path = "rel".into();
        assert!(c.check().is_err());
    }

    #[test]
    fn vifs() {
        let c = p(&format!(
            "{MINIMAL}vif = [\n  \"bridge=br0,mac=00:16:3E:01:02:03,ip=10.0.0.2/24\",\n  \"\",\n  \" ip = 10.0.0.3/24 , bridge = br1 \",\n]\n"
        ))
        .unwrap();
        let generated = |i, taken: &[Mac]| generated_mac("web", i, taken).to_string();
        assert_eq!(
            c.vifs,
            [
                VifSpec {
                    bridge: "br0".into(),
                    mac: "00:16:3e:01:02:03".into(),
                    ip: Some("10.0.0.2/24".into()),
                },
                VifSpec {
                    bridge: "br0".into(),
                    mac: generated(1, &[]),
                    ip: None,
                },
                VifSpec {
                    bridge: "br1".into(),
                    mac: generated(2, &[]),
                    ip: Some("10.0.0.3/24".into()),
                },
            ]
        );
        assert!(c.vifs[1].mac.starts_with("00:16:3e:"));
        assert_ne!(c.vifs[1].mac, c.vifs[2].mac);
        c.check().unwrap();
        // The same config always gets the same MACs; another name other ones.
        assert_eq!(
            p(&format!("{MINIMAL}vif = [\"\", \"\"]\n")).unwrap().vifs[1],
            c.vifs[1]
        );
        let other = with(&format!("{MINIMAL}vif = [\"\"]\n"), &["name=db"]).unwrap();
        assert_ne!(other.vifs[0].mac, generated(0, &[]));
        assert!(p(MINIMAL).unwrap().vifs.is_empty());
        // A generated MAC never repeats a given one.
        let taken = Mac::generated(b"web/vif0");
        let c = p(&format!("{MINIMAL}vif = [\"\", \"mac={taken}\"]\n")).unwrap();
        assert_eq!(c.vifs[1].mac, taken.to_string());
        assert_ne!(c.vifs[0].mac, c.vifs[1].mac);
        assert_eq!(c.vifs[0].mac, generated(0, &[taken]));

        // Bad entries name the line of the entry, and hostile values are refused.
        for (entry, why) in [
            ("mac=01:16:3e:01:02:03", "not a unicast address"),
            ("mac=00:00:00:00:00:00", "not a unicast address"),
            ("mac=00:16:3e:01:02", "is not a MAC address"),
            ("mac=00:16:3e:01:02:03:04", "is not a MAC address"),
            ("mac=0:16:3e:01:02:03", "is not a MAC address"),
            ("mac=00-16-3e-01-02-03", "is not a MAC address"),
            ("ip=10.0.0.2", "no '/prefix'"),
            ("ip=10.0.0.2/33", "10.0.0.2/33"),
            ("ip=10.0.0.2/0", "the prefix must be 1 to 32"),
            ("ip=10.0.0.256/24", "bad address"),
            (
                "ip=224.0.0.1/4",
                "not an address a guest interface can have",
            ),
            ("ip=0.0.0.0/8", "not an address a guest interface can have"),
            ("ip=10.0.0.1/24", "is the address of br0 itself"),
            ("bridge=../../etc", "is not an interface name"),
            ("bridge=br 0", "is not an interface name"),
            ("bridge=averyveryverylongbridge", "is not an interface name"),
            ("bridge=..", "is not an interface name"),
            ("bridge=", "has no value"),
            (
                "script=vif-bridge",
                "unknown key \"script\" (the keys are bridge, mac and ip)",
            ),
            ("model=e1000", "unknown key \"model\""),
            ("bridge=br0,", "is not key=value"),
            ("bridge", "is not key=value"),
            (
                "mac=00:16:3e:01:02:03,mac=00:16:3e:01:02:04",
                "is given twice",
            ),
        ] {
            let e = p(&format!("{MINIMAL}vif = [\n\"{entry}\"]\n")).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("web.toml:4: \"vif\""), "{entry}: {text}");
            assert!(text.contains(why), "{entry}: {text}");
        }
        // A bridge other than br0 may use 10.0.0.1.
        assert!(p(&format!("{MINIMAL}vif = [\"bridge=lan,ip=10.0.0.1/24\"]\n")).is_ok());
        let e = p(&format!(
            "{MINIMAL}vif = [\"mac=00:16:3e:01:02:03\", \"mac=00:16:3E:01:02:03\"]\n"
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "web.toml:3: \"vif\": mac 00:16:3e:01:02:03 is used twice"
        );
        let e = p(&format!(
            "{MINIMAL}vif = [\"ip=10.0.0.2/24\", \"ip=10.0.0.2/16\"]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("ip 10.0.0.2 is used twice"), "{e}");
        let e = p(&format!("{MINIMAL}vif = [{}]\n", ["\"\""; 9].join(","))).unwrap_err();
        assert!(e.to_string().contains("at most 8"), "{e}");
        for (value, kind) in [("\"bridge=br0\"", "a string"), ("{}", "a table")] {
            let e = p(&format!("{MINIMAL}vif = {value}\n")).unwrap_err();
            assert!(e.to_string().contains(&format!("not {kind}")), "{e}");
        }
        let e = p(&format!("{MINIMAL}vif = [true]\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "web.toml:3: each \"vif\" entry must be a string, not a boolean"
        );
        // Overrides: a TOML array replaces the list, a bare entry is a list of one.
        let c = with(MINIMAL, &["vif=[\"bridge=br1\", \"\"]"]).unwrap();
        assert_eq!(c.vifs.len(), 2);
        let c = with(MINIMAL, &["vif=bridge=br2,ip=10.1.0.2/24"]).unwrap();
        assert_eq!(
            (c.vifs[0].bridge.as_str(), c.vifs[0].ip.as_deref()),
            ("br2", Some("10.1.0.2/24"))
        );
        let c = with(&format!("{MINIMAL}vif = [\"\"]\n"), &["vif=[]"]).unwrap();
        assert!(c.vifs.is_empty());
        let e = with(MINIMAL, &["vif=mac=ff:ff:ff:ff:ff:ff"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--set vif=mac=ff:ff:ff:ff:ff:ff: "),
            "{e}"
        );
        // dom0d repeats the checks.
        let mut c = p(MINIMAL).unwrap();
        c.vifs = vec![parse_vif("", "web", 0).unwrap(); 2];
        assert!(c.check().unwrap_err().contains("used twice"));
        c.vifs[1].mac = "03:00:00:00:00:01".into();
        assert!(c.check().unwrap_err().contains("unicast"));
        c.vifs[1].mac = "00:16:3e:00:00:01".into();
        c.check().unwrap();
        c.vifs[1].bridge = "a/b".into();
        assert!(c.check().is_err());
        c.vifs[1].bridge = "br0".into();
        c.vifs[1].ip = Some("10.0.0.2".into());
        assert!(c.check().is_err());
        c.vifs[1].ip = None;
        c.vifs = vec![c.vifs[0].clone(); 9];
        assert!(c.check().unwrap_err().contains("at most 8"));
    }

    #[test]
    fn xl_keys_not_supported_yet_say_so() {
        let e = p("name = \"web\"\nmaxmem = 512\n").unwrap_err();
        assert_eq!(e.to_string(), "web.toml:2: \"maxmem\" is not supported yet");
        let e = p("name = \"web\"\nvfb = []\n").unwrap_err();
        assert_eq!(e.to_string(), "web.toml:2: \"vfb\" is not supported yet");
        let e = p("builder = \"hvm\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "web.toml:1: \"builder\" is spelt \"type\" here"
        );
        assert_eq!(e.hint().unwrap(), "use \"type\"");
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let e = p("name = \"web\"\nkernel = \n").unwrap_err();
        match &e {
            ConfigError::Syntax { line, column, .. } => assert_eq!((*line, *column), (2, 10)),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().starts_with("web.toml:2:10: "), "{e}");
        let e = p("name = \"web\"\nname = \"again\"\n").unwrap_err();
        assert!(e.to_string().starts_with("web.toml:2:"), "{e}");
        assert!(matches!(p("[[["), Err(ConfigError::Syntax { .. })));
    }

    #[test]
    fn bad_types_name_the_key_and_the_type() {
        for (text, line, msg) in [
            ("name = 5\n", 1, "\"name\" must be a string, not an integer"),
            (
                "name = \"w\"\nkernel = \"/k\"\nmemory = true\n",
                3,
                "\"memory\" must be MiB as an integer or a size like \"512M\", not a boolean",
            ),
            (
                "name = \"w\"\nkernel = \"/k\"\nvcpus = \"1\"\n",
                3,
                "\"vcpus\" must be an integer, not a string",
            ),
            (
                "name = \"w\"\nkernel = [\"/k\"]\n",
                2,
                "\"kernel\" must be a string, not an array",
            ),
            (
                "name = \"w\"\nkernel = \"/k\"\non_crash = \"reboot\"\n",
                3,
                "\"on_crash\" must be \"destroy\", \"restart\" or \"preserve\", not \"reboot\"",
            ),
            (
                "name = \"w\"\nkernel = \"/k\"\ntype = \"hvm\"\n",
                3,
                "\"type\" must be \"pvh\" (the only domain type), not \"hvm\"",
            ),
            (
                "name = \"w\"\nkernel = \"/k\"\nmemory = 1.5\n",
                3,
                "\"memory\" must be MiB as an integer or a size like \"512M\", not a float",
            ),
        ] {
            let e = p(text).unwrap_err();
            assert_eq!(e.to_string(), format!("web.toml:{line}: {msg}"), "{text}");
        }
    }

    #[test]
    fn required_keys() {
        let e = p("kernel = \"/k\"\n").unwrap_err();
        assert_eq!(e.to_string(), "web.toml: \"name\" is required");
        assert_eq!(e.hint().unwrap(), "add a line like name = \"web\"");
        let e = p("name = \"w\"\n").unwrap_err();
        assert_eq!(e.to_string(), "web.toml: \"kernel\" is required");
        assert!(matches!(
            p(""),
            Err(ConfigError::Missing { key: "name", .. })
        ));
    }

    #[test]
    fn memory_sizes() {
        for (v, mib) in [
            ("64", 64),
            ("\"64\"", 64),
            ("\"512M\"", 512),
            ("\"512m\"", 512),
            ("\"2G\"", 2048),
            ("\"1536MiB\"", 1536),
            ("\"3GiB\"", 3072),
            ("\"4096K\"", 4),
            ("\"2 M\"", 2),
        ] {
            let c = p(&format!("{MINIMAL}memory = {v}\n")).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(c.memory_mib, mib, "{v}");
        }
        for (v, msg) in [
            ("1", "\"memory\" is 1 MiB; it must be 2 to 3072 MiB"),
            ("0", "\"memory\" is 0 MiB; it must be 2 to 3072 MiB"),
            ("\"4G\"", "\"memory\" is 4096 MiB; it must be 2 to 3072 MiB"),
            ("-5", "\"memory\" must be positive, not -5"),
            ("\"1536K\"", "\"memory\" must be whole MiB, not \"1536K\""),
            (
                "\"512MB\"",
                "\"memory\": \"512MB\" has a decimal unit; use binary units (K, M, G or KiB, MiB, GiB)",
            ),
            (
                "\"lots\"",
                "\"memory\" must be MiB or a size like \"512M\", \"2G\" or \"1536MiB\", not \"lots\"",
            ),
            (
                "\"99999999999999999999G\"",
                "\"memory\" must be MiB or a size like \"512M\", \"2G\" or \"1536MiB\", not \"99999999999999999999G\"",
            ),
            (
                "99999999999",
                "\"memory\" is 4294967295 MiB; it must be 2 to 3072 MiB",
            ),
        ] {
            let e = p(&format!("{MINIMAL}memory = {v}\n")).unwrap_err();
            assert_eq!(e.to_string(), format!("web.toml:3: {msg}"), "{v}");
        }
    }

    #[test]
    fn vcpus_must_be_one_for_now() {
        for (v, msg) in [
            ("0", "\"vcpus\" is 0; a domain needs at least 1 vCPU"),
            ("-1", "\"vcpus\" must be at least 1, not -1"),
            (
                "2",
                "\"vcpus\" is 2; only 1 vCPU per domain is supported for now",
            ),
        ] {
            let e = p(&format!("{MINIMAL}vcpus = {v}\n")).unwrap_err();
            assert_eq!(e.to_string(), format!("web.toml:3: {msg}"));
        }
    }

    #[test]
    fn names() {
        for good in ["a", "web01", "Web.Server-1", "x+y", "1a", &"n".repeat(31)] {
            check_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, why) in [
            ("", "empty"),
            ("42", "all digits"),
            ("-x", "starts with '-'"),
            ("my vm", "contains ' '"),
            ("wéb", "contains 'é'"),
            ("a/b", "contains '/'"),
            ("12345678-9abc-def0-1234-56789abcdef0", "36 bytes long"),
            (&"n".repeat(32), "32 bytes long"),
        ] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = p("name = \"42\"\nkernel = \"/k\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "web.toml:1: \"name\" \"42\" is all digits, which would read as a domain id"
        );
    }

    #[test]
    fn cmdlines() {
        let c = p(&format!("{MINIMAL}cmdline = \"\"\n")).unwrap();
        assert_eq!(c.cmdline, None, "an empty command line is no command line");
        let long = "x".repeat(MAX_CMDLINE);
        let c = p(&format!("{MINIMAL}cmdline = \"{long}\"\n")).unwrap();
        assert_eq!(c.cmdline_str().len(), MAX_CMDLINE);
        let e = p(&format!("{MINIMAL}cmdline = \"{long}x\"\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "web.toml:3: \"cmdline\" is 3840 bytes long; the limit is 3839"
        );
        let e = p(&format!("{MINIMAL}cmdline = \"a\\nb\"\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "web.toml:3: \"cmdline\" contains the control character '\\n'"
        );
    }

    #[test]
    fn overrides_apply_in_order_and_name_the_argument() {
        let c = with(
            MINIMAL,
            &[
                "memory=1G",
                "memory=128",
                "cmdline=console=hvc0 quiet",
                "name=db",
                "kernel=k2.elf",
                "on_crash=preserve",
                "vcpus=1",
            ],
        )
        .unwrap();
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.cmdline.as_deref(), Some("console=hvc0 quiet"));
        assert_eq!(c.name, "db");
        // Relative paths in overrides are relative to the current directory.
        assert_eq!(c.kernel, "/root/k2.elf");
        assert_eq!(c.on_crash, OnEvent::Preserve);
        // A TOML string in quotes is a string too.
        let c = with(MINIMAL, &["name=\"quoted\""]).unwrap();
        assert_eq!(c.name, "quoted");
        // Overrides may supply required keys.
        let c = with("", &["name=x", "kernel=/k"]).unwrap();
        assert_eq!((c.name.as_str(), c.kernel.as_str()), ("x", "/k"));

        let e = with(MINIMAL, &["colour=red"]).unwrap_err();
        assert_eq!(e.to_string(), "--set colour=red: unknown key \"colour\"");
        let e = with(MINIMAL, &["vcpus=4"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set vcpus=4: \"vcpus\" is 4; only 1 vCPU per domain is supported for now"
        );
        let e = with(MINIMAL, &["name=true"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set name=true: \"name\" must be a string, not a boolean"
        );
        let e = with(MINIMAL, &["disk.0.access=rw"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set disk.0.access=rw: unknown key \"disk.0.access\""
        );
        // An override replaces a bad file value before it is checked.
        let c = with(&format!("{MINIMAL}memory = 1\n"), &["memory=2"]).unwrap();
        assert_eq!(c.memory_mib, 2);
    }

    #[test]
    fn override_arguments_must_have_an_equals_sign() {
        assert!("memory".parse::<Override>().is_err());
        assert!("=5".parse::<Override>().is_err());
        let o: Override = "cmdline=a=b".parse().unwrap();
        assert_eq!((o.key.as_str(), o.value.as_str()), ("cmdline", "a=b"));
        assert_eq!(o.arg(), "cmdline=a=b");
    }

    #[test]
    fn config_paths() {
        let dir = Path::new(DEFAULT_CONFIG_DIR);
        assert_eq!(
            config_path("web", dir),
            Path::new("/etc/dom0/domains/web.toml")
        );
        assert_eq!(config_path("web.toml", dir), Path::new("web.toml"));
        assert_eq!(config_path("./web", dir), Path::new("./web"));
        assert_eq!(config_path("/x/y", dir), Path::new("/x/y"));
    }

    #[test]
    fn files_resolve_relative_paths_against_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("vms");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("web.toml");
        std::fs::write(
            &file,
            "name = \"web\"\nkernel = \"hello.elf\"\nramdisk = \"../initrd\"\n",
        )
        .unwrap();
        let c = load(&file, &[]).unwrap();
        assert_eq!(Path::new(&c.kernel), sub.join("hello.elf"));
        assert_eq!(
            Path::new(c.ramdisk.as_deref().unwrap()),
            sub.join("../initrd")
        );

        let e = load(&dir.path().join("missing.toml"), &[]).unwrap_err();
        assert!(e.is_not_found());
        assert!(e.to_string().starts_with("cannot read config "), "{e}");
        let e = load(dir.path(), &[]).unwrap_err();
        assert!(
            e.to_string().ends_with("is a directory, not a config file"),
            "{e}"
        );
        let bin = dir.path().join("bin.toml");
        std::fs::write(&bin, b"name = \"\xff\"").unwrap();
        let e = load(&bin, &[]).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn check_repeats_the_parser_rules() {
        let good = p(MINIMAL).unwrap();
        type Change = fn(&mut DomainConfig);
        let cases: [(Change, &str); 7] = [
            (|c| c.name = "1".into(), "all digits"),
            (|c| c.kernel = "rel".into(), "not an absolute path"),
            (|c| c.ramdisk = Some("rel".into()), "not an absolute path"),
            (|c| c.cmdline = Some(String::new()), "empty"),
            (|c| c.cmdline = Some("\u{7}".into()), "control character"),
            (|c| c.memory_mib = 4000, "2 to 3072"),
            (|c| c.vcpus = 2, "only 1 vCPU"),
        ];
        for (change, why) in cases {
            let mut c = good.clone();
            change(&mut c);
            let e = c.check().unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn the_example_configs_parse() {
        // The examples Dom0 ships in /etc/dom0/examples (dom0/initramfs).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("initramfs/etc/dom0/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                c.check().unwrap();
                assert!(c.kernel.starts_with('/'), "{}", c.kernel);
                seen += 1;
            }
        }
        assert!(seen >= 1, "no example configs in {}", dir.display());
    }

    #[test]
    fn garbage_never_panics_the_parser() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let alphabet = b"name=kernel\"[]{}.,#\n 0123456789memoryvcpus'\\=x";
        for len in 0..3000 {
            let text: String = (0..len % 80)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(alphabet[usize::try_from(x % alphabet.len() as u64).unwrap()])
                })
                .collect();
            let _ = p(&text);
        }
    }
}
