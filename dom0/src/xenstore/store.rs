//! The xenstore tree with permissions, watches and transactions, and the request handler
//! for one message ([`Store::handle`]).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use shared_abi::io::xenstore::{
    MsgHeader, PAYLOAD_MAX, XS_DIRECTORY, XS_ERROR, XS_GET_DOMAIN_PATH, XS_GET_PERMS, XS_MKDIR,
    XS_READ, XS_RESET_WATCHES, XS_RM, XS_SET_PERMS, XS_TRANSACTION_END, XS_TRANSACTION_START,
    XS_UNWATCH, XS_WATCH, XS_WATCH_EVENT, XS_WRITE,
};

use zerocopy::IntoBytes;

use super::XsErr;
use super::path::{self, home, is_at_or_below, parent, relative_to_home};

/// Nodes one DomU may own.
pub const MAX_NODES_PER_DOMAIN: usize = 1000;
/// Bytes in one value.
pub const MAX_VALUE: usize = 2048;
/// Watches per connection.
pub const MAX_WATCHES: usize = 128;
/// Open transactions per connection.
pub const MAX_TRANSACTIONS: usize = 10;
/// Entries in one permission list.
pub const MAX_ACL: usize = 16;

/// What a permission entry grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing (`n`).
    None,
    /// Read (`r`).
    Read,
    /// Write (`w`).
    Write,
    /// Both (`b`).
    Both,
}

impl Access {
    fn letter(self) -> char {
        match self {
            Self::None => 'n',
            Self::Read => 'r',
            Self::Write => 'w',
            Self::Both => 'b',
        }
    }

    fn from_letter(c: u8) -> Option<Self> {
        Some(match c {
            b'n' => Self::None,
            b'r' => Self::Read,
            b'w' => Self::Write,
            b'b' => Self::Both,
            _ => return None,
        })
    }

    fn reads(self) -> bool {
        matches!(self, Self::Read | Self::Both)
    }

    fn writes(self) -> bool {
        matches!(self, Self::Write | Self::Both)
    }
}

/// A node's permissions: its owner (full access), everyone else's default, and
/// per-domain exceptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Perms {
    /// The owning domain.
    pub owner: u32,
    /// What other domains get.
    pub others: Access,
    /// Exceptions, by domain.
    pub acl: Vec<(u32, Access)>,
}

impl Perms {
    /// Owned by `owner`, nothing for anyone else.
    #[must_use]
    pub fn private(owner: u32) -> Self {
        Self {
            owner,
            others: Access::None,
            acl: Vec::new(),
        }
    }

    /// What `dom` may do. Domain 0 may do everything.
    #[must_use]
    pub fn access(&self, dom: u32) -> Access {
        if dom == 0 || dom == self.owner {
            return Access::Both;
        }
        self.acl
            .iter()
            .find(|(d, _)| *d == dom)
            .map_or(self.others, |(_, a)| *a)
    }

    /// The wire form: `<letter><domid>` entries, the first being owner and default.
    #[must_use]
    pub fn to_strings(&self) -> Vec<String> {
        std::iter::once(format!("{}{}", self.others.letter(), self.owner))
            .chain(self.acl.iter().map(|(d, a)| format!("{}{d}", a.letter())))
            .collect()
    }

    /// Parses the wire form.
    ///
    /// # Errors
    /// `EINVAL` for an empty list, a bad letter or domid, or more than [`MAX_ACL`] entries.
    pub fn parse<'a>(mut items: impl Iterator<Item = &'a [u8]>) -> Result<Self, XsErr> {
        fn one(s: &[u8]) -> Result<(u32, Access), XsErr> {
            let (&first, rest) = s.split_first().ok_or(XsErr::Inval)?;
            let a = Access::from_letter(first).ok_or(XsErr::Inval)?;
            let d = std::str::from_utf8(rest)
                .ok()
                .and_then(|t| t.parse::<u32>().ok())
                .filter(|d| *d <= u32::from(u16::MAX))
                .ok_or(XsErr::Inval)?;
            Ok((d, a))
        }
        let (owner, others) = one(items.next().ok_or(XsErr::Inval)?)?;
        let acl = items.map(one).collect::<Result<Vec<_>, _>>()?;
        if acl.len() > MAX_ACL {
            return Err(XsErr::Inval);
        }
        Ok(Self { owner, others, acl })
    }
}

