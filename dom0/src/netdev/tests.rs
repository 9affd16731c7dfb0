//! Host tests of the parsing and naming; one `#[ignore]`d test of the ioctl paths that
//! needs root and `/dev/net/tun` (`cargo test -p dom0 netdev -- --ignored`).
#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

#[test]
fn mac_parses_six_hex_pairs_and_displays_lower_case() {
    let mac: Mac = "00:16:3E:0a:fF:10".parse().unwrap();
    assert_eq!(mac, Mac([0x00, 0x16, 0x3e, 0x0a, 0xff, 0x10]));
    assert_eq!(mac.to_string(), "00:16:3e:0a:ff:10");
    assert_eq!(BROADCAST_MAC.to_string(), "ff:ff:ff:ff:ff:ff");
    for s in [
        "00:16:3e:0a:ff",
        "00:16:3e:0a:ff:10:",
        "00:16:3e:0a:ff:10:11",
        "0:16:3e:0a:ff:10",
        "000:16:3e:0a:ff:10",
        "00-16-3e-0a-ff-10",
        "00:16:3e:0a:ff:1g",
        "00:16:3e:0a:ff:+1",
        " 00:16:3e:0a:ff:10",
        "00:16:3e:0a:ff:10\n",
        "",
        ":::::",
        "001:6:3e:0a:ff:10",
        "00:16:3e:0a:ff:１０",
    ] {
        let e = s.parse::<Mac>().unwrap_err();
        assert!(e.to_string().contains("is not a MAC address"), "{s:?}: {e}");
    }
    let long = "x".repeat(1000);
    assert_eq!(long.parse::<Mac>().unwrap_err().input.len(), 64);
}

#[test]
fn mac_kinds() {
    assert!(Mac([0x00, 0x16, 0x3e, 1, 2, 3]).is_unicast());
    assert!(!BROADCAST_MAC.is_unicast());
    assert!(!Mac([0x01, 0, 0x5e, 0, 0, 1]).is_unicast());
    assert!(Mac([0; 6]).is_zero());
    assert!(HOST_VIF_MAC.is_unicast());
}

#[test]
fn generated_macs_are_xen_unicast_stable_and_seed_dependent() {
    let a = Mac::generated(b"pvdemo/0");
    assert_eq!(a.0[..3], Mac::XEN_OUI);
    assert!(a.0[3] < 0x80);
    assert!(a.is_unicast());
    assert_eq!(a, Mac::generated(b"pvdemo/0"));
    let distinct: std::collections::BTreeSet<Mac> = (0..200)
        .map(|i| Mac::generated(format!("guest{i}/0").as_bytes()))
        .collect();
    assert!(distinct.len() >= 199, "{} distinct of 200", distinct.len());
    // The hash is fixed (FNV-1a), so the address of a name never changes between builds.
    assert_eq!(Mac::generated(b"").to_string(), "00:16:3e:25:23:22");
}

#[test]
fn bridge_mac_is_local_unicast_and_stable() {
    let m = bridge_mac(DEFAULT_BRIDGE);
    assert_eq!(m.0[0], 0x02);
    assert!(m.is_unicast());
    assert_eq!(m, bridge_mac(DEFAULT_BRIDGE));
    assert_ne!(m, bridge_mac("br1"));
}

#[test]
fn cidr_parses_strictly() {
    let c: Ipv4Cidr = "10.0.0.1/24".parse().unwrap();
    assert_eq!(
        c,
        Ipv4Cidr {
            addr: Ipv4Addr::new(10, 0, 0, 1),
            prefix: 24
        }
    );
    assert_eq!(c.to_string(), "10.0.0.1/24");
    assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
    assert_eq!(c.network(), Ipv4Addr::new(10, 0, 0, 0));
    assert_eq!(DEFAULT_BRIDGE_ADDR.parse::<Ipv4Cidr>().unwrap(), c);
    for (s, mask) in [
        ("0.0.0.0/0", Ipv4Addr::new(0, 0, 0, 0)),
        ("192.168.1.7/32", Ipv4Addr::new(255, 255, 255, 255)),
        ("172.16.0.1/12", Ipv4Addr::new(255, 240, 0, 0)),
        ("10.1.2.3/1", Ipv4Addr::new(128, 0, 0, 0)),
    ] {
        let c: Ipv4Cidr = s.parse().unwrap();
        assert_eq!(c.netmask(), mask, "{s}");
        assert_eq!(c.to_string(), s);
    }
    for s in [
        "10.0.0.1",
        "10.0.0.1/",
        "10.0.0.1/33",
        "10.0.0.1/024",
        "10.0.0.1/00",
        "10.0.0.1/+4",
        "10.0.0.1/-1",
        "10.0.0.1/ 24",
        "10.0.0.1/24 ",
        " 10.0.0.1/24",
        "10.0.0.1/24/1",
        "10.0.0/24",
        "10.0.0.01/24",
        "010.0.0.1/24",
        "10.0.0.256/24",
        "10.0.0.1.1/24",
        "::1/24",
        "10.0.0.1/255",
        "10.0.0.1/1000",
        "/24",
        "",
    ] {
        let e = s.parse::<Ipv4Cidr>().unwrap_err();
        assert!(
            e.to_string().contains("is not an IPv4 address"),
            "{s:?}: {e}"
        );
    }
    // Out-of-range prefixes built by hand behave as /32.
    let odd = Ipv4Cidr {
        addr: Ipv4Addr::new(1, 2, 3, 4),
        prefix: 200,
    };
    assert_eq!(odd.netmask(), Ipv4Addr::new(255, 255, 255, 255));
}

