//! The `hoard` command line: parses restic-style arguments, obtains the
//! password (file, `HOARD_PASSWORD`, or a prompt — never an argument), opens
//! the repository and calls the engine. Output is human text or, with
//! `--json`, machine-readable JSON on stdout; progress goes to stderr.
//!
//! Exit codes follow restic: 0 success, 1 failure, 3 the snapshot/restore is
//! incomplete (some files could not be read or written), 130 interrupted.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use engine::backend::location::{Credentials, open_repo_string};
use engine::backup::{BackupOptions, CancelToken, ParentSelection};
use engine::forget::{GroupBy, GroupKey, GroupPlan, KeepDuration, RetentionPolicy, plan_forget};
use engine::progress::{Progress, ProgressSnapshot};
use engine::prune::{PruneEvent, PruneOptions, PruneStats};
use engine::restore::RestoreOptions;
use engine::tree::{NodeType, Tree};
use engine::{Backend, BlobType, Id, InitOptions, KdfParams, Repository, SnapshotFilter};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_INCOMPLETE: i32 = 3;
pub const EXIT_INTERRUPTED: i32 = 130;

/// Default repository: a directory next to where hoard runs, so the first
/// `hoard init` works with nothing else installed or configured.
pub const DEFAULT_REPO: &str = "./hoard-repo";

#[derive(Parser, Debug)]
#[command(
    name = "hoard",
    version,
    about = "Back up and restore directories into restic-format repositories"
)]
pub struct Cli {
    /// Repository location (a directory, or s3:/gs:/azure:/rest: as restic spells them).
    #[arg(short = 'r', long = "repo", env = "HOARD_REPOSITORY", default_value = DEFAULT_REPO, global = true)]
    pub repo: String,

    /// Read the repository password from this file (else HOARD_PASSWORD, else a prompt).
    #[arg(
        short = 'p',
        long = "password-file",
        env = "HOARD_PASSWORD_FILE",
        global = true
    )]
    pub password_file: Option<PathBuf>,

    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// No progress bar.
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository.
    Init,
    /// Back up a directory as a new snapshot.
    Backup(BackupArgs),
    /// Restore a snapshot into a directory.
    Restore(RestoreArgs),
    /// List snapshots.
    Snapshots(FilterArgs),
    /// List the files in a snapshot.
    Ls(LsArgs),
    /// Remove snapshots by a retention policy (restic's flags), optionally pruning.
    Forget(ForgetArgs),
    /// Remove data no snapshot references.
    Prune(PruneArgs),
    /// Manage repository keys (passwords).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run the node agent (the Kubernetes DaemonSet's process).
    Agent(Box<nodeagent::Args>),
}

#[derive(Args, Debug, Default, Clone)]
pub struct FilterArgs {
    /// Only snapshots of this host (repeatable).
    #[arg(short = 'H', long = "host")]
    pub host: Vec<String>,
    /// Only snapshots with these tags ("a,b" = both; repeat for either).
    #[arg(long = "tag")]
    pub tag: Vec<String>,
    /// Only snapshots that include this path (repeatable: all of them).
    #[arg(long = "path")]
    pub path: Vec<String>,
}

