//! The Hoard webhook: a mutating admission server that patches pods at
//! creation for backup identity and restore.
//!
//! Data flow:
//! * [`watch`] keeps [`state::State`] in sync with the cluster (ReplicaSets
//!   metadata-only, `BackupConfiguration`s, `RestoreSession`s);
//! * [`server`] terminates TLS ([`tls`] reloads rotated certificates),
//!   decodes `AdmissionReview`s ([`review`]) and calls the pure
//!   [`mutate::mutate`], which reads only the state;
//! * [`events`] records Warning Events about malformed annotations on the
//!   workload, from a background task fed by a bounded channel (never on
//!   the admission path);
//! * [`admin`] serves `/live`, `/ready` and `/metrics` ([`metrics`]) on a
//!   plain-HTTP port;
//! * [`workload`] resolves a pod's owner and backup host name;
//! * [`resources`] checks a session's resources for the init-container
//!   the way pod validation will;
//! * [`controllers`] turn `BackupConfiguration`s into `BackupSession`s on
//!   their schedules and roll the agents' per-host results up;
//! * [`args`] wires it together for the `hoard-webhook` binary;
//! * [`testing`] holds the invariants and fixtures-state shared by the
//!   property tests, the fuzz target and the benchmark.

pub mod admin;
pub mod args;
pub mod controllers;
pub mod events;
pub mod metrics;
pub mod mutate;
pub mod request;
pub mod resources;
pub mod review;
pub mod server;
pub mod state;
pub mod testing;
pub mod tls;
pub mod watch;
pub mod workload;
