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
use engine::progress::{Progress, ProgressSnapshot};
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
    /// Manage repository keys (passwords).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Verify the repository: index, packs, trees and snapshots (and with
    /// --read-data, every blob); exits 1 if it finds errors.
    Check(CheckArgs),
    /// Remove stale locks (left by killed processes); --remove-all removes every lock.
    Unlock(UnlockArgs),
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
    #[command(flatten)]
    pub priority: PriorityArgs,
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
    #[command(flatten)]
    pub priority: PriorityArgs,
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
        Command::Check(a) => cmd_check(cli, &open(cli, backend()?)?, a),
        Command::Unlock(a) => cmd_unlock(cli, &open(cli, backend()?)?, a),
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
        priority: a.priority.priority(),
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
        priority: a.priority.priority(),
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

// ---- check, unlock, priority flags ----

#[derive(Args, Debug, Default, Clone)]
pub struct CheckArgs {
    /// Also read every pack and verify every blob (its hash and MAC).
    #[arg(long = "read-data")]
    pub read_data: bool,
    /// Read only a subset of the packs: n/t (e.g. 1/5; run 1/5 … 5/5 to cover
    /// all), a percentage (10%), or a size (500M), as restic spells it.
    #[arg(long = "read-data-subset", value_name = "SUBSET")]
    pub read_data_subset: Option<engine::check::Subset>,
}

#[derive(Args, Debug, Default, Clone)]
pub struct UnlockArgs {
    /// Remove all locks, even live ones (only when no other process uses the repository).
    #[arg(long = "remove-all")]
    pub remove_all: bool,
}

/// CPU and I/O priority of the threads that read and write files.
#[derive(Args, Debug, Default, Clone)]
pub struct PriorityArgs {
    /// Nice adjustment for the reader/writer threads: -20 (highest) to 19 (lowest).
    #[arg(long = "nice", allow_negative_numbers = true, value_name = "N")]
    pub nice: Option<i32>,
    /// I/O scheduling class: 1 realtime, 2 best-effort, 3 idle.
    #[arg(long = "ionice-class", value_name = "C")]
    pub ionice_class: Option<u8>,
    /// I/O priority within the class: 0 (highest) to 7 (lowest).
    #[arg(long = "ionice-level", value_name = "L")]
    pub ionice_level: Option<u8>,
}

impl PriorityArgs {
    fn priority(&self) -> engine::priority::Priority {
        engine::priority::Priority {
            nice: self.nice,
            ionice_class: self.ionice_class,
            ionice_class_data: self.ionice_level,
        }
    }
}

fn cmd_check(cli: &Cli, repo: &Repository, a: &CheckArgs) -> Result<i32> {
    let opts = engine::check::CheckOptions {
        read_data: a.read_data,
        read_data_subset: a.read_data_subset,
    };
    if !cli.json && !cli.quiet {
        match (&opts.read_data_subset, opts.read_data) {
            (Some(s), _) => eprintln!("checking structure and the data of subset {s} of the packs"),
            (None, true) => eprintln!("checking structure and all data"),
            (None, false) => eprintln!("checking structure (add --read-data to verify the data)"),
        }
    }
    let progress = Progress::new();
    let bar = Bar::start(cli, &progress, "check");
    let res = engine::check::check(repo, &opts, &progress);
    drop(bar);
    let report = res?;
    let errors = report.errors().count();
    if cli.json {
        print_json(&report)?;
    } else {
        for p in &report.problems {
            println!("{p}");
        }
        let s = &report.stats;
        println!(
            "checked {} snapshots, {} trees, {} index files, {} packs{}",
            s.snapshots,
            s.trees,
            s.index_files,
            s.packs,
            if s.packs_read > 0 {
                format!(
                    "; read {} packs ({}), {} blobs",
                    s.packs_read,
                    indicatif::HumanBytes(s.bytes_read),
                    s.blobs_verified
                )
            } else {
                String::new()
            }
        );
        if errors == 0 {
            println!("no errors were found");
        } else {
            println!("{errors} error(s) found; each line above names the damaged file");
        }
    }
    Ok(if errors == 0 { EXIT_OK } else { EXIT_FAILURE })
}

fn cmd_unlock(cli: &Cli, repo: &Repository, a: &UnlockArgs) -> Result<i32> {
    let backend = repo.backend();
    if a.remove_all {
        let n = engine::lock_stale::remove_all_locks(&**backend)?;
        if cli.json {
            print_json(&serde_json::json!({ "removed": n }))?;
        } else {
            println!("removed {n} lock(s)");
        }
        return Ok(EXIT_OK);
    }
    let removed = engine::lock_stale::remove_stale_locks(&**backend, repo.key())?;
    let live: Vec<_> = engine::lock_stale::scan_locks(&**backend, repo.key())?
        .into_iter()
        .filter(|f| f.stale.is_none())
        .collect();
    if cli.json {
        let ids = |v: &[engine::lock_stale::FoundLock]| -> Vec<String> {
            v.iter().map(|f| f.id.to_hex()).collect()
        };
        print_json(&serde_json::json!({ "removed": ids(&removed), "live": ids(&live) }))?;
        return Ok(EXIT_OK);
    }
    for f in &removed {
        let why = f.stale.map(|s| s.to_string()).unwrap_or_default();
        println!("removed stale lock {} ({why})", f.id.short());
    }
    for f in &live {
        match &f.lock {
            Some(l) => println!(
                "lock {} is live: held by {}@{} (pid {}) since {}; left in place (--remove-all removes it)",
                f.id.short(),
                l.username,
                l.hostname,
                l.pid,
                l.time.to_rfc3339()
            ),
            None => println!(
                "lock {} cannot be read with this password; left in place (--remove-all removes it)",
                f.id.short()
            ),
        }
    }
    println!("removed {} stale lock(s)", removed.len());
    Ok(EXIT_OK)
}