impl FilterArgs {
    fn filter(&self) -> SnapshotFilter {
        SnapshotFilter {
            hosts: self.host.clone(),
            tags: self.tag.clone(),
            paths: self.path.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Directory to back up.
    pub source: PathBuf,
    /// Hostname recorded in the snapshot (default: this machine's).
    #[arg(short = 'H', long = "host")]
    pub host: Option<String>,
    /// Path recorded in the snapshot, e.g. /data (default: the source's absolute path).
    #[arg(long = "path")]
    pub path: Option<String>,
    /// Tag the snapshot (repeatable; "a,b" adds both).
    #[arg(long = "tag")]
    pub tag: Vec<String>,
    /// Exclude entries matching this glob (repeatable).
    #[arg(short = 'e', long = "exclude")]
    pub exclude: Vec<String>,
    /// Compare against this snapshot instead of the latest one with the same host and path.
    #[arg(long = "parent", conflicts_with = "force")]
    pub parent: Option<String>,
    /// Read every file, ignoring the parent snapshot.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id (or unique prefix), or "latest".
    pub snapshot: String,
    /// Directory to restore into.
    #[arg(short = 't', long = "target")]
    pub target: PathBuf,
    /// Restore only this snapshot path and what is below it (repeatable).
    #[arg(short = 'i', long = "include")]
    pub include: Vec<String>,
    /// Restore into a non-empty target, replacing entries with the same names.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id (or unique prefix), or "latest".
    pub snapshot: String,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the repository's keys.
    List,
    /// Add a key (a new password for the same repository).
    Add {
        /// Read the new password from this file (else HOARD_NEW_PASSWORD, else a prompt).
        #[arg(long = "new-password-file")]
        new_password_file: Option<PathBuf>,
    },
}

/// Set by the signal thread; commands check it to tell "cancelled by the
/// user" (exit 130) from other failures.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The running operation's cancel token, if any.
static CANCEL: Mutex<Option<CancelToken>> = Mutex::new(None);

/// Blocks SIGINT/SIGTERM in every thread (set before any thread starts, so
/// all inherit it) and handles them on one dedicated thread: the first
/// cancels the running backup/restore so it can stop cleanly (the
/// repository stays valid), or exits at once if nothing is running; a
/// second one exits immediately.
fn install_signal_thread() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("hoard-signals".into())
        .spawn(move || {
            loop {
                if set.wait().is_err() {
                    return;
                }
                let first = !INTERRUPTED.swap(true, Ordering::SeqCst);
                let token = CANCEL.lock().unwrap_or_else(|e| e.into_inner()).clone();
                match token {
                    Some(t) if first => {
                        eprintln!("\ninterrupted: stopping (press Ctrl-C again to abort at once)");
                        t.cancel();
                    }
                    _ => {
                        eprintln!();
                        std::process::exit(EXIT_INTERRUPTED);
                    }
                }
            }
        });
}

/// Entry point for the binary: parse, run, map the outcome to an exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                EXIT_FAILURE
            } else {
                EXIT_OK
            };
        }
    };
    // The agent is a long-running daemon: it logs at info and handles
    // SIGTERM itself (draining transfers), so the CLI's signal thread, which
    // blocks the signals in every thread, must not be installed for it.
    let agent = matches!(cli.command, Command::Agent(_));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOARD_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if agent { "info" } else { "warn" })
            }),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    if !agent {
        install_signal_thread();
    }
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            if INTERRUPTED.load(Ordering::SeqCst) {
                eprintln!("hoard: {e}");
                return EXIT_INTERRUPTED;
            }
            eprintln!("hoard: error: {}", error_text(&e));
            EXIT_FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message
/// already ends with (engine errors embed their source in `Display`).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.ends_with(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}

/// Runs one parsed command; `Ok` carries the exit code.
pub fn run(cli: &Cli) -> Result<i32> {
    let backend = || open_repo_string(&cli.repo, &Credentials::from_env());
    match &cli.command {
        Command::Init => cmd_init(cli, backend()?),
        Command::Backup(a) => cmd_backup(cli, &open(cli, backend()?)?, a),
        Command::Restore(a) => cmd_restore(cli, &open(cli, backend()?)?, a),
        Command::Snapshots(f) => cmd_snapshots(cli, &open(cli, backend()?)?, f),
        Command::Ls(a) => cmd_ls(cli, &open(cli, backend()?)?, a),
        Command::Key(k) => cmd_key(cli, &open(cli, backend()?)?, k),
        Command::Forget(a) => cmd_forget(cli, &open(cli, backend()?)?, a),
        Command::Prune(a) => cmd_prune(cli, &open(cli, backend()?)?, a),
        // The agent reads its repositories from the cluster, not from --repo.
        // A fatal error is already logged and in the termination log, so it
        // only becomes the exit code here (not a second copy on stderr).
        Command::Agent(a) => Ok(match nodeagent::run((**a).clone()) {
            Ok(()) => EXIT_OK,
            Err(_) => EXIT_FAILURE,
        }),
    }
}

fn read_password_file(p: &Path) -> Result<String> {
    let s = std::fs::read_to_string(p)
        .with_context(|| format!("reading password file {}", p.display()))?;
    // restic strips one trailing newline (files written by `echo`).
    let s = s.strip_suffix('\n').unwrap_or(&s);
    Ok(s.strip_suffix('\r').unwrap_or(s).to_string())
}

fn password(cli: &Cli, confirm: bool) -> Result<String> {
    if let Some(p) = &cli.password_file {
        return read_password_file(p);
    }
    if let Ok(p) = std::env::var("HOARD_PASSWORD") {
        return Ok(p);
    }
    prompt("enter password for repository: ", confirm)
}

