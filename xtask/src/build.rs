//! Nested cargo invocations: the bare-metal build and the host tests.
//!
//! Every nested cargo starts from a cleaned environment (see [`keep_env_var`]) so that
//! whatever the outer `cargo xtask` inherited (its own `CARGO_*` variables, a user's
//! `RUSTFLAGS` or `RUSTC_WRAPPER`) cannot change how the microvisor and guests are built.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The target every bare-metal image (microvisor and guests) is built for.
pub(crate) const BARE_METAL_TARGET: &str = "x86_64-unknown-none";

/// The environment variable through which the bare-metal flags reach rustc. Being
/// target-specific, it leaves build scripts and proc-macros (built for the host) alone.
const BARE_METAL_RUSTFLAGS_VAR: &str = "CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS";

/// QEMU's ELF loader and the microvisor's guest loader copy segments as they are and apply
/// no relocations, but the target defaults to static-PIE: link at the load address instead.
const RELOCATION_MODEL_STATIC: &str = "-Crelocation-model=static";

/// Images are linked and identity-mapped in the low 2 GiB, where the small code model's
/// sign-extended 32-bit absolute addresses reach everything. The target defaults to the
/// kernel code model, which assumes the top 2 GiB.
const CODE_MODEL_SMALL: &str = "-Ccode-model=small";

/// Keep frame pointers so that panic backtraces and gdb can walk the stack without
/// unwind tables (the target is panic=abort and emits none worth relying on).
const FORCE_FRAME_POINTERS: &str = "-Cforce-frame-pointers=yes";

/// All bare-metal flags, in the order they are passed.
const BARE_METAL_RUSTFLAGS: [&str; 3] = [
    RELOCATION_MODEL_STATIC,
    CODE_MODEL_SMALL,
    FORCE_FRAME_POINTERS,
];

/// Build profile of the bare-metal images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Profile {
    /// `--release` (the default everywhere).
    Release,
    /// The dev profile (`--debug` on the command line).
    Debug,
}

impl Profile {
    /// `--debug` on the command line selects [`Profile::Debug`].
    pub(crate) fn from_debug_flag(debug: bool) -> Self {
        if debug {
            Profile::Debug
        } else {
            Profile::Release
        }
    }

    /// Directory name under `target/<triple>/`.
    pub(crate) fn dir_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// A guest kernel: a package under `guests/` with a bin of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Guest {
    /// Prints a greeting and powers off.
    Hello,
    /// Attacks the microvisor (NPF, triple fault, ...) according to its cmdline.
    Hostile,
    /// Micro-benchmarks; prints `bench <name> <value> <unit>` lines.
    Bench,
    /// Runs until stopped, printing a counter every second of guest time.
    Spin,
    /// Echoes its PV console input back until destroyed.
    Echo,
    /// Drives its PV devices (writes, reads back and verifies 64 MiB on its disk).
    PvDemo,
    /// A hostile PV front-end: breaks the block and network protocols, one device each.
    BadFront,
}

impl Guest {
    /// Every guest, in build order.
    pub(crate) const ALL: [Guest; 7] = [
        Guest::Hello,
        Guest::Hostile,
        Guest::Bench,
        Guest::Spin,
        Guest::Echo,
        Guest::PvDemo,
        Guest::BadFront,
    ];

    /// Package and bin name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Guest::Hello => "hello",
            Guest::Hostile => "hostile",
            Guest::Bench => "bench",
            Guest::Spin => "spinner",
            Guest::Echo => "echo",
            Guest::PvDemo => "pvdemo",
            Guest::BadFront => "badfront",
        }
    }

    /// The guest with this package name.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == name)
    }
}

/// Something `cargo xtask build` produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Artifact {
    /// The hypervisor ELF, booted by QEMU with `-kernel`.
    Microvisor,
    /// A guest kernel ELF, packed into the boot bundle.
    Guest(Guest),
}

