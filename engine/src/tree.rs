//! restic's tree blobs: `{"nodes":[...]}` JSON, one per directory.
//!
//! Data flow: backup turns `fstat` results into [`Node`]s (via
//! [`go_mode_from_st_mode`] and [`GoTime::from_unix`]), collects a
//! directory's nodes into a [`Tree`] and stores [`Tree::to_json`] as a tree
//! blob; restore parses tree blobs with [`Tree::from_json`] and turns the Go
//! file modes back into `st_mode` bits with [`perm_bits_from_go_mode`].
//!
//! The encoder writes byte for byte what restic 0.14 (Go 1.19
//! `encoding/json`) writes — field order, `omitempty` rules, Go's HTML-safe
//! string escapes, RFC 3339 times with trimmed nanoseconds and the local
//! offset, names passed through Go's `strconv.Quote` — so a directory that
//! restic and hoard both back up yields the same tree blob, and restic reads
//! every tree hoard writes. File names are raw bytes on Linux; restic keeps
//! non-UTF-8 names through `strconv.Quote` (`\xff`), symlink targets through
//! `linktarget_raw` (base64), and so does this module.

use std::fmt::Write as _;

use base64::Engine as _;
use serde::Deserialize;

use crate::id::Id;

/// Go `os.FileMode` bits as restic stores them in `mode` (not `st_mode`!).
pub mod gomode {
    pub const DIR: u32 = 1 << 31;
    pub const APPEND: u32 = 1 << 30;
    pub const EXCLUSIVE: u32 = 1 << 29;
    pub const TEMPORARY: u32 = 1 << 28;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const NAMED_PIPE: u32 = 1 << 25;
    pub const SOCKET: u32 = 1 << 24;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const CHAR_DEVICE: u32 = 1 << 21;
    pub const STICKY: u32 = 1 << 20;
    pub const IRREGULAR: u32 = 1 << 19;
    pub const PERM: u32 = 0o777;
}

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

/// Go's `FileMode` for a Linux `st_mode`, masked the way restic masks it
/// (permissions, type, setuid, setgid, sticky).
pub fn go_mode_from_st_mode(st_mode: u32) -> u32 {
    let mut m = st_mode & gomode::PERM;
    m |= match st_mode & S_IFMT {
        S_IFBLK => gomode::DEVICE,
        S_IFCHR => gomode::DEVICE | gomode::CHAR_DEVICE,
        S_IFDIR => gomode::DIR,
        S_IFIFO => gomode::NAMED_PIPE,
        S_IFLNK => gomode::SYMLINK,
        S_IFSOCK => gomode::SOCKET,
        S_IFREG => 0,
        _ => gomode::IRREGULAR,
    };
    if st_mode & S_ISUID != 0 {
        m |= gomode::SETUID;
    }
    if st_mode & S_ISGID != 0 {
        m |= gomode::SETGID;
    }
    if st_mode & S_ISVTX != 0 {
        m |= gomode::STICKY;
    }
    m
}

/// The `chmod` bits (permissions + setuid/setgid/sticky) for a Go mode, as
/// Go's `os.Chmod` computes them on restore.
pub fn perm_bits_from_go_mode(mode: u32) -> u32 {
    let mut m = mode & gomode::PERM;
    if mode & gomode::SETUID != 0 {
        m |= S_ISUID;
    }
    if mode & gomode::SETGID != 0 {
        m |= S_ISGID;
    }
    if mode & gomode::STICKY != 0 {
        m |= S_ISVTX;
    }
    m
}

/// What kind of file a node is (restic's `type` strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeType {
    File,
    Dir,
    Symlink,
    /// Block device.
    Dev,
    Chardev,
    Fifo,
    Socket,
    /// A type written by a newer restic; kept so trees still parse.
    Other(String),
}

impl NodeType {
    pub fn as_str(&self) -> &str {
        match self {
            NodeType::File => "file",
            NodeType::Dir => "dir",
            NodeType::Symlink => "symlink",
            NodeType::Dev => "dev",
            NodeType::Chardev => "chardev",
            NodeType::Fifo => "fifo",
            NodeType::Socket => "socket",
            NodeType::Other(s) => s,
        }
    }

