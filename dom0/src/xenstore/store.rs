//! The xenstore tree with permissions, watches and transactions, and the request handler
//! for one message ([`Store::handle`]).
//!
//! A transaction keeps only the nodes it writes or removes, on top of the live tree; it
//! commits them at once if nothing was committed since it started (else `EAGAIN`). So an
//! open transaction costs what it changed, bounded by the quotas, never a copy of the
//! store, and the per-domain node quota is kept as a count per owner.
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

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    value: Vec<u8>,
    perms: Perms,
}

/// The nodes, by absolute path; a node's children are the paths one component below it.
/// Counts the nodes each domain owns, for the quota.
#[derive(Debug, Default)]
struct Tree {
    nodes: BTreeMap<String, Node>,
    owned: BTreeMap<u32, usize>,
}

/// What the node operations need of a tree: the store's own ([`Tree`]), or a
/// transaction's view of it ([`TxView`]).
trait Nodes {
    fn node(&self, p: &str) -> Option<&Node>;
    /// Inserts or replaces the node at `p`.
    fn put(&mut self, p: &str, n: Node);
    fn take(&mut self, p: &str) -> Option<Node>;
    /// The paths that start with `prefix`, ascending.
    fn paths_from(&self, prefix: &str) -> Vec<String>;
    fn owned_by(&self, dom: u32) -> usize;
}

impl Tree {
    fn count(&mut self, owner: u32, up: bool) {
        let c = self.owned.entry(owner).or_insert(0);
        if up {
            *c += 1;
        } else {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.owned.remove(&owner);
            }
        }
    }
}

impl Nodes for Tree {
    fn node(&self, p: &str) -> Option<&Node> {
        self.nodes.get(p)
    }

    fn put(&mut self, p: &str, n: Node) {
        let owner = n.perms.owner;
        if let Some(old) = self.nodes.insert(p.to_owned(), n) {
            self.count(old.perms.owner, false);
        }
        self.count(owner, true);
    }

    fn take(&mut self, p: &str) -> Option<Node> {
        let n = self.nodes.remove(p)?;
        self.count(n.perms.owner, false);
        Some(n)
    }

    fn paths_from(&self, prefix: &str) -> Vec<String> {
        self.nodes
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn owned_by(&self, dom: u32) -> usize {
        self.owned.get(&dom).copied().unwrap_or(0)
    }
}

/// A transaction's view: the store's tree under the transaction's own changes. A
/// transaction costs what it changes, not a copy of the store.
struct TxView<'a> {
    base: &'a Tree,
    /// The nodes the transaction wrote (`Some`) or removed (`None`).
    overlay: &'a mut BTreeMap<String, Option<Node>>,
}

impl Nodes for TxView<'_> {
    fn node(&self, p: &str) -> Option<&Node> {
        match self.overlay.get(p) {
            Some(n) => n.as_ref(),
            None => self.base.nodes.get(p),
        }
    }

    fn put(&mut self, p: &str, n: Node) {
        self.overlay.insert(p.to_owned(), Some(n));
    }

    fn take(&mut self, p: &str) -> Option<Node> {
        let n = self.node(p).cloned()?;
        self.overlay.insert(p.to_owned(), None);
        Some(n)
    }

    fn paths_from(&self, prefix: &str) -> Vec<String> {
        let mut all: std::collections::BTreeSet<String> = self
            .base
            .paths_from(prefix)
            .into_iter()
            .filter(|k| !matches!(self.overlay.get(k), Some(None)))
            .collect();
        all.extend(
            self.overlay
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter(|(_, n)| n.is_some())
                .map(|(k, _)| k.clone()),
        );
        all.into_iter().collect()
    }

    fn owned_by(&self, dom: u32) -> usize {
        let mut n = self.base.owned_by(dom);
        for (k, over) in self.overlay.iter() {
            if self.base.nodes.get(k).is_some_and(|b| b.perms.owner == dom) {
                n = n.saturating_sub(1);
            }
            if over.as_ref().is_some_and(|o| o.perms.owner == dom) {
                n += 1;
            }
        }
        n
    }
}

fn children(tree: &impl Nodes, p: &str) -> Vec<String> {
    let prefix = if p == "/" {
        "/".to_owned()
    } else {
        format!("{p}/")
    };
    tree.paths_from(&prefix)
        .into_iter()
        .filter_map(|k| {
            let rest = &k[prefix.len()..];
            (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned())
        })
        .collect()
}