impl Artifact {
    /// Package name and bin name (they are equal for every artifact today).
    pub(crate) fn package_and_bin(self) -> (&'static str, &'static str) {
        match self {
            Artifact::Microvisor => ("microvisor", "microvisor"),
            Artifact::Guest(g) => (g.name(), g.name()),
        }
    }

    /// Every artifact.
    pub(crate) fn all() -> Vec<Artifact> {
        let mut all = vec![Artifact::Microvisor];
        all.extend(Guest::ALL.map(Artifact::Guest));
        all
    }

    /// The microvisor plus the given guests, without duplicates.
    pub(crate) fn with_guests(guests: impl IntoIterator<Item = Guest>) -> Vec<Artifact> {
        let mut list = vec![Artifact::Microvisor];
        for g in guests {
            if !list.contains(&Artifact::Guest(g)) {
                list.push(Artifact::Guest(g));
            }
        }
        list
    }
}

/// The workspace root (the parent of this crate's directory).
pub(crate) fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// The cargo target directory. Always `<workspace>/target`: xtask passes `--target-dir`
/// explicitly, so an inherited `CARGO_TARGET_DIR` does not move the artifacts.
pub(crate) fn target_dir() -> PathBuf {
    workspace_root().join("target")
}

/// Where xtask keeps bundles and logs: `target/xtask/<sub>`.
pub(crate) fn xtask_dir(sub: &str) -> PathBuf {
    target_dir().join("xtask").join(sub)
}

/// `path` relative to the workspace root when it lies inside it, for messages.
pub(crate) fn display_path(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Path of a built bare-metal artifact.
pub(crate) fn artifact_path(profile: Profile, artifact: Artifact) -> PathBuf {
    let (_, bin) = artifact.package_and_bin();
    target_dir()
        .join(BARE_METAL_TARGET)
        .join(profile.dir_name())
        .join(bin)
}

/// Whether an inherited environment variable survives into a nested cargo run.
///
/// Removed: every `CARGO_*` variable (the outer cargo's `CARGO_PKG_*`,
/// `CARGO_MANIFEST_DIR`, `CARGO_TARGET_DIR`, `CARGO_BUILD_*`, `CARGO_ENCODED_RUSTFLAGS`,
/// per-target flags, ...) except the user settings listed below, and the rustc
/// overrides (`RUSTFLAGS`, `RUSTDOCFLAGS`, `RUSTC`, `RUSTC_WRAPPER`, ...).
///
/// Kept: `CARGO_HOME` (where the registry cache lives), terminal, network and registry
/// settings, and everything else (`PATH`, `HOME`, `RUSTUP_*` so the pinned toolchain is
/// used).
pub(crate) fn keep_env_var(name: &str) -> bool {
    const KEPT_CARGO_PREFIXES: [&str; 5] = [
        "CARGO_TERM_",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
    ];
    const REMOVED: [&str; 7] = [
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_BOOTSTRAP",
    ];
    if name == "CARGO_HOME" || KEPT_CARGO_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return true;
    }
    // `__CARGO_*` are cargo-internal (e.g. `__CARGO_FIX_PLZ`).
    if name.starts_with("CARGO") || name.starts_with("__CARGO") {
        return false;
    }
    !REMOVED.contains(&name)
}

