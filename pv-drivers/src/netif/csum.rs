//! Completing the checksum of a tx packet that a front-end left blank
//! (`NETTXF_CSUM_BLANK`).
//!
//! Front-ends with checksum offload (Linux's netfront always offloads IPv4 TCP and UDP)
//! send such packets with the TCP/UDP checksum field holding at most a partial sum. Before
//! the frame leaves the back-end for a network that expects whole checksums, the
//! back-end computes it: the Internet checksum (RFC 1071) over the IPv4 pseudo-header and
//! the whole TCP or UDP segment, with the field taken as zero. Only unfragmented IPv4
//! packets in Ethernet frames (optionally with one 802.1Q tag) qualify; anything else is a
//! [`CsumError`], and the back-end drops the packet.
#![forbid(unsafe_code)]

use core::fmt;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETH_HEADER: usize = 14;
const VLAN_TAG: usize = 4;
const IP_PROTO_TCP: u8 = 6;
const IP_PROTO_UDP: u8 = 17;
/// Where the checksum field lies in a TCP header, and the header's minimum length.
const TCP_CSUM: usize = 16;
const TCP_MIN: usize = 20;
/// Where the checksum field lies in a UDP header, and the header's length.
const UDP_CSUM: usize = 6;
const UDP_MIN: usize = 8;
/// IPv4 flags: more fragments; and the fragment offset mask.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// Why a blank checksum could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsumError {
    /// Not an IPv4 packet (the EtherType, or the IP version).
    NotIpv4 {
        /// The EtherType found (after a VLAN tag, if any).
        ethertype: u16,
    },
    /// Shorter than its headers or its IPv4 total length say.
    Truncated,
    /// An IPv4 header length below 20 bytes or past the total length.
    BadHeader,
    /// A fragment: its checksum covers the reassembled packet.
    Fragment,
    /// Neither TCP nor UDP.
    Protocol {
        /// The IP protocol number.
        proto: u8,
    },
}

impl fmt::Display for CsumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotIpv4 { ethertype } => {
                write!(f, "EtherType {ethertype:#06x} is not IPv4")
            }
            Self::Truncated => f.write_str("the frame is shorter than its headers say"),
            Self::BadHeader => f.write_str("the IPv4 header length is impossible"),
            Self::Fragment => f.write_str("an IPv4 fragment"),
            Self::Protocol { proto } => write!(f, "IP protocol {proto} is neither TCP nor UDP"),
        }
    }
}

impl core::error::Error for CsumError {}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The ones' complement sum of `data` as big-endian 16-bit words (an odd last byte is
/// padded with zero), added to `sum`, not yet folded.
fn add_words(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum to 16 bits (end-around carry).
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Lossless: the loop left at most 16 bits.
    sum as u16
}

/// Where the segment and its checksum field lie in `frame`, and the pseudo-header's sum.
struct Segment {
    start: usize,
    end: usize,
    field: usize,
    pseudo: u64,
    udp: bool,
}

fn locate(frame: &[u8]) -> Result<Segment, CsumError> {
    let mut ethertype = be16(frame, 12).ok_or(CsumError::Truncated)?;
    let mut l3 = ETH_HEADER;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16).ok_or(CsumError::Truncated)?;
        l3 += VLAN_TAG;
    }
    if ethertype != ETHERTYPE_IPV4 {
        return Err(CsumError::NotIpv4 { ethertype });
    }
    let ip = frame.get(l3..).ok_or(CsumError::Truncated)?;
    let first = *ip.first().ok_or(CsumError::Truncated)?;
    if first >> 4 != 4 {
        return Err(CsumError::NotIpv4 { ethertype });
    }
    let ihl = usize::from(first & 0x0f) * 4;
    let total = usize::from(be16(ip, 2).ok_or(CsumError::Truncated)?);
    if ihl < 20 || ihl > total {
        return Err(CsumError::BadHeader);
    }
    if total > ip.len() {
        return Err(CsumError::Truncated);
    }
    let frag = be16(ip, 6).ok_or(CsumError::Truncated)?;
    if frag & (IP_MF | IP_OFFSET) != 0 {
        return Err(CsumError::Fragment);
    }
    let proto = ip[9];
    let (field, min, udp) = match proto {
        IP_PROTO_TCP => (TCP_CSUM, TCP_MIN, false),
        IP_PROTO_UDP => (UDP_CSUM, UDP_MIN, true),
        proto => return Err(CsumError::Protocol { proto }),
    };
    let len = total - ihl;
    if len < min {
        return Err(CsumError::Truncated);
    }
    // Source and destination addresses, protocol, segment length.
    let mut pseudo = add_words(0, &ip[12..20]);
    pseudo += u64::from(proto);
    pseudo += len as u64;
    let start = l3 + ihl;
    Ok(Segment {
        start,
        end: start + len,
        field: start + field,
        pseudo,
        udp,
    })
}

