//! File access that a tenant cannot redirect.
//!
//! The agent runs as root over directories that tenants control, so every
//! name is resolved one component at a time relative to a directory file
//! descriptor that was itself opened this way, starting from one root fd:
//!
//! * [`Dir::open_root`] opens the root once (the agent chose that path);
//! * [`Dir::open_dir`] / [`Dir::open_file`] use `openat2` with
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//!   RESOLVE_NO_XDEV` and `O_NOFOLLOW`: a symlink (planted or swapped in while
//!   we walk) fails with `ELOOP`, a mount point with `EXDEV`, `..` cannot
//!   climb out, and no path string is ever re-resolved later;
//! * symlinks are read with `readlinkat`, never followed; metadata comes from
//!   `fstat` of the opened fd (or `fstatat(AT_SYMLINK_NOFOLLOW)`), xattrs from
//!   `flistxattr`/`fgetxattr` on the fd.
//!
//! Restore uses the same handles in the other direction: everything is
//! created relative to a directory fd (`mkdirat`, `openat2(O_CREAT|O_EXCL)`,
//! `symlinkat`, `linkat`, `mknodat`), existing non-directories are unlinked
//! rather than opened (so a planted symlink or a hard link to a file outside
//! the target is replaced, never written through), and ownership/times are
//! set on fds or with `AT_SYMLINK_NOFOLLOW`.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

/// Resolution rules for every name below a root.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// The parts of `stat` the engine uses, independent of the arch's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    /// 512-byte blocks allocated (sparse files have fewer than size/512).
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Meta {
    #[allow(clippy::unnecessary_cast)]
    fn from_stat(s: &rustix::fs::Stat) -> Meta {
        Meta {
            dev: s.st_dev as u64,
            ino: s.st_ino as u64,
            mode: s.st_mode as u32,
            nlink: s.st_nlink as u64,
            uid: s.st_uid as u32,
            gid: s.st_gid as u32,
            rdev: s.st_rdev as u64,
            size: s.st_size as u64,
            blocks: s.st_blocks as u64,
            atime: (s.st_atime as i64, s.st_atime_nsec as u32),
            mtime: (s.st_mtime as i64, s.st_mtime_nsec as u32),
            ctime: (s.st_ctime as i64, s.st_ctime_nsec as u32),
        }
    }

    pub fn file_type(&self) -> u32 {
        self.mode & 0o170000
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == 0o040000
    }
    pub fn is_file(&self) -> bool {
        self.file_type() == 0o100000
    }
    pub fn is_symlink(&self) -> bool {
        self.file_type() == 0o120000
    }
}

/// An open directory; every operation takes a single path component.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

fn cname(name: &[u8]) -> io::Result<CString> {
    if !crate::tree::is_safe_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "refusing unsafe file name {:?} (contains '/', NUL or is '.'/'..')",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn ts((sec, nsec): (i64, u32)) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec.into(),
    }
}

