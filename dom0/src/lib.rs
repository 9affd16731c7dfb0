//! # dom0: Dom0 userspace for the microvisor
//!
//! Dom0 is an unmodified Debian Linux running as the microvisor's privileged domain. It
//! reaches the microvisor through the kernel module in `dom0/kmod` (`/dev/microvisor`, see
//! its README). This crate holds the userspace on top of it, as a library plus three
//! static (musl-friendly) binaries:
//!
//! | binary | what |
//! |--------|------|
//! | `dom0d` | the control service: owns `/dev/microvisor`, serves the control API on a Unix socket |
//! | `dom0` | the CLI, a thin client of `dom0d` (conventions in `CLI.md`) |
//! | `dom0-probe` | hostile and end-to-end checks of `/dev/microvisor` for the Dom0 scenario tests ([`probe`]) |
//!
//! Build for Dom0 with `cargo build -p dom0 --release --target x86_64-unknown-linux-musl`.
//!
//! ## dom0d
//!
//! ```text
//! dom0d [--socket PATH] [--device PATH] [--state-dir DIR] [-v]
//! ```
//!
//! - `--socket PATH` (env `DOM0_SOCKET`, default `/run/dom0/control.sock`): where to serve.
//!   Missing parent directories are created. The socket has mode 0600 (root only).
//! - `--device PATH` (default `/dev/microvisor`): the kernel module's device node.
//! - `--state-dir DIR` (env `DOM0_STATE_DIR`, default `/var/lib/dom0`): where dom0d keeps
//!   the state of the domains it built (`state.json`) and their console histories
//!   (`consoles/NAME.log`), so that a restarted dom0d serves them again ([`state`]).
//! - `-v`: also log every connection and request.
//!
//! At startup dom0d opens the device (exit 1 with `cannot open /dev/microvisor: <why> — is
//! the microvisor module loaded? (insmod microvisor.ko)` if it cannot; it must run as
//! root), asks the microvisor for its host information once and logs the answer (or the
//! error, and keeps serving), opens a second, non-blocking handle for events, then binds
//! the socket. **Readiness:** the socket path appears
//! only once dom0d listens on it (it is bound in a private directory, set to 0600 and
//! renamed into place), so `[ -S /run/dom0/control.sock ]` means requests will be served. A stale
//! socket from a dead dom0d is replaced; if another process answers on the path, or the
//! path is not a socket, dom0d exits 1. Startup takes milliseconds.
//!
//! dom0d logs to stderr, one line per event: `2025-01-31T12:00:00.123Z LEVEL message`
//! (UTC). Lines caused by clients are rate-limited. On SIGTERM or SIGINT it saves its
//! state, removes its socket and exits 0, leaving the domains it built running and every
//! page and port of theirs in place. Exit codes: 0 after a signal, 1 startup failure, 2
//! usage error.
//!
//! **Restarts** ([`state`]): before it serves anything, dom0d reads its state file and
//! adopts every recorded domain that still runs under the same id and name (consoles,
//! xenstore, disks and vifs served again in their recorded phase, requests the earlier
//! dom0d left unanswered served now; `state: domain 3 (pvdemo) adopted from an earlier
//! dom0d`); the slots and ports of recorded domains that are gone are released. An
//! unusable file is logged and ignored.
//!
//! **Domain ends** ([`supervisor`]): once at startup, after each create and after each
//! event mask, dom0d lists the domains and applies `on_poweroff`/`on_reboot`/`on_crash`
//! to those it built that have shut down or crashed, once each, logging e.g.
//! `on_poweroff: domain 3 (hello) destroyed` or `on_crash: domain 4 (x) restarted as
//! domain 5`.
//!
//! **Consoles** ([`console`]): every domain dom0d builds has a PV console; dom0d keeps its
//! page mapped for the domain's life and drains the guest's output into a history of the
//! last 64 KiB per domain *name* (oldest bytes dropped; continued across `on_reboot`/
//! `on_crash` restarts; kept after the domain is gone, for the 16 most recent such names,
//! until a new create of the name). Output is taken on `EVENT_EVTCHN` (the pending ports,
//! [`Service::pump_evtchn`](server::Service::pump_evtchn)), on every domain-state sweep,
//! and by a 500 ms poll; the last output is drained after a destroy. A guest that breaks
//! its ring gets `WARN console: domain 3 (x) broke its console ring (...); its console is
//! disabled`, and only its console stops.
//!
//! **xenstore** ([`xenstored`], [`xenstore`]): dom0d is the store of the domains it builds,
//! served over each one's xenstore page like its console (pending ports, the sweeps, the
//! 500 ms poll). Each domain gets `/local/domain/<id>` with `name` and `domid` (read-only
//! to it) and `control`; a guest reads and writes only below its home (and nodes whose
//! permissions name it), may watch paths and use transactions; Domain 0 may do everything.
//! Quotas: 1000 nodes per domain, 2 KiB per value, 128 watches and 10 transactions per
//! connection, 64 KiB of unread replies. A guest that breaks its ring or stops reading
//! gets one `WARN xenstore: domain 3 (x) broke its xenstore ring (...); its xenstore
//! connection is cut off (page unmapped, port closed); ...` line; its home stays until
//! the domain is gone (destroy, `on_*` action, or the sweep), when `@releaseDomain` fires.
//! **PV shutdown** follows Xen's convention: a guest that handles it writes
//! `control/feature-poweroff` (`feature-reboot`) = `1` and watches `control/shutdown`;
//! `Shutdown` requests write `poweroff` or `reboot` there, logging `shutdown: domain 3
//! (spin) asked to poweroff`, or are refused at once if the guest never announced it.
//!
//! **Events** ([`events`]): a task waits (epoll, no polling loop) until the event handle is
//! readable, reads the 8-byte mask, logs `event: domain state changed (mask 0x1, N so far)`
//! (rate-limited; a mask of only `EVENT_EVTCHN` at debug level) and counts it; `Events` requests report the count and the time of the
//! last one. If the device cannot be polled (a `microvisor.ko` without events) dom0d logs
//! `WARN events unavailable: ...` once and serves on; if the handle fails later it logs an
//! `ERROR stopped listening ...` line and reports `stopped`.
//!
//! Each client costs only its own connection ([`server`]): at most 64 connections are
//! served at once (more get a `Busy` error), a request must arrive within 60 s, a reply
//! must be taken within 10 s, and 8 malformed frames end a connection.
//!
//! ## The control API
//!
//! Versioned by [`proto::PROTOCOL_VERSION`] (now 3: `DomainConfig` gained `disks` in 2 and
//! `vifs` in 3), defined
//! in [`proto`].
//!
//! - **Framing:** a `u32` little-endian length, then that many bytes of postcard. Payloads
//!   above [`proto::MAX_FRAME`] (64 KiB) are answered with `FrameTooLarge` and the
//!   connection is closed; payloads that are not exactly one message get `Malformed` and
//!   the connection stays usable.
//! - **Handshake:** the first request is `Hello { protocol, software }`; dom0d answers with
//!   its own `Hello` and closes the connection if the versions differ. Requests before the
//!   hello get `HandshakeRequired`. `Hello` is variant 0 of both enums and never changes.
//! - **Requests** and their replies:
//!
//! | request | reply |
//! |---------|-------|
//! | `Version` | `Version { dom0d, protocol, control_version_built, microvisor: Result<{version, control_version}, ApiError> }` |
//! | `HostInfo` | `HostInfo(Host)`: pcpus, dom0_pcpu, memory, TSC, uptime, microvisor version |
//! | `ListDomains { from }` | `Domains { domains, next }`: up to 256 domains with `domid >= from`, ascending; `next` is the `from` of the following page, `None` at the end |
//! | `DomainInfo { domid }` | `Domain(Domain)`, or `Error(NoSuchDomain)` |
//! | `Events` | `Events(EventReport)`: status (`Listening`, `Unavailable { reason }`, `Stopped { reason }`), masks received, last mask, its time (ms since the epoch) and age (ms). Added at the end within protocol 1: an older dom0d answers `Error(Malformed)`, which the CLI shows as "unknown" |
//! | `Pause { domid }` | `Lifecycle(LifecycleDone { action, domid, name, state })` once the domain shows as `paused` |
//! | `Unpause { domid }` | `Lifecycle(..)` with the state after the unpause (`running` or `blocked`) |
//! | `Destroy { domid }` | `Lifecycle(..)` with `state: None` once the domain is gone from the list |
//! | `Create { config, dry_run, paused }` | `Created(CreateReport { domid, config, plan, state, took_ms })` once the domain runs (or is built and paused; `domid: None` for a dry run), or `Error(Create(CreateError))` |
//! | `ConsoleStatus { domid }` | `ConsoleStatus(Option<ConsoleSummary { domid, first_byte_ms, total_bytes, history_bytes, disabled, attached }>)`; `None` for a domain without a console dom0d serves |
//! | `Logs { domain, follow }` | a console stream (below): the history, and with `follow` new output until the domain is destroyed |
//! | `ConsoleAttach { domain, force }` | a console stream with input: the history, new output, and `ConsoleInput(bytes)` frames from the client into the guest; `Error(ConsoleBusy)` while another client is attached, unless `force` (which ends the other session with `TakenOver`) |
//! | `ConsoleInput(bytes)`, `ConsoleDetach` | only inside an attach stream (no reply; the detach is answered with `ConsoleEnd(Detached)`) |
//! | `Shutdown { domid, request: Poweroff\|Reboot }` | `ShutdownSent { request, domid, name, state }` once `poweroff`/`reboot` is in the guest's `control/shutdown` (the guest acts in its own time); `Error(PvShutdownUnsupported { request, domid, name, node })` at once if the guest never wrote `node` (`control/feature-poweroff` or `-reboot`) = 1, or `node: None` if dom0d serves no xenstore for it; `Error(GuestRequestNotApplicable { request, domid, name, why: DomainZero\|Ended(state) })`. Appended within protocol 1 (an older dom0d: `Malformed`, exit 69) |
//! | `BlockList { domid }` | `Blocks([BlockDevice])`: the disks dom0d serves the domain (vdev, devid, path, read_only, sectors, both xenbus states, connected, stopped), empty if none; `Error(NoSuchDomain)`. Added in protocol 2 |
//! | `NetworkList { domid }` | `Networks([NetworkDevice])`: the vifs dom0d serves the domain (handle, mac, ip, bridge, tap, both xenbus states, connected, stopped, tx/rx packets and bytes, drops, errors), empty if none; `Error(NoSuchDomain)`. Added in protocol 3 |
//!
//! **Console streams** ([`session`]): `domain` is a domid or a name (a domain that is gone
//! still has its kept history). dom0d answers `ConsoleOpened { name, domid, last_domid,
//! history_bytes, disabled, took_over }`, then raw output as `ConsoleOutput(bytes)` frames
//! (at most 16 KiB each), then one `ConsoleEnd` (`Done`, `Detached`, `TakenOver`,
//! `DomainGone`, `Disabled { reason }`), and closes the connection. A refusal
//! (`UnknownDomain { reference }`, `NoConsole { domid, name }`, `ConsoleBusy { domid, name
//! }`) is an ordinary error reply. A client that reads too slowly skips what the bounded
//! history dropped; one that stops reading is disconnected after 10 s. These requests were
//! appended within protocol 1 (an older dom0d answers `Malformed`, shown as "does not know
//! the logs request", exit 69).
//!
//! The three lifecycle requests were appended after `Events` within protocol 1 (an older
//! dom0d answers `Error(Malformed)`, which the CLI reports as "dom0d ... does not know the
//! pause request", exit 69). dom0d handles them in [`lifecycle`]:
//!
//! - domain 0 is refused with `DomainZero` before the microvisor is asked;
//! - the domain is read first (`NoSuchDomain` if it does not exist; its name goes into
//!   the log and the errors), then `DomainPause`/`DomainUnpause`/`DomainDestroy` (ops 7-9,
//!   `R10` = domid, no buffer) is issued; its errno becomes a typed error: `ESRCH`
//!   `NoSuchDomain`, `EBUSY` `AlreadyPaused` ("domain 3 (spin) is already paused") or
//!   `NotPaused` (with the current state), `EINVAL` `DomainEnded` (shut down or crashed:
//!   only destroy applies), others `Hypercall`;
//! - a reply means done: after a pause dom0d polls `DomainInfo` (every 5 ms, without
//!   holding up other clients) until the state is `paused`, after a destroy until the
//!   domain is gone; past 2 s (pause) or 5 s (destroy) it answers `LifecycleTimeout`. A
//!   pause that meets a shut-down or crashed domain answers `DomainEnded`.
//!
//! Each completed action is logged at INFO, e.g. `pause: domain 3 (spin) paused (was
//! running, now paused; 1 ms)`; refusals at WARN, timeouts at ERROR (all rate-limited).
//!
//! - **Errors** ([`proto::ApiError`]): `HandshakeRequired`, `FrameTooLarge`, `Malformed`,
//!   `NoSuchDomain`, `Hypercall { op, errno }` (the microvisor or the module refused),
//!   `BadRecord` (the microvisor's answer did not validate), `Busy`, and for lifecycle
//!   requests `DomainZero { action }`, `AlreadyPaused { domid, name }`,
//!   `NotPaused { domid, name, state }`, `DomainEnded { action, domid, name, state,
//!   reason }`, `LifecycleTimeout { action, domid, name, waited_ms, state }`; for
//!   consoles `UnknownDomain`, `NoConsole`, `ConsoleBusy`; for `Shutdown`
//!   `PvShutdownUnsupported` and `GuestRequestNotApplicable`.
//!
//! ### Building domains
//!
//! `Create` (appended after the lifecycle requests within protocol 1; an older dom0d
//! answers `Malformed`, shown as "does not know the create request", exit 69) carries the
//! effective [`config::DomainConfig`] with absolute paths; dom0d checks it again and reads
//! the kernel and ramdisk itself. [`builder`] does the work on a blocking thread, one
//! create at a time (others wait; all other requests are served meanwhile):
//!
//! 1. everything is checked before the domain exists: the config, the kernel file (at most
//!    256 MiB; an x86-64 ELF executable with the PVH entry note, parsed by
//!    `microvisor::elf::PvhImage`), every `PT_LOAD` segment inside the domain's RAM and
//!    clear of page 0, the boot page and the xenstore and console pages (the last two
//!    pages of RAM), the entry inside a segment, the command line
//!    (`microvisor::domain::check`), the ramdisk between the kernel's end and those pages,
//!    the memory against `HostInfo`'s free memory, the name against every domain's, and
//!    the foreign window;
//! 2. `DomainCreate` (a paused domain with zeroed RAM; the microvisor hands out domids
//!    round-robin, so a domid that was just freed names no new domain for a while);
//! 3. its memory is written through 64 foreign-window slots from the middle of the window
//!    (`ForeignMap` each page of a batch, `mmap`, copy, `munmap`, `ForeignUnmap`): the
//!    segments' file bytes, the boot page at 0x1000 (`microvisor::domain::boot_info_page`:
//!    `hvm_start_info`, the command line at 0x1100, and a memory map of two entries: RAM
//!    `0..memory - 8 KiB` and the xenstore and console pages as `E820_RESERVED`) and the
//!    ramdisk, page-aligned below them, as the start info's one module (its
//!    `hvm_modlist_entry` at 0x1080);
//! 4. the PV console, then the xenstore page, each: `EvtchnAllocUnbound` (the DomU's
//!    port), `EvtchnBindInterdomain` (domain 0's port), the page (console: `memory - 4
//!    KiB`, xenstore: `memory - 8 KiB`) `ForeignMap`ped into a slot of its own and
//!    `mmap`ed for the domain's life ([`pages`]), and `DomainSetParam` of `CONSOLE_PFN`
//!    and `CONSOLE_EVTCHN` (`STORE_PFN`, `STORE_EVTCHN`); a microvisor without event
//!    channels (`ENOSYS`) builds domains without either (one warning);
//! 5. `DomainSetEntry { entry, start_info: 0x1000 }`;
//! 6. `DomainUnpause`, unless `paused`.
//!
//! If any step after `DomainCreate` fails, dom0d closes the ports it bound, unmaps the
//! pages, destroys the domain and waits until it is gone, so the free memory is what it was
//! before; only if that fails too does the error name the domain left behind. The microvisor's errnos become typed errors (`ENOMEM`
//! `NotEnoughMemory`, `EEXIST` `NameInUse`, `ENOSPC` `NoFreeDomid`, `EINVAL`
//! `InvalidConfig`). Each create is logged with its duration, e.g. `create: domain 3
//! (web) running: 16 MiB, entry 0x100000, 2 segment(s); 14 ms`; failures at WARN.
//!
//! - **Create errors** ([`proto::CreateError`]): `InvalidConfig { reason }`,
//!   `Unreadable { what, path, reason, problem }`, `BadKernel { path, reason, fix }`,
//!   `BadRamdisk { path, reason, fix }`, `NotEnoughMemory { name, needed_kib, free_kib }`,
//!   `NameInUse { name, domid }`, `NoFreeDomid`, `NoForeignWindow`, `Failed { step, errno,
//!   reason, domid, cleanup }`.
//!
//! dom0d decodes the microvisor's `shared_abi::control` records with zerocopy and
//! validates them ([`microvisor`]): result sizes and counts, states and shutdown reasons,
//! NUL-padded ASCII names and versions, ascending list pages. The device sits behind the
//! [`microvisor::Microvisor`] trait; host tests use [`fake::FakeMicrovisor`].
//!
//! ## The dom0 CLI
//!
//! | command | output |
//! |---------|--------|
//! | `dom0 list` | one line per domain: `ID NAME STATE MEM(MiB) VCPUS PCPU TIME(s)`, STATE being xl's flags (`r` running, `b` blocked, `p` paused, `s` shut down + reason letter `o`/`r`/`s`/`c`/`w`, `c` in the fifth column for crashed) |
//! | `dom0 info DOM` | `key: value` lines for one domain; DOM is a domid (all digits) or an exact name. `console:` is `none`, `no output yet`, or the bytes received and the time from the create request to the first byte (`-o json`: `console_first_byte_ms`, `console {first_byte_ms, total_bytes, history_bytes, disabled, attached}`) |
//! | `dom0 logs DOM [-f]` | the console history (raw bytes, unchanged); `-f` goes on printing new output until the domain is destroyed or Ctrl-C. DOM may be a domain that is gone whose history dom0d still keeps |
//! | `dom0 console DOM [--force]` | attaches: `Connected to NAME (domid N). Escape character is ^]` on stderr, the history and live output on stdout, stdin to the guest; `^]` detaches. A terminal is put in raw mode (restored on every exit path: return, error, panic, SIGTERM/SIGHUP/SIGINT/SIGQUIT). Piped stdin is *not* a read-only attach (as CLI.md §9 would have it): it is sent to the guest until end of file, then output is printed for 1 s more; `dom0 logs -f` is the read-only view. One client at a time, piped or not: another gets exit 4, `--force` takes over (the first prints `detached: another ... took over` and exits 0) |
//! | `dom0 pause DOM` | stops scheduling the domain; returns once it is paused |
//! | `dom0 unpause DOM` (alias `resume`) | resumes a paused domain |
//! | `dom0 destroy DOM` | tears the domain down at once, in any state, and frees its memory; returns once it is gone from the list |
//! | `dom0 shutdown DOM [--wait]` | asks the guest to power off through xenstore (`control/shutdown` = `poweroff`) and returns; `on_poweroff` applies once it has. `--wait` returns once the domain has shut down, crashed or is gone, bounded by `--timeout` (exit 5: `domain 3 (web) did not shut down within 30 s (it is running)`). Exit 6 at once if the guest never wrote `control/feature-poweroff` = 1 or dom0d serves no xenstore for it (hint: `dom0 destroy`), 4 for Domain-0 or a domain that has ended |
//! | `dom0 reboot DOM [--wait]` | the same with `reboot` (and `control/feature-reboot`); `on_reboot` (default `restart`) applies. `--wait` ends when this instance has ended: a restart gets a new domid, since domids go round |
//! | `dom0 validate CFG [--set K=V]...` | checks the config, the kernel and the ramdisk without dom0d and prints the effective config and the layout (`key: value` lines: the keys, `entry`, `start_info`, one `segment` line per segment, `ramdisk_at`) |
//! | `dom0 create CFG [--set K=V]... [--paused] [--dry-run]` | builds and starts the domain; prints `domid`, `name` and `state`. `--paused` leaves it paused; `--dry-run` runs every check, dom0d's too (free memory, unique name), and prints what `validate` prints, creating nothing |
//! | `dom0 host info` | `key: value` lines: microvisor version, control version, pCPUs, Dom0's pCPU, memory (MiB), TSC, uptime, `events` (masks dom0d received, or `unavailable (why)`), `last_event` (`2025-01-31T12:00:00.123Z (4.2 s ago): domain state changed`, or `-`) |
//! | `dom0 version` | versions of the CLI, its interfaces, and (when reachable) dom0d and the microvisor; succeeds while dom0d is down |
//! | `dom0 completions SHELL` | a static completion script for bash, zsh, fish, elvish or powershell |
//!
//! `pause`, `unpause`, `destroy`, `shutdown` and `reboot` print nothing on success (exit
//! 0) unless `-o json`.
//! They refuse Domain-0 (exit 4). Pausing a paused domain, unpausing one that is not
//! paused, and pausing or unpausing one that shut down or crashed are errors that name the
//! current state (exit 4, CLI.md §7), e.g.:
//!
//! ```text
//! error: cannot pause domain 5 (off)
//!   caused by: domain 5 (off) has shut down (poweroff), so it cannot be paused
//!   hint: `dom0 destroy off` removes it
//! ```
//!
//! ### Config files
//!
//! CFG is a path, or NAME for `/etc/dom0/domains/NAME.toml` (no slash, no `.toml`). Config
//! files are TOML with xl's key names ([`config`]):
//!
//! | key | value | default |
//! |-----|-------|---------|
//! | `name` | 1-31 of `A-Z a-z 0-9 - _ . +`, not starting with `-`, not all digits; unique | required |
//! | `type` | `"pvh"` | `"pvh"` |
//! | `kernel` | path of a PVH kernel (ELF with the PVH entry note) in Dom0 | required |
//! | `ramdisk` | path of an initial ramdisk | none |
//! | `cmdline` | kernel command line, at most 3839 bytes, no control characters | none |
//! | `memory` | MiB (`64`), or a size with a binary unit (`"64M"`, `"1G"`, `"1536MiB"`); 2 to 3072 MiB | 16 |
//! | `vcpus` | 1 (more are refused for now) | 1 |
//! | `on_poweroff`, `on_reboot`, `on_crash` | `"destroy"`, `"restart"` or `"preserve"` | `destroy`, `restart`, `destroy` |
//!
//! dom0d applies the `on_*` actions to the domains it built ([`supervisor`]): when one
//! shuts down with reason `poweroff` it applies `on_poweroff`, with `reboot` `on_reboot`,
//! and when it crashes or shuts down for any other reason (`crash`, `watchdog`,
//! `suspend`, `soft_reset`) `on_crash`. `destroy` removes it; `preserve` leaves it listed
//! until `dom0 destroy`; `restart` destroys it and builds it again from the same config
//! (same name, usually a new domid), but after 5 restarts within 60 s it is destroyed and
//! not restarted (an error is logged). The configs are part of dom0d's state file
//! ([`state`]): a restarted dom0d applies the actions of the domains an earlier one built;
//! the boot-time domains are left alone. Relative paths in a file start
//! at the file's directory; relative paths in `--set` at the current directory. `--set
//! KEY=VALUE` (repeatable) overrides a key after the file is read, in order; the value is
//! read as TOML, or taken as a string if it is not TOML (`--set memory=1G`, `--set
//! cmdline='console=hvc0 quiet'`). Unknown keys are errors that name the file and line
//! (`web.toml:3: unknown key "colour"`, with a "did you mean" hint for near misses), xl
//! keys that are not supported yet say so (`"maxmem" is not supported yet`), and errors in
//! an override name it (`--set vcpus=2: ...`). Dom0 ships example configs in
//! `/etc/dom0/examples/` (`dom0/initramfs/etc/dom0/examples/`, checked by a host test).
//!
//! Global flags, accepted before or after the subcommand: `-o, --output table|json|jsonl`,
//! `--json` (short for `-o json`), `--socket PATH` (env `DOM0_SOCKET`, default
//! `/run/dom0/control.sock`) and `--timeout DURATION` (each reply, and the wait of
//! `shutdown`/`reboot --wait`; default `30s`; `500ms`, `2m`).
//! Data goes to stdout; errors go to stderr.
//!
//! ### JSON
//!
//! Fields are only ever added. `-o jsonl` prints one object per line (for `list`, one per
//! domain).
//!
//! - `list`: an array of domain objects: `domid`, `name`, `state` (`running`, `blocked`,
//!   `paused`, `shutdown`, `crashed`), `reason` (for `shutdown`: `poweroff`, `reboot`,
//!   `suspend`, `crash`, `watchdog`, `soft_reset`; otherwise `null`), `mem_kib`, `mem_mib`,
//!   `vcpus`, `pcpu`, `cpu_time_ns`, `privileged`.
//! - `info`: one domain object, plus `api_version` (`"dom0/v1"`), `console_first_byte_ms`
//!   (milliseconds from the create request to the first console byte dom0d received;
//!   `null` without a console or before the first byte) and `console` (`null`, or
//!   `{first_byte_ms, total_bytes, history_bytes, disabled, attached}`).
//! - `pause`, `unpause`, `destroy`: `api_version`, `action` (`pause`, `unpause`,
//!   `destroy`), `domid`, `name`, `state` (the state afterwards: `paused`; `running` or
//!   `blocked`; `null` after `destroy`).
//! - `host info`: `api_version`, `pcpus`, `dom0_pcpu`, `mem_total_kib`, `mem_free_kib`,
//!   `mem_total_mib`, `mem_free_mib`, `tsc_khz`, `uptime_ns`, `microvisor_version`,
//!   `control_version`, `events` (`null` if dom0d does not report events, else `{status:
//!   "listening"|"unavailable"|"stopped", reason, count, last_mask, last_unix_ms,
//!   last_age_ms}`, the last three `null`/0 before the first event).
//! - `version`: `api_version`, `cli`, `abi_interface`, `control_protocol`, `dom0d`
//!   (`{version, control_protocol, control_version}` or `null`), `dom0d_error`,
//!   `microvisor` (`{version, control_version}` or `null`), `microvisor_error`.
//! - `validate`: `api_version`, `config` (`name`, `kernel`, `ramdisk`, `cmdline`,
//!   `memory_mib`, `vcpus`, `on_poweroff`, `on_reboot`, `on_crash`; absent optional keys
//!   `null`), `plan` (`memory_mib`, `entry`, `start_info`, `segments`: `[{paddr,
//!   file_bytes, mem_bytes}]`, `ramdisk`: `{paddr, bytes}` or `null`).
//! - `create`: `api_version`, `domid` (`null` for `--dry-run`), `name`, `state` (`running`,
//!   `blocked`, `paused`; `null` for `--dry-run`), `dry_run`, `took_ms`, `config`, `plan`.
//! - `shutdown`, `reboot`: `api_version`, `action` (`shutdown`, `reboot`), `domid`, `name`,
//!   `waited` (whether `--wait` was given), `state` (when the request was written, or the
//!   last seen after the wait: `shutdown`, `crashed`, or `null` once the domain is gone).
//!
//! ### Exit codes
//!
//! [`ExitStatus`], as in CLI.md §7:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | any other failure (e.g. the microvisor returned a bad record or an unexpected errno; `create` with more memory than the host has free, or no domain id left) |
//! | 2 | usage error |
//! | 3 | no such domain (for `logs`/`console`: nor a kept history), or a file not found: the config, its kernel or ramdisk |
//! | 4 | invalid state for the operation: `pause`/`unpause`/`destroy`/`shutdown`/`reboot` of Domain-0, `pause` of a paused domain, `unpause` of one that is not paused, `pause`/`unpause`/`shutdown`/`reboot` of one that shut down or crashed; `create` with a name another domain has; `console` while another client is attached |
//! | 5 | dom0d did not answer within `--timeout`, a pause or destroy did not take effect within dom0d's limit (2 s, 5 s), or `shutdown`/`reboot --wait` saw no end within `--timeout` |
//! | 6 | the microvisor does not implement the operation (`ENOSYS`), or offers no foreign window to build domains through; `logs`/`console` of a domain without a console dom0d serves (Domain-0, boot-time DomUs); `shutdown`/`reboot` of a guest that never announced PV shutdown, or of a domain without a xenstore dom0d serves |
//! | 7 | invalid config: a syntax error, unknown or unsupported key, bad value (zero or several vCPUs, memory out of range, a bad name), a kernel that is not an x86-64 ELF, has no PVH note or does not fit the memory, a ramdisk that does not fit |
//! | 8 | permission denied: the socket is root-only, the microvisor refused (`EPERM`), or a file could not be read |
//! | 69 | dom0d unreachable, busy, speaking another protocol version, or too old for the request |
//!
//! ### Errors
//!
//! Errors are [`CliError`]s, rendered on stderr as CLI.md §7 describes: a first line
//! `error: <what failed>`, one `caused by:` line per source, a `hint:` line when there is a
//! next step. For example, with dom0d not running:
//!
//! ```text
//! error: cannot reach dom0d at /run/dom0/control.sock
//!   caused by: No such file or directory
//!   hint: is dom0d running? start it with `dom0d &` (it needs /dev/microvisor)
//! ```
//!
//! Bad input to `create` and `validate` (the config, its kernel or ramdisk, and what dom0d
//! refuses about them: the name is taken, the memory does not fit) is exactly one line:
//! what failed, each cause after a colon, the hint after a semicolon:
//!
//! ```text
//! error: /etc/dom0/domains/web.toml:3: unknown key "memroy"; did you mean "memory"?
//! error: cannot read config /nonexistent.toml: No such file or directory; check the path (a bare name, without a slash or .toml, is looked up as /etc/dom0/domains/NAME.toml)
//! ```
//!
//! Under `-o json`/`jsonl` the same content is one JSON object on stderr with `code`,
//! `message`, `causes`, `hint` and `exit_code`, and stdout stays empty.
//!
//! ## dom0-probe
//!
//! `dom0-probe open-as-nobody`, `bad-ioctl`, `release-domain DOMID [--timeout SECS]` and
//! `bad-foreign DOMID` (all take `--device PATH`): one `ok: ...`/`FAIL: ...` line per check
//! and a summary line, exit 0 only if all passed. See [`probe`] and [`probe::foreign`].
//!
//! ## Unsafe code
//!
//! Only [`device`] (the ioctl, poll, mmap and munmap system calls, the copy into a
//! foreign-window mapping, a shared page as `pv_drivers::MappedMem`, and the reactor
//! registration of the event handle and of the vifs' TAPs), [`term`] (`isatty`, the termios calls for raw
//! mode, the signal handlers that restore the terminal) and [`netdev`] (the TAP and
//! bridge ioctls, the control socket) contain unsafe code; every other
//! module is `#![forbid(unsafe_code)]`.
#![deny(unsafe_code)]