    fn parse(s: &str) -> NodeType {
        match s {
            "file" => NodeType::File,
            "dir" => NodeType::Dir,
            "symlink" => NodeType::Symlink,
            "dev" => NodeType::Dev,
            "chardev" => NodeType::Chardev,
            "fifo" => NodeType::Fifo,
            "socket" => NodeType::Socket,
            o => NodeType::Other(o.to_string()),
        }
    }

    /// The type of a Linux `st_mode`.
    pub fn from_st_mode(st_mode: u32) -> Option<NodeType> {
        Some(match st_mode & S_IFMT {
            S_IFREG => NodeType::File,
            S_IFDIR => NodeType::Dir,
            S_IFLNK => NodeType::Symlink,
            S_IFBLK => NodeType::Dev,
            S_IFCHR => NodeType::Chardev,
            S_IFIFO => NodeType::Fifo,
            S_IFSOCK => NodeType::Socket,
            _ => return None,
        })
    }
}

/// A point in time as Go's `time.Time` prints it: Unix seconds, nanoseconds
/// and the UTC offset of the zone it was recorded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GoTime {
    pub secs: i64,
    pub nanos: u32,
    pub offset_secs: i32,
}

impl GoTime {
    /// A Unix timestamp shown in the machine's local zone, as restic does.
    pub fn from_unix(secs: i64, nanos: u32) -> GoTime {
        use chrono::{Local, Offset, TimeZone};
        let offset_secs = Local
            .timestamp_opt(secs, 0)
            .single()
            .map(|t| t.offset().fix().local_minus_utc())
            .unwrap_or(0);
        GoTime {
            secs,
            nanos,
            offset_secs,
        }
    }

    /// Go's zero time (`0001-01-01T00:00:00Z`), what restic writes for an unset time.
    pub fn zero() -> GoTime {
        GoTime {
            secs: -62135596800,
            nanos: 0,
            offset_secs: 0,
        }
    }

    /// RFC 3339 with trailing-zero-trimmed nanoseconds, `Z` for a zero offset.
    pub fn to_go_string(&self) -> String {
        let local = self.secs + i64::from(self.offset_secs);
        let dt = chrono::DateTime::from_timestamp(local, 0)
            .unwrap_or_default()
            .naive_utc();
        let mut s = dt.format("%Y-%m-%dT%H:%M:%S").to_string();
        if self.nanos != 0 {
            let frac = format!("{:09}", self.nanos);
            s.push('.');
            s.push_str(frac.trim_end_matches('0'));
        }
        if self.offset_secs == 0 {
            s.push('Z');
        } else {
            let sign = if self.offset_secs < 0 { '-' } else { '+' };
            let o = self.offset_secs.unsigned_abs() / 60;
            let _ = write!(s, "{sign}{:02}:{:02}", o / 60, o % 60);
        }
        s
    }

    pub fn parse(s: &str) -> Result<GoTime, TreeError> {
        let t = chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| TreeError::Invalid(format!("time {s:?}: {e}")))?;
        Ok(GoTime {
            secs: t.timestamp(),
            nanos: t.timestamp_subsec_nanos(),
            offset_secs: t.offset().local_minus_utc(),
        })
    }
}

/// One file, directory or other entry in a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Raw name bytes (never contains `/` or NUL in a valid tree).
    pub name: Vec<u8>,
    pub node_type: NodeType,
    /// Go `FileMode` bits.
    pub mode: u32,
    pub mtime: GoTime,
    pub atime: GoTime,
    pub ctime: GoTime,
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub group: String,
    pub inode: u64,
    pub device_id: u64,
    pub size: u64,
    pub links: u64,
    /// Raw symlink target bytes.
    pub link_target: Vec<u8>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// `st_rdev` of a device node.
    pub device: u64,
    /// Data blob ids of a file, in order; `None` for non-files.
    pub content: Option<Vec<Id>>,
    pub subtree: Option<Id>,
    pub error: String,
}

