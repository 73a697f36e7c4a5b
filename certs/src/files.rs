//! Writing the serving material where the webhook's TLS reloader reads it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::{Bundle, Error};

/// Serving certificate file name (the `kubernetes.io/tls` Secret key, too).
pub const CERT_FILE: &str = "tls.crt";
/// Serving key file name.
pub const KEY_FILE: &str = "tls.key";
/// CA certificate file name.
pub const CA_CERT_FILE: &str = "ca.crt";

/// Writes `ca.crt`, `tls.key`, `tls.crt` into `dir` (which must exist), each through
/// a temporary file in the same directory and a `rename`, so a reader never sees a
/// half-written file. Files whose content is already right are left alone (no
/// spurious reload). `tls.crt` is written last: a reloader that triggers on it sees
/// the matching key; one that triggers earlier may see a new key with the old
/// certificate for a moment and must check the pair before swapping (the webhook
/// does). The CA key is never written here. Returns whether anything changed.
pub fn write_files(bundle: &Bundle, dir: &Path) -> Result<bool, Error> {
    let mut changed = false;
    for (name, content, mode) in [
        (CA_CERT_FILE, &bundle.ca_cert_pem, 0o644),
        (KEY_FILE, &bundle.key_pem, 0o600),
        (CERT_FILE, &bundle.cert_pem, 0o644),
    ] {
        let path = dir.join(name);
        if fs::read(&path).is_ok_and(|old| old == content.as_bytes()) {
            continue;
        }
        let err = |source| Error::WriteFile {
            path: path.clone(),
            source,
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempfile_in(dir)
            .map_err(err)?;
        tmp.write_all(content.as_bytes()).map_err(err)?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        changed = true;
    }
    if changed {
        // Make the renames durable; a crash must not bring back the old pair.
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| Error::WriteFile {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::CertsConfig;

    fn bundle() -> Bundle {
        let cfg = CertsConfig::new("ns", "s", "svc", "wh");
        Bundle::generate(&cfg, SystemTime::now()).unwrap()
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_three_files_with_private_key_mode_and_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle();
        assert!(write_files(&b, dir.path()).unwrap());
        assert_eq!(listing(dir.path()), ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(
            fs::read_to_string(dir.path().join("tls.crt")).unwrap(),
            b.cert_pem
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("tls.key")).unwrap(),
            b.key_pem
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
            b.ca_cert_pem
        );
        let mode = |f: &str| {
            fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("tls.key"), 0o600);
        assert_eq!(mode("tls.crt"), 0o644);
    }

    #[test]
    fn unchanged_bundle_rewrites_nothing_and_a_new_one_replaces_files() {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle();
        write_files(&b, dir.path()).unwrap();
        let inode = |f: &str| {
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(dir.path().join(f)).unwrap())
        };
        let before = inode("tls.crt");
        assert!(!write_files(&b, dir.path()).unwrap());
        assert_eq!(
            inode("tls.crt"),
            before,
            "an identical write must not touch the file"
        );

        let b2 = bundle();
        assert!(write_files(&b2, dir.path()).unwrap());
        assert_ne!(
            inode("tls.crt"),
            before,
            "replaced by rename, not rewritten in place"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("tls.crt")).unwrap(),
            b2.cert_pem
        );
        assert_eq!(listing(dir.path()), ["ca.crt", "tls.crt", "tls.key"]);
    }

    #[test]
    fn missing_directory_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = write_files(&bundle(), &missing).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
