//! Helpers shared by the backup/restore/attack/compat tests (ENGINE-DATA).
#![allow(dead_code)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use engine::backup::{BackupOptions, BackupSummary, backup};
use engine::restore::{RestoreOptions, RestoreSummary, restore};
use engine::{Id, InitOptions, KdfParams, LocalBackend, Repository};

pub const PASSWORD: &str = "test-password";

pub fn init_local(dir: &Path) -> Repository {
    Repository::init(
        Arc::new(LocalBackend::new(dir)),
        PASSWORD,
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            chunker_polynomial: None,
        },
    )
    .unwrap()
}

pub fn open_local(dir: &Path) -> Repository {
    Repository::open(Arc::new(LocalBackend::new(dir)), PASSWORD).unwrap()
}

pub fn opts(host: &str, path: &str) -> BackupOptions {
    BackupOptions {
        hostname: host.into(),
        paths: vec![path.into()],
        threads: 2,
        ..Default::default()
    }
}

pub fn do_backup(repo: &Repository, src: &Path, o: BackupOptions) -> BackupSummary {
    backup(repo, src, o).unwrap()
}

pub fn do_restore(repo: &Repository, id: &Id, target: &Path) -> RestoreSummary {
    restore(
        repo,
        id,
        target,
        RestoreOptions {
            threads: 2,
            sparse: true,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A small tree with the kinds of entries restic records.
pub fn make_dataset(root: &Path) {
    use std::fs;
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("small.txt"), b"hello world\n").unwrap();
    fs::write(
        root.join("dir/big.bin"),
        random_bytes(1, 3 * 1024 * 1024 + 17),
    )
    .unwrap();
    fs::write(
        root.join("dir/sub/copy.bin"),
        random_bytes(1, 3 * 1024 * 1024 + 17),
    )
    .unwrap();
    fs::write(root.join("dir/empty"), b"").unwrap();
    fs::write(root.join("exec.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("dir/sub"), fs::Permissions::from_mode(0o1750)).unwrap();
    std::os::unix::fs::symlink("small.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::hard_link(root.join("small.txt"), root.join("dir/hardlink.txt")).unwrap();
    // sparse: 2 MiB hole then data
    let f = fs::File::create(root.join("sparse.img")).unwrap();
    f.set_len(2 * 1024 * 1024).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    let mut f = f;
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    xattr_set(&root.join("small.txt"), "user.hoard", b"value\x00\xff");
    std::process::Command::new("mkfifo")
        .arg(root.join("fifo"))
        .status()
        .unwrap();
    let weird = root.join(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"bad\xffname \"q\"\\"),
    );
    fs::write(weird, b"weird").unwrap();
    // owners (restore sets them when running as root, as the agent does)
    std::os::unix::fs::lchown(root.join("small.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("link"), Some(4321), Some(8765)).unwrap();
    // a character device like /dev/null
    let st = std::process::Command::new("mknod")
        .arg(root.join("null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(st.success(), "mknod needs root (CAP_MKNOD)");
    set_mtime(&root.join("small.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("dir"), 1_500_000_000, 5);
}

pub fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: nanos.into(),
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: nanos.into(),
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &t,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Set atime and mtime separately (nanoseconds 0).
pub fn set_times(p: &Path, atime: i64, mtime: i64) {
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: atime,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &t,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

pub fn xattr_set(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::setxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap_or_else(|e| {
        panic!(
            "this test needs a filesystem with user xattrs under {}: {e}",
            p.display()
        )
    });
}

pub fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    rustix::fs::lgetxattr(p, name, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

/// Assert two trees hold the same names, types, content, modes, mtimes,
/// symlink targets, xattrs and hard-link structure.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let mut la = listing(a);
    let mut lb = listing(b);
    la.sort();
    lb.sort();
    let names_a: Vec<_> = la.iter().map(|e| e.0.clone()).collect();
    let names_b: Vec<_> = lb.iter().map(|e| e.0.clone()).collect();
    assert_eq!(names_a, names_b, "entries differ");
    for (ea, eb) in la.iter().zip(&lb) {
        assert_eq!(ea, eb, "metadata of {:?} differs", ea.0);
    }
    // hard links: same inode groups
    let groups = |root: &Path, _l: &[Entry]| {
        let mut m: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
        fn inodes(root: &Path, dir: &Path, m: &mut std::collections::BTreeMap<u64, Vec<String>>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let md = std::fs::symlink_metadata(&p).unwrap();
                if md.is_dir() {
                    inodes(root, &p, m);
                } else if md.is_file() && md.nlink() > 1 {
                    m.entry(md.ino())
                        .or_default()
                        .push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        inodes(root, root, &mut m);
        let mut v: Vec<Vec<String>> = m.into_values().collect();
        v.sort();
        v
    };
    assert_eq!(groups(a, &la), groups(b, &lb), "hard-link groups differ");
}

/// (relative path, type, mode, mtime, content/linktarget, xattr, (uid, gid, rdev))
pub type Entry = (
    String,
    String,
    u32,
    (i64, i64),
    Vec<u8>,
    Option<Vec<u8>>,
    (u32, u32, u64),
);

pub fn listing(root: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = md.file_type();
        let (kind, data) = if ft.is_symlink() {
            (
                "symlink",
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else if ft.is_dir() {
            ("dir", vec![])
        } else if ft.is_file() {
            ("file", std::fs::read(&p).unwrap())
        } else {
            ("special", vec![])
        };
        // symlink mtimes and dir mtimes are compared too
        let mtime = (md.mtime(), md.mtime_nsec());
        let mode = if ft.is_symlink() { 0 } else { md.mode() };
        out.push((
            rel,
            kind.into(),
            mode,
            mtime,
            data,
            if ft.is_file() {
                xattr_get(&p, "user.hoard")
            } else {
                None
            },
            (md.uid(), md.gid(), md.rdev()),
        ));
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// A tmpfs mounted for the duration of a test (needs root, which the engine
/// tests assume: the agent runs as root). Unmounted on drop.
pub struct TmpMount(pub std::path::PathBuf);

impl TmpMount {
    pub fn new(at: &Path, size: &str) -> TmpMount {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs at {} failed: this test needs root (CAP_SYS_ADMIN)",
            at.display()
        );
        TmpMount(at.to_path_buf())
    }
}

impl Drop for TmpMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

use std::process::Command;
