//! The admin port scraped over real (loopback) HTTP after a real backup.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use engine::{InitOptions, KdfParams, LocalBackend, Repository};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use nodeagent::beneath::SecureDir;
use nodeagent::metrics::{Health, Metrics, bind_admin, serve_admin};
use nodeagent::transfers::Transfers;
use nodeagent::work::{HostProgress, HostVolume, TransferSettings, run_backup_host};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_backup() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let t = tempfile::tempdir().unwrap();
        let vol = t.path().join("vol");
        std::fs::create_dir_all(vol.join("d")).unwrap();
        std::fs::write(vol.join("a"), "x".repeat(10_000)).unwrap();
        std::fs::write(vol.join("d/b"), "y".repeat(5_000)).unwrap();
        let repo = Arc::new(
            Repository::init(
                Arc::new(LocalBackend::new(t.path().join("repo"))),
                "pw",
                InitOptions { kdf: KdfParams::insecure_fast(), chunker_polynomial: None },
            )
            .unwrap(),
        );
        // a lock left by a crashed process 31 minutes ago: the backup's lock
        // removes it (restic's rule), and the scrape counts it
        let mut stale = engine::lock::LockFile::new(true);
        stale.time = chrono::Local::now().fixed_offset() - chrono::Duration::minutes(31);
        repo.save_json(engine::FileType::Lock, "lock", &stale).unwrap();
        let metrics = Metrics::new();
        let transfers = Transfers::new(1, Some(metrics.clone()));
        let health = Health::default();
        let listener = bind_admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_admin(listener, metrics.clone(), health.clone()));

        assert_eq!(get(addr, "/live").await.0, 200);
        assert_eq!(get(addr, "/ready").await.0, 503);
        health.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(addr, "/ready").await.0, 200);
        assert_eq!(get(addr, "/nope").await.0, 404);

        let vols = vec![HostVolume {
            volume: "data".into(),
            snapshot_path: "/data".into(),
            dir: SecureDir::open_root(&vol).unwrap(),
        }];
        let r = repo.clone();
        let report = transfers
            .run("t", Default::default(), move || {
                run_backup_host(&r, "host-0", &vols, &TransferSettings::default(), &HostProgress::default())
            })
            .await
            .unwrap();
        assert!(report.error.is_none());
        metrics.record_backup("demo", "Deployment/app", &report);

        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        let l = r#"host="host-0",namespace="demo",target="Deployment/app""#;
        for want in [
            format!("hoard_agent_bytes_read_total{{{l}}} 15000"),
            r#"hoard_agent_files_total{host="host-0",namespace="demo",state="new",target="Deployment/app"} 2"#.to_string(),
            r#"hoard_agent_transfer_duration_seconds_count{host="host-0",namespace="demo",op="backup",target="Deployment/app"} 1"#.to_string(),
            "hoard_agent_transfers_running 0".to_string(),
            "hoard_agent_transfers_queued 0".to_string(),
            "process_resident_memory_bytes".to_string(),
            "process_open_fds".to_string(),
            "# TYPE hoard_agent_stale_locks_removed_total counter".to_string(),
        ] {
            assert!(body.contains(&want), "missing {want} in:\n{body}");
        }
        assert!(body.contains(r#"hoard_agent_last_success_timestamp_seconds{host="host-0",namespace="demo",op="backup",target="Deployment/app"}"#));
        assert!(body.contains(&format!("hoard_agent_bytes_added_total{{{l}}}")));
        let removed: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix("hoard_agent_stale_locks_removed_total "))
            .expect("the stale-lock counter is exported")
            .parse()
            .unwrap();
        assert_eq!(removed, engine::lock::stale_locks_removed());
        assert!(removed >= 1, "the stale lock was removed and counted: {removed}");
        assert!(
            repo.backend().list(engine::FileType::Lock).unwrap().is_empty(),
            "the stale lock is gone"
        );
        server.abort();
    })
    .await
    .expect("bounded in time");
}
