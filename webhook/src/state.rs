//! The webhook's in-memory view of the cluster.
//!
//! Data flow: watch tasks ([`crate::watch`]) turn `watcher` events into calls
//! on [`State`] (`apply_*`, `delete_*`, `replace_*` after a (re)list); the
//! admission path only reads. Objects are kept as small summaries, not whole
//! objects: for a ReplicaSet only its controller's name, so a cluster with
//! 100k ReplicaSets costs a few MiB. Lookups are by target workload, never a
//! scan, so a review costs the same with 10 or 10,000 workloads.
//!
//! Tests fill a [`State`] directly through the same methods.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::workload::{ReplicaSetOwner, ReplicaSetOwners, Workload};

/// A `BackupConfiguration`, as far as admission cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    pub name: String,
    /// Workloads it backs up (several for a batch backup).
    pub targets: Vec<Workload>,
}

pub use api::restore::RestoreRule;

/// A volume the restore writes into: mounted read-only in the init-container
/// so the kubelet sets it up before the node agent looks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreMount {
    pub name: String,
    pub mount_path: String,
}

/// A `RestoreSession`, as far as admission cares.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RestoreSummary {
    pub uid: String,
    pub name: String,
    pub created: Option<Time>,
    pub target: Option<Workload>,
    pub volume_mounts: Vec<RestoreMount>,
    pub rules: Vec<RestoreRule>,
    /// The whole session reached `Succeeded` or `Failed`.
    pub finished: bool,
    /// Hosts whose restore already ended (either way): a pod of such a host
    /// that restarts is not held again.
    pub hosts_finished: BTreeSet<String>,
    /// `runtimeSettings.container.resources`, applied to the init-container.
    pub resources: Option<ResourceRequirements>,
    /// `runtimeSettings.container.securityContext.runAs{User,Group}`, for
    /// clusters that assign user ids per namespace.
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    /// How long the init-container waits before giving up, when the session
    /// says; otherwise the webhook's default.
    pub deadline_seconds: Option<u64>,
}

impl RestoreSummary {
    /// Whether this session still owes `host` a restore: unfinished, not
    /// yet ended on that host, and a rule selects the host (the `api`
    /// crate's matching, shared with the node agent).
    pub fn owes(&self, host: &str) -> bool {
        !self.finished
            && !self.hosts_finished.contains(host)
            && api::rules::plan_for_host(host, Some(&self.rules)).is_some()
    }
}

type ObjKey = (String, String);
type TargetKey = (String, Workload);

/// Objects by name plus a reverse index by the workloads they target.
#[derive(Debug)]
struct TargetIndex<V> {
    objects: HashMap<ObjKey, Arc<V>>,
    by_target: HashMap<TargetKey, Vec<Arc<V>>>,
}

impl<V> Default for TargetIndex<V> {
    fn default() -> Self {
        TargetIndex {
            objects: HashMap::new(),
            by_target: HashMap::new(),
        }
    }
}

trait Targets {
    fn name(&self) -> &str;
    fn targets(&self) -> Vec<&Workload>;
}

impl Targets for BackupSummary {
    fn name(&self) -> &str {
        &self.name
    }
    fn targets(&self) -> Vec<&Workload> {
        self.targets.iter().collect()
    }
}

impl Targets for RestoreSummary {
    fn name(&self) -> &str {
        &self.name
    }
    fn targets(&self) -> Vec<&Workload> {
        self.target.iter().collect()
    }
}

impl<V: Targets> TargetIndex<V> {
    fn apply(&mut self, ns: &str, v: V) {
        self.delete(ns, v.name());
        let v = Arc::new(v);
        for t in v.targets() {
            self.by_target
                .entry((ns.to_owned(), t.clone()))
                .or_default()
                .push(v.clone());
        }
        self.objects.insert((ns.to_owned(), v.name().to_owned()), v);
    }

    fn delete(&mut self, ns: &str, name: &str) {
        let Some(old) = self.objects.remove(&(ns.to_owned(), name.to_owned())) else {
            return;
        };
        for t in old.targets() {
            let key = (ns.to_owned(), t.clone());
            if let Some(list) = self.by_target.get_mut(&key) {
                list.retain(|o| !Arc::ptr_eq(o, &old));
                if list.is_empty() {
                    self.by_target.remove(&key);
                }
            }
        }
    }

    fn for_target(&self, ns: &str, w: &Workload) -> &[Arc<V>] {
        // The key is built per lookup; two short strings are cheaper than a
        // nested map's second hash.
        self.by_target
            .get(&(ns.to_owned(), w.clone()))
            .map_or(&[], Vec::as_slice)
    }
}

