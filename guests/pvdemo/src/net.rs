//! pvdemo's network half: vif 0 through [`guest_rt::netfront`], smoltcp on top.
//!
//! [`start`] connects the NIC and configures the interface with the back-end's `ip` hint
//! (else [`DEFAULT_ADDR`]); smoltcp answers ARP and ICMP echo itself. [`Net::poll`] runs
//! the interface and these services until nothing is left to do, and says when to run
//! again:
//!
//! - TCP echo on port 7 ([`ECHO_SOCKETS`] connections at a time, listening again after
//!   each one closes);
//! - HTTP on port 80: any `GET` gets `200 OK` with a short text naming the guest and its
//!   address, anything else `405`, then the connection is closed;
//! - a source on port 19: each connection gets [`pattern::SOURCE_BYTES`] (16 MiB) of the
//!   stream of [`pattern::fill_stream`], then the guest closes it (`cargo xtask bench
//!   io` reads it with busybox `nc` in Dom0);
//! - with `peer=A.B.C.D` on the command line, a client that connects to the peer's port 7
//!   (retrying for up to 30 s while the peer boots), sends [`pattern::PEER_BYTES`] of the
//!   same stream, checks that every byte comes back, and prints
//!   `pvdemo: peer A.B.C.D: echoed 65536 bytes ok` or `pvdemo: peer A.B.C.D: FAILED: ...`.
//!
//! No allocator: the socket slots and buffers are statics behind locks, leaked once
//! ([`spin::MutexGuard::leak`]) into `&'static mut` borrows.

use guest_rt::netfront::{Ipv4Cidr, NetError, Nic, PAGE, TX_BUFFERS, parse_ipv4};
use guest_rt::pvdev::{Text, text};
use guest_rt::{control, println, time};
use shared_abi::io::netif::ETH_FRAME_MAX;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet, SocketStorage};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::pattern;

/// The address used when the back-end gives no `ip` hint.
pub(crate) const DEFAULT_ADDR: Ipv4Cidr = Ipv4Cidr {
    addr: [10, 0, 0, 2],
    prefix: 24,
};
const ECHO_PORT: u16 = 7;
const HTTP_PORT: u16 = 80;
const SOURCE_PORT: u16 = 19;
/// Echo connections served at the same time.
const ECHO_SOCKETS: usize = 2;
const SOCKETS: usize = ECHO_SOCKETS + 3;
const ECHO_BUF: usize = 8 << 10;
const HTTP_BUF: usize = 2 << 10;
const SOURCE_RX: usize = 1 << 10;
/// The source's send buffer: data in flight at most (the NIC holds 64 frames).
const SOURCE_TX: usize = 64 << 10;
const PEER_BUF: usize = 16 << 10;
/// The peer test keeps trying to connect for this long.
const PEER_CONNECT_WINDOW_NS: u64 = 30 * time::NS_PER_SEC;
/// One connection attempt waits this long for the handshake.
const PEER_ATTEMPT_NS: u64 = 3 * time::NS_PER_SEC;
const PEER_RETRY_NS: u64 = time::NS_PER_SEC;
/// The whole echo exchange, once connected.
const PEER_IO_TIMEOUT_NS: u64 = 60 * time::NS_PER_SEC;
/// Rounds of [`Net::poll`] before it lets the caller look at shutdown requests.
const POLL_BUDGET: u32 = 64;
/// Longest sleep between polls when smoltcp has no timer pending.
const MAX_IDLE_NS: u64 = time::NS_PER_SEC;

/// The socket buffers and the received-frame buffer (all zero: in `.bss`).
struct Mem {
    echo: [[u8; ECHO_BUF]; 2 * ECHO_SOCKETS],
    http: [[u8; HTTP_BUF]; 2],
    source_rx: [u8; SOURCE_RX],
    source_tx: [u8; SOURCE_TX],
    peer: [[u8; PEER_BUF]; 2],
    frame: [u8; PAGE],
}

static MEM: spin::Mutex<Mem> = spin::Mutex::new(Mem {
    echo: [[0; ECHO_BUF]; 2 * ECHO_SOCKETS],
    http: [[0; HTTP_BUF]; 2],
    source_rx: [0; SOURCE_RX],
    source_tx: [0; SOURCE_TX],
    peer: [[0; PEER_BUF]; 2],
    frame: [0; PAGE],
});

