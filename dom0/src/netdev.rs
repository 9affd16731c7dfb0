//! Linux network plumbing for the PV network back-end: TAP interfaces, a bridge, and the
//! MAC/address/name types the back-end reads from domain configs and xenstore.
//!
//! Each vif of a guest becomes a TAP interface in Dom0 (`IFF_TAP | IFF_NO_PI`, named
//! [`vif_name`] = `vif<domid>.<handle>` as Xen names them): the back-end writes the
//! frames the guest transmits into the TAP ([`Tap::write_frame`]) and hands the frames it
//! reads from the TAP ([`Tap::read_frame`]) to the guest. The TAP is a port of a bridge
//! ([`DEFAULT_BRIDGE`] `br0`, which dom0d creates with the address
//! [`DEFAULT_BRIDGE_ADDR`] `10.0.0.1/24` if it is missing), so guests reach each other and
//! Dom0. A TAP is not persistent: it disappears (and leaves its bridge) when its
//! descriptor is closed, i.e. when the [`Tap`] is dropped.
//!
//! Everything here is plain `ioctl`s: `TUNSETIFF` on `/dev/net/tun` and the classic
//! `SIOC*` calls on an `AF_INET` datagram socket (no netlink). They need
//! `CAP_NET_ADMIN`, and the `tun` and `bridge` kernel modules (Dom0's initramfs loads
//! both). Errors are `io::Error`s of the underlying error's kind whose message says what
//! failed and why, e.g. `creating TAP vif3.0: /dev/net/tun: No such file or directory (is
//! the tun module loaded?)`.
#![allow(
    unsafe_code,
    reason = "the TUNSETIFF and SIOC* ioctls on a private request buffer; each block argues its case"
)]

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;

use crate::proto::os_error_text;

#[cfg(test)]
mod tests;

/// The TUN/TAP clone device.
pub const TUN_PATH: &str = "/dev/net/tun";
/// The bridge dom0d attaches vifs to unless a config names another.
pub const DEFAULT_BRIDGE: &str = "br0";
/// The address [`ensure_bridge`] gives [`DEFAULT_BRIDGE`] when dom0d creates it.
pub const DEFAULT_BRIDGE_ADDR: &str = "10.0.0.1/24";
/// The longest interface name Linux accepts, in bytes (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;
/// The length of an Ethernet header (destination, source, EtherType).
pub const ETH_HEADER_LEN: usize = 14;

// linux/sockios.h. Kept as `u32` (each `libc` target types them differently); the
// assertions tie them to libc's values where libc has them.
const SIOCGIFFLAGS: u32 = 0x8913;
const SIOCSIFFLAGS: u32 = 0x8914;
const SIOCSIFADDR: u32 = 0x8916;
const SIOCSIFNETMASK: u32 = 0x891c;
const SIOCSIFMTU: u32 = 0x8922;
const SIOCSIFHWADDR: u32 = 0x8924;
const SIOCGIFINDEX: u32 = 0x8933;
const SIOCBRADDBR: u32 = 0x89a0;
const SIOCBRDELBR: u32 = 0x89a1;
const SIOCBRADDIF: u32 = 0x89a2;
#[allow(
    clippy::unnecessary_cast,
    reason = "libc's types differ between targets"
)]
const _: () = {
    assert!(libc::SIOCGIFFLAGS as u64 == SIOCGIFFLAGS as u64);
    assert!(libc::SIOCSIFFLAGS as u64 == SIOCSIFFLAGS as u64);
    assert!(libc::SIOCSIFADDR as u64 == SIOCSIFADDR as u64);
    assert!(libc::SIOCSIFNETMASK as u64 == SIOCSIFNETMASK as u64);
    assert!(libc::SIOCSIFMTU as u64 == SIOCSIFMTU as u64);
    assert!(libc::SIOCSIFHWADDR as u64 == SIOCSIFHWADDR as u64);
    assert!(libc::SIOCGIFINDEX as u64 == SIOCGIFINDEX as u64);
};
/// `TUNSETIFF` = `_IOW('T', 202, int)` (the kernel reads a whole `struct ifreq` anyway).
const TUNSETIFF: u32 = 0x4004_54ca;
#[allow(
    clippy::unnecessary_cast,
    reason = "libc's types differ between targets"
)]
const _: () = assert!(libc::TUNSETIFF as u64 == TUNSETIFF as u64);
/// `ARPHRD_ETHER`, the `sa_family` of an Ethernet hardware address.
const ARPHRD_ETHER: u16 = 1;
/// `IFF_UP` (the `ifr_flags` field is a C `short`).
const IFF_UP: i16 = 0x1;
const _: () = assert!(libc::IFF_UP == IFF_UP as libc::c_int);
/// The TAP flags: Ethernet frames, no packet-information prefix.
const TAP_FLAGS: i16 = 0x0002 | 0x1000;
const _: () = assert!(libc::IFF_TAP | libc::IFF_NO_PI == TAP_FLAGS as libc::c_int);