#[derive(Debug, Clone)]
struct Node {
    value: Vec<u8>,
    perms: Perms,
}

/// The nodes, by absolute path; a node's children are the paths one component below it.
#[derive(Debug, Clone, Default)]
struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    fn children(&self, p: &str) -> Vec<String> {
        let prefix = if p == "/" {
            "/".to_owned()
        } else {
            format!("{p}/")
        };
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, _)| {
                let rest = &k[prefix.len()..];
                (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned())
            })
            .collect()
    }

    fn subtree(&self, p: &str) -> Vec<String> {
        self.nodes
            .keys()
            .filter(|k| is_at_or_below(k, p))
            .cloned()
            .collect()
    }

    fn owned_by(&self, dom: u32) -> usize {
        self.nodes.values().filter(|n| n.perms.owner == dom).count()
    }

    /// The closest existing node at or above `p`.
    fn nearest(&self, p: &str) -> Option<(&str, &Node)> {
        let mut at = Some(p);
        while let Some(q) = at {
            if let Some((k, n)) = self.nodes.get_key_value(q) {
                return Some((k.as_str(), n));
            }
            at = parent(q);
        }
        None
    }

    /// Creates `p` and its missing parents for `dom`, each inheriting its parent's
    /// permissions (owned by `dom` unless that is domain 0). Returns the paths created.
    fn create(&mut self, dom: u32, p: &str) -> Result<Vec<String>, XsErr> {
        let (_, anchor) = self.nearest(p).ok_or(XsErr::NoEnt)?;
        if !anchor.perms.access(dom).writes() {
            return Err(XsErr::Acces);
        }
        let mut missing = Vec::new();
        let mut at = Some(p);
        while let Some(q) = at {
            if self.nodes.contains_key(q) {
                break;
            }
            missing.push(q.to_owned());
            at = parent(q);
        }
        if dom != 0 && self.owned_by(dom) + missing.len() > MAX_NODES_PER_DOMAIN {
            return Err(XsErr::NoSpc);
        }
        missing.reverse();
        for q in &missing {
            let mut perms = parent(q)
                .and_then(|pp| self.nodes.get(pp))
                .map_or_else(|| Perms::private(0), |n| n.perms.clone());
            if dom != 0 {
                perms.owner = dom;
            }
            self.nodes.insert(
                q.clone(),
                Node {
                    value: Vec::new(),
                    perms,
                },
            );
        }
        Ok(missing)
    }
}

/// A client connection: a DomU's ring (`index` 0) or a Dom0 client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    /// The client's domain.
    pub domid: u32,
    /// Distinguishes several connections of one domain (Dom0's clients).
    pub index: u32,
}

#[derive(Debug, Clone)]
struct Watch {
    /// Absolute path (or special `@...`).
    path: String,
    /// Registered with a relative path: events report paths relative to the home.
    relative: bool,
    token: Vec<u8>,
}

#[derive(Debug)]
struct Transaction {
    tree: Tree,
    base: u64,
    changed: Vec<(String, Perms)>,
}

#[derive(Debug, Default)]
struct Conn {
    watches: Vec<Watch>,
    transactions: BTreeMap<u32, Transaction>,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    tree: Tree,
    /// Bumped by every committed change; a transaction conflicts if it moved.
    generation: u64,
    conns: BTreeMap<ConnId, Conn>,
    next_tx: u32,
    events: Vec<(ConnId, Vec<u8>)>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// A whole message: header and payload.
#[must_use]
pub fn message(msg_type: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let h = MsgHeader {
        msg_type,
        req_id,
        tx_id,
        len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
    };
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn nul_terminated(items: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let mut v = Vec::new();
    for i in items {
        v.extend_from_slice(i.as_ref());
        v.push(0);
    }
    v
}

/// The first NUL-terminated argument (or the whole payload if it has no NUL).
fn first_arg(payload: &[u8]) -> &[u8] {
    payload.split(|b| *b == 0).next().unwrap_or(payload)
}

/// Splits `a\0b\0` into its arguments (a trailing NUL ends the last one).
fn args(payload: &[u8]) -> Vec<&[u8]> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    body.split(|b| *b == 0).collect()
}

impl Store {
    /// A store holding `/`, `/local` and `/local/domain`, owned by domain 0 and private.
    #[must_use]
    pub fn new() -> Self {
        let mut tree = Tree::default();
        for p in ["/", "/local", "/local/domain"] {
            tree.nodes.insert(
                p.to_owned(),
                Node {
                    value: Vec::new(),
                    perms: Perms::private(0),
                },
            );
        }
        Self {
            tree,
            generation: 0,
            conns: BTreeMap::new(),
            next_tx: 1,
            events: Vec::new(),
        }
    }