/// The socket slots (apart from [`MEM`]: an empty slot is not all zero, and would put
/// the buffers in `.data`).
static SOCKET_SLOTS: spin::Mutex<[SocketStorage<'static>; SOCKETS]> =
    spin::Mutex::new([SocketStorage::EMPTY; SOCKETS]);

fn instant(ns: u64) -> Instant {
    Instant::from_micros(i64::try_from(ns / 1000).unwrap_or(i64::MAX))
}

/// The NIC as a smoltcp device.
struct NicDevice {
    nic: Nic,
    frame: &'static mut [u8; PAGE],
}

struct RxFrame<'a>(&'a [u8]);

struct TxFrame<'a>(&'a mut Nic);

impl phy::RxToken for RxFrame<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxFrame<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = [0u8; ETH_FRAME_MAX];
        // smoltcp keeps to the MTU of `capabilities`; a longer frame would be cut.
        let len = len.min(ETH_FRAME_MAX);
        let r = f(&mut frame[..len]);
        // A full ring drops the frame (TCP retransmits); a broken NIC is seen by
        // `Net::poll` through `Nic::poll`.
        let _ = self.0.send(&frame[..len]);
        r
    }
}

impl Device for NicDevice {
    type RxToken<'a> = RxFrame<'a>;
    type TxToken<'a> = TxFrame<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxFrame<'_>, TxFrame<'_>)> {
        let n = self.nic.recv(&mut self.frame[..]).ok()??;
        Some((RxFrame(&self.frame[..n]), TxFrame(&mut self.nic)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxFrame<'_>> {
        matches!(self.nic.tx_available(), Ok(true)).then_some(TxFrame(&mut self.nic))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETH_FRAME_MAX;
        caps.max_burst_size = Some(TX_BUFFERS);
        caps
    }
}

/// One echo socket's connection.
#[derive(Default)]
struct Echo {
    remote: Option<IpEndpoint>,
    bytes: u64,
}

/// The HTTP socket's connection.
struct Http {
    req: [u8; 512],
    len: usize,
    answered: bool,
}

/// The source socket's connection.
#[derive(Default)]
struct Source {
    remote: Option<IpEndpoint>,
    sent: u64,
    since: u64,
}

#[derive(Clone, Copy)]
enum PeerStep {
    /// Connect at this time.
    Wait(u64),
    /// Handshake started at this time.
    Connecting(u64),
    /// Connected at `since`; `sent` and `got` bytes of the stream so far.
    Talking {
        since: u64,
        sent: u64,
        got: u64,
    },
    Done,
}

/// The `peer=` echo test.
struct Peer {
    addr: [u8; 4],
    step: PeerStep,
    give_up: u64,
    attempts: u16,
}

/// The interface, the NIC and the services (see the [module docs](self)).
pub(crate) struct Net {
    iface: Interface,
    dev: NicDevice,
    sockets: SocketSet<'static>,
    about: Text<160>,
    echo_handles: [SocketHandle; ECHO_SOCKETS],
    echo: [Echo; ECHO_SOCKETS],
    http_handle: SocketHandle,
    http: Http,
    source_handle: SocketHandle,
    source: Source,
    peer_handle: SocketHandle,
    peer: Option<Peer>,
}

/// What [`Net::poll`] wants next.
pub(crate) enum Next {
    /// Nothing to do before this time (ns), or before an event.
    At(u64),
    /// Work is left, but the caller should look at shutdown requests first.
    Busy,
}

/// Connects vif 0 and starts the services, printing what happened. `None` when the
/// guest has no NIC or it failed (already reported).
pub(crate) fn start(cmdline: &str) -> Option<Net> {
    let peer = guest_rt::cmdline::value(cmdline, "peer").and_then(|v| {
        let a = parse_ipv4(v.as_bytes());
        if a.is_none() {
            println!("pvdemo: peer {v}: FAILED: not an IPv4 address");
        }
        a
    });
    let nic = match Nic::connect(0) {
        Ok(nic) => nic,
        Err(e) => {
            if let NetError::NoNic(_) = e {
                println!("pvdemo: net: none");
            } else {
                println!("pvdemo: net: FAILED: {e}");
            }
            if let Some([a, b, c, d]) = peer {
                println!("pvdemo: peer {a}.{b}.{c}.{d}: FAILED: no network");
            }
            return None;
        }
    };
    let addr = nic.ip_hint().unwrap_or(DEFAULT_ADDR);
    let mac = nic.mac();
    println!(
        "pvdemo: net: vif 0 connected, mac {mac}, {addr}, event channel {}",
        nic.port()
    );
    if nic.ip_hint().is_none() {
        println!("pvdemo: net: the back-end gave no ip hint; using {DEFAULT_ADDR}");
    }

    let storage = spin::MutexGuard::leak(SOCKET_SLOTS.lock());
    let mem = spin::MutexGuard::leak(MEM.lock());
    let Mem {
        echo: echo_bufs,
        http: [http_rx, http_tx],
        source_rx,
        source_tx,
        peer: [peer_rx, peer_tx],
        frame,
    } = mem;
    let mut dev = NicDevice { nic, frame };
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac.0)));
    let m = mac.0;
    config.random_seed =
        time::now_ns() ^ u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]);
    let mut iface = Interface::new(config, &mut dev, instant(time::now_ns()));
    let [a, b, c, d] = addr.addr;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), addr.prefix));
    });

    let mut sockets = SocketSet::new(&mut storage[..]);
    let socket = |rx: &'static mut [u8], tx: &'static mut [u8]| {
        tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx))
    };
    let [e0_rx, e0_tx, e1_rx, e1_tx] = echo_bufs;
    let echo_handles = [
        sockets.add(socket(&mut e0_rx[..], &mut e0_tx[..])),
        sockets.add(socket(&mut e1_rx[..], &mut e1_tx[..])),
    ];
    let http_handle = sockets.add(socket(&mut http_rx[..], &mut http_tx[..]));
    let source_handle = sockets.add(socket(&mut source_rx[..], &mut source_tx[..]));
    let peer_handle = sockets.add(socket(&mut peer_rx[..], &mut peer_tx[..]));

    let mut name = [0u8; 64];
    let name = control::store_read("name", &mut name)
        .ok()
        .and_then(|n| core::str::from_utf8(&name[..n]).ok())
        .map(|n| n.trim_end_matches('\0'))
        .filter(|n| !n.is_empty())
        .unwrap_or("pvdemo");
    let about = text(format_args!(
        "Hello from {name}, a pvdemo guest at {addr} (mac {mac}).\n"
    ))
    .unwrap_or_default();
    let now = time::now_ns();
    println!(
        "pvdemo: net: serving ICMP echo, TCP echo on port {ECHO_PORT}, HTTP on port \
         {HTTP_PORT}, source on port {SOURCE_PORT}"
    );
    Some(Net {
        iface,
        dev,
        sockets,
        about,
        echo_handles,
        echo: core::array::from_fn(|_| Echo::default()),
        http_handle,
        http: Http {
            req: [0; 512],
            len: 0,
            answered: false,
        },
        source_handle,
        source: Source::default(),
        peer_handle,
        peer: peer.map(|addr| Peer {
            addr,
            step: PeerStep::Wait(now),
            give_up: now.saturating_add(PEER_CONNECT_WINDOW_NS),
            attempts: 0,
        }),
    })
}