// ---------------------------------------------------------------------------------------
// Interface names

/// Why a string is not a usable interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadIfName {
    /// The empty string.
    #[error("it is empty")]
    Empty,
    /// Longer than [`IFNAME_MAX`] bytes.
    #[error("it is {len} bytes long, more than Linux's {IFNAME_MAX}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside ASCII letters, digits, `.`, `-` and `_`.
    #[error("it contains {ch:?} (only ASCII letters, digits, '.', '-' and '_' are allowed)")]
    BadChar {
        /// The first such character.
        ch: char,
    },
    /// `.` or `..`.
    #[error("'.' and '..' are not interface names")]
    Dots,
}

/// Checks that `name` is an interface name Linux accepts and no `ip`/sysfs path trick:
/// 1 to [`IFNAME_MAX`] bytes of ASCII letters, digits, `.`, `-` and `_`, not `.` or `..`.
/// (Linux also allows other characters; these are all Xen's names and ours need.)
///
/// # Errors
/// Why it is not.
pub fn check_ifname(name: &str) -> Result<(), BadIfName> {
    if name.is_empty() {
        return Err(BadIfName::Empty);
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(BadIfName::BadChar { ch });
    }
    if name.len() > IFNAME_MAX {
        return Err(BadIfName::TooLong { len: name.len() });
    }
    if name == "." || name == ".." {
        return Err(BadIfName::Dots);
    }
    Ok(())
}

/// The interface name for vif `handle` of domain `domid`: `vif<domid>.<handle>` (Xen's
/// naming). Names of real domids (below 32752) and handles below 100 000 fit
/// [`IFNAME_MAX`]; [`Tap::create`] refuses longer ones.
#[must_use]
pub fn vif_name(domid: u32, handle: u32) -> String {
    format!("vif{domid}.{handle}")
}

/// `name` as the NUL-padded `ifr_name` field, or an `InvalidInput` error saying what
/// `doing` failed.
fn name_field(name: &str, doing: &dyn Fn() -> String) -> io::Result<[u8; libc::IFNAMSIZ]> {
    check_ifname(name).map_err(|why| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: {name:?} is not a valid interface name: {why}", doing()),
        )
    })?;
    let mut field = [0u8; libc::IFNAMSIZ];
    field[..name.len()].copy_from_slice(name.as_bytes());
    Ok(field)
}

// ---------------------------------------------------------------------------------------
// MAC addresses

/// An Ethernet MAC address. Parses from and displays as six colon-separated hex pairs
/// (`00:16:3e:01:02:03`; display is lower-case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// The broadcast address `ff:ff:ff:ff:ff:ff`.
pub const BROADCAST_MAC: Mac = Mac([0xff; 6]);

/// What Xen's Linux netback gives the Dom0 side of every vif (`fe:ff:ff:ff:ff:ff`), so a
/// bridge never takes a vif's address as its own. Optional for TAPs (see [`set_mac`]).
pub const HOST_VIF_MAC: Mac = Mac([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]);

impl Mac {
    /// Xen's OUI, the first three bytes of the MACs it generates for guests.
    pub const XEN_OUI: [u8; 3] = [0x00, 0x16, 0x3e];

