//! An in-memory backend for fast tests.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Backend, FileType, check_name};
use crate::error::{Error, Result};

#[derive(Debug, Default)]
pub struct MemoryBackend {
    files: Mutex<HashMap<(FileType, String), Vec<u8>>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Test hook: mutate a stored file (e.g. flip a byte).
    pub fn corrupt(&self, t: FileType, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
        if let Some(d) = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&(t, name.to_string()))
        {
            f(d)
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<(FileType, String), Vec<u8>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn not_found(t: FileType, name: &str) -> Error {
    Error::NotFound {
        file: t.rel_path(name),
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory:".into()
    }

    fn create(&self) -> Result<()> {
        if self
            .files()
            .contains_key(&(FileType::Config, "config".into()))
        {
            return Err(Error::RepositoryExists {
                location: self.location(),
            });
        }
        Ok(())
    }

    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        check_name(t, name)?;
        let mut f = self.files();
        match f.get(&(t, name.to_string())) {
            Some(old) if old.as_slice() == data => Ok(()),
            Some(_) => Err(Error::Conflict {
                file: t.rel_path(name),
            }),
            None => {
                f.insert((t, name.to_string()), data.to_vec());
                Ok(())
            }
        }
    }

    fn read_full(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        self.files()
            .get(&(t, name.to_string()))
            .cloned()
            .ok_or_else(|| not_found(t, name))
    }

    fn read_range(&self, t: FileType, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let f = self.files();
        let d = f
            .get(&(t, name.to_string()))
            .ok_or_else(|| not_found(t, name))?;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= d.len() as u64)
            .ok_or_else(|| Error::Backend {
                file: t.rel_path(name),
                message: format!(
                    "range {offset}+{len} beyond end of file ({} bytes)",
                    d.len()
                ),
            })?;
        Ok(d[offset as usize..end as usize].to_vec())
    }

    fn list(&self, t: FileType) -> Result<Vec<(String, u64)>> {
        Ok(self
            .files()
            .iter()
            .filter(|((ft, _), _)| *ft == t)
            .map(|((_, n), d)| (n.clone(), d.len() as u64))
            .collect())
    }

    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        self.files()
            .remove(&(t, name.to_string()))
            .map(|_| ())
            .ok_or_else(|| not_found(t, name))
    }

    fn exists(&self, t: FileType, name: &str) -> Result<bool> {
        Ok(self.files().contains_key(&(t, name.to_string())))
    }
}