pub mod attach;
pub mod backend;
pub mod blkback;

pub mod builder;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod daemon;
pub mod device;
pub mod error;
pub mod events;
pub mod fake;
pub mod grants;
pub mod lifecycle;
#[macro_use]
pub mod log;
pub mod microvisor;
pub mod netback;
pub mod netdev;
pub mod output;
pub mod pages;
pub mod probe;
pub mod proto;
pub mod server;
pub mod session;
pub mod state;
pub mod supervisor;
pub mod term;
pub mod version;
pub mod xenstore;
pub mod xenstored;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use crate::proto::{ApiError, GuestRequest, Lifecycle, Request, State};

pub use cli::{Cli, Command, HostCommand};
pub use client::{Client, ClientError};
pub use error::{CliError, ExitStatus};
pub use output::OutputFormat;

/// Version of this CLI (the crate version).
pub const CLI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the control protocol between `dom0` and `dom0d`, [`proto::PROTOCOL_VERSION`].
pub const CONTROL_PROTOCOL_VERSION: u32 = proto::PROTOCOL_VERSION;

/// Top-level `api_version` of every JSON object the CLI prints (CLI.md §5).
pub const JSON_API_VERSION: &str = "dom0/v1";

/// The name the CLI is installed and completed under.
pub const BIN_NAME: &str = "dom0";

