//! The local-directory backend with restic's layout: `config`, `keys/`,
//! `snapshots/`, `index/`, `locks/`, `data/00..ff/`. Writes go to a temp file
//! in the target directory, are fsynced, then renamed into place (and the
//! directory fsynced), so a crash never leaves a partial file under its name.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Backend, FileType, check_name};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
    packs: Arc<Mutex<OpenPacks>>,
}

/// Pack files are immutable (named by their content's hash), so a restore
/// that reads thousands of small blobs from the same few packs keeps them
/// open and reads each range with one `pread`, instead of open + stat +
/// seek + read + close per blob. A few most recently used packs only.
#[derive(Debug, Default)]
struct OpenPacks {
    /// Most recently used last.
    open: Vec<(String, Arc<(File, u64)>)>,
}

const OPEN_PACKS: usize = 8;

impl OpenPacks {
    fn get(&mut self, name: &str) -> Option<Arc<(File, u64)>> {
        let i = self.open.iter().position(|(n, _)| n == name)?;
        let entry = self.open.remove(i);
        let f = entry.1.clone();
        self.open.push(entry);
        Some(f)
    }

    fn insert(&mut self, name: &str, f: Arc<(File, u64)>) {
        if self.open.len() >= OPEN_PACKS {
            self.open.remove(0);
        }
        self.open.push((name.to_string(), f));
    }