/// Computes and stores the TCP or UDP checksum of the IPv4 packet in Ethernet `frame`,
/// whatever its checksum field held. Bytes after the IPv4 total length (Ethernet
/// padding) are not covered.
///
/// # Errors
/// [`CsumError`] when the frame is not an unfragmented IPv4 TCP/UDP packet that fits
/// the frame; `frame` is unchanged then.
pub fn complete_checksum(frame: &mut [u8]) -> Result<(), CsumError> {
    let seg = locate(frame)?;
    frame[seg.field..seg.field + 2].fill(0);
    let sum = add_words(seg.pseudo, &frame[seg.start..seg.end]);
    let mut csum = !fold(sum);
    if seg.udp && csum == 0 {
        // UDP sends a computed zero as all ones (zero means "no checksum").
        csum = 0xffff;
    }
    frame[seg.field..seg.field + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Whether the TCP or UDP checksum of the IPv4 packet in `frame` is right (a UDP field
/// of zero, "no checksum", counts as right).
///
/// # Errors
/// As [`complete_checksum`].
pub fn checksum_ok(frame: &[u8]) -> Result<bool, CsumError> {
    let seg = locate(frame)?;
    if seg.udp && frame[seg.field..seg.field + 2] == [0, 0] {
        return Ok(true);
    }
    Ok(fold(add_words(seg.pseudo, &frame[seg.start..seg.end])) == 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// An Ethernet frame holding an IPv4 packet of `proto` with `l4` as its segment.
    fn frame(vlan: bool, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + l4.len()) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 1]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        f
    }

    fn tcp(payload: &[u8]) -> Vec<u8> {
        let mut s = alloc::vec![0u8; 20];
        s[0..2].copy_from_slice(&7u16.to_be_bytes());
        s[2..4].copy_from_slice(&40000u16.to_be_bytes());
        s[12] = 5 << 4;
        s[13] = 0x18; // PSH, ACK
        s.extend_from_slice(payload);
        s
    }

    #[test]
    fn a_known_udp_checksum() {
        // UDP 10.0.0.2:7 -> 10.0.0.1:7, payload "hi": the sum worked by hand.
        // Pseudo: 0a00+0002+0a00+0001+0011+000a = 0x141e; header 0007+0007+000a = 0x0018;
        // data 6869. Sum 0x141e+0x0018+0x6869 = 0x7c9f, checksum !0x7c9f = 0x8360.
        let mut f = frame(false, 17, &[0, 7, 0, 7, 0, 10, 0xaa, 0xbb, b'h', b'i']);
        complete_checksum(&mut f).unwrap();
        assert_eq!(&f[14 + 20 + 6..14 + 20 + 8], &[0x83, 0x60]);
        assert_eq!(checksum_ok(&f), Ok(true));
    }

    #[test]
    fn refusals_leave_the_frame_alone() {
        let mut arp = frame(false, 6, &tcp(b"x"));
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let before = arp.clone();
        assert_eq!(
            complete_checksum(&mut arp),
            Err(CsumError::NotIpv4 { ethertype: 0x0806 })
        );
        assert_eq!(arp, before);

        let icmp = frame(false, 1, &[8, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(
            complete_checksum(&mut icmp.clone()),
            Err(CsumError::Protocol { proto: 1 })
        );
        let mut frag = frame(false, 17, &[0, 7, 0, 7, 0, 8, 0, 0]);
        frag[14 + 6] = 0x20; // MF
        assert_eq!(complete_checksum(&mut frag), Err(CsumError::Fragment));
        let mut short = frame(false, 6, &tcp(b"abc"));
        short.truncate(short.len() - 1);
        assert_eq!(complete_checksum(&mut short), Err(CsumError::Truncated));
        let mut ihl = frame(false, 6, &tcp(b""));
        ihl[14] = 0x44;
        assert_eq!(complete_checksum(&mut ihl), Err(CsumError::BadHeader));
        let mut v6 = frame(false, 6, &tcp(b""));
        v6[14] = 0x65;
        assert!(matches!(
            complete_checksum(&mut v6),
            Err(CsumError::NotIpv4 { .. })
        ));
        let mut tiny_tcp = frame(false, 6, &[0u8; 10]);
        assert_eq!(complete_checksum(&mut tiny_tcp), Err(CsumError::Truncated));
        for n in 0..14 {
            assert!(complete_checksum(&mut alloc::vec![0u8; n]).is_err());
        }
    }

    proptest! {
        #[test]
        fn completed_checksums_verify_and_ignore_the_blank(
            payload in proptest::collection::vec(any::<u8>(), 0..1460),
            udp in any::<bool>(),
            vlan in any::<bool>(),
            blank in any::<u16>(),
            padding in 0usize..20,
        ) {
            let l4 = if udp {
                let mut s = alloc::vec![0, 9, 0, 53];
                s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                s.extend_from_slice(&blank.to_be_bytes());
                s.extend_from_slice(&payload);
                s
            } else {
                let mut s = tcp(&payload);
                s[16..18].copy_from_slice(&blank.to_be_bytes());
                s
            };
            let mut f = frame(vlan, if udp { 17 } else { 6 }, &l4);
            f.extend(core::iter::repeat_n(0xee, padding));
            let mut g = f.clone();
            complete_checksum(&mut f).unwrap();
            prop_assert_eq!(checksum_ok(&f), Ok(true));
            // Whatever the field held, the result is the same.
            let field = f.len() - padding - l4.len() + if udp { 6 } else { 16 };
            g[field..field + 2].copy_from_slice(&[0x12, 0x34]);
            complete_checksum(&mut g).unwrap();
            prop_assert_eq!(&f, &g);
            // A flipped payload bit is caught.
            if !payload.is_empty() {
                let at = f.len() - padding - 1;
                f[at] ^= 1;
                prop_assert_eq!(checksum_ok(&f), Ok(false));
            }
        }
    }
}