#[test]
fn interface_names() {
    assert_eq!(vif_name(3, 0), "vif3.0");
    assert_eq!(vif_name(32751, 99999), "vif32751.99999");
    assert_eq!(check_ifname(&vif_name(32751, 99999)), Ok(()));
    assert_eq!(
        check_ifname(&vif_name(u32::MAX, u32::MAX)),
        Err(BadIfName::TooLong { len: 24 })
    );
    for ok in [
        "br0",
        "vifprobe",
        "a",
        "vif1.0",
        "x-y_z.0",
        "123456789012345",
    ] {
        assert_eq!(check_ifname(ok), Ok(()), "{ok}");
    }
    assert_eq!(check_ifname(""), Err(BadIfName::Empty));
    assert_eq!(
        check_ifname("1234567890123456"),
        Err(BadIfName::TooLong { len: 16 })
    );
    assert_eq!(check_ifname("."), Err(BadIfName::Dots));
    assert_eq!(check_ifname(".."), Err(BadIfName::Dots));
    for (bad, ch) in [
        ("a/b", '/'),
        ("a b", ' '),
        ("eth0:1", ':'),
        ("vif%d", '%'),
        ("a\0b", '\0'),
        ("é", 'é'),
        ("br0\n", '\n'),
    ] {
        assert_eq!(check_ifname(bad), Err(BadIfName::BadChar { ch }), "{bad:?}");
    }
}

#[test]
fn bad_names_are_refused_before_any_system_call() {
    // These need no privileges: the name check comes first.
    let e = Tap::create("vif12345678901234.0").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(
        e.to_string(),
        "creating TAP vif12345678901234.0: \"vif12345678901234.0\" is not a valid interface \
         name: it is 19 bytes long, more than Linux's 15"
    );
    let e = ensure_bridge("br/0", None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().starts_with("creating bridge br/0: "), "{e}");
    for e in [
        attach_to_bridge("br0", "").unwrap_err(),
        set_up("..").unwrap_err(),
        set_mtu("a b", 1500).unwrap_err(),
    ] {
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }
    let e = set_mtu("br0", u32::MAX).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let e = set_mac("br0", BROADCAST_MAC).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(master_of("../x"), None);
}

#[test]
fn error_messages_name_the_step_and_hint_at_the_cause() {
    let enoent = io::Error::from_raw_os_error(libc::ENOENT);
    assert_eq!(
        failed("creating TAP vif3.0: /dev/net/tun", &enoent, Some("tun")).to_string(),
        "creating TAP vif3.0: /dev/net/tun: No such file or directory (is the tun module loaded?)"
    );
    let enopkg = io::Error::from_raw_os_error(libc::ENOPKG);
    assert!(
        failed("creating bridge br0", &enopkg, Some("bridge"))
            .to_string()
            .ends_with("(is the bridge module loaded?)")
    );
    let eperm = io::Error::from_raw_os_error(libc::EPERM);
    let e = failed("setting br0 up", &eperm, None);
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    assert!(
        e.to_string().ends_with("(needs root (CAP_NET_ADMIN))"),
        "{e}"
    );
    let enodev = io::Error::from_raw_os_error(libc::ENODEV);
    assert!(
        failed("setting x up", &enodev, Some("bridge"))
            .to_string()
            .ends_with("(no such interface)")
    );
}