impl Node {
    /// An empty node of `node_type` named `name`.
    pub fn new(name: Vec<u8>, node_type: NodeType) -> Node {
        Node {
            name,
            node_type,
            mode: 0,
            mtime: GoTime::zero(),
            atime: GoTime::zero(),
            ctime: GoTime::zero(),
            uid: 0,
            gid: 0,
            user: String::new(),
            group: String::new(),
            inode: 0,
            device_id: 0,
            size: 0,
            links: 0,
            link_target: Vec::new(),
            xattrs: Vec::new(),
            device: 0,
            content: None,
            subtree: None,
            error: String::new(),
        }
    }

    /// Whether the name is one restore may create inside a directory:
    /// not empty, `.` or `..`, and without `/` or NUL.
    pub fn has_safe_name(&self) -> bool {
        is_safe_name(&self.name)
    }
}

/// A single path component that cannot climb out of or alias its directory.
pub fn is_safe_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// A directory listing, nodes sorted by name bytes as restic sorts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// A tree blob that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("tree blob is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("tree blob is invalid: {0}")]
    Invalid(String),
}

impl Tree {
    /// Sort nodes by name (restic requires sorted trees).
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// restic's encoding: Go `json.Marshal` of `{"nodes":[...]}` plus `\n`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut s = String::with_capacity(64 + self.nodes.len() * 300);
        s.push_str("{\"nodes\":[");
        for (i, n) in self.nodes.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            encode_node(&mut s, n);
        }
        s.push_str("]}\n");
        s.into_bytes()
    }

    pub fn from_json(data: &[u8]) -> Result<Tree, TreeError> {
        let raw: RawTree = serde_json::from_slice(data)?;
        let nodes = raw
            .nodes
            .unwrap_or_default()
            .into_iter()
            .map(RawNode::into_node)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tree { nodes })
    }
}

fn encode_node(s: &mut String, n: &Node) {
    s.push_str("{\"name\":");
    go_json_string(s, &go_quote(&n.name));
    s.push_str(",\"type\":");
    go_json_string(s, n.node_type.as_str());
    if n.mode != 0 {
        let _ = write!(s, ",\"mode\":{}", n.mode);
    }
    for (k, t) in [
        ("mtime", &n.mtime),
        ("atime", &n.atime),
        ("ctime", &n.ctime),
    ] {
        let _ = write!(s, ",\"{k}\":\"{}\"", t.to_go_string());
    }
    let _ = write!(s, ",\"uid\":{},\"gid\":{}", n.uid, n.gid);
    if !n.user.is_empty() {
        s.push_str(",\"user\":");
        go_json_string(s, &n.user);
    }
    if !n.group.is_empty() {
        s.push_str(",\"group\":");
        go_json_string(s, &n.group);
    }
    for (k, v) in [
        ("inode", n.inode),
        ("device_id", n.device_id),
        ("size", n.size),
        ("links", n.links),
    ] {
        if v != 0 {
            let _ = write!(s, ",\"{k}\":{v}");
        }
    }
    if !n.link_target.is_empty() {
        s.push_str(",\"linktarget\":");
        let lossy = String::from_utf8_lossy(&n.link_target);
        go_json_string(s, &lossy);
        if std::str::from_utf8(&n.link_target).is_err() {
            s.push_str(",\"linktarget_raw\":\"");
            s.push_str(&base64::engine::general_purpose::STANDARD.encode(&n.link_target));
            s.push('"');
        }
    }
    if !n.xattrs.is_empty() {
        s.push_str(",\"extended_attributes\":[");
        for (i, (k, v)) in n.xattrs.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str("{\"name\":");
            go_json_string(s, k);
            s.push_str(",\"value\":\"");
            s.push_str(&base64::engine::general_purpose::STANDARD.encode(v));
            s.push_str("\"}");
        }
        s.push(']');
    }
    if n.device != 0 {
        let _ = write!(s, ",\"device\":{}", n.device);
    }
    s.push_str(",\"content\":");
    match &n.content {
        None => s.push_str("null"),
        Some(ids) => {
            s.push('[');
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(s, "\"{}\"", id.to_hex());
            }
            s.push(']');
        }
    }
    if let Some(id) = &n.subtree {
        let _ = write!(s, ",\"subtree\":\"{}\"", id.to_hex());
    }
    if !n.error.is_empty() {
        s.push_str(",\"error\":");
        go_json_string(s, &n.error);
    }
    s.push('}');
}

