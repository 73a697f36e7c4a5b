//! The CustomResourceDefinitions, generated from the types. `crdgen` prints
//! them; `manifests/crds.yaml` is its output and a test keeps it in sync.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{
    BackupConfiguration, BackupSession, Recovery, Repository, RepositoryTemplate, RestoreSession,
};

/// Every Hoard CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Repository::crd(),
        BackupConfiguration::crd(),
        BackupSession::crd(),
        RestoreSession::crd(),
        Recovery::crd(),
        RepositoryTemplate::crd(),
    ]
}

/// The CRDs as a multi-document YAML stream (what `crdgen` prints).
pub fn to_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# Generated from the api crate's types. Do not edit: run\n#   cargo run -p api --bin crdgen > manifests/crds.yaml\n",
    );
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
