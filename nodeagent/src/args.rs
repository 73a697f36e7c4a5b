//! Command-line flags of `hoard agent` (flattened into the CLI by `cli/`).

use std::net::SocketAddr;
use std::path::PathBuf;

/// The node agent's flags. The DaemonSet manifest passes them explicitly;
/// `NODE_NAME` comes from the downward API.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// This node's name (`spec.nodeName` of the pods whose volumes are ours).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// The kubelet's root directory as mounted into the agent (other
    /// distributions move it, e.g. k0s: /var/lib/k0s/kubelet).
    #[arg(long, env = "HOARD_KUBELET_ROOT", default_value = "/var/lib/kubelet")]
    pub kubelet_root: PathBuf,

    /// The host's `/` as mounted into the agent; needed for hostPath
    /// repositories and for hostPath volumes a configuration names explicitly.
    /// Unset: neither is available.
    #[arg(long, env = "HOARD_HOST_ROOT")]
    pub host_root: Option<PathBuf>,

    /// Hoard's own namespace: the only place repository Secrets are read from.
    #[arg(long, env = "POD_NAMESPACE", default_value = api::keys::NAMESPACE)]
    pub namespace: String,

    /// Address of the plain-HTTP admin port (`/live`, `/ready`, `/metrics`).
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,

    /// Backups/restores running at once on this node.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_transfers: u16,

    /// Seconds between live-progress writes to a session's status.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_interval_secs: u64,

    /// Host directories (as paths on the host) that a `Recovery` may restore
    /// into; its hostPath must lie below one of them. Repeat the flag or
    /// separate with commas.
    #[arg(
        long = "recovery-allowed-path",
        env = "HOARD_RECOVERY_ALLOWED_PATHS",
        value_delimiter = ',',
        default_value = crate::recovery::DEFAULT_RECOVERY_ROOT
    )]
    pub recovery_allowed_paths: Vec<PathBuf>,

    /// Where a fatal error is written for `kubectl describe pod`.
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: Args,
    }

    #[test]
    fn defaults_and_flags() {
        let c = Cli::try_parse_from(["hoard", "--node-name", "n1"])
            .unwrap()
            .agent;
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.kubelet_root, PathBuf::from("/var/lib/kubelet"));
        assert_eq!(c.namespace, "hoard-system");
        assert_eq!(c.max_transfers, 1);
        assert_eq!(c.admin_listen.port(), 9090);
        assert_eq!(
            c.recovery_allowed_paths,
            [PathBuf::from("/var/lib/hoard/recovery")]
        );
        let c = Cli::try_parse_from([
            "hoard",
            "--node-name",
            "n2",
            "--kubelet-root",
            "/var/lib/k0s/kubelet",
            "--max-transfers",
            "3",
            "--admin-listen",
            "127.0.0.1:9999",
            "--recovery-allowed-path",
            "/data,/srv/restore",
        ])
        .unwrap()
        .agent;
        assert_eq!(c.kubelet_root, PathBuf::from("/var/lib/k0s/kubelet"));
        assert_eq!(c.max_transfers, 3);
        assert_eq!(
            c.recovery_allowed_paths,
            [PathBuf::from("/data"), PathBuf::from("/srv/restore")]
        );
        assert!(
            Cli::try_parse_from(["hoard", "--node-name", "n", "--max-transfers", "0"]).is_err()
        );
    }
}
