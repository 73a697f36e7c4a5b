//! Waiting for what the cluster reports, by watching: never a blind sleep.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde::de::DeserializeOwned;

/// Watches the objects of `api` (optionally filtered by `labels`) until
/// `done` holds for the whole set, and returns that set. On timeout the error
/// says what was awaited and what was last seen (`show`).
pub async fn until<K, F, S>(
    api: Api<K>,
    labels: Option<&str>,
    what: &str,
    timeout: Duration,
    done: F,
    show: S,
) -> anyhow::Result<Vec<Arc<K>>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: Fn(&[Arc<K>]) -> bool,
    S: Fn(&[Arc<K>]) -> String,
{
    let (reader, writer) = reflector::store();
    let mut cfg = watcher::Config::default();
    if let Some(l) = labels {
        cfg = cfg.labels(l);
    }
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff())
        .touched_objects()
        .boxed();
    let reader2 = reader.clone();
    let watch = async move {
        let mut stream = stream;
        // The store is complete after the first list; check after it and
        // after every change.
        let _ = reader2.wait_until_ready().await;
        loop {
            let objs = reader2.state();
            if done(&objs) {
                return objs;
            }
            if stream.next().await.is_none() {
                // The watch ended (it does not without an error budget);
                // keep the last state for the report.
                std::future::pending::<()>().await;
            }
        }
    };
    match tokio::time::timeout(timeout, watch).await {
        Ok(objs) => Ok(objs),
        Err(_) => {
            let last = reader.state();
            Err(anyhow::anyhow!(
                "timed out after {timeout:?} waiting for {what}; last seen:\n{}",
                show(&last)
            ))
        }
    }
}

/// One named object until `cond` holds.
pub async fn object<K, F>(
    api: Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: F,
) -> anyhow::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: Fn(&K) -> bool,
{
    let objs = until(
        api,
        None,
        what,
        timeout,
        |objs| {
            objs.iter()
                .any(|o| o.meta().name.as_deref() == Some(name) && cond(o))
        },
        |objs| {
            objs.iter()
                .filter(|o| o.meta().name.as_deref() == Some(name))
                .map(|o| format!("{o:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        },
    )
    .await?;
    objs.into_iter()
        .find(|o| o.meta().name.as_deref() == Some(name))
        .map(|o| (*o).clone())
        .with_context(|| format!("{name} vanished"))
}