/// `p` and every path below it.
fn subtree(tree: &impl Nodes, p: &str) -> Vec<String> {
    if p == "/" {
        return tree.paths_from("/");
    }
    let mut all: Vec<String> = tree.node(p).map(|_| p.to_owned()).into_iter().collect();
    all.extend(tree.paths_from(&format!("{p}/")));
    all
}

/// The closest existing node at or above `p`.
fn nearest<'t>(tree: &'t impl Nodes, p: &str) -> Option<&'t Node> {
    let mut at = Some(p);
    while let Some(q) = at {
        if let Some(n) = tree.node(q) {
            return Some(n);
        }
        at = parent(q);
    }
    None
}

/// Creates `p` and its missing parents for `dom`, each inheriting its parent's
/// permissions (owned by `dom` unless that is domain 0). Returns the paths created.
fn create(tree: &mut impl Nodes, dom: u32, p: &str) -> Result<Vec<String>, XsErr> {
    let anchor = nearest(tree, p).ok_or(XsErr::NoEnt)?;
    if !anchor.perms.access(dom).writes() {
        return Err(XsErr::Acces);
    }
    let mut missing = Vec::new();
    let mut at = Some(p);
    while let Some(q) = at {
        if tree.node(q).is_some() {
            break;
        }
        missing.push(q.to_owned());
        at = parent(q);
    }
    if dom != 0 && tree.owned_by(dom) + missing.len() > MAX_NODES_PER_DOMAIN {
        return Err(XsErr::NoSpc);
    }
    missing.reverse();
    for q in &missing {
        let mut perms = parent(q)
            .and_then(|pp| tree.node(pp))
            .map_or_else(|| Perms::private(0), |n| n.perms.clone());
        if dom != 0 {
            perms.owner = dom;
        }
        tree.put(
            q,
            Node {
                value: Vec::new(),
                perms,
            },
        );
    }
    Ok(missing)
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
    /// The nodes it wrote (`Some`) or removed (`None`), applied on commit.
    overlay: BTreeMap<String, Option<Node>>,
    /// The store's generation when it started.
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
            tree.put(
                p,
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

    /// Bumped by every committed change.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
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
        let n = self.tree.node(p).ok_or(XsErr::NoEnt)?;
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
                        overlay: BTreeMap::new(),
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
                        for (p, n) in tx.overlay {
                            match n {
                                Some(n) => self.tree.put(&p, n),
                                None => drop(self.tree.take(&p)),
                            }
                        }
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
        let (reply, made) = if h.tx_id == 0 {
            node_op_in(&mut self.tree, dom, h.msg_type, &p, rest)?
        } else {
            let tx = self
                .conns
                .get_mut(&conn)
                .and_then(|c| c.transactions.get_mut(&h.tx_id))
                .ok_or(XsErr::NoEnt)?;
            let mut view = TxView {
                base: &self.tree,
                overlay: &mut tx.overlay,
            };
            let done = node_op_in(&mut view, dom, h.msg_type, &p, rest)?;
            tx.changed.extend(done.1);
            (done.0, Vec::new())
        };
        self.commit_changes(made);
        Ok(reply)
    }
}

/// Paths a change touched, with their permissions then (who may see the watch event).
type Changed = Vec<(String, Perms)>;

/// One node operation on `tree` as `dom`: the reply payload, and the changed paths with
/// their permissions.
fn node_op_in(
    tree: &mut impl Nodes,
    dom: u32,
    msg_type: u32,
    p: &str,
    rest: &[u8],
) -> Result<(Vec<u8>, Changed), XsErr> {
    let readable = |n: Option<&Node>| -> Result<Node, XsErr> {
        let n = n.ok_or(XsErr::NoEnt)?;
        if n.perms.access(dom).reads() {
            Ok(n.clone())
        } else {
            Err(XsErr::Acces)
        }
    };
    Ok(match msg_type {
        XS_READ => (readable(tree.node(p))?.value, Vec::new()),
        XS_DIRECTORY => {
            readable(tree.node(p))?;
            (nul_terminated(&children(tree, p)), Vec::new())
        }
        XS_GET_PERMS => (
            nul_terminated(&readable(tree.node(p))?.perms.to_strings()),
            Vec::new(),
        ),
        XS_WRITE => (b"OK\0".to_vec(), write_in(tree, dom, p, rest)?),
        XS_MKDIR => {
            let made = if tree.node(p).is_some() {
                Vec::new()
            } else {
                write_in(tree, dom, p, b"")?
            };
            (b"OK\0".to_vec(), made)
        }
        XS_RM => (b"OK\0".to_vec(), rm_in(tree, dom, p)?),
        XS_SET_PERMS => {
            let perms = Perms::parse(args(rest).into_iter())?;
            (b"OK\0".to_vec(), set_perms_in(tree, dom, p, perms)?)
        }
        _ => return Err(XsErr::NoSys),
    })
}