fn prompt(text: &str, confirm: bool) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password given: use --password-file, HOARD_PASSWORD_FILE or HOARD_PASSWORD (stdin is not a terminal, so hoard cannot prompt)"
        );
    }
    let pw = rpassword::prompt_password(text).context("reading password")?;
    if confirm {
        let again =
            rpassword::prompt_password("enter password again: ").context("reading password")?;
        if again != pw {
            bail!("passwords do not match");
        }
    }
    if pw.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(pw)
}

fn open(cli: &Cli, backend: Arc<dyn Backend>) -> Result<Repository> {
    let pw = password(cli, false)?;
    Ok(Repository::open(backend, &pw)?)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn cmd_init(cli: &Cli, backend: Arc<dyn Backend>) -> Result<i32> {
    let pw = password(cli, true)?;
    let location = backend.location();
    let repo = Repository::init(
        backend,
        &pw,
        InitOptions {
            kdf: kdf_params(),
            chunker_polynomial: None,
        },
    )?;
    if cli.json {
        print_json(&serde_json::json!({
            "message_type": "initialized",
            "id": repo.config().id,
            "repository": location,
        }))?;
    } else {
        println!(
            "created hoard repository {} at {location}",
            repo.config().id.short()
        );
        println!(
            "Please note that knowledge of your password is required to access the repository."
        );
        println!("Losing your password means that your data is irrecoverably lost.");
    }
    Ok(EXIT_OK)
}

/// restic's scrypt cost by default; `HOARD_TEST_FAST_KDF=1` (tests only)
/// makes key derivation cheap so test suites do not spend seconds in scrypt.
fn kdf_params() -> KdfParams {
    if std::env::var_os("HOARD_TEST_FAST_KDF").is_some() {
        KdfParams::insecure_fast()
    } else {
        KdfParams::default()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Registers `token` for the signal thread while an operation runs.
struct CancelScope;

impl CancelScope {
    fn new(token: &CancelToken) -> CancelScope {
        *CANCEL.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
        if INTERRUPTED.load(Ordering::SeqCst) {
            token.cancel();
        }
        CancelScope
    }
}

impl Drop for CancelScope {
    fn drop(&mut self) {
        *CANCEL.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Draws `progress` as a bar on stderr (only on a terminal) until dropped.
struct Bar {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bar {
    fn start(cli: &Cli, progress: &Progress, verb: &'static str) -> Bar {
        if cli.quiet || cli.json || !std::io::stderr().is_terminal() {
            return Bar {
                stop: None,
                thread: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let progress = progress.clone();
        let thread = std::thread::spawn(move || {
            let pb = indicatif::ProgressBar::new(0);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            pb.set_prefix(verb);
            loop {
                let s = progress.snapshot();
                pb.set_length(s.bytes_total.max(s.bytes_done));
                pb.set_position(s.bytes_done);
                let eta = match (s.totals_known, s.eta) {
                    (true, Some(e)) => format!(" ETA {}s", e.as_secs()),
                    _ => String::new(),
                };
                pb.set_message(format!(
                    "{}/{} files {}/s{eta}",
                    s.files_done,
                    s.files_total,
                    indicatif::HumanBytes(s.bytes_per_sec as u64)
                ));
                // The channel doubles as the redraw timer and the stop signal.
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
            pb.finish_and_clear();
        });
        Bar {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn stats_json(s: &ProgressSnapshot) -> serde_json::Value {
    serde_json::json!({
        "files_new": s.files_new,
        "files_changed": s.files_changed,
        "files_unmodified": s.files_unmodified,
        "dirs": s.dirs,
        "files_done": s.files_done,
        "bytes_done": s.bytes_done,
        "bytes_read": s.bytes_read,
        "bytes_added": s.bytes_added,
        "bytes_stored": s.bytes_stored,
        "blobs_added": s.blobs_added,
        "errors": s.errors,
        "duration_seconds": s.elapsed.as_secs_f64(),
    })
}

fn cmd_backup(cli: &Cli, repo: &Repository, a: &BackupArgs) -> Result<i32> {
    let path = match &a.path {
        Some(p) => p.clone(),
        None => std::path::absolute(&a.source)
            .with_context(|| format!("resolving {}", a.source.display()))?
            .to_string_lossy()
            .into_owned(),
    };
    let parent = match (&a.parent, a.force) {
        (_, true) => ParentSelection::None,
        (Some(p), _) => {
            ParentSelection::Explicit(repo.find_snapshot(p, &SnapshotFilter::default())?.0)
        }
        (None, false) => ParentSelection::Auto,
    };
    let tags = a
        .tag
        .iter()
        .flat_map(|t| t.split(','))
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    let opts = BackupOptions {
        hostname: a.host.clone().unwrap_or_else(hostname),
        paths: vec![path],
        tags,
        parent,
        excludes: a.exclude.clone(),
        ..Default::default()
    };
    let _scope = CancelScope::new(&opts.cancel);
    let bar = Bar::start(cli, &opts.progress, "backup");
    let res = engine::backup::backup(repo, &a.source, opts);
    drop(bar);
    let summary = res?;
    let s = &summary.stats;
    if cli.json {
        let mut v = stats_json(s);
        v["message_type"] = "summary".into();
        v["snapshot_id"] = summary.snapshot_id.to_hex().into();
        v["parent"] = summary.parent.map(|p| p.to_hex()).into();
        v["incomplete"] = summary.is_incomplete().into();
        v["file_errors"] = serde_json::to_value(&summary.errors)?;
        print_json(&v)?;
    } else {
        for e in &summary.errors {
            eprintln!("error: {}: {}", e.path, e.reason);
        }
        if let Some(p) = summary.parent {
            println!("using parent snapshot {}", p.short());
        }
        println!(
            "Files: {} new, {} changed, {} unmodified",
            s.files_new, s.files_changed, s.files_unmodified
        );
        println!(
            "Added to the repository: {} ({} stored)",
            indicatif::HumanBytes(s.bytes_added),
            indicatif::HumanBytes(s.bytes_stored)
        );
        println!(
            "processed {} files, {} in {:.1}s",
            s.files_done,
            indicatif::HumanBytes(s.bytes_done),
            s.elapsed.as_secs_f64()
        );
        println!("snapshot {} saved", summary.snapshot_id.short());
    }
    if summary.is_incomplete() {
        eprintln!(
            "Warning: {} file(s) could not be read; the snapshot is incomplete",
            summary.errors.len()
        );
        return Ok(EXIT_INCOMPLETE);
    }
    Ok(EXIT_OK)
}

fn cmd_restore(cli: &Cli, repo: &Repository, a: &RestoreArgs) -> Result<i32> {
    let (id, snap) = repo.find_snapshot(&a.snapshot, &a.filter.filter())?;
    let opts = RestoreOptions {
        include: a.include.clone(),
        overwrite: a.overwrite,
        ..Default::default()
    };
    if !cli.json {
        println!(
            "restoring snapshot {} of {:?} at {} to {}",
            id.short(),
            snap.paths,
            snap.time,
            a.target.display()
        );
    }
    let _scope = CancelScope::new(&opts.cancel);
    let bar = Bar::start(cli, &opts.progress, "restore");
    let res = engine::restore::restore(repo, &id, &a.target, opts);
    drop(bar);
    let summary = res?;
    if cli.json {
        let mut v = stats_json(&summary.stats);
        v["message_type"] = "summary".into();
        v["snapshot_id"] = id.to_hex().into();
        v["incomplete"] = summary.is_incomplete().into();
        v["file_errors"] = serde_json::to_value(&summary.errors)?;
        print_json(&v)?;
    } else {
        for e in &summary.errors {
            eprintln!("error: {}: {}", e.path, e.reason);
        }
        let s = &summary.stats;
        println!(
            "restored {} files, {} in {:.1}s",
            s.files_done,
            indicatif::HumanBytes(s.bytes_done),
            s.elapsed.as_secs_f64()
        );
    }
    if summary.is_incomplete() {
        eprintln!(
            "Warning: {} entries could not be restored",
            summary.errors.len()
        );
        return Ok(EXIT_INCOMPLETE);
    }
    Ok(EXIT_OK)
}

fn cmd_snapshots(cli: &Cli, repo: &Repository, f: &FilterArgs) -> Result<i32> {
    let snaps = repo.find_snapshots(&f.filter())?;
    if cli.json {
        // restic's `snapshots --json`: the snapshot fields plus id/short_id.
        let list: Vec<serde_json::Value> = snaps
            .iter()
            .map(|(id, s)| {
                let mut v = serde_json::to_value(s)?;
                v["id"] = id.to_hex().into();
                v["short_id"] = id.short().into();
                Ok(v)
            })
            .collect::<Result<_>>()?;
        print_json(&list)?;
        return Ok(EXIT_OK);
    }
    println!(
        "{:<8}  {:<19}  {:<16}  {:<16}  Paths",
        "ID", "Time", "Host", "Tags"
    );
    println!("{}", "-".repeat(80));
    for (id, s) in &snaps {
        println!(
            "{:<8}  {:<19}  {:<16}  {:<16}  {}",
            id.short(),
            s.time
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S"),
            s.hostname,
            s.tags.join(","),
            s.paths.join(",")
        );
    }
    println!("{}", "-".repeat(80));
    println!("{} snapshots", snaps.len());
    Ok(EXIT_OK)
}

fn load_tree(repo: &Repository, id: &Id) -> Result<Tree> {
    let data = repo.load_blob(BlobType::Tree, id)?;
    Tree::from_json(&data).map_err(|e| anyhow!("tree {id} is corrupted: {e}"))
}

fn cmd_ls(cli: &Cli, repo: &Repository, a: &LsArgs) -> Result<i32> {
    let (id, snap) = repo.find_snapshot(&a.snapshot, &a.filter.filter())?;
    let mut out = std::io::stdout().lock();
    if cli.json {
        let mut v = serde_json::to_value(&snap)?;
        v["id"] = id.to_hex().into();
        v["short_id"] = id.short().into();
        v["struct_type"] = "snapshot".into();
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "snapshot {} of {:?} at {}:",
            id.short(),
            snap.paths,
            snap.time
        )?;
    }
    // Depth-first, like restic: each directory's entries in tree order.
    let mut stack: Vec<(String, Id)> = vec![(String::new(), snap.tree)];
    while let Some((prefix, tid)) = stack.pop() {
        let tree = load_tree(repo, &tid)?;
        let mut subdirs = Vec::new();
        for node in &tree.nodes {
            let path = format!("{prefix}/{}", String::from_utf8_lossy(&node.name));
            if cli.json {
                serde_json::to_writer(
                    &mut out,
                    &serde_json::json!({
                        "name": String::from_utf8_lossy(&node.name),
                        "type": node.node_type.as_str(),
                        "path": path,
                        "uid": node.uid,
                        "gid": node.gid,
                        "size": node.size,
                        "mode": node.mode,
                        "mtime": node.mtime.to_go_string(),
                        "struct_type": "node",
                    }),
                )?;
                writeln!(out)?;
            } else {
                writeln!(out, "{path}")?;
            }
            if let (NodeType::Dir, Some(sub)) = (&node.node_type, node.subtree) {
                subdirs.push((path, sub));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(EXIT_OK)
}

fn new_password(file: &Option<PathBuf>) -> Result<String> {
    if let Some(p) = file {
        return read_password_file(p);
    }
    if let Ok(p) = std::env::var("HOARD_NEW_PASSWORD") {
        return Ok(p);
    }
    prompt("enter new password: ", true)
}

fn cmd_key(cli: &Cli, repo: &Repository, k: &KeyCommand) -> Result<i32> {
    match k {
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if cli.json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|(id, kf)| {
                        serde_json::json!({
                            "id": id.short(),
                            "userName": kf.username,
                            "hostName": kf.hostname,
                            "created": kf.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                        })
                    })
                    .collect();
                print_json(&v)?;
            } else {
                println!(" {:<8}  {:<12}  {:<20}  Created", "ID", "User", "Host");
                println!("{}", "-".repeat(64));
                for (id, kf) in &keys {
                    println!(
                        " {:<8}  {:<12}  {:<20}  {}",
                        id.short(),
                        kf.username,
                        kf.hostname,
                        kf.created.format("%Y-%m-%d %H:%M:%S")
                    );
                }
            }
        }
        KeyCommand::Add { new_password_file } => {
            let pw = new_password(new_password_file)?;
            let id = repo.add_key(&pw, kdf_params())?;
            if cli.json {
                print_json(&serde_json::json!({ "id": id }))?;
            } else {
                println!("saved new key as {}", id.short());
            }
        }
    }
    Ok(EXIT_OK)
}

// ---- forget and prune ----

#[derive(Args, Debug, Clone)]
pub struct PruneFlags {
    /// Tolerated unused space after pruning: "5%" of the used data (the
    /// default), or "unlimited" to only delete packs nothing uses.
    #[arg(long = "max-unused", default_value = "5%", value_parser = parse_max_unused)]
    pub max_unused: f64,
    /// Also merge small packs (left by many small backups) into larger ones.
    #[arg(long = "repack-small")]
    pub repack_small: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Only show what would be removed and repacked.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    #[command(flatten)]
    pub flags: PruneFlags,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove by id (in addition to what a policy removes).
    pub snapshots: Vec<String>,
    /// Keep the last N snapshots.
    #[arg(short = 'l', long = "keep-last", value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the last N hourly snapshots.
    #[arg(
        short = 'H',
        long = "keep-hourly",
        value_name = "N",
        default_value_t = 0
    )]
    pub keep_hourly: u32,
    /// Keep the last N daily snapshots.
    #[arg(
        short = 'd',
        long = "keep-daily",
        value_name = "N",
        default_value_t = 0
    )]
    pub keep_daily: u32,
    /// Keep the last N weekly snapshots.
    #[arg(
        short = 'w',
        long = "keep-weekly",
        value_name = "N",
        default_value_t = 0
    )]
    pub keep_weekly: u32,
    /// Keep the last N monthly snapshots.
    #[arg(
        short = 'm',
        long = "keep-monthly",
        value_name = "N",
        default_value_t = 0
    )]
    pub keep_monthly: u32,
    /// Keep the last N yearly snapshots.
    #[arg(
        short = 'y',
        long = "keep-yearly",
        value_name = "N",
        default_value_t = 0
    )]
    pub keep_yearly: u32,
    /// Keep snapshots newer than the newest one minus this (e.g. 1y5m7d2h).
    #[arg(long = "keep-within", value_name = "DURATION")]
    pub keep_within: Option<KeepDuration>,
    /// Keep hourly snapshots within this duration of the newest.
    #[arg(long = "keep-within-hourly", value_name = "DURATION")]
    pub keep_within_hourly: Option<KeepDuration>,
    /// Keep daily snapshots within this duration of the newest.
    #[arg(long = "keep-within-daily", value_name = "DURATION")]
    pub keep_within_daily: Option<KeepDuration>,
    /// Keep weekly snapshots within this duration of the newest.
    #[arg(long = "keep-within-weekly", value_name = "DURATION")]
    pub keep_within_weekly: Option<KeepDuration>,
    /// Keep monthly snapshots within this duration of the newest.
    #[arg(long = "keep-within-monthly", value_name = "DURATION")]
    pub keep_within_monthly: Option<KeepDuration>,
    /// Keep yearly snapshots within this duration of the newest.
    #[arg(long = "keep-within-yearly", value_name = "DURATION")]
    pub keep_within_yearly: Option<KeepDuration>,
    /// Keep snapshots with these tags ("a,b" = both; repeat for either).
    #[arg(long = "keep-tag", value_name = "TAGS")]
    pub keep_tag: Vec<String>,
    /// Only consider snapshots of this host (repeatable).
    #[arg(long = "host")]
    pub host: Vec<String>,
    /// Only consider snapshots with these tags ("a,b" = both; repeat for either).
    #[arg(long = "tag")]
    pub tag: Vec<String>,
    /// Only consider snapshots that include this path (repeatable: all of them).
    #[arg(long = "path")]
    pub path: Vec<String>,
    /// Group snapshots by these fields before applying the policy
    /// (host, paths, tags, comma-separated; '' for one group).
    #[arg(short = 'g', long = "group-by", default_value = "host,paths")]
    pub group_by: GroupBy,
    /// Only show what would be removed, and why each kept snapshot stays.
    #[arg(short = 'n', long = "dry-run")]
    pub dry_run: bool,
    /// Prune afterwards (remove the data of the removed snapshots).
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_flags: PruneFlags,
}

/// `5%`, `5` (percent), `unlimited`.
fn parse_max_unused(s: &str) -> std::result::Result<f64, String> {
    let t = s.trim();
    if t == "unlimited" {
        return Ok(100.0);
    }
    let num = t.strip_suffix('%').unwrap_or(t).trim();
    match num.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "invalid --max-unused {s:?}: give a percentage from 0% to 100% of the used data, or \"unlimited\""
        )),
    }
}