    /// Registers a connection (idempotent).
    pub fn connect(&mut self, conn: ConnId) {
        self.conns.entry(conn).or_default();
    }

    /// Drops a connection with its watches and open transactions.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    /// Creates domain `domid`'s home with the nodes the toolstack writes (`name`,
    /// `domid`, read-only to it; `control` and the rest writable), and fires
    /// `@introduceDomain`.
    pub fn introduce_domain(&mut self, domid: u32, name: &str) {
        let h = home(domid);
        let _ = self.rm(0, &h);
        let read_only = Perms {
            owner: 0,
            others: Access::None,
            acl: vec![(domid, Access::Read)],
        };
        let _ = self.write(0, &h, b"");
        let _ = self.set_perms(0, &h, Perms::private(domid));
        for (leaf, value) in [
            ("name", name.as_bytes()),
            ("domid", domid.to_string().as_bytes()),
        ] {
            let p = format!("{h}/{leaf}");
            let _ = self.write(0, &p, value);
            let _ = self.set_perms(0, &p, read_only.clone());
        }
        let _ = self.write(0, &format!("{h}/control"), b"");
        self.fire("@introduceDomain", None);
    }

    /// Removes domain `domid`'s home and connections, and fires `@releaseDomain`.
    pub fn release_domain(&mut self, domid: u32) {
        let _ = self.rm(0, &home(domid));
        self.conns.retain(|c, _| c.domid != domid);
        self.fire("@releaseDomain", None);
    }

    /// Reads a node as `dom`.
    ///
    /// # Errors
    /// `ENOENT`, `EACCES`.
    pub fn read(&self, dom: u32, p: &str) -> Result<Vec<u8>, XsErr> {
        let n = self.tree.nodes.get(p).ok_or(XsErr::NoEnt)?;
        if !n.perms.access(dom).reads() {
            return Err(XsErr::Acces);
        }
        Ok(n.value.clone())
    }

    /// Writes a node as `dom`, creating it and missing parents; fires watches.
    ///
    /// # Errors
    /// `EACCES`, `ENOSPC`, `E2BIG`.
    pub fn write(&mut self, dom: u32, p: &str, value: &[u8]) -> Result<(), XsErr> {
        let changed = write_in(&mut self.tree, dom, p, value)?;
        self.commit_changes(changed);
        Ok(())
    }

    /// Removes a node and its subtree as `dom`; fires watches.
    ///
    /// # Errors
    /// `ENOENT`, `EACCES`, `EINVAL` for `/`.
    pub fn rm(&mut self, dom: u32, p: &str) -> Result<(), XsErr> {
        let changed = rm_in(&mut self.tree, dom, p)?;
        self.commit_changes(changed);
        Ok(())
    }

    /// Sets a node's permissions as `dom` (its owner or domain 0); fires watches.
    ///
    /// # Errors
    /// `ENOENT`, `EACCES`.
    pub fn set_perms(&mut self, dom: u32, p: &str, perms: Perms) -> Result<(), XsErr> {
        let changed = set_perms_in(&mut self.tree, dom, p, perms)?;
        self.commit_changes(changed);
        Ok(())
    }

    /// Watch events queued for connections since the last call, as whole messages.
    pub fn take_events(&mut self) -> Vec<(ConnId, Vec<u8>)> {
        std::mem::take(&mut self.events)
    }

    fn commit_changes(&mut self, changed: Vec<(String, Perms)>) {
        if changed.is_empty() {
            return;
        }
        self.generation += 1;
        for (p, perms) in changed {
            self.fire(&p, Some(&perms));
        }
    }