/// Writes `value` at `p` in `tree` as `dom`; returns the changed paths with their perms.
fn write_in(
    tree: &mut impl Nodes,
    dom: u32,
    p: &str,
    value: &[u8],
) -> Result<Vec<(String, Perms)>, XsErr> {
    if value.len() > MAX_VALUE {
        return Err(XsErr::TooBig);
    }
    let mut changed: Vec<String> = match tree.node(p) {
        Some(n) if !n.perms.access(dom).writes() => return Err(XsErr::Acces),
        Some(_) => Vec::new(),
        None => create(tree, dom, p)?,
    };
    if let Some(mut n) = tree.node(p).cloned() {
        n.value = value.to_vec();
        tree.put(p, n);
    }
    if !changed.iter().any(|c| c == p) {
        changed.push(p.to_owned());
    }
    Ok(changed
        .into_iter()
        .filter_map(|c| tree.node(&c).map(|n| (c.clone(), n.perms.clone())))
        .collect())
}

fn rm_in(tree: &mut impl Nodes, dom: u32, p: &str) -> Result<Vec<(String, Perms)>, XsErr> {
    if p == "/" {
        return Err(XsErr::Inval);
    }
    let n = tree.node(p).ok_or(XsErr::NoEnt)?;
    if !n.perms.access(dom).writes() {
        return Err(XsErr::Acces);
    }
    let gone = subtree(tree, p);
    Ok(gone
        .into_iter()
        .filter_map(|q| tree.take(&q).map(|n| (q, n.perms)))
        .collect())
}

fn set_perms_in(
    tree: &mut impl Nodes,
    dom: u32,
    p: &str,
    perms: Perms,
) -> Result<Vec<(String, Perms)>, XsErr> {
    let mut n = tree.node(p).cloned().ok_or(XsErr::NoEnt)?;
    if dom != 0 && (n.perms.owner != dom || perms.owner != dom) {
        return Err(XsErr::Acces);
    }
    n.perms = perms.clone();
    tree.put(p, n);
    Ok(vec![(p.to_owned(), perms)])
}

/// The whole store as dom0d's state file keeps it ([`crate::state`]): every node with its
/// value and permissions, every connection's watches and open transactions, and the
/// counters that make transactions conflict and number them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreImage {
    /// Bumped by every committed change.
    pub generation: u64,
    /// The id of the next transaction.
    pub next_tx: u32,
    /// Every node, ascending by path.
    pub nodes: Vec<NodeImage>,
    /// Every connection with watches or transactions.
    pub connections: Vec<ConnImage>,
}

/// One node of a [`StoreImage`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeImage {
    /// Absolute path.
    pub path: String,
    /// Its value.
    pub value: crate::state::Bytes,
    /// Its permissions in the wire form (`b0`, `r3`: the owner and everyone's default
    /// first, then the exceptions).
    pub perms: Vec<String>,
}

/// One connection of a [`StoreImage`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnImage {
    /// The client's domain.
    pub domid: u32,
    /// Which of its connections (0: its ring).
    pub index: u32,
    /// Its watches, in the order they were registered.
    pub watches: Vec<WatchImage>,
    /// Its open transactions.
    pub transactions: Vec<TxImage>,
}

/// One watch of a [`ConnImage`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WatchImage {
    /// Absolute path, or `@releaseDomain`/`@introduceDomain`.
    pub path: String,
    /// Registered with a relative path (events name paths relative to the home).
    pub relative: bool,
    /// The client's token.
    pub token: crate::state::Bytes,
}

/// One open transaction of a [`ConnImage`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TxImage {
    /// Its id.
    pub id: u32,
    /// The store's generation when it started.
    pub base: u64,
    /// The nodes it wrote (with their new contents) or removed (`None`).
    pub overlay: Vec<(String, Option<NodeImage>)>,
    /// The paths it changed, with their permissions then (for the watch events at commit).
    pub changed: Vec<(String, Vec<String>)>,
}