impl Net {
    /// Runs the interface and the services until nothing is left to do now (at most
    /// [`POLL_BUDGET`] rounds).
    ///
    /// # Errors
    /// The NIC's error once it broke (it is unusable then).
    pub(crate) fn poll(&mut self) -> Result<Next, NetError> {
        for _ in 0..POLL_BUDGET {
            let now_ns = time::now_ns();
            let now = instant(now_ns);
            let changed =
                self.iface.poll(now, &mut self.dev, &mut self.sockets) != PollResult::None;
            let mut progress = false;
            for i in 0..ECHO_SOCKETS {
                let s = self.sockets.get_mut::<tcp::Socket>(self.echo_handles[i]);
                progress |= serve_echo(s, &mut self.echo[i]);
            }
            let s = self.sockets.get_mut::<tcp::Socket>(self.http_handle);
            progress |= serve_http(s, &mut self.http, self.about.as_str());
            let s = self.sockets.get_mut::<tcp::Socket>(self.source_handle);
            progress |= serve_source(s, &mut self.source, now_ns);
            let mut wake = None;
            if let Some(peer) = &mut self.peer {
                let s = self.sockets.get_mut::<tcp::Socket>(self.peer_handle);
                let (p, w) = run_peer(s, self.iface.context(), peer, now_ns);
                progress |= p;
                wake = w;
            }
            let pending = self.dev.nic.poll()?;
            if changed || progress || pending {
                continue;
            }
            let delay = self
                .iface
                .poll_delay(now, &self.sockets)
                .map_or(MAX_IDLE_NS, |d| d.total_micros().saturating_mul(1000))
                .min(MAX_IDLE_NS);
            let at = now_ns.saturating_add(delay);
            return Ok(Next::At(wake.map_or(at, |w| w.min(at))));
        }
        Ok(Next::Busy)
    }
}