/// The cargo binary: the one that runs xtask (`$CARGO`), else `cargo` from `PATH`.
fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// A `cargo` command rooted at the workspace, with a cleaned environment.
pub(crate) fn cargo_command() -> Command {
    let mut cmd = Command::new(cargo_program());
    cmd.current_dir(workspace_root());
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str()
            && !keep_env_var(name)
        {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The arguments of the bare-metal `cargo build`.
pub(crate) fn build_args(profile: Profile, artifacts: &[Artifact]) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["build", "--target", BARE_METAL_TARGET, "--target-dir"]
        .map(OsString::from)
        .into();
    args.push(target_dir().into_os_string());
    if profile == Profile::Release {
        args.push("--release".into());
    }
    for artifact in artifacts {
        let (package, bin) = artifact.package_and_bin();
        args.extend(["--package", package, "--bin", bin].map(OsString::from));
    }
    args
}

/// Value of [`BARE_METAL_RUSTFLAGS_VAR`].
pub(crate) fn bare_metal_rustflags() -> String {
    BARE_METAL_RUSTFLAGS.join(" ")
}

/// Builds `artifacts` for [`BARE_METAL_TARGET`] in one cargo invocation and checks that
/// each ELF exists afterwards.
pub(crate) fn build(profile: Profile, artifacts: &[Artifact]) -> Result<()> {
    let mut cmd = cargo_command();
    cmd.args(build_args(profile, artifacts));
    cmd.env(BARE_METAL_RUSTFLAGS_VAR, bare_metal_rustflags());
    let names: Vec<&str> = artifacts.iter().map(|a| a.package_and_bin().1).collect();
    eprintln!(
        "xtask: building {} ({}, {BARE_METAL_TARGET})",
        names.join(", "),
        profile.dir_name()
    );
    run_checked(&mut cmd, "the bare-metal build")?;
    for &artifact in artifacts {
        let path = artifact_path(profile, artifact);
        if !path.is_file() {
            bail!(
                "cargo reported success but {} does not exist; check that package `{}` has a \
                 bin target named `{}`",
                path.display(),
                artifact.package_and_bin().0,
                artifact.package_and_bin().1,
            );
        }
    }
    Ok(())
}

/// The target of the static Dom0 userspace.
pub(crate) const MUSL_TARGET: &str = crate::provision::MUSL_TARGET;

/// Flags for the musl build: keep symbols (panic messages name functions) but drop the
/// debug info the release profile asks for, which would triple the initramfs.
const MUSL_RUSTFLAGS: &str = "-Cstrip=debuginfo";

/// The package and binaries of the Dom0 userspace that go into the initramfs.
pub(crate) const DOM0_PACKAGE: &str = "dom0";
/// The Dom0 binaries, each installed as `/usr/bin/<name>`.
pub(crate) const DOM0_BINARIES: [&str; 3] = ["dom0", "dom0d", "dom0-probe"];

/// The arguments of the musl `cargo build`.
pub(crate) fn dom0_build_args() -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "build",
        "--release",
        "--package",
        DOM0_PACKAGE,
        "--bins",
        "--target",
        MUSL_TARGET,
        "--target-dir",
    ]
    .map(OsString::from)
    .into();
    args.push(target_dir().into_os_string());
    args
}

/// Where a Dom0 binary is built.
pub(crate) fn dom0_binary_path(name: &str) -> PathBuf {
    target_dir().join(MUSL_TARGET).join("release").join(name)
}

/// Whether an ELF file has no program interpreter (is statically linked).
pub(crate) fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let field = |off: usize, len: usize| -> Option<u64> {
        let b = bytes.get(off..off + len)?;
        let mut v = [0u8; 8];
        v[..len].copy_from_slice(b);
        Some(u64::from_le_bytes(v))
    };
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (field(0x20, 8), field(0x36, 2), field(0x38, 2))
    else {
        return false;
    };
    (0..phnum).all(|i| {
        usize::try_from(phoff + i * phentsize)
            .ok()
            .and_then(|off| field(off, 4))
            .is_some_and(|kind| kind != u64::from(PT_INTERP))
    })
}

/// Builds the static Dom0 binaries for [`MUSL_TARGET`] and returns `(name, path)` for each
/// of [`DOM0_BINARIES`].
pub(crate) fn build_dom0_userspace() -> Result<Vec<(&'static str, PathBuf)>> {
    let mut cmd = cargo_command();
    cmd.args(dom0_build_args());
    cmd.env(
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS",
        MUSL_RUSTFLAGS,
    );
    eprintln!(
        "xtask: building the Dom0 userspace ({}, release, {MUSL_TARGET})",
        DOM0_BINARIES.join(", ")
    );
    run_checked(&mut cmd, "the Dom0 userspace build")?;
    let mut out = Vec::new();
    for name in DOM0_BINARIES {
        let path = dom0_binary_path(name);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "package `{DOM0_PACKAGE}` built, but {} is missing: Dom0 needs a bin target \
                 named `{name}`",
                display_path(&path)
            )
        })?;
        if !is_static_elf(&bytes) {
            bail!(
                "{} is dynamically linked; the initramfs has no C library",
                display_path(&path)
            );
        }
        out.push((name, path));
    }
    Ok(out)
}