    /// A guest MAC derived from `seed` (e.g. the domain name and vif index): Xen's OUI
    /// `00:16:3e` and three bytes of a hash of `seed`, the first below 0x80 as Xen's
    /// toolstack does. The same seed always gives the same address.
    #[must_use]
    pub fn generated(seed: &[u8]) -> Mac {
        let h = fnv1a(seed).to_le_bytes();
        let [a, b, c] = Self::XEN_OUI;
        Mac([a, b, c, h[0] & 0x7f, h[1], h[2]])
    }

    /// Whether this is a unicast address (the group bit, bit 0 of the first byte, is
    /// clear). Guests must have unicast MACs.
    #[must_use]
    pub fn is_unicast(self) -> bool {
        self.0[0] & 1 == 0
    }

    /// Whether this is the all-zero address, which no interface may have.
    #[must_use]
    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }
}

/// FNV-1a, 64-bit: a stable hash (unlike std's) for [`Mac::generated`].
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a MAC address (expected six hex pairs separated by ':', like 00:16:3e:01:02:03)"
)]
pub struct BadMac {
    /// The refused text (at most its first 64 characters).
    pub input: String,
}

impl FromStr for Mac {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, BadMac> {
        let bad = || BadMac {
            input: s.chars().take(64).collect(),
        };
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(mac))
    }
}

// ---------------------------------------------------------------------------------------
// IPv4 address with prefix

/// An IPv4 interface address with its prefix length, `10.0.0.1/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0..=32 (values above 32 behave as 32).
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The netmask of the prefix (`255.255.255.0` for /24).
    #[must_use]
    pub fn netmask(self) -> Ipv4Addr {
        let host_bits = 32 - u32::from(self.prefix.min(32));
        Ipv4Addr::from(u32::MAX.checked_shl(host_bits).unwrap_or(0))
    }

    /// The network address (`10.0.0.0` for `10.0.0.1/24`).
    #[must_use]
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.netmask()))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A string that is not an IPv4 address with prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an IPv4 address with prefix like 10.0.0.2/24: {why}")]
pub struct BadCidr {
    /// The refused text (at most its first 64 characters).
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl FromStr for Ipv4Cidr {
    type Err = BadCidr;

    /// Strict: four decimal octets without leading zeros, `/`, and a prefix of 0 to 32
    /// written without sign or leading zeros; nothing else (no spaces).
    fn from_str(s: &str) -> Result<Self, BadCidr> {
        let bad = |why| BadCidr {
            input: s.chars().take(64).collect(),
            why,
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| bad("no '/prefix'"))?;
        let addr = Ipv4Addr::from_str(addr).map_err(|_| bad("bad address"))?;
        let digits_ok = !prefix.is_empty()
            && prefix.len() <= 2
            && prefix.bytes().all(|b| b.is_ascii_digit())
            && !(prefix.len() > 1 && prefix.starts_with('0'));
        if !digits_ok {
            return Err(bad("the prefix must be a number from 0 to 32"));
        }
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|&p| p <= 32)
            .ok_or_else(|| bad("the prefix must be a number from 0 to 32"))?;
        Ok(Ipv4Cidr { addr, prefix })
    }
}

// ---------------------------------------------------------------------------------------
// Errors

/// A hint for an errno, for the messages below.
/// `module` is the kernel module the failed call needs, if it may be missing: `tun` (its
/// device node is then missing or dead) or `bridge` (the bridge ioctls then fail with
/// `ENOPKG`).
fn hint(errno: Option<i32>, module: Option<&str>) -> String {
    let text = match (errno, module) {
        (Some(libc::EPERM | libc::EACCES), _) => Some("needs root (CAP_NET_ADMIN)".to_owned()),
        (Some(libc::ENOPKG | libc::ENOSYS), Some(m))
        | (Some(libc::ENOENT | libc::ENODEV | libc::ENXIO), Some(m @ "tun")) => {
            Some(format!("is the {m} module loaded?"))
        }
        (Some(libc::ENODEV | libc::ENXIO), _) => Some("no such interface".to_owned()),
        _ => None,
    };
    text.map(|t| format!(" ({t})")).unwrap_or_default()
}

