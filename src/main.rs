//! The `zkbridge` command line (design §3).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use zkbridge::{config, ops};

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
    /// More log lines on stderr: -v for info, -vv for debug. `run` logs at
    /// info already; the one-shot commands only warnings and errors, so
    /// their output is what you asked for. `RUST_LOG` overrides both.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
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
        /// Machine-readable output (the same JSON as `GET /status`; one document per line with --watch).
        #[arg(long)]
        json: bool,
        /// Refresh until Ctrl-C: redrawn in place on a terminal, one block after another when piped.
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes, e.g. 2s, 500ms.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, requires = "watch")]
        interval: Duration,
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
    /// Move a route's primary to another member: freeze, drain, verify, flip, translate, unfreeze (exit 0 done, 1 aborted and restored, 2 error).
    Switchover {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        route: String,
        /// The member ensemble that becomes primary.
        #[arg(long)]
        to: String,
        /// How long the new primary may take to apply everything (drain).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Confirm (required when run from a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Promote a member without the (unreachable) primary; prints the possible-loss window (exit 0 done, 2 error).
    Failover {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        route: String,
        #[arg(long)]
        to: String,
        /// Confirm: required, a fail-over may lose what the primary accepted last.
        #[arg(long)]
        yes: bool,
    },
    /// Why one path is or is not in sync in each target: in sync, pending, parked, held, kept, excluded, stopped or conflict, and the reason (exit 0).
    Explain {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        route: String,
        /// Absolute in the source, or relative to the route.
        path: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), e.g. to /usr/share/bash-completion/completions/zkbridge.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), or with --dir write one page per command there (zkbridge.1, zkbridge-explain.1, …).
    Man {
        /// Write every page into this directory, e.g. /usr/share/man/man1.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List the changes that lost under last-writer-wins on an active-active route, from every member's conflict log.
    Conflicts {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        route: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the divergent tails archived when old primaries were demoted.
    Divergent {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long)]
        route: String,
        /// Only this epoch.
        #[arg(long)]
        epoch: Option<u64>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Generated from the definitions above: nothing to connect to.
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "zkbridge", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man { dir } => {
            let written = match &dir {
                Some(dir) => clap_mangen::generate_to(Cli::command(), dir),
                None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()),
            };
            return match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("zkbridge man: {e}");
                    ExitCode::from(1)
                }
            };
        }
        _ => {}
    }
    let service = matches!(cli.command, Command::Run { .. });
    init_logging(cli.log_format, log_level(service, cli.verbose));
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
            Command::Status {
                config,
                json,
                watch,
                interval,
            } => {
                let show = ops::status::Show {
                    json,
                    watch: watch.then_some(interval),
                };
                ops::status::status(&config, show).await
            }
            Command::Wait {
                config,
                route,
                zxid,
                timeout,
            } => ops::wait::wait(&config, &route, zxid, timeout).await,
            Command::Reset(a) => ops::admin::reset(&a.config, &a.route, &a.target, a.yes).await,
            Command::Resume(a) => ops::admin::resume(&a.config, &a.route, &a.target, a.yes).await,
            Command::Diff { config, route, json } => ops::diff::diff(&config, route.as_deref(), json).await,
            Command::Sync { config, route, dry_run } => ops::sync::sync(&config, route.as_deref(), dry_run).await,
            Command::Switchover {
                config,
                route,
                to,
                timeout,
                yes,
            } => {
                use std::io::IsTerminal;
                if !yes && std::io::stdin().is_terminal() {
                    eprintln!("zkbridge switchover: makes {route}'s primary read-only while it moves to {to}. Add --yes to confirm.");
                    return ExitCode::from(2);
                }
                let request = ops::switchover::Request {
                    route: &route,
                    to: &to,
                    timeout,
                };
                ops::switchover::switchover(&config, request).await
            }
            Command::Failover { config, route, to, yes } => ops::failover::failover(&config, &route, &to, yes).await,
            Command::Conflicts { config, route, json } => ops::conflicts::conflicts(&config, &route, json).await,
            Command::Divergent {
                config,
                route,
                epoch,
                json,
            } => ops::divergent::divergent(&config, &route, epoch, json).await,
            Command::Explain {
                config,
                route,
                path,
                json,
            } => ops::explain::explain(&config, &route, &path, json).await,
            Command::Completions { .. } | Command::Man { .. } => unreachable!("answered before the runtime starts"),
        }
    })
}

/// The default log level: `run` is a service and logs what it does; a
/// one-shot command keeps stderr for what went wrong.
fn log_level(service: bool, verbose: u8) -> &'static str {
    match (service, verbose) {
        (_, 2..) => "debug",
        (true, _) | (false, 1) => "info",
        (false, 0) => "warn",
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match ops::load(path) {
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

fn shutdown_on_signal() -> zkbridge::shutdown::Shutdown {
    let (trigger, shutdown) = zkbridge::shutdown::channel();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("signal received");
        trigger.fire();
    });
    shutdown
}

async fn run(path: &std::path::Path) -> ExitCode {
    let resolved = match ops::load(path) {
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
