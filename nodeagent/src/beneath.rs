//! Directory access beneath a trusted root that a tenant cannot redirect.
//!
//! The agent is root on every node and the kubelet's pod directories hold
//! whatever the pods wrote into their volumes. Every path below a trusted
//! root (the kubelet's `pods/` directory, a status emptyDir) is resolved in
//! one `openat2` call with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS`: a symlink anywhere on the way (`data -> /`,
//! `data -> ../../<other-uid>/volumes/...`) or a `..` that climbs out fails
//! instead of being followed. Mount points may be crossed, because a CSI or
//! NFS volume *is* a mount point below the pod directory.
//!
//! The opened fd is handed to the engine as `/proc/self/fd/<n>/.`: the magic
//! link jumps straight to the directory we opened, so no path string is
//! resolved a second time (no window to swap a component for a symlink).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// An open directory, resolved without following any symlink.
#[derive(Debug)]
pub struct SecureDir {
    fd: OwnedFd,
    /// Where it is on the host, for messages only (never re-opened).
    display: PathBuf,
}

/// `true` for a single path component that cannot name a parent or a subdirectory.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

impl SecureDir {
    /// Opens a trusted root chosen by the agent's configuration (e.g.
    /// `/var/lib/kubelet/pods`). Its last component must not be a symlink.
    pub fn open_root(path: &Path) -> io::Result<SecureDir> {
        let fd = rustix::fs::open(path, DIR_FLAGS, Mode::empty())?;
        Ok(SecureDir {
            fd,
            display: path.to_path_buf(),
        })
    }