/// `e` with a message naming what failed (`doing: e (hint)`), of the same kind.
fn failed(doing: &str, e: &io::Error, module: Option<&str>) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "{doing}: {}{}",
            os_error_text(e),
            hint(e.raw_os_error(), module)
        ),
    )
}

// ---------------------------------------------------------------------------------------
// ioctl plumbing

/// `struct ifreq` (40 bytes on 64-bit Linux): the name and a 24-byte union, kept as plain
/// bytes so every byte is initialised and any bytes the kernel writes back are valid.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}
const _: () = assert!(size_of::<IfReq>() == size_of::<libc::ifreq>());

impl IfReq {
    fn new(name: [u8; libc::IFNAMSIZ]) -> IfReq {
        IfReq {
            name,
            data: [0; 24],
        }
    }

    fn flags(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_flags(&mut self, flags: i16) {
        self.data[..2].copy_from_slice(&flags.to_ne_bytes());
    }

    fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    /// A `struct sockaddr_in` with `addr` (port 0).
    fn set_inet(&mut self, addr: Ipv4Addr) {
        self.data = [0; 24];
        let family = u16::try_from(libc::AF_INET).unwrap_or(2);
        self.data[..2].copy_from_slice(&family.to_ne_bytes());
        self.data[4..8].copy_from_slice(&addr.octets());
    }

    /// A `struct sockaddr` with an Ethernet hardware address.
    fn set_hwaddr(&mut self, mac: Mac) {
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
        self.data[2..8].copy_from_slice(&mac.0);
    }

    /// The name the kernel left in `ifr_name`.
    fn name(&self) -> String {
        let len = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..len]).into_owned()
    }
}

/// The ioctls issued on an [`IfReq`]; each takes a `struct ifreq *`.
#[derive(Debug, Clone, Copy)]
enum IfReqIoctl {
    TunSetIff,
    GetFlags,
    SetFlags,
    SetAddr,
    SetNetmask,
    SetMtu,
    SetHwAddr,
    GetIndex,
    BridgeAddIf,
}

impl IfReqIoctl {
    fn number(self) -> u32 {
        match self {
            Self::TunSetIff => TUNSETIFF,
            Self::GetFlags => SIOCGIFFLAGS,
            Self::SetFlags => SIOCSIFFLAGS,
            Self::SetAddr => SIOCSIFADDR,
            Self::SetNetmask => SIOCSIFNETMASK,
            Self::SetMtu => SIOCSIFMTU,
            Self::SetHwAddr => SIOCSIFHWADDR,
            Self::GetIndex => SIOCGIFINDEX,
            Self::BridgeAddIf => SIOCBRADDIF,
        }
    }
}

