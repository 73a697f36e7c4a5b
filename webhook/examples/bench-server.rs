//! The admission server as `bench/webhook.sh` drives it: real TLS, the real
//! service, caches holding `--workloads` workloads (plus the fixtures'
//! workloads, backed up and with a pending restore), no Kubernetes API.
//!
//! Writes `ca.crt` into `--dir`, serves HTTPS on `--listen` and the admin
//! endpoints on `--admin-listen`, and runs until killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tokio::net::TcpListener;
use webhook::metrics::Metrics;
use webhook::mutate::InjectConfig;
use webhook::server::{Admission, Limits};
use webhook::tls::CertStore;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    workloads: usize,
}

fn write_certs(dir: &std::path::Path) -> anyhow::Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse()?));
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    webhook::tls::install_default_provider();
    let args = Args::parse();
    write_certs(&args.dir).context("writing test certificates")?;
    let state = Arc::new(webhook::testing::busy_state());
    webhook::testing::populate(&state, args.workloads);
    let store = Arc::new(CertStore::open(&args.dir, webhook::tls::provider())?);
    let tls = store.server_config()?;
    let metrics = Arc::new(Metrics::new());
    let svc = Admission {
        state: state.clone(),
        inject: Arc::new(InjectConfig::default()),
        metrics: metrics.clone(),
        limits: Limits::default(),
        // No cluster: nothing to record events in.
        events: webhook::events::EventSink::disabled(),
    };
    let listener = TcpListener::bind(args.listen).await?;
    let admin = TcpListener::bind(args.admin_listen).await?;
    tokio::spawn(store.clone().watch(Duration::from_secs(10), |_| {}));
    tokio::spawn(webhook::admin::serve(
        admin,
        state,
        metrics,
        std::future::pending(),
    ));
    webhook::server::serve(listener, tls, svc, std::future::pending()).await;
    Ok(())
}