    fn forget(&mut self, name: &str) {
        self.open.retain(|(n, _)| n != name);
    }
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            packs: Arc::default(),
        }
    }

    /// An open handle and the size of a file to read ranges from (cached
    /// for pack files, see [`OpenPacks`]).
    fn open_for_range(&self, t: FileType, name: &str) -> Result<Arc<(File, u64)>> {
        let cache = t == FileType::Pack;
        if cache
            && let Some(f) = self
                .packs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
        {
            return Ok(f);
        }
        let path = self.path(t, name);
        let f = File::open(&path).map_err(|e| self.map_err("open", t, name, e))?;
        let size = f.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
        let f = Arc::new((f, size));
        if cache {
            self.packs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name, f.clone());
        }
        Ok(f)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, t: FileType, name: &str) -> PathBuf {
        self.root.join(t.rel_path(name))
    }

    fn map_err(&self, op: &'static str, t: FileType, name: &str, e: std::io::Error) -> Error {
        if e.kind() == ErrorKind::NotFound {
            if t == FileType::Config && !self.root.join("config").exists() {
                return Error::NoRepository {
                    location: self.location(),
                };
            }
            return Error::NotFound {
                file: t.rel_path(name),
            };
        }
        Error::io(op, self.path(t, name), e)
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self) -> Result<()> {
        if self.root.join("config").exists() {
            return Err(Error::RepositoryExists {
                location: self.location(),
            });
        }
        let mk =
            |p: PathBuf| fs::create_dir_all(&p).map_err(|e| Error::io("create directory", p, e));
        for d in ["keys", "snapshots", "index", "locks", "data"] {
            mk(self.root.join(d))?;
        }
        for i in 0..=255u8 {
            mk(self.root.join("data").join(format!("{i:02x}")))?;
        }
        Ok(())
    }

    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        check_name(t, name)?;
        let path = self.path(t, name);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        if path.exists() {
            // Content-addressed: an existing file with the same bytes is the
            // same file (e.g. a retried upload).
            let old = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
            return if old == data {
                Ok(())
            } else {
                Err(Error::Conflict {
                    file: t.rel_path(name),
                })
            };
        }
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        }
        let tmp = dir.join(format!(
            ".tmp-{}-{:016x}",
            name.get(..16).unwrap_or(name),
            rand::random::<u64>()
        ));
        let res = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            if t == FileType::Config {
                // restic never overwrites config either; hard-link keeps that atomic.
                fs::hard_link(&tmp, &path)?;
                fs::remove_file(&tmp)?;
            } else {
                fs::rename(&tmp, &path)?;
            }
            fsync_dir(&dir)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("write", path, e));
        }
        Ok(())
    }

    fn read_full(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        check_name(t, name)?;
        fs::read(self.path(t, name)).map_err(|e| self.map_err("read", t, name, e))
    }

    fn read_range(&self, t: FileType, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        check_name(t, name)?;
        let file = self.open_for_range(t, name)?;
        let (f, size) = (&file.0, file.1);
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::Backend {
                file: t.rel_path(name),
                message: format!("range {offset}+{len} beyond end of file ({size} bytes)"),
            });
        }
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io("read", self.path(t, name), e))?;
        Ok(buf)
    }

    fn list(&self, t: FileType) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut scan = |dir: PathBuf| -> Result<()> {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io("list", dir, e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| Error::io("list", &dir, e))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || check_name(t, &name).is_err() {
                    continue;
                }
                let md = ent
                    .metadata()
                    .map_err(|e| Error::io("stat", ent.path(), e))?;
                if md.is_file() {
                    out.push((name, md.len()));
                }
            }
            Ok(())
        };
        match t {
            FileType::Config => {
                if let Ok(md) = fs::metadata(self.root.join("config")) {
                    out.push(("config".into(), md.len()));
                }
            }
            FileType::Pack => {
                let data = self.root.join("data");
                let rd = match fs::read_dir(&data) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(Error::io("list", data, e)),
                };
                for ent in rd {
                    let ent = ent.map_err(|e| Error::io("list", &data, e))?;
                    if ent.file_type().map(|ft| ft.is_dir()).unwrap_or(false) {
                        scan(ent.path())?;
                    }
                }
            }
            _ => scan(self.root.join(t.dir()))?,
        }
        Ok(out)
    }

    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        check_name(t, name)?;
        if t == FileType::Pack {
            self.packs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forget(name);
        }
        fs::remove_file(self.path(t, name)).map_err(|e| self.map_err("remove", t, name, e))
    }

    fn exists(&self, t: FileType, name: &str) -> Result<bool> {
        check_name(t, name)?;
        Ok(self.path(t, name).exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_write_read_list() {
        let dir = tempfile::tempdir().unwrap();
        let be = LocalBackend::new(dir.path().join("repo"));
        be.create().unwrap();
        assert!(dir.path().join("repo/data/ff").is_dir());
        let name = "ab".repeat(32);
        be.write(FileType::Pack, &name, b"hello").unwrap();
        assert!(dir.path().join("repo/data/ab").join(&name).is_file());
        be.write(FileType::Pack, &name, b"hello").unwrap();
        assert!(matches!(
            be.write(FileType::Pack, &name, b"other"),
            Err(Error::Conflict { .. })
        ));
        assert_eq!(be.read_range(FileType::Pack, &name, 1, 3).unwrap(), b"ell");
        assert!(be.read_range(FileType::Pack, &name, 3, 3).is_err());
        assert_eq!(be.list(FileType::Pack).unwrap(), vec![(name.clone(), 5)]);
        assert!(be.list(FileType::Snapshot).unwrap().is_empty());
        assert!(be.write(FileType::Key, "../evil", b"x").is_err());
        be.remove(FileType::Pack, &name).unwrap();
        assert!(!be.exists(FileType::Pack, &name).unwrap());
        // The open pack is dropped with the file: reading it now fails.
        assert!(matches!(
            be.read_range(FileType::Pack, &name, 0, 1),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn ranges_of_more_packs_than_stay_open() {
        let dir = tempfile::tempdir().unwrap();
        let be = LocalBackend::new(dir.path().join("repo"));
        be.create().unwrap();
        let names: Vec<String> = (0..OPEN_PACKS as u8 * 3)
            .map(|i| format!("{i:02x}").repeat(32))
            .collect();
        for (i, n) in names.iter().enumerate() {
            be.write(FileType::Pack, n, format!("pack number {i:03}").as_bytes())
                .unwrap();
        }
        // Round-robin over three times as many packs as stay open, twice.
        for _ in 0..2 {
            for (i, n) in names.iter().enumerate() {
                let got = be.read_range(FileType::Pack, n, 12, 3).unwrap();
                assert_eq!(got, format!("{i:03}").as_bytes());
            }
        }
        assert!(be.packs.lock().unwrap().open.len() <= OPEN_PACKS);
    }

    #[test]
    fn missing_repository_is_named() {
        let be = LocalBackend::new("/nonexistent/hoard-repo");
        let e = be.read_full(FileType::Config, "config").unwrap_err();
        assert!(e.to_string().contains("hoard init"), "{e}");
    }
}