/// Issues `request` on `fd` with `req`.
fn ioctl_ifreq(fd: BorrowedFd<'_>, request: IfReqIoctl, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: every `IfReqIoctl` takes a pointer to a `struct ifreq`, which the kernel
    // copies in (and for the getters and TUNSETIFF back out) whole: 40 bytes, exactly
    // `IfReq`'s size (asserted above). `req` is live and exclusively borrowed for the
    // call, all its bytes are initialised, and it holds only plain bytes, so whatever the
    // kernel writes is a valid `IfReq`. None of these requests keeps the pointer or
    // follows a pointer inside the struct (only SIOCDEVPRIVATE/SIOCETHTOOL-style requests
    // do, and none is issued). The descriptor is borrowed, so it stays open.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request.number() as libc::Ioctl,
            core::ptr::from_mut(req),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `SIOCBRADDBR`/`SIOCBRDELBR`, which take a pointer to the name itself.
fn ioctl_bridge(fd: BorrowedFd<'_>, add: bool, name: &[u8; libc::IFNAMSIZ]) -> io::Result<()> {
    let request = if add { SIOCBRADDBR } else { SIOCBRDELBR };
    // SAFETY: both requests copy at most IFNAMSIZ bytes from the pointer (the kernel
    // terminates the copy itself) and write nothing; `name` is IFNAMSIZ initialised bytes,
    // borrowed for the call. The descriptor is borrowed, so it stays open.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request as libc::Ioctl,
            core::ptr::from_ref(name),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A fresh `AF_INET` datagram socket to issue `SIOC*` requests on.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: `socket` takes no pointers; on success it returns a new descriptor that
    // nothing else owns.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by `socket`, is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs `f` with a control socket; errors become `doing: why (hint)`.
fn with_socket<T>(
    doing: &dyn Fn() -> String,
    module: Option<&str>,
    f: impl FnOnce(BorrowedFd<'_>) -> io::Result<T>,
) -> io::Result<T> {
    let sock = control_socket().map_err(|e| failed(&format!("{}: socket", doing()), &e, None))?;
    f(sock.as_fd()).map_err(|e| failed(&doing(), &e, module))
}

// ---------------------------------------------------------------------------------------
// TAP

/// A TAP interface (`IFF_TAP | IFF_NO_PI`: whole Ethernet frames, no prefix), its
/// descriptor non-blocking and close-on-exec. Not persistent: dropping it deletes the
/// interface (and removes it from its bridge).
///
/// Implements [`AsRawFd`]/[`AsFd`], so tokio's `AsyncFd` can watch it for readability.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates the TAP interface `name` (down; see [`set_up`]) through [`TUN_PATH`]'s
    /// `TUNSETIFF`.
    ///
    /// # Errors
    /// `InvalidInput` for a name [`check_ifname`] refuses; the open's or the ioctl's
    /// error otherwise, e.g. `creating TAP vif3.0: /dev/net/tun: No such file or directory
    /// (is the tun module loaded?)`, or `EBUSY` when a TAP of that name is open elsewhere.
    pub fn create(name: &str) -> io::Result<Tap> {
        let doing = || format!("creating TAP {name}");
        let mut req = IfReq::new(name_field(name, &doing)?);
        req.set_flags(TAP_FLAGS);
        // std opens with O_CLOEXEC.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_PATH)
            .map_err(|e| failed(&format!("{}: {TUN_PATH}", doing()), &e, Some("tun")))?;
        ioctl_ifreq(file.as_fd(), IfReqIoctl::TunSetIff, &mut req).map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::EBUSY) => " (a TAP of that name is open elsewhere)",
                Some(libc::EINVAL) => " (is there a non-TAP interface of that name?)",
                _ => "",
            };
            let e = failed(&format!("{}: TUNSETIFF", doing()), &e, Some("tun"));
            io::Error::new(e.kind(), format!("{e}{why}"))
        })?;
        let got = req.name();
        if got != name {
            return Err(io::Error::other(format!(
                "{}: the kernel named it {got:?}",
                doing()
            )));
        }
        Ok(Tap { file, name: got })
    }

    /// The interface's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame into `buf` and returns its length. A frame longer than `buf` is
    /// cut to `buf.len()` by the kernel without notice, so pass a buffer longer than the
    /// longest frame you accept and treat a full buffer as an oversized frame.
    ///
    /// # Errors
    /// `WouldBlock` when no frame is queued (the error is then the bare OS error, cheap
    /// to produce); `InvalidInput` for an empty `buf`; otherwise the read's error.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("reading a frame from TAP {}: empty buffer", self.name),
            ));
        }
        loop {
            match (&self.file).read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) => {
                    return Err(failed(
                        &format!("reading a frame from TAP {}", self.name),
                        &e,
                        None,
                    ));
                }
            }
        }
    }

    /// Writes one whole Ethernet frame (header included, no FCS) into the interface, as
    /// if it had arrived on it.
    ///
    /// # Errors
    /// `InvalidInput` for a frame shorter than [`ETH_HEADER_LEN`]; the write's error
    /// otherwise (`EIO` while the interface is down, `EINVAL` for a frame the kernel
    /// refuses), or `WriteZero` if the kernel took only part of it.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        let doing = || {
            format!(
                "writing a {}-byte frame into TAP {}",
                frame.len(),
                self.name
            )
        };
        if frame.len() < ETH_HEADER_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: shorter than an Ethernet header", doing()),
            ));
        }
        loop {
            match (&self.file).write(frame) {
                Ok(n) if n == frame.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("{}: the kernel took only {n} bytes", doing()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    let e = failed(&doing(), &e, None);
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{e} (is the interface down?)"),
                    ));
                }
                Err(e) => return Err(failed(&doing(), &e, None)),
            }
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