    /// Queues an event for every watch at or above `p` whose domain may read it.
    fn fire(&mut self, p: &str, perms: Option<&Perms>) {
        for (id, conn) in &self.conns {
            for w in &conn.watches {
                let hit = if p.starts_with('@') {
                    w.path == p
                } else {
                    !w.path.starts_with('@') && is_at_or_below(p, &w.path)
                };
                if !hit || perms.is_some_and(|pm| !pm.access(id.domid).reads()) {
                    continue;
                }
                let shown = if w.relative {
                    relative_to_home(id.domid, p)
                } else {
                    p.to_owned()
                };
                let payload = nul_terminated(&[shown.as_bytes(), &w.token]);
                self.events
                    .push((*id, message(XS_WATCH_EVENT, 0, 0, &payload)));
            }
        }
    }

    /// Handles one request from `conn` and returns the whole reply message. Watch events
    /// it causes are queued ([`Self::take_events`]).
    pub fn handle(&mut self, conn: ConnId, h: &MsgHeader, payload: &[u8]) -> Vec<u8> {
        self.connect(conn);
        match self.dispatch(conn, h, payload) {
            Ok(reply) if reply.len() <= PAYLOAD_MAX as usize => {
                message(h.msg_type, h.req_id, h.tx_id, &reply)
            }
            Ok(_) => self.error(h, XsErr::TooBig),
            Err(e) => self.error(h, e),
        }
    }

    fn error(&self, h: &MsgHeader, e: XsErr) -> Vec<u8> {
        message(XS_ERROR, h.req_id, h.tx_id, &nul_terminated(&[e.name()]))
    }

    fn dispatch(&mut self, conn: ConnId, h: &MsgHeader, payload: &[u8]) -> Result<Vec<u8>, XsErr> {
        let dom = conn.domid;
        let ok = || Ok(b"OK\0".to_vec());
        match h.msg_type {
            XS_TRANSACTION_START => {
                if h.tx_id != 0 {
                    return Err(XsErr::Inval);
                }
                let c = self.conns.entry(conn).or_default();
                if c.transactions.len() >= MAX_TRANSACTIONS {
                    return Err(XsErr::NoSpc);
                }
                let id = self.next_tx;
                self.next_tx = self.next_tx.wrapping_add(1).max(1);
                c.transactions.insert(
                    id,
                    Transaction {
                        tree: self.tree.clone(),
                        base: self.generation,
                        changed: Vec::new(),
                    },
                );
                Ok(nul_terminated(&[id.to_string()]))
            }
            XS_TRANSACTION_END => {
                let c = self.conns.entry(conn).or_default();
                let tx = c.transactions.remove(&h.tx_id).ok_or(XsErr::NoEnt)?;
                match first_arg(payload) {
                    b"T" => {
                        if tx.base != self.generation {
                            return Err(XsErr::Again);
                        }
                        self.tree = tx.tree;
                        self.commit_changes(tx.changed);
                        ok()
                    }
                    b"F" => ok(),
                    _ => Err(XsErr::Inval),
                }
            }
            XS_GET_DOMAIN_PATH => {
                let d = std::str::from_utf8(first_arg(payload))
                    .ok()
                    .and_then(|t| t.parse::<u32>().ok())
                    .ok_or(XsErr::Inval)?;
                Ok(nul_terminated(&[home(d)]))
            }
            XS_WATCH | XS_UNWATCH => {
                let a = args(payload);
                let [raw, token] = a.as_slice() else {
                    return Err(XsErr::Inval);
                };
                let p = path::resolve(dom, raw)?;
                if p.starts_with('@') && dom != 0 {
                    return Err(XsErr::Acces);
                }
                let c = self.conns.entry(conn).or_default();
                if h.msg_type == XS_UNWATCH {
                    let before = c.watches.len();
                    c.watches.retain(|w| !(w.path == p && w.token == *token));
                    return if c.watches.len() == before {
                        Err(XsErr::NoEnt)
                    } else {
                        ok()
                    };
                }
                if c.watches.len() >= MAX_WATCHES {
                    return Err(XsErr::NoSpc);
                }
                if c.watches.iter().any(|w| w.path == p && w.token == *token) {
                    return Err(XsErr::Exist);
                }
                let w = Watch {
                    path: p.clone(),
                    relative: !raw.starts_with(b"/") && !raw.starts_with(b"@"),
                    token: token.to_vec(),
                };
                // A new watch fires once at once.
                let shown = if w.relative {
                    relative_to_home(dom, &p)
                } else {
                    p
                };
                let ev = nul_terminated(&[shown.as_bytes(), &w.token]);
                c.watches.push(w);
                self.events.push((conn, message(XS_WATCH_EVENT, 0, 0, &ev)));
                ok()
            }
            XS_RESET_WATCHES => {
                self.conns.entry(conn).or_default().watches.clear();
                ok()
            }
            XS_READ | XS_DIRECTORY | XS_GET_PERMS | XS_WRITE | XS_MKDIR | XS_RM | XS_SET_PERMS => {
                self.node_op(conn, h, payload)
            }
            _ => Err(XsErr::NoSys),
        }
    }

