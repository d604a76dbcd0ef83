//! The `zkbridge` command line (design §3).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use zkbridge::config;

#[derive(Parser)]
#[command(
    name = "zkbridge",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("GIT_COMMIT_OF_BUILD"), ")"),
    about = "Mirrors ZooKeeper subtrees across ensembles in different regions"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// One route/target of the configuration, for commands that change its state.
#[derive(clap::Args)]
struct RouteTargetArgs {
    #[arg(short, long)]
    config: PathBuf,
    #[arg(long)]
    route: String,
    /// Target ensemble name.
    #[arg(long)]
    target: String,
    /// Confirm (required when run from a terminal).
    #[arg(long)]
    yes: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Mirror every route until SIGINT or SIGTERM.
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate the configuration and print it resolved, secrets redacted (exit 2 when invalid).
    CheckConfig {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Per route/target: leader, standbys, checkpoint zxid, lag, last error (read from the znodes).
    Status {
        #[arg(short, long)]
        config: PathBuf,
        /// Machine-readable output (the same JSON as `GET /status`).
        #[arg(long)]
        json: bool,
    },
    /// Compare each source subtree with its targets (exit 0 in sync, 1 drift, 2 error).
    Diff {
        #[arg(short, long)]
        config: PathBuf,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Block until every target of a route applied source zxid Z (exit 0 reached, 1 timeout, 2 error).
    Wait {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        route: String,
        /// Source zxid, decimal or 0x hex (from the stat of your write).
        #[arg(long, value_parser = zkbridge::wait::parse_zxid)]
        zxid: i64,
        /// How long to wait, e.g. 30s, 500ms, 2m.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Delete a route/target's checkpoint so its next leader does a full resync.
    Reset(RouteTargetArgs),
    /// Clear a route/target stopped by `conflict = "fail"` or the delete breaker.
    Resume(RouteTargetArgs),
    /// Copy the routes once and exit.
    Sync {
        #[arg(short, long)]
        config: PathBuf,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// Print what would change and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // A panic in a route's task restarts that task; anywhere else it ends
    // the process (exit 70) for the service manager to restart.
    zkbridge::supervise::install_panic_hook();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        match cli.command {
            Command::CheckConfig { config } => check_config(&config),
            Command::Run { config } => run(&config).await,
            Command::Status { config, json } => status(&config, json).await,
            Command::Wait {
                config,
                route,
                zxid,
                timeout,
            } => wait(&config, &route, zxid, timeout).await,
            Command::Reset(a) => reset(&a.config, &a.route, &a.target, a.yes).await,
            Command::Resume(a) => resume(&a.config, &a.route, &a.target, a.yes).await,
            Command::Diff { config, route, json } => diff(&config, route.as_deref(), json).await,
            Command::Sync { config, route, dry_run } => sync(&config, route.as_deref(), dry_run).await,
        }
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(path: &std::path::Path) -> Result<config::Resolved, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("zkbridge: invalid configuration {}: {e}", path.display());
        ExitCode::from(2)
    })
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok(resolved) => {
            match toml_string(&resolved.config) {
                Ok(text) => print!("{text}"),
                Err(e) => {
                    eprintln!("zkbridge: cannot print configuration: {e}");
                    return ExitCode::from(2);
                }
            }
            eprintln!(
                "configuration is valid: {} route(s), {} ensemble(s)",
                resolved.routes.len(),
                resolved.config.ensembles.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn toml_string(config: &config::Config) -> Result<String, String> {
    toml::to_string(config).map_err(|e| e.to_string())
}

fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("signal received");
        let _ = tx.send(true);
    });
    rx
}

async fn run(path: &std::path::Path) -> ExitCode {
    let resolved = match load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match zkbridge::bridge::run(resolved, shutdown_on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zkbridge: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn status(path: &std::path::Path, json: bool) -> ExitCode {
    let resolved = match load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut sessions = zkbridge::status::Sessions::new();
    for (name, ensemble) in &resolved.config.ensembles {
        let timeout = Duration::from_millis(ensemble.session_timeout_ms).max(zkbridge::status::READ_TIMEOUT);
        let session = match tokio::time::timeout(timeout, zkbridge::zk::connect(ensemble)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!("no session within {}s", timeout.as_secs())),
        };
        sessions.insert(name.clone(), session);
    }
    let status = zkbridge::status::collect(&resolved, &sessions).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&status).expect("JSON"));
    } else {
        print!("{}", zkbridge::status::render_text(&status));
    }
    ExitCode::SUCCESS
}