/// A JSON string as Go 1.19's `encoding/json` writes it (HTML-safe).
fn go_json_string(s: &mut String, v: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            '<' | '>' | '&' | '\u{0}'..='\u{1f}' => {
                let b = c as u32;
                s.push_str("\\u00");
                s.push(HEX[(b >> 4) as usize] as char);
                s.push(HEX[(b & 0xf) as usize] as char);
            }
            '\u{2028}' => s.push_str("\\u2028"),
            '\u{2029}' => s.push_str("\\u2029"),
            c => s.push(c),
        }
    }
    s.push('"');
}

/// Go's `unicode.IsPrint` for the characters file names realistically
/// contain: control characters, non-ASCII spaces, format characters and
/// private-use/non-characters are not printable. (Go's full Unicode tables
/// also cover unassigned code points; names with those still round-trip,
/// only the tree blob bytes could differ from restic's.)
fn is_go_print(c: char) -> bool {
    let u = c as u32;
    if u < 0x80 {
        return (0x20..0x7f).contains(&u);
    }
    !matches!(u,
        0x80..=0xa0 | 0xad | 0x1680 | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f
        | 0x3000 | 0xfeff | 0xfff9..=0xfffb | 0x061c | 0x180e | 0xe000..=0xf8ff
        | 0xfffe | 0xffff | 0xf0000..=0x10ffff)
}

/// Go's `strconv.Quote` without the surrounding quotes (what restic stores
/// as a node name).
pub fn go_quote(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(v) => (v, None),
            Err(e) => {
                let (v, _) = rest.split_at(e.valid_up_to());
                (std::str::from_utf8(v).unwrap_or(""), Some(e.valid_up_to()))
            }
        };
        for c in valid.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if is_go_print(c) => out.push(c),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if (c as u32) < 0x10000 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
        }
        match bad {
            None => break,
            Some(at) => {
                let _ = write!(out, "\\x{:02x}", rest[at]);
                rest = &rest[at + 1..];
            }
        }
    }
    out
}

/// Go's `strconv.Unquote` of `"` + `s` + `"`, returning raw bytes.
pub fn go_unquote(s: &str) -> Result<Vec<u8>, TreeError> {
    let bad = || TreeError::Invalid(format!("node name {s:?} is not a valid Go-quoted string"));
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\\' => {
                let e = it.next().ok_or_else(bad)?;
                let mut hex = |n: usize| -> Result<u32, TreeError> {
                    let mut v = 0u32;
                    for _ in 0..n {
                        let d = it.next().and_then(|c| c.to_digit(16)).ok_or_else(bad)?;
                        v = v * 16 + d;
                    }
                    Ok(v)
                };
                match e {
                    'a' => out.push(7),
                    'b' => out.push(8),
                    'f' => out.push(12),
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    'v' => out.push(11),
                    '\\' => out.push(b'\\'),
                    '"' => out.push(b'"'),
                    'x' => out.push(hex(2)? as u8),
                    'u' | 'U' => {
                        let v = hex(if e == 'u' { 4 } else { 8 })?;
                        let ch = char::from_u32(v).ok_or_else(bad)?;
                        let mut b = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                    }
                    '0'..='7' => {
                        let mut v = e.to_digit(8).unwrap_or(0);
                        for _ in 0..2 {
                            let d = it.next().and_then(|c| c.to_digit(8)).ok_or_else(bad)?;
                            v = v * 8 + d;
                        }
                        if v > 255 {
                            return Err(bad());
                        }
                        out.push(v as u8);
                    }
                    _ => return Err(bad()),
                }
            }
            '"' | '\n' => return Err(bad()),
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct RawTree {
    nodes: Option<Vec<RawNode>>,
}

#[derive(Deserialize)]
struct RawXattr {
    name: String,
    value: Option<String>,
}