impl ForgetArgs {
    fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within,
            keep_within_hourly: self.keep_within_hourly,
            keep_within_daily: self.keep_within_daily,
            keep_within_weekly: self.keep_within_weekly,
            keep_within_monthly: self.keep_within_monthly,
            keep_within_yearly: self.keep_within_yearly,
            keep_tags: self.keep_tag.clone(),
        }
    }
}

fn group_title(k: &GroupKey, by: GroupBy) -> String {
    let mut parts = Vec::new();
    if by.host {
        parts.push(format!("host [{}]", k.hostname));
    }
    if by.paths {
        parts.push(format!("paths [{}]", k.paths.join(", ")));
    }
    if by.tags {
        parts.push(format!("tags [{}]", k.tags.join(", ")));
    }
    if parts.is_empty() {
        "all snapshots".into()
    } else {
        parts.join(", ")
    }
}

fn snapshot_json(id: &Id, s: &engine::Snapshot) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(s)?;
    v["id"] = id.to_hex().into();
    v["short_id"] = id.short().into();
    Ok(v)
}

fn cmd_forget(cli: &Cli, repo: &Repository, a: &ForgetArgs) -> Result<i32> {
    let policy = a.policy();
    if policy.is_empty() && a.snapshots.is_empty() {
        bail!(
            "no policy given: nothing would be removed; use --keep-last N, --keep-daily N, ... (see `hoard forget --help`) or name snapshots to remove"
        );
    }
    let filter = SnapshotFilter {
        hosts: a.host.clone(),
        tags: a.tag.clone(),
        paths: a.path.clone(),
    };
    let all = repo.find_snapshots(&filter)?;
    let by_id: std::collections::HashMap<Id, &engine::Snapshot> =
        all.iter().map(|(id, s)| (*id, s)).collect();
    let mut plans = Vec::new();
    if !a.snapshots.is_empty() {
        let mut remove = Vec::new();
        for q in &a.snapshots {
            remove.push(repo.find_snapshot(q, &filter)?.0);
        }
        plans.push(GroupPlan {
            key: GroupKey::default(),
            keep: vec![],
            remove,
        });
    }
    if !policy.is_empty() {
        plans.extend(plan_forget(&all, &policy, a.group_by));
    }

    if cli.json {
        let groups: Vec<serde_json::Value> = plans
            .iter()
            .map(|p| {
                let snap = |id: &Id| -> Result<serde_json::Value> {
                    match by_id.get(id) {
                        Some(s) => snapshot_json(id, s),
                        None => {
                            Ok(serde_json::json!({ "id": id.to_hex(), "short_id": id.short() }))
                        }
                    }
                };
                Ok(serde_json::json!({
                    "host": p.key.hostname,
                    "paths": p.key.paths,
                    "tags": p.key.tags,
                    "keep": p.keep.iter().map(|k| snap(&k.id)).collect::<Result<Vec<_>>>()?,
                    "remove": p.remove.iter().map(snap).collect::<Result<Vec<_>>>()?,
                    "reasons": p.keep.iter().map(|k| Ok(serde_json::json!({
                        "snapshot": snap(&k.id)?,
                        "matches": k.reasons,
                    }))).collect::<Result<Vec<_>>>()?,
                }))
            })
            .collect::<Result<_>>()?;
        if a.dry_run || !a.prune {
            print_json(&groups)?;
        }
    } else {
        for p in &plans {
            if p.keep.is_empty() && p.remove.is_empty() {
                continue;
            }
            if p.keep.is_empty() && p.key == GroupKey::default() && !a.snapshots.is_empty() {
                println!("snapshots named on the command line:");
            } else {
                println!("snapshots for {}:", group_title(&p.key, a.group_by));
            }
            if !p.keep.is_empty() {
                println!("keep {} snapshots:", p.keep.len());
                println!(
                    "{:<8}  {:<19}  {:<16}  {:<16}  Reasons",
                    "ID", "Time", "Host", "Tags"
                );
                for k in &p.keep {
                    let s = by_id.get(&k.id);
                    println!(
                        "{:<8}  {:<19}  {:<16}  {:<16}  {}",
                        k.id.short(),
                        k.time
                            .with_timezone(&chrono::Local)
                            .format("%Y-%m-%d %H:%M:%S"),
                        s.map(|s| s.hostname.as_str()).unwrap_or(""),
                        s.map(|s| s.tags.join(",")).unwrap_or_default(),
                        k.reasons.join(", ")
                    );
                }
            }
            if !p.remove.is_empty() {
                println!("remove {} snapshots:", p.remove.len());
                for id in &p.remove {
                    let s = by_id.get(id);
                    println!(
                        "{:<8}  {:<19}  {:<16}  {}",
                        id.short(),
                        s.map(|s| s
                            .time
                            .with_timezone(&chrono::Local)
                            .format("%Y-%m-%d %H:%M:%S")
                            .to_string())
                            .unwrap_or_default(),
                        s.map(|s| s.hostname.as_str()).unwrap_or(""),
                        s.map(|s| s.paths.join(",")).unwrap_or_default(),
                    );
                }
            }
            println!();
        }
    }
    let to_remove: usize = plans.iter().map(|p| p.remove.len()).sum();
    if a.dry_run {
        if !cli.json {
            println!("would remove {to_remove} snapshots (dry run: nothing was changed)");
        }
        if a.prune {
            return run_prune(cli, repo, true, &a.prune_flags);
        }
        return Ok(EXIT_OK);
    }
    let st = engine::forget::forget(repo, &plans)
        .context("forget needs the repository to itself (no prune or other forget may run)")?;
    if !cli.json {
        println!("removed {} snapshots", st.removed);
    }
    if a.prune {
        return run_prune(cli, repo, false, &a.prune_flags);
    }
    Ok(EXIT_OK)
}