/// Standard input, for `dom0 console`.
pub struct Stdin {
    /// Where input comes from.
    pub reader: Box<dyn Read + Send>,
    /// Whether it is a terminal (then it is switched to raw mode for the session).
    pub is_tty: bool,
}

impl Stdin {
    /// The process's standard input.
    #[must_use]
    pub fn process() -> Self {
        Self {
            reader: Box::new(std::io::stdin()),
            is_tty: term::is_tty(0),
        }
    }

    /// Input from `reader`, which is not a terminal.
    #[must_use]
    pub fn piped(reader: impl Read + Send + 'static) -> Self {
        Self {
            reader: Box::new(reader),
            is_tty: false,
        }
    }
}

impl std::fmt::Debug for Stdin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stdin")
            .field("is_tty", &self.is_tty)
            .finish_non_exhaustive()
    }
}

/// Parses `args` (including the program name), runs the command, and returns the exit
/// status. Results go to `stdout`; usage errors, diagnostics and errors go to `stderr`.
/// `dom0 console` reads the process's standard input.
///
/// Nothing panics on bad input: clap's usage errors exit with [`ExitStatus::Usage`], and
/// failures are rendered as CLI.md §7 describes.
pub fn run<I, T>(args: I, stdout: &mut dyn Write, stderr: &mut dyn Write) -> ExitStatus
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with_stdin(args, Stdin::process(), stdout, stderr)
}