    /// Opens the directory at relative `path` beneath `self`; fails with
    /// `ELOOP` on any symlink and `EXDEV` on any escape.
    pub fn open_dir(&self, path: &str) -> io::Result<SecureDir> {
        if path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing path {path:?}: absolute or contains '..'"),
            ));
        }
        let fd = rustix::fs::openat2(&self.fd, path, DIR_FLAGS, Mode::empty(), RESOLVE)?;
        Ok(SecureDir {
            fd,
            display: self.display.join(path),
        })
    }

    /// The directory's host path, for messages.
    pub fn display(&self) -> &Path {
        &self.display
    }

    /// A path that names exactly this open directory for as long as `self`
    /// lives (see the module docs); give it to the engine.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/.", self.fd.as_raw_fd()))
    }

    /// Names of the entries, without `.` and `..`.
    pub fn entries(&self) -> io::Result<Vec<String>> {
        let mut d = rustix::fs::Dir::read_from(&self.fd)?;
        let mut out = Vec::new();
        while let Some(e) = d.read() {
            let e = e?;
            let n = e.file_name().to_string_lossy().into_owned();
            if n != "." && n != ".." {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// `(st_dev, st_ino)` of the directory.
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        let s = rustix::fs::fstat(&self.fd)?;
        #[allow(clippy::unnecessary_cast)]
        Ok((s.st_dev as u64, s.st_ino as u64))
    }

    /// Opens subdirectory `name`, creating it (mode 0755) if missing. An
    /// existing symlink or non-directory under that name is an error.
    pub fn create_dir(&self, name: &str) -> io::Result<SecureDir> {
        check_name(name)?;
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        self.open_dir(name)
    }

    /// Atomically writes file `name` with `content`: a temporary file is
    /// created exclusively (never opened through an existing link) and
    /// renamed over `name`, so a reader sees either nothing or the whole
    /// content. Mode 0644: the restore init-container runs as non-root.
    pub fn write_file_atomic(&self, name: &str, content: &[u8]) -> io::Result<()> {
        check_name(name)?;
        let tmp = format!(".{name}.hoard-tmp");
        match rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let fd = rustix::fs::openat2(
            &self.fd,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
            RESOLVE,
        )?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644))?;
        let mut f = File::from(fd);
        f.write_all(content)?;
        f.sync_all()?;
        drop(f);
        rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
        rustix::fs::fsync(&self.fd)?;
        Ok(())
    }

    /// Reads file `name` (tests and diagnostics).
    pub fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        check_name(name)?;
        let fd = rustix::fs::openat2(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?;
        let mut v = Vec::new();
        io::Read::read_to_end(&mut File::from(fd), &mut v)?;
        Ok(v)
    }

    /// Removes entry `name` and, for a directory, everything below it,
    /// without following any symlink (links are unlinked, not entered).
    pub fn remove_all(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        let st = match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            let sub = self.open_dir(name)?;
            for e in sub.entries()? {
                sub.remove_all(&e)?;
            }
            drop(sub);
            rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)?;
        } else {
            rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?;
        }
        Ok(())
    }

    /// Moves entry `name` of `self` to `to/name`, replacing what is there
    /// (a directory there is removed first; `rename` cannot replace a
    /// non-empty one). Both must be on one filesystem.
    pub fn move_entry(&self, name: &str, to: &SecureDir) -> io::Result<()> {
        check_name(name)?;
        to.remove_all(name)?;
        rustix::fs::renameat_with(
            &self.fd,
            name,
            &to.fd,
            name,
            rustix::fs::RenameFlags::NOREPLACE,
        )?;
        Ok(())
    }

    /// Gives `self` the owner (when running as root) and permission bits of `from`.
    pub fn copy_owner_and_mode(&self, from: &SecureDir) -> io::Result<()> {
        let st = rustix::fs::fstat(&from.fd)?;
        if rustix::process::geteuid().is_root() {
            rustix::fs::fchown(
                &self.fd,
                Some(rustix::fs::Uid::from_raw(st.st_uid)),
                Some(rustix::fs::Gid::from_raw(st.st_gid)),
            )?;
        }
        #[allow(clippy::unnecessary_cast)]
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode((st.st_mode as u32) & 0o7777))?;
        Ok(())
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn check_name(name: &str) -> io::Result<()> {
    if is_plain_name(name) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing file name {name:?}: not a single path component"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_dotdot_are_refused_anywhere_on_the_path() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("other/secret")).unwrap();
        symlink("/", root.join("a/root-link")).unwrap();
        symlink("../other", root.join("a/up-link")).unwrap();
        let d = SecureDir::open_root(root).unwrap();
        assert!(d.open_dir("a/b").is_ok());
        for p in [
            "a/root-link",
            "a/up-link/secret",
            "a/../other",
            "/etc",
            "a/b/../../other",
        ] {
            assert!(d.open_dir(p).is_err(), "{p} must be refused");
        }
        // a link in the middle of the path: ELOOP (RESOLVE_NO_SYMLINKS);
        // as the last component: ENOTDIR (O_NOFOLLOW opens the link itself)
        let e = d.open_dir("a/up-link/secret").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc_eloop()));
        let e = d.open_dir("a/root-link").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NOTDIR.raw_os_error())
        );
    }

    fn libc_eloop() -> i32 {
        rustix::io::Errno::LOOP.raw_os_error()
    }

    #[test]
    fn proc_path_names_the_opened_directory_even_after_a_swap() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("vol")).unwrap();
        std::fs::write(t.path().join("vol/f"), b"mine").unwrap();
        let root = SecureDir::open_root(t.path()).unwrap();
        let vol = root.open_dir("vol").unwrap();
        // the tenant swaps the directory for a link to somewhere else
        std::fs::rename(t.path().join("vol"), t.path().join("moved")).unwrap();
        std::fs::create_dir(t.path().join("elsewhere")).unwrap();
        symlink(t.path().join("elsewhere"), t.path().join("vol")).unwrap();
        let got = std::fs::read(vol.proc_path().join("f")).unwrap();
        assert_eq!(got, b"mine");
    }

    #[test]
    fn atomic_write_replaces_a_planted_symlink_instead_of_writing_through_it() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::fs::create_dir(t.path().join("st")).unwrap();
        symlink(&outside, t.path().join("st/done")).unwrap();
        symlink(&outside, t.path().join("st/.done.hoard-tmp")).unwrap();
        let st = SecureDir::open_root(&t.path().join("st")).unwrap();
        st.write_file_atomic("done", b"").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        let m = std::fs::symlink_metadata(t.path().join("st/done")).unwrap();
        assert!(m.is_file());
        assert!(st.write_file_atomic("../x", b"").is_err());
    }
}