fn cmd_prune(cli: &Cli, repo: &Repository, a: &PruneArgs) -> Result<i32> {
    run_prune(cli, repo, a.dry_run, &a.flags)
}

/// Progress lines on stderr (not a bar: each phase is one line, so logs of
/// a CronJob read well).
fn prune_progress(cli: &Cli) -> Option<engine::prune::PruneProgress> {
    if cli.quiet {
        return None;
    }
    Some(Arc::new(|e: PruneEvent| {
        let line = match e {
            PruneEvent::Planned => return,
            PruneEvent::RemovingUnindexed { packs } => {
                format!("removing {packs} packs no index references")
            }
            PruneEvent::Repacking { done, total } => format!("repacking packs: {done}/{total}"),
            PruneEvent::WritingIndex { files } => format!("writing {files} new index files"),
            PruneEvent::RemovingOldIndex { files } => {
                format!("removing {files} old index files")
            }
            PruneEvent::RemovingPacks { done, total } => {
                if done != 0 && done != total && done % 100 != 0 {
                    return;
                }
                format!("removing obsolete packs: {done}/{total}")
            }
        };
        eprintln!("prune: {line}");
    }))
}

fn run_prune(cli: &Cli, repo: &Repository, dry_run: bool, f: &PruneFlags) -> Result<i32> {
    let opts = PruneOptions {
        dry_run,
        max_unused_percent: f.max_unused,
        repack_small: f.repack_small,
        progress: prune_progress(cli),
    };
    let st = engine::prune::prune(repo, &opts).context(
        "prune needs the repository to itself (no backup, restore, check or forget may run)",
    )?;
    if cli.json {
        let mut v = serde_json::to_value(&st)?;
        v["message_type"] = "summary".into();
        print_json(&v)?;
        return Ok(EXIT_OK);
    }
    print!("{}", prune_report(&st));
    Ok(EXIT_OK)
}