/// [`run`], with `stdin` as standard input.
pub fn run_with_stdin<I, T>(
    args: I,
    stdin: Stdin,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> ExitStatus
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return report_parse_error(&e, stdout, stderr),
    };
    let format = cli.global.format();
    match execute(&cli, format, stdin, stdout, stderr) {
        Ok(()) => ExitStatus::Success,
        // The reader went away (`dom0 completions bash | head`). Nothing is left to tell
        // it, and the command itself did not fail, so exit quietly.
        Err(e) if e.is_broken_pipe() => ExitStatus::Success,
        Err(e) => {
            // If stderr is gone too there is nobody left to tell; the exit code still says
            // what happened.
            let _ = error::render(&e, format, stderr);
            e.exit_status()
        }
    }
}

fn connect(cli: &Cli) -> Result<Client, CliError> {
    Client::connect(&cli.global.socket, cli.global.timeout).map_err(CliError::Connection)
}

fn request(what: impl Into<String>) -> impl FnOnce(ClientError) -> CliError {
    let what = what.into();
    move |source| CliError::Request { what, source }
}

fn write_out(stdout: &mut dyn Write, text: &str) -> Result<(), CliError> {
    stdout.write_all(text.as_bytes()).map_err(CliError::Output)
}

/// Finds the domain `reference` names: all digits is a domain id, anything else an exact
/// name (CLI.md §4).
///
/// # Errors
/// [`CliError::NoSuchDomain`] (with close names as suggestions), or a request error.
pub fn resolve_domain(client: &mut Client, reference: &str) -> Result<proto::Domain, CliError> {
    if !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_digit()) {
        let missing = || CliError::NoSuchDomain {
            what: format!("no domain with id {reference}"),
            suggestions: Vec::new(),
        };
        let Ok(domid) = reference.parse::<u32>() else {
            return Err(missing());
        };
        return match client.domain_info(domid) {
            Ok(d) => Ok(d),
            Err(ClientError::Api(proto::ApiError::NoSuchDomain { .. })) => Err(missing()),
            Err(e) => Err(request(format!("cannot get domain {domid}"))(e)),
        };
    }
    let domains = client
        .list_domains()
        .map_err(request(format!("cannot look up domain {reference:?}")))?;
    if let Some(d) = domains.iter().find(|d| d.name == reference) {
        return Ok(d.clone());
    }
    Err(CliError::NoSuchDomain {
        what: format!("no domain named {reference:?}"),
        suggestions: closest_names(&domains, reference),
    })
}