// ---------------------------------------------------------------------------------------
// Interface configuration

/// Sets `ifname` up (`IFF_UP`), if it is not already.
///
/// # Errors
/// `InvalidInput` for a bad name; the ioctl's error (`ENODEV`: no such interface).
pub fn set_up(ifname: &str) -> io::Result<()> {
    set_updown(ifname, true)
}

/// Sets `ifname` down, if it is not already.
///
/// # Errors
/// As [`set_up`].
pub fn set_down(ifname: &str) -> io::Result<()> {
    set_updown(ifname, false)
}

fn set_updown(ifname: &str, up: bool) -> io::Result<()> {
    let doing = || format!("setting {ifname} {}", if up { "up" } else { "down" });
    let mut req = IfReq::new(name_field(ifname, &doing)?);
    with_socket(&doing, None, |sock| {
        ioctl_ifreq(sock, IfReqIoctl::GetFlags, &mut req)?;
        let flags = req.flags();
        if (flags & IFF_UP != 0) == up {
            return Ok(());
        }
        req.set_flags(if up { flags | IFF_UP } else { flags & !IFF_UP });
        ioctl_ifreq(sock, IfReqIoctl::SetFlags, &mut req)
    })
}

/// Sets the MTU of `ifname`.
///
/// # Errors
/// `InvalidInput` for a bad name or an MTU above `i32::MAX`; the ioctl's error (`EINVAL`
/// for an MTU the device refuses).
pub fn set_mtu(ifname: &str, mtu: u32) -> io::Result<()> {
    let doing = || format!("setting the MTU of {ifname} to {mtu}");
    let mut req = IfReq::new(name_field(ifname, &doing)?);
    let value = i32::try_from(mtu).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: out of range", doing()),
        )
    })?;
    req.set_int(value);
    with_socket(&doing, None, |sock| {
        ioctl_ifreq(sock, IfReqIoctl::SetMtu, &mut req)
    })
}

/// Sets the hardware address of `ifname` (e.g. [`HOST_VIF_MAC`] on a vif's TAP, as Xen's
/// netback does, or a bridge's fixed address).
///
/// # Errors
/// `InvalidInput` for a bad name or a multicast/zero address; the ioctl's error.
pub fn set_mac(ifname: &str, mac: Mac) -> io::Result<()> {
    let doing = || format!("setting the MAC of {ifname} to {mac}");
    let mut req = IfReq::new(name_field(ifname, &doing)?);
    if !mac.is_unicast() || mac.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a unicast address", doing()),
        ));
    }
    req.set_hwaddr(mac);
    with_socket(&doing, None, |sock| {
        ioctl_ifreq(sock, IfReqIoctl::SetHwAddr, &mut req)
    })
}

/// Gives `ifname` the IPv4 address `addr` (its netmask and the matching broadcast).
///
/// # Errors
/// `InvalidInput` for a bad name; the ioctls' error.
pub fn set_ipv4(ifname: &str, addr: Ipv4Cidr) -> io::Result<()> {
    let doing = || format!("giving {ifname} the address {addr}");
    let name = name_field(ifname, &doing)?;
    with_socket(&doing, None, |sock| {
        let mut req = IfReq::new(name);
        req.set_inet(addr.addr);
        ioctl_ifreq(sock, IfReqIoctl::SetAddr, &mut req)?;
        // Setting the netmask second also moves the broadcast the address got from its
        // class to the prefix's.
        let mut req = IfReq::new(name);
        req.set_inet(addr.netmask());
        ioctl_ifreq(sock, IfReqIoctl::SetNetmask, &mut req)
    })
}

// ---------------------------------------------------------------------------------------
// Bridges

/// The sysfs directory of interface `name`.
fn sysfs(name: &str) -> std::path::PathBuf {
    Path::new("/sys/class/net").join(name)
}

