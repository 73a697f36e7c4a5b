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
    let mut stream = reflector::reflector(writer, watcher(api, cfg).default_backoff()).boxed();
    let state = reader.clone();
    let watch = async move {
        // The store is complete once the first list is in (InitDone); check
        // then and after every later change. Watch errors are retried with
        // backoff by the watcher; they show in the test's output.
        let mut listed = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => listed = true,
                Ok(_) => {}
                Err(e) => eprintln!("watch for {what}: {e}"),
            }
            if listed {
                let objs = state.state();
                if done(&objs) {
                    return objs;
                }
            }
        }
        // Unreachable with default_backoff (the watcher retries forever);
        // let the timeout report the last state.
        std::future::pending::<Vec<Arc<K>>>().await
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