/// A session on one ensemble of the configuration, or exit 2 naming it.
async fn session(
    resolved: &config::Resolved,
    ensemble: &str,
    command: &str,
) -> Result<zookeeper_client::Client, ExitCode> {
    let Some(settings) = resolved.config.ensembles.get(ensemble) else {
        eprintln!("zkbridge {command}: ensemble {ensemble}: not in the configuration");
        return Err(ExitCode::from(2));
    };
    let timeout = Duration::from_millis(settings.session_timeout_ms).max(zkbridge::status::READ_TIMEOUT);
    match tokio::time::timeout(timeout, zkbridge::zk::connect(settings)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => {
            eprintln!("zkbridge {command}: ensemble {ensemble}: {e:#}");
            Err(ExitCode::from(2))
        }
        Err(_) => {
            eprintln!(
                "zkbridge {command}: ensemble {ensemble}: no session within {}s",
                timeout.as_secs()
            );
            Err(ExitCode::from(2))
        }
    }
}

async fn wait(path: &std::path::Path, route: &str, zxid: i64, timeout: Duration) -> ExitCode {
    let resolved = match load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let Some(r) = resolved.routes.iter().find(|r| r.name() == route) else {
        eprintln!("zkbridge wait: --route {route}: no such route in the configuration");
        return ExitCode::from(2);
    };
    let source = match session(&resolved, &r.source.ensemble, "wait").await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match zkbridge::wait::until_applied(&resolved, &source, route, zxid, timeout).await {
        Ok(true) => {
            println!("every target of {route} applied {zxid:#x}");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            let behind = zkbridge::wait::pending_targets(&resolved, &source, route, zxid)
                .await
                .unwrap_or_default();
            eprintln!(
                "zkbridge wait: timed out after {}: {zxid:#x} not yet applied in {}",
                humantime::format_duration(timeout),
                behind.join(", ")
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("zkbridge wait: {e}");
            ExitCode::from(2)
        }
    }
}

/// Loads the config, checks that `route` has a target on `target`, asks
/// for `--yes` on a terminal, and opens a session on the target ensemble.
async fn target_session(
    path: &std::path::Path,
    command: &str,
    (route, target, yes): (&str, &str, bool),
    what: &str,
) -> Result<(config::Resolved, zookeeper_client::Client), ExitCode> {
    use std::io::IsTerminal;
    let resolved = load(path)?;
    if !resolved
        .routes
        .iter()
        .any(|r| r.name() == route && r.targets.iter().any(|t| t.ensemble == target))
    {
        eprintln!("zkbridge {command}: route {route} has no target on ensemble {target}");
        return Err(ExitCode::from(2));
    }
    if !yes && std::io::stdin().is_terminal() {
        eprintln!("zkbridge {command}: {what}. Add --yes to confirm.");
        return Err(ExitCode::from(2));
    }
    let client = session(&resolved, target, command).await?;
    Ok((resolved, client))
}

async fn resume(path: &std::path::Path, route: &str, target: &str, yes: bool) -> ExitCode {
    let what = format!("this lets {route}/{target} apply again after a stop; resolve the conflicting path first");
    let (resolved, client) = match target_session(path, "resume", (route, target, yes), &what).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    let stop = zkbridge::conflict::stopped_path(&resolved.config.bridge.meta_path, route, target);
    match zkbridge::conflict::read_stopped(&client, &stop).await {
        Ok(None) => {
            println!("{route}/{target} is not stopped");
            return ExitCode::SUCCESS;
        }
        Ok(Some(record)) => println!(
            "clearing the stop of {route}/{target} ({} at {})",
            record.reason, record.path
        ),
        Err(e) => {
            eprintln!("zkbridge resume: {target}:{stop}: {e}");
            return ExitCode::from(2);
        }
    }
    match client.delete(&stop, None).await {
        Ok(()) | Err(zookeeper_client::Error::NoNode) => {
            println!("{route}/{target} resumes: its leader rescans and applies again");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zkbridge resume: {target}:{stop}: {e}");
            ExitCode::from(2)
        }
    }
}

async fn reset(path: &std::path::Path, route: &str, target: &str, yes: bool) -> ExitCode {
    let what = format!("this deletes the checkpoint of {route}/{target}: its next leader copies the whole route again");
    let (resolved, client) = match target_session(path, "reset", (route, target, yes), &what).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    let checkpoint = zkbridge::checkpoint::checkpoint_path(&resolved.config.bridge.meta_path, route, target);
    match client.delete(&checkpoint, None).await {
        Ok(()) | Err(zookeeper_client::Error::NoNode) => {
            println!("deleted {checkpoint} in {target}: the next leader of {route}/{target} does a full resync");
            println!("(a running leader re-creates it: stop the instances first, or restart them after this)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zkbridge reset: {target}:{checkpoint}: {e}");
            ExitCode::from(2)
        }
    }
}

async fn diff(path: &std::path::Path, route: Option<&str>, json: bool) -> ExitCode {
    let resolved = match load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match zkbridge::diff::diff(&resolved, route).await {
        Ok(differences) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&differences).expect("JSON"));
            } else if differences.is_empty() {
                println!("in sync");
            } else {
                for d in &differences {
                    let side = match d.kind {
                        "missing" => "only in source",
                        "extra" => "only in target",
                        "kept" => "diverged (kept by policy)",
                        _ => "data differs",
                    };
                    println!(
                        "{}/{} {:<9} {} -> {} ({side})",
                        d.route, d.target, d.kind, d.source_path, d.target_path
                    );
                }
                let drift = differences.iter().filter(|d| d.is_drift()).count();
                println!("{drift} difference(s), {} kept by policy", differences.len() - drift);
            }
            if !differences.iter().any(|d| d.is_drift()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("zkbridge diff: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn sync(path: &std::path::Path, route: Option<&str>, dry_run: bool) -> ExitCode {
    let mut resolved = match load(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if let Some(name) = route {
        resolved.routes.retain(|r| r.name() == name);
        if resolved.routes.is_empty() {
            eprintln!("zkbridge sync: --route {name}: no such route in the configuration");
            return ExitCode::from(2);
        }
    }
    if dry_run {
        return sync_dry_run(&resolved, route).await;
    }
    let started = std::time::Instant::now();
    let started_ms = zkbridge::checkpoint::now_ms();
    let (tx, rx) = watch::channel(false);
    let metrics = std::sync::Arc::new(zkbridge::metrics::Metrics::new());
    let (bridge, tasks) = zkbridge::bridge::start(&resolved, metrics, &rx);
    let mut progress = zkbridge::progress::SyncProgress::new(&bridge);
    let outcome = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        progress.tick(&bridge, started);
        let all_synced = bridge.all_synced();
        // Done once every target is copied, nothing is pending, and a
        // checkpoint taken after the start covers it (so `run` resumes
        // from here instead of copying again).
        let checkpointed = bridge.workers.iter().all(|w| {
            w.status
                .checkpoint
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|c| c.heartbeat_ts_ms >= started_ms)
        });
        if all_synced && checkpointed && bridge.workers.iter().all(|w| w.queue.is_idle()) {
            break ExitCode::SUCCESS;
        }
        let parked: Vec<_> = bridge.workers.iter().filter(|w| w.queue.parked_count() > 0).collect();
        if all_synced
            && !parked.is_empty()
            && bridge
                .workers
                .iter()
                .all(|w| w.queue.is_idle() || w.queue.only_parked())
        {
            progress.finish();
            for w in parked {
                eprintln!(
                    "zkbridge sync: {}/{}: {} node(s) refused by the target: {}",
                    w.route,
                    w.target,
                    w.queue.parked_count(),
                    w.status.last_error.lock().unwrap().clone().unwrap_or_default()
                );
            }
            break ExitCode::from(1);
        }
    };
    progress.finish();
    let _ = tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(tasks)).await;
    bridge.close().await;
    print!("{}", progress.summary(&bridge, started));
    outcome
}

/// `sync --dry-run`: what a copy would change, from the same plan; writes
/// nothing.
async fn sync_dry_run(resolved: &config::Resolved, route: Option<&str>) -> ExitCode {
    match zkbridge::diff::diff(resolved, route).await {
        Ok(differences) => {
            let mut counts = std::collections::BTreeMap::<&str, usize>::new();
            for d in &differences {
                let action = match d.kind {
                    "missing" => "create",
                    "different" => "update",
                    "extra" => "delete",
                    _ => "keep (kept by policy)",
                };
                *counts.entry(action).or_default() += 1;
                println!("would {action:<6} {} ({}/{})", d.target_path, d.route, d.target);
            }
            let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} to {k}")).collect();
            println!(
                "dry run: {}; nothing written",
                if summary.is_empty() {
                    "nothing to change".to_string()
                } else {
                    summary.join(", ")
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zkbridge sync --dry-run: {e:#}");
            ExitCode::from(2)
        }
    }
}
