//! The Pod Security Standards "restricted" level (latest), checked on a pod
//! spec without an API server. What the webhook injects into application
//! pods must keep them at this level, and Hoard's own webhook pod meets it;
//! tests use [`restricted_violations`] on the patched pod to prove it.
//!
//! The checks follow <https://kubernetes.io/docs/concepts/security/pod-security-standards/>
//! (baseline and restricted controls for pods; Windows-only and deprecated
//! AppArmor annotation checks are left out).

use k8s_openapi::api::core::v1::{Container, PodSpec, SeccompProfile, SecurityContext};

/// Volume types the restricted level allows.
const ALLOWED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Sysctls the baseline level allows.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

fn seccomp_ok(p: Option<&SeccompProfile>) -> Option<bool> {
    p.map(|p| matches!(p.type_.as_str(), "RuntimeDefault" | "Localhost"))
}

/// Every way `spec` breaks the restricted level, one readable line each
/// (empty: the pod is admitted in a `restricted` namespace).
pub fn restricted_violations(spec: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    let psc = spec.security_context.as_ref();

    // --- baseline ---
    for (on, what) in [
        (spec.host_network, "hostNetwork"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
    ] {
        if on == Some(true) {
            out.push(format!("{what} is true"));
        }
    }
    for s in psc.and_then(|p| p.sysctls.as_ref()).into_iter().flatten() {
        if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
            out.push(format!("sysctl {} is not allowed", s.name));
        }
    }
    if let Some(v) = psc.and_then(|p| p.se_linux_options.as_ref()) {
        if v.type_.as_deref().is_some_and(|t| {
            !matches!(
                t,
                "" | "container_t" | "container_init_t" | "container_kvm_t" | "container_engine_t"
            )
        }) {
            out.push("pod seLinuxOptions.type is not allowed".into());
        }
        if v.user.as_deref().is_some_and(|u| !u.is_empty())
            || v.role.as_deref().is_some_and(|r| !r.is_empty())
        {
            out.push("pod seLinuxOptions.user/role must be empty".into());
        }
    }
    if psc
        .and_then(|p| p.app_armor_profile.as_ref())
        .is_some_and(|a| a.type_ == "Unconfined")
    {
        out.push("pod appArmorProfile is Unconfined".into());
    }

    // --- restricted: volumes ---
    for v in spec.volumes.iter().flatten() {
        let json = serde_json::to_value(v).unwrap_or_default();
        let kinds: Vec<&String> = json
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|k| *k != "name")
            .collect();
        for k in kinds {
            if !ALLOWED_VOLUMES.contains(&k.as_str()) {
                out.push(format!("volume {:?} has type {k}", v.name));
            }
        }
    }

    // --- restricted: pod-level defaults that containers may inherit ---
    let pod_non_root = psc.and_then(|p| p.run_as_non_root);
    let pod_uid = psc.and_then(|p| p.run_as_user);
    let pod_seccomp = seccomp_ok(psc.and_then(|p| p.seccomp_profile.as_ref()));
    if pod_uid == Some(0) {
        out.push("pod runAsUser is 0".into());
    }
    if pod_seccomp == Some(false) {
        out.push("pod seccompProfile is Unconfined".into());
    }

    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("init container", c))
        .chain(spec.containers.iter().map(|c| ("container", c)));
    for (what, c) in containers {
        container_violations(what, c, pod_non_root, pod_seccomp, &mut out);
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        let as_container = Container {
            name: c.name.clone(),
            security_context: c.security_context.clone(),
            ports: c.ports.clone(),
            ..Default::default()
        };
        container_violations(
            "ephemeral container",
            &as_container,
            pod_non_root,
            pod_seccomp,
            &mut out,
        );
    }
    out
}