/// Up to three names of `domains` close to `reference` (by edit distance, or containing
/// it), closest first.
#[must_use]
pub fn closest_names(domains: &[proto::Domain], reference: &str) -> Vec<String> {
    let mut close: Vec<(usize, &str)> = domains
        .iter()
        .filter(|d| !d.name.is_empty())
        .map(|d| (edit_distance(&d.name, reference), d.name.as_str()))
        .filter(|&(dist, name)| {
            dist <= 2.max(reference.len() / 3)
                || name.to_lowercase().contains(&reference.to_lowercase())
        })
        .collect();
    close.sort_unstable();
    close.iter().take(3).map(|(_, n)| (*n).to_owned()).collect()
}

/// Levenshtein distance between two strings, by characters.
#[must_use]
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Runs a parsed command. Only `console` reads `stdin` and writes to `stderr` (its banner
/// and how the session ended).
///
/// # Errors
/// [`CliError`] if dom0d cannot be reached or refuses, or the output cannot be produced
/// or written.
pub fn execute(
    cli: &Cli,
    format: OutputFormat,
    stdin: Stdin,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<(), CliError> {
    match &cli.command {
        Command::Version => {
            version::VersionInfo::gather(&cli.global.socket, cli.global.timeout)
                .print(format, stdout)?;
        }
        Command::Completions { shell } => {
            // Generate into memory first: clap_complete panics on a failed write, and a
            // closed stdout must be an error, not a panic.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), BIN_NAME, &mut script);
            stdout.write_all(&script).map_err(CliError::Output)?;
        }
        Command::List => {
            let domains = connect(cli)?
                .list_domains()
                .map_err(request("cannot list domains"))?;
            write_out(stdout, &output::render_list(&domains, format)?)?;
        }
        Command::Info { domain } => {
            let mut client = connect(cli)?;
            let d = resolve_domain(&mut client, domain)?;
            let console = client.console_status(d.domid).map_err(request(format!(
                "cannot get the console of domain {}",
                d.domid
            )))?;
            let disks = client.block_list(d.domid).map_err(request(format!(
                "cannot get the disks of domain {}",
                d.domid
            )))?;
            let vifs = client.network_list(d.domid).map_err(request(format!(
                "cannot get the network interfaces of domain {}",
                d.domid
            )))?;
            write_out(
                stdout,
                &output::render_domain(&d, console.as_ref(), &disks, &vifs, format)?,
            )?;
        }
        Command::BlockList { domain } => {
            let mut client = connect(cli)?;
            let d = resolve_domain(&mut client, domain)?;
            let disks = client.block_list(d.domid).map_err(request(format!(
                "cannot get the disks of domain {}",
                d.domid
            )))?;
            write_out(stdout, &output::render_blocks(&d, &disks, format)?)?;
        }
        Command::NetworkList { domain } => {
            let mut client = connect(cli)?;
            let d = resolve_domain(&mut client, domain)?;
            let vifs = client.network_list(d.domid).map_err(request(format!(
                "cannot get the network interfaces of domain {}",
                d.domid
            )))?;
            write_out(stdout, &output::render_networks(&d, &vifs, format)?)?;
        }
        Command::Logs { domain, follow } => {
            let req = Request::Logs {
                domain: domain.clone(),
                follow: *follow,
            };
            let what = format!("cannot read the console of {domain}");
            let (_, mut stream) = open_console(cli, &req, domain, &what)?;
            attach::copy_output(&mut stream, stdout, &what)?;
        }
        Command::Console { domain, force } => {
            let req = Request::ConsoleAttach {
                domain: domain.clone(),
                force: *force,
            };
            let what = format!("cannot attach to the console of {domain}");
            let (opened, mut stream) = open_console(cli, &req, domain, &what)?;
            let input = stream.input().map_err(request(what.clone()))?;
            let _ = writeln!(stderr, "{}", attach::banner(&opened));
            let raw = if stdin.is_tty {
                Some(term::RawMode::enable(0).map_err(CliError::Terminal)?)
            } else {
                None
            };
            let grace = !stdin.is_tty;
            let reader = stdin.reader;
            std::thread::spawn(move || attach::forward_input(reader, input, grace));
            let end = attach::copy_output(&mut stream, stdout, &what);
            drop(raw);
            if let Some(message) = attach::end_message(&end?, &opened) {
                let _ = writeln!(stderr, "{message}");
            }
        }
        Command::Pause { domain } => lifecycle(cli, Lifecycle::Pause, domain, format, stdout)?,
        Command::Unpause { domain } => {
            lifecycle(cli, Lifecycle::Unpause, domain, format, stdout)?;
        }
        Command::Destroy { domain } => {
            lifecycle(cli, Lifecycle::Destroy, domain, format, stdout)?;
        }
        Command::Shutdown { domain, wait } => {
            let wait = wait.then_some(cli.global.timeout);
            guest_request(cli, GuestRequest::Poweroff, domain, wait, format, stdout)?;
        }
        Command::Reboot { domain, wait } => {
            let wait = wait.then_some(cli.global.timeout);
            guest_request(cli, GuestRequest::Reboot, domain, wait, format, stdout)?;
        }
        Command::Validate { config, set } => {
            let path = config::config_path(config, Path::new(config::DEFAULT_CONFIG_DIR));
            let cfg = config::load(&path, set).map_err(CliError::Config)?;
            let invalid = |source| CliError::Invalid {
                what: format!("{} does not make a valid domain", path.display()),
                source,
            };
            let images = builder::read_images(&cfg).map_err(invalid)?;
            builder::check_disks(&cfg).map_err(invalid)?;
            let layout = builder::layout(&cfg, &images).map_err(invalid)?;
            write_out(
                stdout,
                &output::render_validated(&cfg, layout.plan(), format)?,
            )?;
        }
        Command::Create {
            config,
            set,
            paused,
            dry_run,
        } => {
            let path = config::config_path(config, Path::new(config::DEFAULT_CONFIG_DIR));
            let cfg = config::load(&path, set).map_err(CliError::Config)?;
            let report = connect(cli)?
                .create(&cfg, *dry_run, *paused)
                .map_err(request(format!("cannot create domain \"{}\"", cfg.name)))?;
            write_out(stdout, &output::render_created(&report, format)?)?;
        }
        Command::Host {
            command: HostCommand::Info,
        } => {
            let mut client = connect(cli)?;
            let host = client
                .host_info()
                .map_err(request("cannot get host information"))?;
            let events = client
                .events()
                .map_err(request("cannot get the event statistics"))?;
            write_out(
                stdout,
                &output::render_host(&host, events.as_ref(), format)?,
            )?;
        }
    }
    stdout.flush().map_err(CliError::Output)
}

/// Opens the console stream `req` asks for. An unknown domain is [`CliError::NoSuchDomain`]
/// with the closest names as suggestions.
fn open_console(
    cli: &Cli,
    req: &Request,
    reference: &str,
    what: &str,
) -> Result<(proto::ConsoleOpened, client::ConsoleStream), CliError> {
    match connect(cli)?.open_console(req) {
        Ok(opened) => Ok(opened),
        Err(ClientError::Api(proto::ApiError::UnknownDomain { .. })) => {
            // The suggestions come from a fresh listing (best effort).
            let suggestions = connect(cli)
                .and_then(|mut c| c.list_domains().map_err(request("")))
                .map(|domains| closest_names(&domains, reference))
                .unwrap_or_default();
            Err(CliError::NoSuchDomain {
                what: proto::ApiError::UnknownDomain {
                    reference: reference.to_owned(),
                }
                .to_string(),
                suggestions,
            })
        }
        Err(source) => Err(CliError::Request {
            what: what.to_owned(),
            source,
        }),
    }
}

/// `dom0 pause|unpause|destroy DOM`: resolves DOM, asks dom0d, and prints the result
/// object under `-o json`/`jsonl` (nothing otherwise).
fn lifecycle(
    cli: &Cli,
    action: Lifecycle,
    reference: &str,
    format: OutputFormat,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    let mut client = connect(cli)?;
    let d = resolve_domain(&mut client, reference)?;
    let done = client.lifecycle(action, d.domid).map_err(request(format!(
        "cannot {} {}",
        action.name(),
        proto::domain_label(d.domid, &d.name)
    )))?;
    write_out(stdout, &output::render_lifecycle(&done, format)?)
}

/// How often `shutdown --wait` looks at the domain.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// `shutdown` / `reboot`: the request, then with `wait` the wait for this instance of
/// the domain to end (shut down, crashed or gone).
fn guest_request(
    cli: &Cli,
    request: GuestRequest,
    reference: &str,
    wait: Option<Duration>,
    format: OutputFormat,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    let mut client = connect(cli)?;
    let d = resolve_domain(&mut client, reference)?;
    let label = proto::domain_label(d.domid, &d.name);
    let sent = client
        .shutdown(d.domid, request)
        .map_err(self::request(format!("cannot {} {label}", request.verb())))?;
    let mut state = Some(sent.state);
    if let Some(limit) = wait {
        let started = std::time::Instant::now();
        loop {
            match client.domain_info(d.domid) {
                Ok(now) if now.name == d.name => {
                    state = Some(now.state);
                    if now.state.ended() {
                        break;
                    }
                }
                // Gone (on_poweroff/on_reboot destroyed or restarted it), or the id now
                // holds another domain.
                Ok(_) | Err(ClientError::Api(ApiError::NoSuchDomain { .. })) => {
                    state = None;
                    break;
                }
                Err(e) => return Err(self::request(format!("cannot watch {label}"))(e)),
            }
            let waited = started.elapsed();
            if waited >= limit {
                return Err(CliError::WaitTimedOut {
                    what: format!(
                        "{label} did not {} within {} s (it is {})",
                        request.verb(),
                        limit.as_secs_f64(),
                        state.map_or("gone", State::name)
                    ),
                    domain: error::domain_ref(d.domid, &d.name),
                });
            }
            std::thread::sleep(WAIT_POLL.min(limit - waited));
        }
    }
    write_out(
        stdout,
        &output::render_guest_request(&sent, wait.is_some(), state, format)?,
    )
}

/// Prints a clap error (or `--help`/`--version` output) and maps it to an exit status:
/// help and version to stdout with [`ExitStatus::Success`], usage errors to stderr with
/// [`ExitStatus::Usage`].
fn report_parse_error(
    e: &clap::Error,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> ExitStatus {
    let text = e.render().to_string();
    if e.use_stderr() {
        let _ = stderr.write_all(text.as_bytes());
        ExitStatus::Usage
    } else {
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Err(io) if io.kind() != std::io::ErrorKind::BrokenPipe => {
                let _ = error::render(&CliError::Output(io), OutputFormat::Table, stderr);
                ExitStatus::Failure
            }
            _ => ExitStatus::Success,
        }
    }
}

#[cfg(test)]
mod tests;