/// The fixed MAC [`ensure_bridge`] gives a bridge it creates: locally administered
/// (`02:...`), from a hash of the name. Without one a bridge takes the lowest address of
/// its ports, which would change as vifs come and go and leave guests with stale ARP
/// entries for the bridge's address.
#[must_use]
pub fn bridge_mac(name: &str) -> Mac {
    let h = fnv1a(format!("bridge:{name}").as_bytes()).to_le_bytes();
    Mac([0x02, h[0], h[1], h[2], h[3], h[4]])
}

/// Creates the bridge `name` if it is missing (`SIOCBRADDBR`), and then gives it the
/// fixed [`bridge_mac`], a forwarding delay of 0 (so new ports forward at once; STP is
/// off) and `addr` (if any); finally sets it up, whether or not it created it. An
/// existing bridge's address and settings are left alone. Returns whether it created the
/// bridge. If configuring a bridge it just created fails, it deletes it again.
///
/// # Errors
/// `InvalidInput` for a bad name; `AlreadyExists` if `name` is an interface but not a
/// bridge; the ioctls' errors, e.g. `creating bridge br0: Package not installed (is the
/// bridge module loaded?)`.
pub fn ensure_bridge(name: &str, addr: Option<Ipv4Cidr>) -> io::Result<bool> {
    let doing = || format!("creating bridge {name}");
    let field = name_field(name, &doing)?;
    let created = with_socket(&doing, Some("bridge"), |sock| {
        match ioctl_bridge(sock, true, &field) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    })?;
    if created {
        if let Err(e) = configure_new_bridge(name, addr) {
            let _ = delete_bridge(name);
            return Err(e);
        }
    } else if sysfs(name).exists() && !sysfs(name).join("bridge").exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{}: {name} exists and is not a bridge", doing()),
        ));
    }
    set_up(name)?;
    Ok(created)
}

fn configure_new_bridge(name: &str, addr: Option<Ipv4Cidr>) -> io::Result<()> {
    set_mac(name, bridge_mac(name))?;
    let delay = sysfs(name).join("bridge/forward_delay");
    if delay.exists() {
        std::fs::write(&delay, "0").map_err(|e| {
            failed(
                &format!(
                    "setting the forwarding delay of bridge {name} ({})",
                    delay.display()
                ),
                &e,
                None,
            )
        })?;
    }
    if let Some(addr) = addr {
        set_ipv4(name, addr)?;
    }
    Ok(())
}

/// Sets the bridge `name` down and deletes it (`SIOCBRDELBR`); its ports leave it.
///
/// # Errors
/// `InvalidInput` for a bad name; the ioctls' errors (`ENXIO`/`ENODEV`: no such bridge).
pub fn delete_bridge(name: &str) -> io::Result<()> {
    set_down(name)?;
    let doing = || format!("deleting bridge {name}");
    let field = name_field(name, &doing)?;
    with_socket(&doing, None, |sock| ioctl_bridge(sock, false, &field))
}

/// Makes `ifname` a port of `bridge` (`SIOCBRADDIF`). Succeeds without change if it
/// already is one.
///
/// # Errors
/// `InvalidInput` for a bad name; the ioctls' errors (`ENODEV`: no such interface;
/// `EBUSY`: it is a port of another bridge; `EOPNOTSUPP`/`EINVAL`: `bridge` is not one).
pub fn attach_to_bridge(bridge: &str, ifname: &str) -> io::Result<()> {
    let doing = || format!("attaching {ifname} to bridge {bridge}");
    let mut index_req = IfReq::new(name_field(ifname, &doing)?);
    let mut req = IfReq::new(name_field(bridge, &doing)?);
    with_socket(&doing, Some("bridge"), |sock| {
        ioctl_ifreq(sock, IfReqIoctl::GetIndex, &mut index_req)?;
        req.set_int(index_req.int());
        match ioctl_ifreq(sock, IfReqIoctl::BridgeAddIf, &mut req) {
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && master_of(ifname).as_deref() == Some(bridge) =>
            {
                Ok(())
            }
            other => other,
        }
    })
}

/// The bridge (or other master) `ifname` is enslaved to, from sysfs.
#[must_use]
pub fn master_of(ifname: &str) -> Option<String> {
    if check_ifname(ifname).is_err() {
        return None;
    }
    let target = std::fs::read_link(sysfs(ifname).join("master")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}
