//! `tern`: the tern command-line tool.
//!
//! Sub-commands mirror the client API. Scripts rely on this contract: errors are one
//! line on standard error and a non-zero exit; `--json` prints exactly one JSON object
//! per line on standard output.

mod cluster;
mod consume;
mod output;
mod publish;
mod queue;
mod request;
mod server;
mod subscribe;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tern_client::{Client, Headers, TlsOptions};

#[derive(Debug, Parser)]
#[command(
    name = "tern",
    version,
    about = "Command-line client for the tern message broker"
)]
struct Cli {
    /// Server address (host:port); for a cluster, a seed list: host:port,host:port,...
    #[arg(
        long,
        short = 's',
        global = true,
        env = "TERN_SERVER",
        default_value = "127.0.0.1:7400",
        value_name = "ADDR[,ADDR...]"
    )]
    server: String,

    /// Connect with TLS (also implied by a tls://host:port server address)
    #[arg(long, global = true)]
    tls: bool,

    /// CA certificate (PEM) to trust instead of the system's roots; implies --tls
    #[arg(long, global = true, value_name = "FILE", env = "TERN_CA")]
    ca: Option<PathBuf>,

    /// Client certificate (PEM), for servers that require one; implies --tls
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        requires = "key",
        env = "TERN_CERT"
    )]
    cert: Option<PathBuf>,

    /// Client private key (PEM)
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        requires = "cert",
        env = "TERN_KEY"
    )]
    key: Option<PathBuf>,

    /// User to log in as
    #[arg(long, global = true, value_name = "NAME", env = "TERN_USER")]
    user: Option<String>,

    /// The user's password
    #[arg(
        long,
        global = true,
        value_name = "PASSWORD",
        env = "TERN_PASSWORD",
        conflicts_with = "password_file",
        hide_env_values = true
    )]
    password: Option<String>,

    /// Read the user's password from this file (its first line)
    #[arg(long, global = true, value_name = "FILE")]
    password_file: Option<PathBuf>,

    /// Log in with a bearer token instead
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = "TERN_TOKEN",
        conflicts_with = "user",
        hide_env_values = true
    )]
    token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish messages on a subject
    Pub(publish::Args),
    /// Subscribe to a subject pattern and print what arrives
    Sub(subscribe::Args),
    /// Manage durable queues
    #[command(subcommand)]
    Queue(queue::Command),
    /// Consume from a durable queue, printing and acknowledging each delivery
    Consume(consume::Args),
    /// Send a request and print its reply
    Req(request::ReqArgs),
    /// Answer requests (echo them, or run a command for each)
    Reply(request::ReplyArgs),
    /// Ask the server about itself
    #[command(subcommand)]
    Server(server::Command),
    /// See and change the cluster's membership
    #[command(subcommand)]
    Cluster(cluster::Command),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Command::Queue(queue::Command::Create(args)) = &mut cli.command {
        let create = matches
            .subcommand_matches("queue")
            .and_then(|m| m.subcommand_matches("create"));
        if let Some(Err(e)) = create.map(|m| args.pair_filters(m)) {
            eprintln!("tern: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut builder = Client::builder().name("tern-cli");
    if cli.tls || cli.ca.is_some() || cli.cert.is_some() {
        builder = builder.tls(TlsOptions {
            ca: cli.ca.clone(),
            cert: cli.cert.clone(),
            key: cli.key.clone(),
        });
    }
    if let Some(token) = &cli.token {
        builder = builder.token(token);
    }
    if let Some(user) = &cli.user {
        let password = match (&cli.password, &cli.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("reading the password file {}", file.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            (None, None) => bail!("--user needs --password or --password-file (or TERN_PASSWORD)"),
        };
        builder = builder.credentials(user, password);
    }
    // A seed list is the client library's: it connects to the first node that
    // answers and, in a cluster, takes consumers and queue requests to the node that
    // runs the queues (waiting up to the request timeout while one is elected).
    let client = builder.connect(cli.server.as_str()).await?;
    match cli.command {
        Command::Pub(args) => publish::run(client, args).await,
        Command::Sub(args) => subscribe::run(client, args).await,
        Command::Queue(command) => queue::run(client, command).await,
        Command::Consume(args) => consume::run(client, args).await,
        Command::Req(args) => request::req(client, args).await,
        Command::Reply(args) => request::reply(client, args).await,
        Command::Server(command) => server::run(client, command).await,
        Command::Cluster(command) => cluster::run(client, command).await,
    }
}

/// Parses a `key=value` header argument.
fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not a header of the form key=value")),
    }
}

fn headers(pairs: &[(String, String)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
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