fn container_violations(
    what: &str,
    c: &Container,
    pod_non_root: Option<bool>,
    pod_seccomp: Option<bool>,
    out: &mut Vec<String>,
) {
    let name = &c.name;
    let default = SecurityContext::default();
    let sc = c.security_context.as_ref().unwrap_or(&default);
    if sc.privileged == Some(true) {
        out.push(format!("{what} {name:?} is privileged"));
    }
    if c.ports
        .iter()
        .flatten()
        .any(|p| p.host_port.is_some_and(|h| h != 0))
    {
        out.push(format!("{what} {name:?} uses a hostPort"));
    }
    if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        out.push(format!("{what} {name:?} procMount is not Default"));
    }
    if sc
        .app_armor_profile
        .as_ref()
        .is_some_and(|a| a.type_ == "Unconfined")
    {
        out.push(format!("{what} {name:?} appArmorProfile is Unconfined"));
    }
    if let Some(v) = sc.se_linux_options.as_ref() {
        if v.type_.as_deref().is_some_and(|t| {
            !matches!(
                t,
                "" | "container_t" | "container_init_t" | "container_kvm_t" | "container_engine_t"
            )
        }) {
            out.push(format!(
                "{what} {name:?} seLinuxOptions.type is not allowed"
            ));
        }
        if v.user.as_deref().is_some_and(|u| !u.is_empty())
            || v.role.as_deref().is_some_and(|r| !r.is_empty())
        {
            out.push(format!(
                "{what} {name:?} seLinuxOptions.user/role must be empty"
            ));
        }
    }
    if sc.allow_privilege_escalation != Some(false) {
        out.push(format!(
            "{what} {name:?} must set allowPrivilegeEscalation: false"
        ));
    }
    if sc.run_as_non_root.or(pod_non_root) != Some(true) {
        out.push(format!(
            "{what} {name:?} must run as non-root (runAsNonRoot: true)"
        ));
    }
    if sc.run_as_non_root == Some(false) {
        out.push(format!("{what} {name:?} sets runAsNonRoot: false"));
    }
    if sc.run_as_user == Some(0) {
        out.push(format!("{what} {name:?} runAsUser is 0"));
    }
    match seccomp_ok(sc.seccomp_profile.as_ref()).or(pod_seccomp) {
        Some(true) => {}
        Some(false) => out.push(format!("{what} {name:?} seccompProfile is Unconfined")),
        None => out.push(format!(
            "{what} {name:?} needs seccompProfile RuntimeDefault or Localhost"
        )),
    }
    let caps = sc.capabilities.as_ref();
    if !caps
        .and_then(|c| c.drop.as_ref())
        .is_some_and(|d| d.iter().any(|x| x == "ALL"))
    {
        out.push(format!("{what} {name:?} must drop ALL capabilities"));
    }
    for add in caps.and_then(|c| c.add.as_ref()).into_iter().flatten() {
        if add != "NET_BIND_SERVICE" {
            out.push(format!("{what} {name:?} adds capability {add}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Capabilities, EmptyDirVolumeSource, HostPathVolumeSource, PodSecurityContext, Volume,
    };

    fn restricted_container(name: &str) -> Container {
        Container {
            name: name.into(),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_restricted_pod_passes() {
        let spec = PodSpec {
            containers: vec![restricted_container("app")],
            init_containers: Some(vec![restricted_container("hoard-restore-wait")]),
            volumes: Some(vec![Volume {
                name: "hoard-restore-status".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(restricted_violations(&spec), Vec::<String>::new());
    }

    #[test]
    fn pod_level_settings_are_inherited() {
        let mut c = restricted_container("app");
        let sc = c.security_context.as_mut().unwrap();
        sc.run_as_non_root = None;
        sc.seccomp_profile = None;
        let spec = PodSpec {
            containers: vec![c],
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(restricted_violations(&spec), Vec::<String>::new());
    }

    #[test]
    fn each_violation_is_named() {
        let mut bad = restricted_container("wait");
        let sc = bad.security_context.as_mut().unwrap();
        sc.allow_privilege_escalation = None;
        sc.run_as_user = Some(0);
        sc.capabilities = Some(Capabilities {
            drop: None,
            add: Some(vec!["SYS_ADMIN".into()]),
        });
        sc.seccomp_profile = None;
        let spec = PodSpec {
            host_pid: Some(true),
            containers: vec![restricted_container("app")],
            init_containers: Some(vec![bad]),
            volumes: Some(vec![Volume {
                name: "host".into(),
                host_path: Some(HostPathVolumeSource {
                    path: "/".into(),
                    type_: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            restricted_violations(&spec),
            [
                "hostPID is true",
                "volume \"host\" has type hostPath",
                "init container \"wait\" must set allowPrivilegeEscalation: false",
                "init container \"wait\" runAsUser is 0",
                "init container \"wait\" needs seccompProfile RuntimeDefault or Localhost",
                "init container \"wait\" must drop ALL capabilities",
                "init container \"wait\" adds capability SYS_ADMIN",
            ]
        );
    }
}