    /// The operations that read or change nodes, inside a transaction or not.
    fn node_op(&mut self, conn: ConnId, h: &MsgHeader, payload: &[u8]) -> Result<Vec<u8>, XsErr> {
        let dom = conn.domid;
        let (raw, rest) = match payload.iter().position(|b| *b == 0) {
            Some(i) => (&payload[..i], &payload[i + 1..]),
            None => (payload, &[][..]),
        };
        let p = path::resolve(dom, raw)?;
        if p.starts_with('@') {
            return Err(XsErr::Inval);
        }
        let in_tx = h.tx_id != 0;
        let (tree, changed) = if in_tx {
            let tx = self
                .conns
                .get_mut(&conn)
                .and_then(|c| c.transactions.get_mut(&h.tx_id))
                .ok_or(XsErr::NoEnt)?;
            (&mut tx.tree, Some(&mut tx.changed))
        } else {
            (&mut self.tree, None)
        };
        let readable = |tree: &Tree| -> Result<Node, XsErr> {
            let n = tree.nodes.get(&p).ok_or(XsErr::NoEnt)?;
            if n.perms.access(dom).reads() {
                Ok(n.clone())
            } else {
                Err(XsErr::Acces)
            }
        };
        let (reply, made) = match h.msg_type {
            XS_READ => (readable(tree)?.value, Vec::new()),
            XS_DIRECTORY => {
                readable(tree)?;
                (nul_terminated(&tree.children(&p)), Vec::new())
            }
            XS_GET_PERMS => (
                nul_terminated(&readable(tree)?.perms.to_strings()),
                Vec::new(),
            ),
            XS_WRITE => (b"OK\0".to_vec(), write_in(tree, dom, &p, rest)?),
            XS_MKDIR => {
                let made = if tree.nodes.contains_key(&p) {
                    Vec::new()
                } else {
                    write_in(tree, dom, &p, b"")?
                };
                (b"OK\0".to_vec(), made)
            }
            XS_RM => (b"OK\0".to_vec(), rm_in(tree, dom, &p)?),
            XS_SET_PERMS => {
                let perms = Perms::parse(args(rest).into_iter())?;
                (b"OK\0".to_vec(), set_perms_in(tree, dom, &p, perms)?)
            }
            _ => return Err(XsErr::NoSys),
        };
        match changed {
            Some(c) => c.extend(made),
            None => self.commit_changes(made),
        }
        Ok(reply)
    }
}

/// Writes `value` at `p` in `tree` as `dom`; returns the changed paths with their perms.
fn write_in(
    tree: &mut Tree,
    dom: u32,
    p: &str,
    value: &[u8],
) -> Result<Vec<(String, Perms)>, XsErr> {
    if value.len() > MAX_VALUE {
        return Err(XsErr::TooBig);
    }
    let mut changed: Vec<String> = match tree.nodes.get(p) {
        Some(n) if !n.perms.access(dom).writes() => return Err(XsErr::Acces),
        Some(_) => Vec::new(),
        None => tree.create(dom, p)?,
    };
    if let Some(n) = tree.nodes.get_mut(p) {
        n.value = value.to_vec();
    }
    if !changed.iter().any(|c| c == p) {
        changed.push(p.to_owned());
    }
    Ok(changed
        .into_iter()
        .filter_map(|c| tree.nodes.get(&c).map(|n| (c, n.perms.clone())))
        .collect())
}

fn rm_in(tree: &mut Tree, dom: u32, p: &str) -> Result<Vec<(String, Perms)>, XsErr> {
    if p == "/" {
        return Err(XsErr::Inval);
    }
    let n = tree.nodes.get(p).ok_or(XsErr::NoEnt)?;
    if !n.perms.access(dom).writes() {
        return Err(XsErr::Acces);
    }
    let gone = tree.subtree(p);
    Ok(gone
        .into_iter()
        .filter_map(|q| tree.nodes.remove(&q).map(|n| (q, n.perms)))
        .collect())
}

fn set_perms_in(
    tree: &mut Tree,
    dom: u32,
    p: &str,
    perms: Perms,
) -> Result<Vec<(String, Perms)>, XsErr> {
    let n = tree.nodes.get_mut(p).ok_or(XsErr::NoEnt)?;
    if dom != 0 && (n.perms.owner != dom || perms.owner != dom) {
        return Err(XsErr::Acces);
    }
    n.perms = perms.clone();
    Ok(vec![(p.to_owned(), perms)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    const D3: ConnId = ConnId { domid: 3, index: 0 };
    const D4: ConnId = ConnId { domid: 4, index: 0 };
    const DOM0: ConnId = ConnId { domid: 0, index: 1 };

    fn req(s: &mut Store, c: ConnId, t: u32, tx: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let h = MsgHeader {
            msg_type: t,
            req_id: 77,
            tx_id: tx,
            len: payload.len() as u32,
        };
        let reply = s.handle(c, &h, payload);
        let rh = MsgHeader::read_from_bytes(&reply[..16]).unwrap();
        assert_eq!(rh.req_id, 77);
        assert_eq!(rh.len as usize, reply.len() - 16);
        let t = if rh.msg_type == XS_ERROR {
            XS_ERROR
        } else {
            rh.msg_type
        };
        (t, reply[16..].to_vec())
    }

    fn err(name: &str) -> (u32, Vec<u8>) {
        (XS_ERROR, format!("{name}\0").into_bytes())
    }

    fn events_for(s: &mut Store, c: ConnId) -> Vec<String> {
        s.take_events()
            .into_iter()
            .filter(|(id, _)| *id == c)
            .map(|(_, m)| String::from_utf8_lossy(&m[16..]).replace('\0', "|"))
            .collect()
    }

    fn store() -> Store {
        let mut s = Store::new();
        s.introduce_domain(3, "vm3");
        s.introduce_domain(4, "vm4");
        s.take_events();
        s
    }

    #[test]
    fn guest_lives_in_its_home() {
        let mut s = store();
        assert_eq!(
            req(&mut s, D3, XS_READ, 0, b"name\0"),
            (XS_READ, b"vm3".to_vec())
        );
        assert_eq!(req(&mut s, D3, XS_WRITE, 0, b"name\0evil"), err("EACCES"));
        assert_eq!(
            req(&mut s, D3, XS_WRITE, 0, b"data/x\0v1"),
            (XS_WRITE, b"OK\0".to_vec())
        );
        assert_eq!(
            req(&mut s, D3, XS_READ, 0, b"/local/domain/3/data/x\0"),
            (XS_READ, b"v1".to_vec())
        );
        assert_eq!(req(&mut s, D3, XS_DIRECTORY, 0, b"\0").0, XS_ERROR);
        assert_eq!(
            req(&mut s, D3, XS_DIRECTORY, 0, b"/local/domain/3\0"),
            (XS_DIRECTORY, b"control\0data\0domid\0name\0".to_vec())
        );
        // Another domain's subtree and the root are closed to it.
        assert_eq!(
            req(&mut s, D3, XS_READ, 0, b"/local/domain/4/name\0"),
            err("EACCES")
        );
        assert_eq!(
            req(&mut s, D3, XS_WRITE, 0, b"/local/domain/4/x\0v"),
            err("EACCES")
        );
        assert_eq!(req(&mut s, D3, XS_WRITE, 0, b"/evil\0v"), err("EACCES"));
        assert_eq!(
            req(&mut s, D3, XS_RM, 0, b"/local/domain/4\0"),
            err("EACCES")
        );
        assert_eq!(
            req(&mut s, D3, XS_DIRECTORY, 0, b"/local/domain\0"),
            err("EACCES")
        );
        assert_eq!(req(&mut s, D3, XS_READ, 0, b"nothing\0"), err("ENOENT"));
        assert_eq!(req(&mut s, D3, 99, 0, b""), err("ENOSYS"));
        assert_eq!(req(&mut s, D3, XS_READ, 0, b"a//b\0"), err("EINVAL"));
        assert_eq!(
            req(&mut s, D3, XS_WATCH, 0, b"@releaseDomain\0t\0"),
            err("EACCES")
        );
        // Domain 0 reads everything.
        assert_eq!(
            req(&mut s, DOM0, XS_READ, 0, b"/local/domain/3/data/x\0"),
            (XS_READ, b"v1".to_vec())
        );
    }

    #[test]
    fn back_end_public_nodes_are_readable_by_their_front_end() {
        let mut s = store();
        s.write(0, "/local/domain/0/backend/vbd/3/51712/state", b"2")
            .unwrap();
        let p = Perms {
            owner: 0,
            others: Access::None,
            acl: vec![(3, Access::Read)],
        };
        s.set_perms(0, "/local/domain/0/backend/vbd/3/51712/state", p)
            .unwrap();
        assert_eq!(
            req(
                &mut s,
                D3,
                XS_READ,
                0,
                b"/local/domain/0/backend/vbd/3/51712/state\0"
            ),
            (XS_READ, b"2".to_vec())
        );
        assert_eq!(
            req(
                &mut s,
                D4,
                XS_READ,
                0,
                b"/local/domain/0/backend/vbd/3/51712/state\0"
            ),
            err("EACCES")
        );
        assert_eq!(
            req(
                &mut s,
                D3,
                XS_GET_PERMS,
                0,
                b"/local/domain/0/backend/vbd/3/51712/state\0"
            ),
            (XS_GET_PERMS, b"n0\0r3\0".to_vec())
        );
        // A guest cannot give its nodes away or take others'.
        assert_eq!(
            req(&mut s, D3, XS_SET_PERMS, 0, b"control\0n4\0"),
            err("EACCES")
        );
        assert_eq!(
            req(&mut s, D3, XS_SET_PERMS, 0, b"control\0n3\0r0\0").0,
            XS_SET_PERMS
        );
        assert_eq!(
            req(&mut s, D3, XS_SET_PERMS, 0, b"control\0x3\0"),
            err("EINVAL")
        );
    }

    #[test]
    fn watches_fire_on_register_and_on_changes_they_may_see() {
        let mut s = store();
        assert_eq!(
            req(&mut s, D3, XS_WATCH, 0, b"control/shutdown\0tok\0").0,
            XS_WATCH
        );
        assert_eq!(events_for(&mut s, D3), ["control/shutdown|tok|"]);
        s.write(0, "/local/domain/3/control/shutdown", b"poweroff")
            .unwrap();
        assert_eq!(events_for(&mut s, D3), ["control/shutdown|tok|"]);
        // A change elsewhere does not fire; a watch on another domain's path stays silent.
        assert_eq!(
            req(&mut s, D4, XS_WATCH, 0, b"/local/domain/3\0spy\0").0,
            XS_WATCH
        );
        s.take_events();
        s.write(0, "/local/domain/3/control/shutdown", b"reboot")
            .unwrap();
        assert!(events_for(&mut s, D4).is_empty());
        assert_eq!(
            req(&mut s, D3, XS_UNWATCH, 0, b"control/shutdown\0tok\0").0,
            XS_UNWATCH
        );
        assert_eq!(
            req(&mut s, D3, XS_UNWATCH, 0, b"control/shutdown\0tok\0"),
            err("ENOENT")
        );
        // Release fires for Dom0's special watch.
        assert_eq!(
            req(&mut s, DOM0, XS_WATCH, 0, b"@releaseDomain\0r\0").0,
            XS_WATCH
        );
        s.take_events();
        s.release_domain(3);
        assert_eq!(events_for(&mut s, DOM0), ["@releaseDomain|r|"]);
        assert_eq!(s.read(0, "/local/domain/3/name"), Err(XsErr::NoEnt));
    }

    #[test]
    fn transactions_commit_or_conflict() {
        let mut s = store();
        let (_, id) = req(&mut s, D3, XS_TRANSACTION_START, 0, b"\0");
        let id: u32 = String::from_utf8(id)
            .unwrap()
            .trim_end_matches('\0')
            .parse()
            .unwrap();
        assert_eq!(req(&mut s, D3, XS_WRITE, id, b"a\x001").0, XS_WRITE);
        // Not visible outside until committed.
        assert_eq!(s.read(0, "/local/domain/3/a"), Err(XsErr::NoEnt));
        assert_eq!(
            req(&mut s, D3, XS_READ, id, b"a\0"),
            (XS_READ, b"1".to_vec())
        );
        assert_eq!(
            req(&mut s, D3, XS_TRANSACTION_END, id, b"T\0").0,
            XS_TRANSACTION_END
        );
        assert_eq!(s.read(0, "/local/domain/3/a").unwrap(), b"1");
        // A change in between makes the commit fail with EAGAIN.
        let (_, id) = req(&mut s, D3, XS_TRANSACTION_START, 0, b"\0");
        let id: u32 = String::from_utf8(id)
            .unwrap()
            .trim_end_matches('\0')
            .parse()
            .unwrap();
        req(&mut s, D3, XS_WRITE, id, b"a\x002");
        s.write(0, "/local/domain/3/b", b"x").unwrap();
        assert_eq!(
            req(&mut s, D3, XS_TRANSACTION_END, id, b"T\0"),
            err("EAGAIN")
        );
        assert_eq!(s.read(0, "/local/domain/3/a").unwrap(), b"1");
        assert_eq!(
            req(&mut s, D3, XS_TRANSACTION_END, id, b"T\0"),
            err("ENOENT")
        );
        assert_eq!(req(&mut s, D3, XS_READ, 999, b"a\0"), err("ENOENT"));
        for _ in 0..MAX_TRANSACTIONS {
            assert_eq!(
                req(&mut s, D3, XS_TRANSACTION_START, 0, b"\0").0,
                XS_TRANSACTION_START
            );
        }
        assert_eq!(
            req(&mut s, D3, XS_TRANSACTION_START, 0, b"\0"),
            err("ENOSPC")
        );
    }

    #[test]
    fn quotas_bound_a_hostile_guest() {
        let mut s = store();
        let big = vec![b'x'; MAX_VALUE + 1];
        let mut p = b"v\0".to_vec();
        p.extend_from_slice(&big);
        assert_eq!(req(&mut s, D3, XS_WRITE, 0, &p), err("E2BIG"));
        let mut last = (0, Vec::new());
        for i in 0..MAX_NODES_PER_DOMAIN + 5 {
            last = req(&mut s, D3, XS_WRITE, 0, format!("n{i}\0v").as_bytes());
        }
        assert_eq!(last, err("ENOSPC"));
        // Domain 4 is unaffected.
        assert_eq!(req(&mut s, D4, XS_WRITE, 0, b"ok\0v").0, XS_WRITE);
        for i in 0..MAX_WATCHES {
            assert_eq!(
                req(&mut s, D4, XS_WATCH, 0, format!("w\0t{i}\0").as_bytes()).0,
                XS_WATCH
            );
        }
        assert_eq!(req(&mut s, D4, XS_WATCH, 0, b"w\0extra\0"), err("ENOSPC"));
    }

    proptest::proptest! {
        #[test]
        fn garbage_requests_never_panic(t in 0u32..24, tx in 0u32..4, payload in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut s = store();
            let h = MsgHeader { msg_type: t, req_id: 1, tx_id: tx, len: payload.len() as u32 };
            let reply = s.handle(D3, &h, &payload);
            proptest::prop_assert!(reply.len() >= 16);
            // The guest never reaches outside its home and public nodes.
            proptest::prop_assert!(s.read(0, "/local/domain/4/name").is_ok());
        }
    }
}