#[test]
fn ifreq_fields_land_where_the_kernel_reads_them() {
    let mut r = IfReq::new(name_field("br0", &String::new).unwrap());
    assert_eq!(&r.name[..4], b"br0\0");
    assert_eq!(r.name(), "br0");
    r.set_flags(-2);
    assert_eq!(r.flags(), -2);
    r.set_int(1500);
    assert_eq!(r.int(), 1500);
    r.set_inet(Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(r.data[..8], [2, 0, 0, 0, 10, 0, 0, 1]);
    r.set_hwaddr(Mac([1, 2, 3, 4, 5, 6]));
    assert_eq!(r.data[..8], [1, 0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(std::mem::offset_of!(IfReq, data), 16);
}

/// Deletes the test bridge when dropped, even if the test panics.
struct BridgeGuard(&'static str);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = delete_bridge(self.0);
    }
}

/// The real ioctls, as root on a host with `/dev/net/tun` and the bridge module: a bridge
/// with an address, two TAPs on it, one frame across, then everything removed again.
#[test]
#[ignore = "needs root, /dev/net/tun and the bridge module; creates and deletes interfaces"]
fn tap_and_bridge_on_the_host() {
    // Root: the effective uid in /proc/self/status is 0.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root || !Path::new(TUN_PATH).exists() {
        eprintln!("skipped: not root or no {TUN_PATH}");
        return;
    }
    const BRIDGE: &str = "mvtest-br";
    let _ = delete_bridge(BRIDGE);
    let _guard = BridgeGuard(BRIDGE);
    let addr: Ipv4Cidr = "198.51.100.1/24".parse().unwrap();

    assert!(ensure_bridge(BRIDGE, Some(addr)).unwrap());
    assert!(!ensure_bridge(BRIDGE, Some(addr)).unwrap(), "second call");
    let address = std::fs::read_to_string(sysfs(BRIDGE).join("address")).unwrap();
    assert_eq!(address.trim(), bridge_mac(BRIDGE).to_string());
    let flags = std::fs::read_to_string(sysfs(BRIDGE).join("flags")).unwrap();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "bridge is up");
    let delay = std::fs::read_to_string(sysfs(BRIDGE).join("bridge/forward_delay")).unwrap();
    assert_eq!(delay.trim(), "0");
    if let Ok(ip) = std::process::Command::new("ip")
        .args(["-4", "addr", "show", "dev", BRIDGE])
        .output()
    {
        let text = String::from_utf8_lossy(&ip.stdout);
        assert!(
            text.contains("inet 198.51.100.1/24 brd 198.51.100.255 "),
            "{text}"
        );
    }

    // `lo` is not a bridge.
    let e = ensure_bridge("lo", None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");

    let mut out = Vec::new();
    let pass = crate::probe::net::selftest(
        &crate::probe::net::Setup {
            bridge: BRIDGE,
            addr,
            sender: "mvtest-a",
            receiver: "mvtest-b",
        },
        &mut out,
    )
    .unwrap();
    let report = String::from_utf8_lossy(&out);
    eprintln!("{report}");
    assert!(pass, "{report}");
    // The TAPs were closed, so they are gone.
    assert!(!sysfs("mvtest-a").exists());
    assert!(!sysfs("mvtest-b").exists());

    // A TAP of a name in use elsewhere is refused; closing one frees its name.
    let a = Tap::create("mvtest-a").unwrap();
    assert_eq!(a.name(), "mvtest-a");
    assert_eq!(
        a.read_frame(&mut [0; 2048]).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    let e = Tap::create("mvtest-a").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("creating TAP mvtest-a: TUNSETIFF: "),
        "{e}"
    );
    attach_to_bridge(BRIDGE, a.name()).unwrap();
    attach_to_bridge(BRIDGE, a.name()).unwrap(); // idempotent
    set_mtu(a.name(), 9000).unwrap();
    assert_eq!(
        std::fs::read_to_string(sysfs("mvtest-a").join("mtu"))
            .unwrap()
            .trim(),
        "9000"
    );
    set_mac(a.name(), HOST_VIF_MAC).unwrap();
    // Down: how the kernel takes a frame written into it (reported, not asserted).
    match a.write_frame(&crate::probe::net::test_frame()) {
        Ok(()) => eprintln!("write into a down TAP: accepted"),
        Err(e) => {
            eprintln!("write into a down TAP: {e}");
            assert!(e.to_string().ends_with("(is the interface down?)"), "{e}");
        }
    }
    drop(a);
    assert!(!sysfs("mvtest-a").exists());
    let e = attach_to_bridge(BRIDGE, "mvtest-a").unwrap_err();
    assert!(e.to_string().ends_with("(no such interface)"), "{e}");

    drop(_guard);
    assert!(!sysfs(BRIDGE).exists(), "bridge deleted");
}