/// Runs the host test suite: `cargo test` at the workspace root (the default members are
/// the host crates; the bare-metal guests are deliberately not included).
pub(crate) fn host_tests() -> Result<()> {
    let mut cmd = cargo_command();
    cmd.arg("test").arg("--target-dir").arg(target_dir());
    eprintln!("xtask: running host tests (cargo test)");
    run_checked(&mut cmd, "the host tests")
}

/// Runs `cmd` with inherited stdio and turns a failure into an error naming `what`.
fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {:?}; is cargo on PATH?", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status}); see the cargo output above");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaned_environment_drops_cargo_and_rustc_overrides() {
        for removed in [
            "CARGO",
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS",
            "CARGO_MAKEFLAGS",
            "__CARGO_FIX_PLZ",
            "RUSTFLAGS",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTC",
        ] {
            assert!(!keep_env_var(removed), "{removed} should be removed");
        }
        for kept in [
            "PATH",
            "HOME",
            "CARGO_HOME",
            "RUSTUP_HOME",
            "RUSTUP_TOOLCHAIN",
            "CARGO_TERM_COLOR",
            "CARGO_NET_OFFLINE",
            "CARGO_HTTP_PROXY",
        ] {
            assert!(keep_env_var(kept), "{kept} should be kept");
        }
    }

    #[test]
    fn build_args_name_every_package_and_bin() {
        let args = build_args(Profile::Release, &Artifact::all());
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.starts_with("build --target x86_64-unknown-none --target-dir "));
        assert!(args.contains(&"--release".to_owned()));
        for name in ["microvisor", "hello", "hostile", "bench"] {
            assert!(
                joined.contains(&format!("--package {name} --bin {name}")),
                "{joined}"
            );
        }
        let debug = build_args(Profile::Debug, &[Artifact::Microvisor]);
        assert!(!debug.iter().any(|a| a == "--release"));
    }

    #[test]
    fn rustflags_are_static_small_with_frame_pointers() {
        assert_eq!(
            bare_metal_rustflags(),
            "-Crelocation-model=static -Ccode-model=small -Cforce-frame-pointers=yes"
        );
    }

    #[test]
    fn artifact_paths_follow_cargo_layout() {
        let p = artifact_path(Profile::Release, Artifact::Guest(Guest::Hostile));
        assert!(
            p.ends_with("target/x86_64-unknown-none/release/hostile"),
            "{}",
            p.display()
        );
        let p = artifact_path(Profile::Debug, Artifact::Microvisor);
        assert!(
            p.ends_with("target/x86_64-unknown-none/debug/microvisor"),
            "{}",
            p.display()
        );
    }

    #[test]
    fn dom0_userspace_is_built_static_for_musl() {
        let args: Vec<String> = dom0_build_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.starts_with(
                "build --release --package dom0 --bins --target x86_64-unknown-linux-musl"
            ),
            "{joined}"
        );
        assert!(
            dom0_binary_path("dom0d").ends_with("target/x86_64-unknown-linux-musl/release/dom0d")
        );
        // The running test binary is dynamically linked (glibc host target).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"#!/bin/sh"));
        // An ELF header with no program headers has no interpreter.
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        assert!(is_static_elf(&elf));
    }

    #[test]
    fn with_guests_deduplicates() {
        let list = Artifact::with_guests([Guest::Hello, Guest::Hello, Guest::Bench]);
        assert_eq!(
            list,
            [
                Artifact::Microvisor,
                Artifact::Guest(Guest::Hello),
                Artifact::Guest(Guest::Bench)
            ]
        );
    }
}