/// The human summary of a prune (restic's layout, hoard's numbers).
pub fn prune_report(st: &PruneStats) -> String {
    let b = |n: u64| indicatif::HumanBytes(n).to_string();
    let would = if st.dry_run { "would " } else { "" };
    let mut o = String::new();
    let pct = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            part as f64 * 100.0 / whole as f64
        }
    };
    o += &format!("{} snapshots\n", st.snapshots);
    o += &format!(
        "used:     {:>8} blobs / {}\n",
        st.blobs_used,
        b(st.bytes_used)
    );
    o += &format!(
        "unused:   {:>8} blobs / {} (duplicates: {} blobs / {})\n",
        st.blobs_unused,
        b(st.bytes_unused),
        st.blobs_duplicate,
        b(st.bytes_duplicate)
    );
    o += &format!(
        "packs:    {:>8} / {} ({} no index references, {} unused, {} partly used to repack, {} kept)\n",
        st.packs_total,
        b(st.bytes_total),
        st.packs_unindexed,
        st.packs_unused,
        st.packs_repacked,
        st.packs_kept
    );
    o += &format!(
        "{would}repack {} blobs / {} into {} new packs\n",
        st.blobs_repacked,
        b(st.bytes_repacked),
        st.packs_written
    );
    o += &format!(
        "{would}delete {} packs and {} unused blobs, freeing {} ({:.1}% of the packs' size)\n",
        st.packs_deleted,
        st.blobs_removed,
        b(st.bytes_freed),
        pct(st.bytes_freed, st.bytes_total)
    );
    o += &format!(
        "unused after prune: {} ({:.2}% of the used data)\n",
        b(st.bytes_unused_after),
        pct(st.bytes_unused_after, st.bytes_used)
    );
    if st.dry_run {
        o += "dry run: nothing was changed\n";
    } else {
        o += &format!(
            "index: wrote {} files, removed {}\n",
            st.index_files_written, st.index_files_removed
        );
    }
    o
}
