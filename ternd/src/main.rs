//! `ternd`: the tern broker daemon.
//!
//! Parses flags, environment and the optional config file, sets up logging, and runs
//! the broker until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tern_broker::{Config, Settings};

/// The tern message broker.
#[derive(Debug, Parser)]
#[command(name = "ternd", version, about)]
struct Cli {
    /// TOML config file; flags and TERN_* environment variables override its values
    #[arg(long, short = 'c', env = "TERN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Check a config file (with the environment and flags over it) and exit: 0 and
    /// "config ok" when it is valid, 1 and the first problem otherwise
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,

    /// Log format on standard error: text, or json (one object per line, for log
    /// shippers)
    #[arg(long, env = "TERN_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,

    #[command(flatten)]
    settings: Settings,

    #[command(subcommand)]
    tool: Option<Tool>,
}

/// Helpers for writing a config file.
#[derive(Debug, clap::Subcommand)]
enum Tool {
    /// Print an argon2 hash of a password, for a user's `password_hash`. The password
    /// is read from the terminal without echo, or from the first line of standard input
    Passwd,
    /// Print a new random bearer token, and its SHA-256 for a user's `token_sha256`
    Token,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft narrates elections at warn level ("a message will be ignored because
        // vote changed"); ternd logs what an operator needs (leading, following, links
        // down) itself.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    if let Some(tool) = &cli.tool {
        return match run_tool(tool) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ternd: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(path) = &cli.check_config {
        return match load(Some(path), cli.settings) {
            Ok(_) => {
                println!("config ok: {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ternd: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match start(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ternd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_tool(tool: &Tool) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal};
    match tool {
        Tool::Passwd => {
            let password = if std::io::stdin().is_terminal() {
                let first = rpassword::prompt_password("password: ")?;
                let again = rpassword::prompt_password("again: ")?;
                anyhow::ensure!(first == again, "the passwords differ");
                first
            } else {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                line.trim_end_matches(['\n', '\r']).to_string()
            };
            anyhow::ensure!(!password.is_empty(), "the password is empty");
            println!(
                "{}",
                tern_broker::auth::hash_password(&password).map_err(anyhow::Error::msg)?
            );
        }
        Tool::Token => {
            use argon2::password_hash::rand_core::{OsRng, RngCore};
            let mut secret = [0u8; 32];
            OsRng.fill_bytes(&mut secret);
            let token: String = std::iter::once("tern_".to_string())
                .chain(secret.iter().map(|b| format!("{b:02x}")))
                .collect();
            println!("token:        {token}");
            println!("token_sha256: {}", tern_broker::auth::token_sha256(&token));
        }
    }
    Ok(())
}

/// The configuration from `file` (if any) with the environment and flags over it.
fn load(file: Option<&PathBuf>, flags: Settings) -> anyhow::Result<Config> {
    let file = match file {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    Ok(Config::from_settings(flags.over(file))?)
}

fn start(cli: Cli) -> anyhow::Result<()> {
    let config = load(cli.config.as_ref(), cli.settings)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // Registered before the broker listens, so that a signal that arrives the
        // moment it is up still shuts it down gracefully.
        let shutdown = shutdown_signal()?;
        tern_broker::run(config, shutdown, ternd::bridge::start).await?;
        anyhow::Ok(())
    })
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag is unique and well formed (clap checks this only at run time).
    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
