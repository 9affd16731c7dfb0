//! `dom0-probe`: hostile checks of `/dev/microvisor` for the Dom0 scenario tests.
//!
//! ```text
//! dom0-probe open-as-nobody [--device PATH]   # must be refused (EACCES/EPERM)
//! dom0-probe bad-ioctl [--device PATH]        # malformed ioctls get the right errno
//! dom0-probe release-domain DOMID [--timeout SECS] [--device PATH]
//!                                             # foreign mappings + events, end to end
//! dom0-probe bad-foreign DOMID [--device PATH]
//!                                             # hostile foreign maps, mmaps and reads
//! dom0-probe grant DOMID GREF [--device PATH] # grant map/copy/unmap of a grant-demo guest
//! dom0-probe net-selftest [--bridge NAME] [--addr CIDR] [--tap NAME] [--tap2 NAME]
//!                                             # TAPs on a bridge, one frame across
//! ```
//!
//! One line per check (`ok: ...` / `FAIL: ...`); exit 0 only if every check passed,
//! 1 if one failed, 2 on a usage error.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dom0::device::DEVICE_PATH;
use dom0::{netdev, probe};

/// Hostile checks of /dev/microvisor, for the Dom0 scenario tests.
#[derive(Debug, Parser)]
#[command(name = "dom0-probe", version)]
struct Args {
    /// The device node to probe
    #[arg(long, global = true, value_name = "PATH", default_value = DEVICE_PATH)]
    device: PathBuf,

    #[command(subcommand)]
    check: Check,
}

#[derive(Debug, Subcommand)]
enum Check {
    /// As uid 65534, try to open the device; passes if refused with EACCES or EPERM
    OpenAsNobody,
    /// As root, issue malformed ioctls; passes if each fails with the documented errno
    BadIoctl,
    /// Release a `hello wait-for-dom0` guest through foreign mappings and wait for the
    /// event its shutdown raises
    ReleaseDomain {
        /// The waiting guest's domain id
        domid: u32,
        /// Seconds to wait for the shutdown event
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        timeout: u64,
    },
    /// Hostile foreign maps, mmaps and reads; passes if each fails with the documented
    /// errno (DOMID must be a running domain)
    BadForeign {
        /// A running domain's id
        domid: u32,
    },
    /// Map, copy and write a `hello grant-demo` guest's grant, with hostile grant calls
    Grant {
        /// The granting guest's domain id
        domid: u32,
        /// The grant reference it printed
        gref: u32,
    },
    /// Ensure a bridge, attach two TAPs, and send one broadcast frame from one to the
    /// other (the PV network back-end's plumbing; needs root and the tun and bridge modules)
    NetSelftest {
        /// The bridge to ensure (created if missing)
        #[arg(long, value_name = "NAME", default_value = netdev::DEFAULT_BRIDGE)]
        bridge: String,
        /// The address to give the bridge if this creates it
        #[arg(long, value_name = "CIDR", default_value = netdev::DEFAULT_BRIDGE_ADDR)]
        addr: netdev::Ipv4Cidr,
        /// The TAP the frame is written into
        #[arg(long, value_name = "NAME", default_value = "vifprobe")]
        tap: String,
        /// The TAP that must receive it
        #[arg(long, value_name = "NAME", default_value = "vifprobe1")]
        tap2: String,
    },
    /// (internal) the open-as-nobody child
    #[command(name = probe::CHILD_SUBCOMMAND, hide = true)]
    OpenAsSelf {
        /// The device node
        device: PathBuf,
    },
    /// (internal) the bad-foreign child that reads an empty slot
    #[command(name = probe::foreign::TOUCH_SUBCOMMAND, hide = true)]
    TouchSlot {
        /// The device node
        device: PathBuf,
        /// The slot
        slot: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut out = io::stdout().lock();
    let result = match &args.check {
        Check::OpenAsSelf { device } => {
            return ExitCode::from(u8::try_from(probe::child_open(device)).unwrap_or(1));
        }
        Check::TouchSlot { device, slot } => {
            return ExitCode::from(
                u8::try_from(probe::foreign::child_touch(device, *slot)).unwrap_or(1),
            );
        }
        Check::OpenAsNobody => probe::open_as_nobody(&args.device, &mut out),
        Check::BadIoctl => probe::bad_ioctl(&args.device, &mut out),
        Check::ReleaseDomain { domid, timeout } => probe::foreign::release_domain(
            &args.device,
            *domid,
            Duration::from_secs(*timeout),
            &mut out,
        ),
        Check::BadForeign { domid } => probe::foreign::bad_foreign(&args.device, *domid, &mut out),
        Check::Grant { domid, gref } => probe::grant::grant(&args.device, *domid, *gref, &mut out),
        Check::NetSelftest {
            bridge,
            addr,
            tap,
            tap2,
        } => probe::net::selftest(
            &probe::net::Setup {
                bridge,
                addr: *addr,
                sender: tap,
                receiver: tap2,
            },
            &mut out,
        ),
    };
    let _ = out.flush();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("dom0-probe: cannot write the report: {e}");
            ExitCode::FAILURE
        }
    }
}