/// Which cache a sync flag or size belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    ReplicaSets,
    BackupConfigurations,
    RestoreSessions,
}

impl CacheKind {
    pub const ALL: [CacheKind; 3] = [
        CacheKind::ReplicaSets,
        CacheKind::BackupConfigurations,
        CacheKind::RestoreSessions,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CacheKind::ReplicaSets => "replicasets",
            CacheKind::BackupConfigurations => "backupconfigurations",
            CacheKind::RestoreSessions => "restoresessions",
        }
    }
}

/// The cluster view. Cheap to share behind an `Arc`; readers never block
/// each other.
#[derive(Debug, Default)]
pub struct State {
    replicasets: RwLock<HashMap<ObjKey, ReplicaSetOwner>>,
    backups: RwLock<TargetIndex<BackupSummary>>,
    restores: RwLock<TargetIndex<RestoreSummary>>,
    synced: [AtomicBool; 3],
}

// A poisoned lock only means a writer panicked mid-update of a plain map;
// serving the possibly stale view beats failing every admission.
macro_rules! read {
    ($l:expr) => {
        $l.read().unwrap_or_else(|e| e.into_inner())
    };
}
macro_rules! write {
    ($l:expr) => {
        $l.write().unwrap_or_else(|e| e.into_inner())
    };
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    fn idx(kind: CacheKind) -> usize {
        kind as usize
    }

    pub fn set_synced(&self, kind: CacheKind) {
        self.synced[Self::idx(kind)].store(true, Ordering::Release);
    }

    pub fn is_synced(&self, kind: CacheKind) -> bool {
        self.synced[Self::idx(kind)].load(Ordering::Acquire)
    }

    /// Ready to answer reviews: every cache has completed its first list.
    pub fn all_synced(&self) -> bool {
        CacheKind::ALL.iter().all(|k| self.is_synced(*k))
    }

    /// Marks every cache synced; for tests and benchmarks that fill the state
    /// by hand.
    pub fn mark_all_synced(&self) {
        for k in CacheKind::ALL {
            self.set_synced(k);
        }
    }

    pub fn len(&self, kind: CacheKind) -> usize {
        match kind {
            CacheKind::ReplicaSets => read!(self.replicasets).len(),
            CacheKind::BackupConfigurations => read!(self.backups).objects.len(),
            CacheKind::RestoreSessions => read!(self.restores).objects.len(),
        }
    }

    // --- ReplicaSets -------------------------------------------------------

    pub fn apply_replicaset(&self, ns: &str, name: &str, owner: ReplicaSetOwner) {
        write!(self.replicasets).insert((ns.to_owned(), name.to_owned()), owner);
    }

    pub fn delete_replicaset(&self, ns: &str, name: &str) {
        write!(self.replicasets).remove(&(ns.to_owned(), name.to_owned()));
    }

    pub fn replace_replicasets(
        &self,
        all: impl IntoIterator<Item = (String, String, ReplicaSetOwner)>,
    ) {
        let map = all.into_iter().map(|(ns, n, o)| ((ns, n), o)).collect();
        *write!(self.replicasets) = map;
    }

    // --- BackupConfigurations ---------------------------------------------

    pub fn apply_backup(&self, ns: &str, b: BackupSummary) {
        write!(self.backups).apply(ns, b);
    }

    pub fn delete_backup(&self, ns: &str, name: &str) {
        write!(self.backups).delete(ns, name);
    }

    pub fn replace_backups(&self, all: impl IntoIterator<Item = (String, BackupSummary)>) {
        let mut idx = TargetIndex::default();
        for (ns, b) in all {
            idx.apply(&ns, b);
        }
        *write!(self.backups) = idx;
    }

    /// Names of the configurations backing up any of `workloads`, sorted.
    pub fn backups_for<'a>(
        &self,
        ns: &str,
        workloads: impl IntoIterator<Item = &'a Workload>,
    ) -> BTreeSet<String> {
        let idx = read!(self.backups);
        workloads
            .into_iter()
            .flat_map(|w| idx.for_target(ns, w))
            .map(|b| b.name.clone())
            .collect()
    }

    // --- RestoreSessions ---------------------------------------------------

    pub fn apply_restore(&self, ns: &str, r: RestoreSummary) {
        write!(self.restores).apply(ns, r);
    }

    pub fn delete_restore(&self, ns: &str, name: &str) {
        write!(self.restores).delete(ns, name);
    }

    pub fn replace_restores(&self, all: impl IntoIterator<Item = (String, RestoreSummary)>) {
        let mut idx = TargetIndex::default();
        for (ns, r) in all {
            idx.apply(&ns, r);
        }
        *write!(self.restores) = idx;
    }

    /// Unfinished sessions targeting any of `workloads`, oldest first.
    pub fn restores_for<'a>(
        &self,
        ns: &str,
        workloads: impl IntoIterator<Item = &'a Workload>,
    ) -> Vec<Arc<RestoreSummary>> {
        let idx = read!(self.restores);
        let mut v: Vec<_> = workloads
            .into_iter()
            .flat_map(|w| idx.for_target(ns, w))
            .filter(|r| !r.finished)
            .cloned()
            .collect();
        v.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
        v.dedup_by(|a, b| Arc::ptr_eq(a, b));
        v
    }
}