#[derive(Deserialize)]
struct RawNode {
    name: String,
    #[serde(rename = "type")]
    node_type: String,
    #[serde(default)]
    mode: u32,
    mtime: Option<String>,
    atime: Option<String>,
    ctime: Option<String>,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    user: Option<String>,
    group: Option<String>,
    #[serde(default)]
    inode: u64,
    #[serde(default)]
    device_id: u64,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    links: u64,
    linktarget: Option<String>,
    linktarget_raw: Option<String>,
    extended_attributes: Option<Vec<RawXattr>>,
    #[serde(default)]
    device: u64,
    content: Option<Vec<Id>>,
    subtree: Option<Id>,
    error: Option<String>,
}

impl RawNode {
    fn into_node(self) -> Result<Node, TreeError> {
        let b64 = |v: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| TreeError::Invalid(format!("base64 value: {e}")))
        };
        let time = |t: Option<String>| {
            t.map(|t| GoTime::parse(&t))
                .transpose()
                .map(|t| t.unwrap_or_else(GoTime::zero))
        };
        let link_target = match (self.linktarget_raw, self.linktarget) {
            (Some(raw), _) => b64(&raw)?,
            (None, Some(t)) => t.into_bytes(),
            (None, None) => Vec::new(),
        };
        let xattrs = self
            .extended_attributes
            .unwrap_or_default()
            .into_iter()
            .map(|x| Ok((x.name, b64(x.value.as_deref().unwrap_or(""))?)))
            .collect::<Result<Vec<_>, TreeError>>()?;
        Ok(Node {
            name: go_unquote(&self.name)?,
            node_type: NodeType::parse(&self.node_type),
            mode: self.mode,
            mtime: time(self.mtime)?,
            atime: time(self.atime)?,
            ctime: time(self.ctime)?,
            uid: self.uid,
            gid: self.gid,
            user: self.user.unwrap_or_default(),
            group: self.group.unwrap_or_default(),
            inode: self.inode,
            device_id: self.device_id,
            size: self.size,
            links: self.links,
            link_target,
            xattrs,
            device: self.device,
            content: self.content,
            subtree: self.subtree,
            error: self.error.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_modes_both_ways() {
        assert_eq!(go_mode_from_st_mode(0o100644), 0o644);
        assert_eq!(go_mode_from_st_mode(0o040755), gomode::DIR | 0o755);
        assert_eq!(go_mode_from_st_mode(0o120777), gomode::SYMLINK | 0o777);
        assert_eq!(
            go_mode_from_st_mode(0o020620),
            gomode::DEVICE | gomode::CHAR_DEVICE | 0o620
        );
        assert_eq!(go_mode_from_st_mode(0o060660), gomode::DEVICE | 0o660);
        assert_eq!(go_mode_from_st_mode(0o010600), gomode::NAMED_PIPE | 0o600);
        assert_eq!(go_mode_from_st_mode(0o140755), gomode::SOCKET | 0o755);
        assert_eq!(go_mode_from_st_mode(0o104755), gomode::SETUID | 0o755);
        assert_eq!(
            go_mode_from_st_mode(0o041777),
            gomode::DIR | gomode::STICKY | 0o777
        );
        // what restic 0.14 writes for a drwxr-xr-x directory
        assert_eq!(go_mode_from_st_mode(0o040755), 2147484141);
        for st in [0o4755, 0o2711, 0o1777, 0o644, 0o6000] {
            assert_eq!(
                perm_bits_from_go_mode(go_mode_from_st_mode(0o100000 | st)),
                st
            );
        }
    }

    #[test]
    fn times_print_like_go() {
        let t = GoTime {
            secs: 1_700_000_000,
            nanos: 123_400_000,
            offset_secs: 0,
        };
        assert_eq!(t.to_go_string(), "2023-11-14T22:13:20.1234Z");
        let t = GoTime {
            secs: 1_700_000_000,
            nanos: 0,
            offset_secs: 3600,
        };
        assert_eq!(t.to_go_string(), "2023-11-14T23:13:20+01:00");
        let t = GoTime {
            secs: 1_700_000_000,
            nanos: 5,
            offset_secs: -(5 * 3600 + 1800),
        };
        assert_eq!(t.to_go_string(), "2023-11-14T16:43:20.000000005-05:30");
        assert_eq!(GoTime::zero().to_go_string(), "0001-01-01T00:00:00Z");
        for t in [t, GoTime::zero()] {
            assert_eq!(GoTime::parse(&t.to_go_string()).unwrap(), t);
        }
    }

    #[test]
    fn names_quote_like_go() {
        assert_eq!(go_quote(b"plain.txt"), "plain.txt");
        assert_eq!(go_quote(b"a\"b\\c"), "a\\\"b\\\\c");
        assert_eq!(go_quote(b"new\nline\x01"), "new\\nline\\x01");
        assert_eq!(go_quote(b"bad\xffutf8"), "bad\\xffutf8");
        assert_eq!(go_quote("caf\u{e9}\u{a0}".as_bytes()), "caf\u{e9}\\u00a0");
        assert_eq!(go_unquote("bad\\xffutf8").unwrap(), b"bad\xffutf8");
        assert!(go_unquote("a\"b").is_err());
    }

    #[test]
    fn node_json_matches_restic_bytes() {
        // A node as restic 0.14 encodes it (field order, omitempty, escapes).
        let mut n = Node::new(b"a<b>&c".to_vec(), NodeType::File);
        n.mode = 0o644;
        n.mtime = GoTime {
            secs: 1_700_000_000,
            nanos: 1,
            offset_secs: 0,
        };
        n.atime = n.mtime;
        n.ctime = n.mtime;
        n.uid = 1000;
        n.user = "me".into();
        n.inode = 42;
        n.device_id = 2049;
        n.size = 3;
        n.links = 1;
        n.content = Some(vec![Id([0xab; 32])]);
        let tree = Tree { nodes: vec![n] };
        let json = String::from_utf8(tree.to_json()).unwrap();
        let ab = "ab".repeat(32);
        assert_eq!(
            json,
            format!(
                "{{\"nodes\":[{{\"name\":\"a\\u003cb\\u003e\\u0026c\",\"type\":\"file\",\"mode\":420,\
                 \"mtime\":\"2023-11-14T22:13:20.000000001Z\",\"atime\":\"2023-11-14T22:13:20.000000001Z\",\
                 \"ctime\":\"2023-11-14T22:13:20.000000001Z\",\"uid\":1000,\"gid\":0,\"user\":\"me\",\
                 \"inode\":42,\"device_id\":2049,\"size\":3,\"links\":1,\"content\":[\"{ab}\"]}}]}}\n"
            )
        );
        assert_eq!(Tree::from_json(json.as_bytes()).unwrap(), tree);
    }

    #[test]
    fn symlink_with_raw_target_and_xattrs_round_trip() {
        let mut n = Node::new(b"l\xfe".to_vec(), NodeType::Symlink);
        n.link_target = b"../t\xff".to_vec();
        n.xattrs = vec![("user.k".into(), b"\x00v".to_vec())];
        let mut d = Node::new(b"d".to_vec(), NodeType::Dir);
        d.subtree = Some(Id([1; 32]));
        let tree = Tree { nodes: vec![d, n] };
        let json = tree.to_json();
        let s = String::from_utf8(json.clone()).unwrap();
        assert!(s.contains("\"linktarget_raw\":\"Li4vdP8=\""), "{s}");
        assert!(s.contains("\"name\":\"l\\\\xfe\""), "{s}");
        assert_eq!(Tree::from_json(&json).unwrap(), tree);
    }

    proptest! {
        #[test]
        fn any_name_round_trips(name in proptest::collection::vec(any::<u8>(), 1..40)) {
            prop_assert_eq!(go_unquote(&go_quote(&name)).unwrap(), name.clone());
            let tree = Tree { nodes: vec![Node::new(name, NodeType::Fifo)] };
            prop_assert_eq!(Tree::from_json(&tree.to_json()).unwrap(), tree);
        }
    }
}