/// Echoes what arrived; re-listens once the connection is gone. Whether it did anything.
fn serve_echo(s: &mut tcp::Socket<'_>, c: &mut Echo) -> bool {
    if !s.is_open() {
        if let Some(remote) = c.remote.take() {
            println!("pvdemo: net: echo: {remote}: echoed {} bytes", c.bytes);
        }
        let _ = s.listen(ECHO_PORT);
        return false;
    }
    if c.remote.is_none() && s.is_active() {
        c.remote = s.remote_endpoint();
        c.bytes = 0;
    }
    let mut progress = false;
    while s.can_recv() && s.can_send() {
        let room = s.send_capacity() - s.send_queue();
        let mut chunk = [0u8; 1024];
        let n = s.recv_slice(&mut chunk[..room.min(1024)]).unwrap_or(0);
        if n == 0 {
            break;
        }
        let _ = s.send_slice(&chunk[..n]);
        c.bytes += n as u64;
        progress = true;
    }
    // The peer is done sending and everything it sent is echoed (or queued).
    if s.state() == tcp::State::CloseWait && s.recv_queue() == 0 {
        s.close();
        progress = true;
    }
    progress
}

/// Answers one request per connection, then closes it.
fn serve_http(s: &mut tcp::Socket<'_>, c: &mut Http, about: &str) -> bool {
    if !s.is_open() {
        c.len = 0;
        c.answered = false;
        let _ = s.listen(HTTP_PORT);
        return false;
    }
    let mut progress = false;
    if c.answered {
        // Whatever else the client sends is read and ignored.
        while s.recv(|b| (b.len(), b.len())).unwrap_or(0) > 0 {
            progress = true;
        }
        return progress;
    }
    if s.can_recv() {
        let n = s.recv_slice(&mut c.req[c.len..]).unwrap_or(0);
        c.len += n;
        progress |= n > 0;
    }
    let req = &c.req[..c.len];
    let complete = req.windows(4).any(|w| w == b"\r\n\r\n")
        || req.windows(2).any(|w| w == b"\n\n")
        || c.len == c.req.len()
        || !s.may_recv();
    if complete && s.can_send() {
        let response: Option<Text<512>> = if req.starts_with(b"GET ") {
            text(format_args!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{about}",
                about.len()
            ))
        } else {
            let body = "only GET is served\n";
            text(format_args!(
                "HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ))
        };
        if let Some(r) = response {
            let _ = s.send_slice(r.as_str().as_bytes());
        }
        s.close();
        c.answered = true;
        progress = true;
    }
    progress
}

/// Sends [`pattern::SOURCE_BYTES`] of the stream on each connection, then closes it.
fn serve_source(s: &mut tcp::Socket<'_>, c: &mut Source, now: u64) -> bool {
    if !s.is_open() {
        if let Some(remote) = c.remote.take() {
            println!(
                "pvdemo: net: source: {remote}: sent {} bytes in {} ms",
                c.sent,
                now.saturating_sub(c.since) / 1_000_000
            );
        }
        let _ = s.listen(SOURCE_PORT);
        return false;
    }
    if c.remote.is_none() && s.is_active() {
        *c = Source {
            remote: s.remote_endpoint(),
            sent: 0,
            since: now,
        };
    }
    let mut progress = false;
    // Anything the client sends is read and ignored.
    while s.recv(|b| (b.len(), b.len())).unwrap_or(0) > 0 {
        progress = true;
    }
    if c.remote.is_some() && s.can_send() && c.sent < pattern::SOURCE_BYTES {
        let left = pattern::SOURCE_BYTES - c.sent;
        let sent = c.sent;
        let n = s
            .send(|buf| {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                pattern::fill_stream(sent, &mut buf[..n]);
                (n, n)
            })
            .unwrap_or(0);
        c.sent += n as u64;
        progress |= n > 0;
        if c.sent == pattern::SOURCE_BYTES {
            s.close();
        }
    }
    progress
}

/// Steps the peer test; whether it did anything, and when it wants to run again.
fn run_peer(
    s: &mut tcp::Socket<'_>,
    cx: &mut smoltcp::iface::Context,
    p: &mut Peer,
    now: u64,
) -> (bool, Option<u64>) {
    let [a, b, c, d] = p.addr;
    let fail = |p: &mut Peer, s: &mut tcp::Socket<'_>, why: core::fmt::Arguments<'_>| {
        println!("pvdemo: peer {a}.{b}.{c}.{d}: FAILED: {why}");
        s.abort();
        p.step = PeerStep::Done;
        (true, None)
    };
    match p.step {
        PeerStep::Done => (false, None),
        PeerStep::Wait(at) if now < at => (false, Some(at)),
        PeerStep::Wait(_) => {
            s.abort();
            let local = 49152 + p.attempts % 16384;
            p.attempts = p.attempts.wrapping_add(1);
            if let Err(e) = s.connect(cx, (IpAddress::v4(a, b, c, d), ECHO_PORT), local) {
                return fail(p, s, format_args!("connect: {e}"));
            }
            p.step = PeerStep::Connecting(now);
            (true, Some(now + PEER_ATTEMPT_NS))
        }
        PeerStep::Connecting(since) => {
            if s.may_send() {
                p.step = PeerStep::Talking {
                    since: now,
                    sent: 0,
                    got: 0,
                };
                return (true, Some(now + PEER_IO_TIMEOUT_NS));
            }
            if s.is_open() && now < since + PEER_ATTEMPT_NS {
                return (false, Some(since + PEER_ATTEMPT_NS));
            }
            // Refused (the peer is not listening yet) or no answer (not up yet).
            s.abort();
            if now >= p.give_up {
                let attempts = p.attempts;
                return fail(
                    p,
                    s,
                    format_args!(
                        "no connection to port {ECHO_PORT} in {} s ({attempts} attempts)",
                        PEER_CONNECT_WINDOW_NS / time::NS_PER_SEC,
                    ),
                );
            }
            p.step = PeerStep::Wait(now + PEER_RETRY_NS);
            (true, Some(now + PEER_RETRY_NS))
        }
        PeerStep::Talking {
            since,
            mut sent,
            mut got,
        } => {
            let mut progress = false;
            if s.can_send() && sent < pattern::PEER_BYTES {
                let left = pattern::PEER_BYTES - sent;
                let n = s
                    .send(|buf| {
                        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        pattern::fill_stream(sent, &mut buf[..n]);
                        (n, n)
                    })
                    .unwrap_or(0);
                sent += n as u64;
                progress |= n > 0;
            }
            let mut bad = None;
            while s.can_recv() {
                let at = got;
                let n = s
                    .recv(|buf| {
                        if let Some(i) = pattern::stream_mismatch(at, buf) {
                            bad = Some(at + i as u64);
                        }
                        (buf.len(), buf.len())
                    })
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                got += n as u64;
                progress = true;
                if bad.is_some() {
                    break;
                }
            }
            p.step = PeerStep::Talking { since, sent, got };
            if let Some(at) = bad {
                return fail(p, s, format_args!("echoed byte {at} differs"));
            }
            if got >= pattern::PEER_BYTES {
                println!("pvdemo: peer {a}.{b}.{c}.{d}: echoed {got} bytes ok");
                s.close();
                p.step = PeerStep::Done;
                return (true, None);
            }
            if !s.may_recv() {
                return fail(
                    p,
                    s,
                    format_args!(
                        "the connection closed after {got} of {} bytes",
                        pattern::PEER_BYTES
                    ),
                );
            }
            if now >= since + PEER_IO_TIMEOUT_NS {
                return fail(
                    p,
                    s,
                    format_args!(
                        "{got} of {} bytes echoed in {} s",
                        pattern::PEER_BYTES,
                        PEER_IO_TIMEOUT_NS / time::NS_PER_SEC
                    ),
                );
            }
            (progress, Some(since + PEER_IO_TIMEOUT_NS))
        }
    }
}
