//! A real S3-protocol server (moto, from PyPI) on 127.0.0.1 for the S3
//! tests of the engine (`s3_moto.rs`) and the agent (`nodeagent/tests`,
//! which includes this file by path): each test starts its own
//! `moto_server` on a free port (killed on drop). It is found at
//! `$HOARD_TEST_VENV/bin/moto_server` or `<workspace>/.venv-test/bin/moto_server`;
//! `scripts/install-deps` puts it there. Without it the tests fail with that
//! instruction; they never skip.

// Each test crate uses a subset of these helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_bin() -> PathBuf {
    let venv = std::env::var_os("HOARD_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-test"));
    let bin = venv.join("bin/moto_server");
    assert!(
        bin.is_file(),
        "{} not found: the S3 tests need moto's S3 server; run scripts/install-deps (or scripts/s3-server --install)",
        bin.display()
    );
    bin
}

/// Starts moto and waits (bounded) until it accepts connections.
pub fn start() -> Moto {
    start_with(&[])
}

/// Starts moto serving HTTPS with `cert`/`key` (PEM files).
pub fn start_tls(cert: &Path, key: &Path) -> Moto {
    start_with(&[
        "-c".as_ref(),
        cert.as_os_str(),
        "-k".as_ref(),
        key.as_os_str(),
    ])
}

fn start_with(extra: &[&std::ffi::OsStr]) -> Moto {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(moto_bin())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let moto = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on port {port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    moto
}

impl Moto {
    /// Creates a bucket with a plain (unsigned) PUT; moto accepts it.
    pub fn create_bucket(&self, bucket: &str) {
        let port = self.port;
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
    }
}

/// Creates a bucket over HTTPS trusting `ca` (curl; moto accepts unsigned PUTs).
pub fn create_bucket_tls(port: u16, ca: &Path, bucket: &str) {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "-X", "PUT", "--cacert"])
        .arg(ca)
        .arg(format!("https://127.0.0.1:{port}/{bucket}"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "create bucket over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the real restic against `repo` with moto's test credentials.
pub fn restic(repo: &str, password: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new("restic")
        .args(["-r", repo, "--no-cache"])
        .args(args)
        .env("RESTIC_PASSWORD", password)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("RESTIC_REPOSITORY")
        .env_remove("RESTIC_PASSWORD_FILE")
        .output()
        .expect("run restic (scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "restic {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}