fn node_image(path: &str, n: &Node) -> NodeImage {
    NodeImage {
        path: path.to_owned(),
        value: crate::state::Bytes(n.value.clone()),
        perms: n.perms.to_strings(),
    }
}

fn perms_from(strings: &[String], path: &str) -> Result<Perms, String> {
    Perms::parse(strings.iter().map(String::as_bytes))
        .map_err(|e| format!("node {path:?} has bad permissions {strings:?} ({e})"))
}

fn checked_path(p: &str) -> Result<(), String> {
    if p == "/" || path::resolve(0, p.as_bytes()).as_deref() == Ok(p) && p.starts_with('/') {
        Ok(())
    } else {
        Err(format!("{p:?} is not an absolute xenstore path"))
    }
}

fn node_from(img: &NodeImage) -> Result<Node, String> {
    checked_path(&img.path)?;
    if img.value.0.len() > MAX_VALUE {
        return Err(format!(
            "node {:?} has a value of {} bytes",
            img.path,
            img.value.0.len()
        ));
    }
    Ok(Node {
        value: img.value.0.clone(),
        perms: perms_from(&img.perms, &img.path)?,
    })
}

impl Store {
    /// Everything the store holds, for dom0d's state file. Watch events not yet taken are
    /// not part of it (dom0d takes them before it saves).
    #[must_use]
    pub fn image(&self) -> StoreImage {
        StoreImage {
            generation: self.generation,
            next_tx: self.next_tx,
            nodes: self
                .tree
                .nodes
                .iter()
                .map(|(p, n)| node_image(p, n))
                .collect(),
            connections: self
                .conns
                .iter()
                .map(|(id, c)| ConnImage {
                    domid: id.domid,
                    index: id.index,
                    watches: c
                        .watches
                        .iter()
                        .map(|w| WatchImage {
                            path: w.path.clone(),
                            relative: w.relative,
                            token: crate::state::Bytes(w.token.clone()),
                        })
                        .collect(),
                    transactions: c
                        .transactions
                        .iter()
                        .map(|(&id, tx)| TxImage {
                            id,
                            base: tx.base,
                            overlay: tx
                                .overlay
                                .iter()
                                .map(|(p, n)| (p.clone(), n.as_ref().map(|n| node_image(p, n))))
                                .collect(),
                            changed: tx
                                .changed
                                .iter()
                                .map(|(p, perms)| (p.clone(), perms.to_strings()))
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The store an [`image`](Self::image) describes. Paths, values and permissions are
    /// checked as a request's would be, the node counts per owner recomputed, and `/`,
    /// `/local` and `/local/domain` made sure to exist.
    ///
    /// # Errors
    /// What is wrong with the image.
    pub fn from_image(img: &StoreImage) -> Result<Self, String> {
        let mut s = Self::new();
        for n in &img.nodes {
            s.tree.put(&n.path, node_from(n)?);
        }
        for n in &img.nodes {
            if let Some(p) = parent(&n.path)
                && s.tree.node(p).is_none()
            {
                return Err(format!("node {:?} has no parent", n.path));
            }
        }
        s.generation = img.generation;
        s.next_tx = img.next_tx.max(1);
        for c in &img.connections {
            if c.watches.len() > MAX_WATCHES || c.transactions.len() > MAX_TRANSACTIONS {
                return Err(format!(
                    "connection of domain {} has {} watches and {} transactions",
                    c.domid,
                    c.watches.len(),
                    c.transactions.len()
                ));
            }
            let mut conn = Conn::default();
            for w in &c.watches {
                if !w.path.starts_with('@') {
                    checked_path(&w.path)?;
                } else if !matches!(w.path.as_str(), "@releaseDomain" | "@introduceDomain") {
                    return Err(format!("{:?} is not a watchable path", w.path));
                }
                conn.watches.push(Watch {
                    path: w.path.clone(),
                    relative: w.relative,
                    token: w.token.0.clone(),
                });
            }
            for t in &c.transactions {
                let mut overlay = BTreeMap::new();
                for (p, n) in &t.overlay {
                    checked_path(p)?;
                    overlay.insert(p.clone(), n.as_ref().map(node_from).transpose()?);
                }
                let changed = t
                    .changed
                    .iter()
                    .map(|(p, perms)| Ok((p.clone(), perms_from(perms, p)?)))
                    .collect::<Result<Vec<_>, String>>()?;
                conn.transactions.insert(
                    t.id,
                    Transaction {
                        overlay,
                        base: t.base,
                        changed,
                    },
                );
            }
            s.conns.insert(
                ConnId {
                    domid: c.domid,
                    index: c.index,
                },
                conn,
            );
        }
        Ok(s)
    }
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

    fn tx_start(s: &mut Store, c: ConnId) -> u32 {
        let (t, id) = req(s, c, XS_TRANSACTION_START, 0, b"\0");
        assert_eq!(t, XS_TRANSACTION_START);
        String::from_utf8(id)
            .unwrap()
            .trim_end_matches('\0')
            .parse()
            .unwrap()
    }

    /// Nodes held by open transactions, over all connections.
    fn tx_nodes(s: &Store) -> usize {
        s.conns
            .values()
            .flat_map(|c| c.transactions.values())
            .map(|t| t.overlay.len())
            .sum()
    }

    /// The per-owner counts, recounted from the nodes.
    fn recount(t: &Tree) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for n in t.nodes.values() {
            *m.entry(n.perms.owner).or_insert(0) += 1;
        }
        m
    }

    #[test]
    fn a_transaction_costs_what_it_changes_not_a_copy_of_the_store() {
        let mut s = store();
        // A big store: domain 3 fills most of its quota with 2 KiB values.
        let value = vec![b'v'; MAX_VALUE];
        for i in 0..900 {
            let mut p = format!("n{i}\0").into_bytes();
            p.extend_from_slice(&value);
            assert_eq!(req(&mut s, D3, XS_WRITE, 0, &p).0, XS_WRITE);
        }
        // Domain 4 opens every transaction it may: nothing is copied.
        let ids: Vec<u32> = (0..MAX_TRANSACTIONS)
            .map(|_| tx_start(&mut s, D4))
            .collect();
        assert_eq!(tx_nodes(&s), 0);
        // A write costs the nodes it makes (here the node and its new parent).
        assert_eq!(req(&mut s, D4, XS_WRITE, ids[0], b"a/b\0x").0, XS_WRITE);
        assert_eq!(tx_nodes(&s), 2);
        // Removing a subtree costs one marker per node removed.
        let t3 = tx_start(&mut s, D3);
        for i in 0..10 {
            req(&mut s, D3, XS_WRITE, 0, format!("sub/{i}\0v").as_bytes());
        }
        assert_eq!(req(&mut s, D3, XS_RM, t3, b"sub\0").0, XS_RM);
        assert_eq!(tx_nodes(&s), 2 + 11);
        // Outside the transaction nothing changed.
        assert!(s.read(0, "/local/domain/3/sub/9").is_ok());
    }

    #[test]
    fn transactions_see_their_own_changes_and_commit_them_whole() {
        let mut s = store();
        req(&mut s, D3, XS_WRITE, 0, b"keep\0k");
        req(&mut s, D3, XS_WRITE, 0, b"old/x\0o");
        req(&mut s, D3, XS_WATCH, 0, b"new\0w\0");
        s.take_events();
        let t = tx_start(&mut s, D3);
        assert_eq!(req(&mut s, D3, XS_WRITE, t, b"new/y\0n").0, XS_WRITE);
        assert_eq!(req(&mut s, D3, XS_RM, t, b"old\0").0, XS_RM);
        assert_eq!(req(&mut s, D3, XS_MKDIR, t, b"dir\0").0, XS_MKDIR);
        // Inside: the changes; outside: none of them, and no watch fired yet.
        assert_eq!(
            req(&mut s, D3, XS_DIRECTORY, t, b"/local/domain/3\0"),
            (
                XS_DIRECTORY,
                b"control\0dir\0domid\0keep\0name\0new\0".to_vec()
            )
        );
        assert_eq!(req(&mut s, D3, XS_READ, t, b"old/x\0"), err("ENOENT"));
        assert_eq!(
            req(&mut s, D3, XS_READ, t, b"new/y\0"),
            (XS_READ, b"n".to_vec())
        );
        assert_eq!(s.read(0, "/local/domain/3/old/x").unwrap(), b"o");
        assert_eq!(s.read(0, "/local/domain/3/new/y"), Err(XsErr::NoEnt));
        assert!(events_for(&mut s, D3).is_empty());
        // Another domain's transaction does not see them either.
        let t4 = tx_start(&mut s, D4);
        assert_eq!(
            req(&mut s, D4, XS_READ, t4, b"/local/domain/3/new/y\0"),
            err("ENOENT")
        );
        assert_eq!(
            req(&mut s, D3, XS_TRANSACTION_END, t, b"T\0").0,
            XS_TRANSACTION_END
        );
        assert_eq!(s.read(0, "/local/domain/3/new/y").unwrap(), b"n");
        assert_eq!(s.read(0, "/local/domain/3/old"), Err(XsErr::NoEnt));
        assert_eq!(s.read(0, "/local/domain/3/keep").unwrap(), b"k");
        assert_eq!(events_for(&mut s, D3), ["new|w|", "new/y|w|"]);
        assert_eq!(s.tree.owned, recount(&s.tree));
        // The open transaction of domain 4 now conflicts.
        assert_eq!(req(&mut s, D4, XS_WRITE, t4, b"z\0z").0, XS_WRITE);
        assert_eq!(
            req(&mut s, D4, XS_TRANSACTION_END, t4, b"T\0"),
            err("EAGAIN")
        );
        assert_eq!(s.read(0, "/local/domain/4/z"), Err(XsErr::NoEnt));
        // The quota counts what a transaction would own: nodes it rewrites count once.
        let t = tx_start(&mut s, D4);
        let owned = s.tree.owned_by(4);
        assert_eq!(req(&mut s, D4, XS_WRITE, t, b"control\0x").0, XS_WRITE);
        for i in 0..(MAX_NODES_PER_DOMAIN - owned) {
            let w = req(&mut s, D4, XS_WRITE, t, format!("q{i}\0v").as_bytes());
            assert_eq!(w.0, XS_WRITE, "{i}");
        }
        assert_eq!(req(&mut s, D4, XS_WRITE, t, b"one-more\0v"), err("ENOSPC"));
        // An aborted transaction leaves nothing.
        assert_eq!(
            req(&mut s, D4, XS_TRANSACTION_END, t, b"F\0").0,
            XS_TRANSACTION_END
        );
        assert_eq!(s.tree.owned_by(4), owned);
        assert_eq!(s.read(0, "/local/domain/4/q0"), Err(XsErr::NoEnt));
    }

    /// A guest's node operation for the model test: write, mkdir, rm, directory, read or
    /// set-perms on a few paths.
    fn op_strategy() -> impl proptest::strategy::Strategy<Value = (u32, Vec<u8>)> {
        use proptest::prelude::*;
        let path = prop_oneof![
            Just("a"),
            Just("a/b"),
            Just("a/b/c"),
            Just("d"),
            Just("/local/domain/4/x"),
            Just("/local/domain/3"),
        ];
        (0u32..6, path, 0u8..3).prop_map(|(kind, p, v)| match kind {
            0 => (XS_WRITE, format!("{p}\0{v}").into_bytes()),
            1 => (XS_MKDIR, format!("{p}\0").into_bytes()),
            2 => (XS_RM, format!("{p}\0").into_bytes()),
            3 => (XS_DIRECTORY, format!("{p}\0").into_bytes()),
            4 => (XS_READ, format!("{p}\0").into_bytes()),
            _ => (
                XS_SET_PERMS,
                format!("{p}\0{}3\0", ['n', 'r', 'b'][usize::from(v)]).into_bytes(),
            ),
        })
    }

    proptest::proptest! {
        /// Operations inside one transaction, committed, leave the store as the same
        /// operations outside one, with the same replies.
        #[test]
        fn a_committed_transaction_equals_the_operations_done_directly(
            ops in proptest::collection::vec(op_strategy(), 0..24)
        ) {
            let mut direct = store();
            let mut txed = store();
            // Nodes that exist before the transaction, for it to change and remove.
            for s in [&mut direct, &mut txed] {
                for p in [&b"a/b\0v"[..], b"d\0v"] {
                    req(s, D3, XS_WRITE, 0, p);
                }
            }
            let t = tx_start(&mut txed, D3);
            for (msg_type, payload) in &ops {
                let a = req(&mut direct, D3, *msg_type, 0, payload);
                let b = req(&mut txed, D3, *msg_type, t, payload);
                proptest::prop_assert_eq!(a, b);
            }
            let (end, _) = req(&mut txed, D3, XS_TRANSACTION_END, t, b"T\0");
            proptest::prop_assert_eq!(end, XS_TRANSACTION_END);
            proptest::prop_assert_eq!(&direct.tree.nodes, &txed.tree.nodes);
            proptest::prop_assert_eq!(&txed.tree.owned, &recount(&txed.tree));
            proptest::prop_assert_eq!(&direct.tree.owned, &recount(&direct.tree));
        }

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