impl Dir {
    /// Open the root of a walk or restore. The path itself is trusted (the
    /// caller chose it); its last component must not be a symlink.
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir { fd })
    }

    pub fn stat(&self) -> io::Result<Meta> {
        Ok(Meta::from_stat(&rustix::fs::fstat(&self.fd)?))
    }

    /// Metadata of an entry without following a symlink.
    pub fn lstat(&self, name: &[u8]) -> io::Result<Meta> {
        let c = cname(name)?;
        Ok(Meta::from_stat(&rustix::fs::statat(
            &self.fd,
            &*c,
            AtFlags::SYMLINK_NOFOLLOW,
        )?))
    }

    /// Entry names, without `.` and `..`, in directory order.
    pub fn entries(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut d = rustix::fs::Dir::read_from(&self.fd)?;
        let mut out = Vec::new();
        while let Some(e) = d.read() {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                out.push(n.to_vec());
            }
        }
        Ok(out)
    }

    /// Open a subdirectory; fails (`ELOOP`, `EXDEV`, `ENOTDIR`) if it is a
    /// symlink, a mount point or not a directory.
    pub fn open_dir(&self, name: &[u8]) -> io::Result<Dir> {
        let c = cname(name)?;
        let fd = rustix::fs::openat2(
            &self.fd,
            &*c,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?;
        Ok(Dir { fd })
    }

    /// Open a regular file for reading. `O_NONBLOCK` so that a FIFO swapped
    /// in after `lstat` cannot block the walk; the fd's own `fstat` is checked
    /// to be a regular file.
    pub fn open_file(&self, name: &[u8]) -> io::Result<(File, Meta)> {
        let c = cname(name)?;
        let base =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        // O_NOATIME keeps the backup from changing atimes; only the owner or
        // root may use it, so retry without.
        let fd = match rustix::fs::openat2(
            &self.fd,
            &*c,
            base | OFlags::NOATIME,
            Mode::empty(),
            RESOLVE,
        ) {
            Err(rustix::io::Errno::PERM) => {
                rustix::fs::openat2(&self.fd, &*c, base, Mode::empty(), RESOLVE)?
            }
            r => r?,
        };
        let meta = Meta::from_stat(&rustix::fs::fstat(&fd)?);
        if !meta.is_file() {
            return Err(io::Error::other(
                "changed during backup: no longer a regular file",
            ));
        }
        Ok((File::from(fd), meta))
    }

    pub fn read_link(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        let c = cname(name)?;
        Ok(rustix::fs::readlinkat(&self.fd, &*c, Vec::new())?.into_bytes())
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether the directory has no entries.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.entries()?.is_empty())
    }

    // ---- restore side ----

    /// Remove an existing non-directory entry (a planted symlink is removed,
    /// not followed). Missing entries are fine; a directory is an error.
    pub fn remove_non_dir(&self, name: &[u8]) -> io::Result<()> {
        let c = cname(name)?;
        match rustix::fs::unlinkat(&self.fd, &*c, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(rustix::io::Errno::ISDIR) => Err(io::Error::other(
                "a directory is in the way of a file being restored; remove it or restore into an empty directory",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Create (or reuse an existing real) subdirectory and open it.
    pub fn create_dir(&self, name: &[u8]) -> io::Result<Dir> {
        let c = cname(name)?;
        match rustix::fs::mkdirat(&self.fd, &*c, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                let m = self.lstat(name)?;
                if !m.is_dir() {
                    self.remove_non_dir(name)?;
                    rustix::fs::mkdirat(&self.fd, &*c, Mode::from_raw_mode(0o700))?;
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.open_dir(name)
    }

    /// Create a new regular file for writing; whatever had the name before
    /// is unlinked first, never opened.
    ///
    /// `O_CREAT | O_EXCL` never opens an existing entry (not even through a
    /// symlink), so the common case, a name that does not exist yet, costs
    /// one call; only when it exists is it unlinked and the create retried.
    pub fn create_file(&self, name: &[u8]) -> io::Result<File> {
        let c = cname(name)?;
        let create = || {
            rustix::fs::openat2(
                &self.fd,
                &*c,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
                RESOLVE,
            )
        };
        let fd = match create() {
            Err(rustix::io::Errno::EXIST) => {
                self.remove_non_dir(name)?;
                create()?
            }
            other => other?,
        };
        Ok(File::from(fd))
    }

    pub fn create_symlink(&self, name: &[u8], target: &[u8]) -> io::Result<()> {
        self.remove_non_dir(name)?;
        let c = cname(name)?;
        let t = CString::new(target).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        rustix::fs::symlinkat(&*t, &self.fd, &*c)?;
        Ok(())
    }

    /// Hard-link `src_dir/src_name` (an entry this restore created) as `name`.
    pub fn create_hardlink(&self, src_dir: &Dir, src_name: &[u8], name: &[u8]) -> io::Result<()> {
        self.remove_non_dir(name)?;
        let s = cname(src_name)?;
        let c = cname(name)?;
        rustix::fs::linkat(&src_dir.fd, &*s, &self.fd, &*c, AtFlags::empty())?;
        Ok(())
    }

    /// Create a FIFO (`dev == None`) or a block/char device.
    pub fn create_special(&self, name: &[u8], kind: Special, dev: u64) -> io::Result<()> {
        self.remove_non_dir(name)?;
        let c = cname(name)?;
        let ft = match kind {
            Special::Fifo => rustix::fs::FileType::Fifo,
            Special::Block => rustix::fs::FileType::BlockDevice,
            Special::Char => rustix::fs::FileType::CharacterDevice,
        };
        rustix::fs::mknodat(
            &self.fd,
            &*c,
            ft,
            Mode::from_raw_mode(0o600),
            dev as rustix::fs::Dev,
        )?;
        Ok(())
    }

    /// `lchown` of an entry (never follows a symlink).
    pub fn chown_entry(&self, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
        let c = cname(name)?;
        rustix::fs::chownat(
            &self.fd,
            &*c,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Set atime/mtime of an entry without following a symlink.
    pub fn set_times_entry(
        &self,
        name: &[u8],
        atime: (i64, u32),
        mtime: (i64, u32),
    ) -> io::Result<()> {
        let c = cname(name)?;
        let t = Timestamps {
            last_access: ts(atime),
            last_modification: ts(mtime),
        };
        rustix::fs::utimensat(&self.fd, &*c, &t, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// `chmod` of a special file (FIFO/device) without following symlinks:
    /// pin the inode with an `O_PATH` fd, check it is not a symlink, and
    /// change the mode through that exact inode.
    pub fn chmod_special(&self, name: &[u8], perm: u32) -> io::Result<()> {
        let c = cname(name)?;
        let fd = rustix::fs::openat2(
            &self.fd,
            &*c,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?;
        let m = Meta::from_stat(&rustix::fs::fstat(&fd)?);
        if m.is_symlink() || m.is_dir() || m.is_file() {
            return Err(io::Error::other(
                "changed during restore: not a special file",
            ));
        }
        let proc_path = format!(
            "/proc/thread-self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        );
        rustix::fs::chmod(proc_path.as_str(), Mode::from_raw_mode(perm))?;
        Ok(())
    }
}

/// Kinds of special files restore can create.
#[derive(Debug, Clone, Copy)]
pub enum Special {
    Fifo,
    Block,
    Char,
}

/// Set owner, mode and times on an open file or directory.
pub fn set_fd_metadata(
    fd: BorrowedFd<'_>,
    owner: Option<(u32, u32)>,
    perm: u32,
    atime: (i64, u32),
    mtime: (i64, u32),
) -> io::Result<()> {
    if let Some((u, g)) = owner {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(u)),
            Some(rustix::fs::Gid::from_raw(g)),
        )?;
    }
    // chown clears setuid/setgid, so chmod comes after it.
    rustix::fs::fchmod(fd, Mode::from_raw_mode(perm))?;
    set_fd_times(fd, atime, mtime)
}

pub fn set_fd_times(fd: BorrowedFd<'_>, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    let t = Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    rustix::fs::futimens(fd, &t)?;
    Ok(())
}

/// Extended attributes of an open file or directory, sorted by name.
/// Filesystems without xattr support yield an empty list.
pub fn read_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut list = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::flistxattr(fd, &mut list[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::flistxattr_query(fd)?;
                list.resize(need.max(list.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for raw in list[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let name = CStr::from_bytes_with_nul(&[raw, b"\0"].concat())
            .map_err(io::Error::other)?
            .to_owned();
        let mut val = vec![0u8; 256];
        let len = loop {
            match rustix::fs::fgetxattr(fd, &*name, &mut val[..]) {
                Ok(l) => break Some(l),
                Err(rustix::io::Errno::RANGE) => {
                    let need = rustix::fs::fgetxattr_query(fd, &*name)?;
                    val.resize(need.max(val.len() * 2), 0);
                }
                // removed between list and get
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(l) = len {
            val.truncate(l);
            out.push((String::from_utf8_lossy(raw).into_owned(), val));
        }
    }
    out.sort();
    Ok(out)
}

/// Restore one extended attribute on an open file or directory.
pub fn write_xattr(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> io::Result<()> {
    let c = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    rustix::fs::fsetxattr(fd, &*c, value, rustix::fs::XattrFlags::empty())?;
    Ok(())
}