impl ReplicaSetOwners for State {
    fn replicaset_owner(&self, ns: &str, name: &str) -> Option<ReplicaSetOwner> {
        read!(self.replicasets)
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::WorkloadKind;

    fn rule(hosts: &[&str]) -> RestoreRule {
        RestoreRule {
            target_hosts: Some(hosts.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    fn owes(rules: Vec<RestoreRule>, host: &str) -> bool {
        RestoreSummary {
            rules,
            ..Default::default()
        }
        .owes(host)
    }

    #[test]
    fn rule_matching_follows_the_seed_example() {
        // seed 001: host-3/host-4 from host-1, then [] for everyone else.
        let rules = vec![rule(&["host-3", "host-4"]), rule(&[])];
        for h in ["host-0", "host-1", "host-3", "host-4", "node-a"] {
            assert!(owes(rules.clone(), h), "{h}");
        }
        // Without the catch-all rule, unnamed hosts get nothing.
        assert!(owes(vec![rule(&["host-3"])], "host-3"));
        assert!(!owes(vec![rule(&["host-3"])], "host-0"));
        // No rules: every host restores its own data.
        assert!(owes(vec![], "host-7"));
    }

    #[test]
    fn a_session_stops_owing_a_host_once_it_finished_there() {
        let mut r = RestoreSummary {
            name: "r".into(),
            ..Default::default()
        };
        assert!(r.owes("host-0"));
        r.hosts_finished.insert("host-0".into());
        assert!(!r.owes("host-0"));
        assert!(r.owes("host-1"));
        r.finished = true;
        assert!(!r.owes("host-1"));
    }

    #[test]
    fn target_index_follows_updates_and_deletes() {
        let s = State::new();
        let web = Workload::new(WorkloadKind::StatefulSet, "web");
        let db = Workload::new(WorkloadKind::StatefulSet, "db");
        s.apply_backup(
            "demo",
            BackupSummary {
                name: "b".into(),
                targets: vec![web.clone()],
            },
        );
        assert_eq!(
            s.backups_for("demo", [&web]),
            BTreeSet::from(["b".to_owned()])
        );
        assert!(s.backups_for("other", [&web]).is_empty());
        // Retargeting moves it.
        s.apply_backup(
            "demo",
            BackupSummary {
                name: "b".into(),
                targets: vec![db.clone()],
            },
        );
        assert!(s.backups_for("demo", [&web]).is_empty());
        assert_eq!(s.backups_for("demo", [&db]).len(), 1);
        s.delete_backup("demo", "b");
        assert!(s.backups_for("demo", [&db]).is_empty());
        assert_eq!(s.len(CacheKind::BackupConfigurations), 0);
    }

    #[test]
    fn restores_for_skips_finished_and_orders_oldest_first() {
        let s = State::new();
        let web = Workload::new(WorkloadKind::StatefulSet, "web");
        let t = |secs: i64| {
            Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
            ))
        };
        for (name, created, finished) in
            [("b", t(20), false), ("a", t(30), false), ("c", t(10), true)]
        {
            s.apply_restore(
                "demo",
                RestoreSummary {
                    name: name.into(),
                    created,
                    finished,
                    target: Some(web.clone()),
                    ..Default::default()
                },
            );
        }
        let names: Vec<_> = s
            .restores_for("demo", [&web])
            .iter()
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(names, ["b", "a"]);
    }

    #[test]
    fn replace_swaps_the_whole_cache_after_a_relist() {
        let s = State::new();
        s.apply_replicaset("demo", "gone", ReplicaSetOwner::None);
        s.replace_replicasets([(
            "demo".to_owned(),
            "app-1".to_owned(),
            ReplicaSetOwner::Deployment("app".into()),
        )]);
        assert_eq!(s.replicaset_owner("demo", "gone"), None);
        assert_eq!(
            s.replicaset_owner("demo", "app-1"),
            Some(ReplicaSetOwner::Deployment("app".into()))
        );
        assert!(!s.all_synced());
        s.mark_all_synced();
        assert!(s.all_synced());
    }
}
