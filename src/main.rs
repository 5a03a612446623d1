//! The `strata` command: run the server, check a configuration. Nothing else lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc rather than glibc's malloc: a cache keeps millions of small long-lived allocations
/// (index keys, metas, header fields) while fills churn larger buffers around them; with
/// glibc the freed space between them stays resident (bench figure 4: ~100 bytes more per
/// cached object, ~70 more per index entry).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Strata: a caching edge server that reads STON-style configuration.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default, on ./conf).
    Run {
        /// Directory holding server.xml and vhosts.xml.
        #[arg(long, default_value = "conf")]
        conf: PathBuf,
    },
    /// Validate a configuration: every problem with file:line and what to write instead.
    Check {
        /// Directory holding server.xml and vhosts.xml.
        #[arg(long, default_value = "conf")]
        conf: PathBuf,
        /// The same directory, given without `--conf`.
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { conf, dir }) => check(&default_conf(dir.unwrap_or(conf))),
        Some(Command::Run { conf }) => run(default_conf(conf)),
        None => run(default_conf(PathBuf::from("conf"))),
    }
}

/// `conf` as given; the built-in default when the relative `conf` is not in the current directory.
fn default_conf(conf: PathBuf) -> PathBuf {
    if conf == Path::new("conf") && !conf.exists() {
        return Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    }
    conf
}

fn check(conf: &Path) -> ExitCode {
    let (cfg, mut diags) = strata::config::load_for_check(conf);
    if let Some(cfg) = &cfg {
        diags.extend(strata::config::check_resolvable(cfg));
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    for d in &diags {
        println!("{d}");
    }
    let warnings = diags.len() - errors;
    println!(
        "{}: {errors} error(s), {warnings} warning(s)",
        conf.display()
    );
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run(conf: PathBuf) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A worker that slept held no core: `<WorkerYield>`'s budget starts again.
        .on_thread_unpark(strata::yielding::worker_woke)
        // `<WorkerAffinity>`: a thread started by a pinned worker gets every core back.
        .on_thread_start(strata::affinity::thread_started)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(conf)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(conf: PathBuf) -> anyhow::Result<()> {
    let running = strata::server::start(&conf)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for a in &running.http {
        tracing::info!("serving HTTP on {a}");
    }
    for a in &running.https {
        tracing::info!("serving HTTPS on {a}");
    }
    if let Some(m) = running.manager {
        tracing::info!("management on {m}");
    }
    let stop = running.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    running.done.await?;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
