//! `tern queue create|ls|info|rm|purge|move`

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ArgMatches;
use serde_json::{json, Value};
use tern_client::{Client, Overflow, QueueConfig, QueueInfo};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Create a durable queue (or check that it exists with these options)
    Create(CreateArgs),
    /// List queues
    Ls {
        /// One JSON object per queue, one per line
        #[arg(long)]
        json: bool,
    },
    /// Show a queue's options and counters
    Info {
        name: String,
        /// One JSON object
        #[arg(long)]
        json: bool,
    },
    /// Delete a queue and every message in it
    Rm { name: String },
    /// Remove every waiting message from a queue
    Purge { name: String },
    /// Move waiting messages, oldest first, from one queue to another
    Move {
        from: String,
        to: String,
        /// Move at most this many
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    name: String,
    /// Subject pattern to route into the queue (repeatable)
    #[arg(long = "bind", value_name = "PATTERN")]
    bind: Vec<String>,
    /// Content filter for the --bind before it: only messages it accepts are stored
    #[arg(long = "filter", value_name = "EXPR")]
    filter: Vec<String>,
    /// Each binding with its filter, paired by position on the command line.
    #[arg(skip)]
    bindings: Vec<(String, Option<String>)>,
    /// Delivery attempts before a message is dead-lettered [server default: 5]
    #[arg(long, value_name = "N")]
    max_deliver: Option<u32>,
    /// Time to settle a delivery before it is redelivered, e.g. 30s [server default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    ack_timeout: Option<Duration>,
    /// Queue for rejected, expired, overflowing and undeliverable messages
    #[arg(long, value_name = "QUEUE")]
    dead_letter: Option<String>,
    /// Age after which a waiting message expires, e.g. 10m
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Most messages in the queue
    #[arg(long, value_name = "N")]
    max_length: Option<u64>,
    /// What happens at max-length: drop the oldest waiting message, or refuse the new one
    #[arg(long, value_enum, default_value = "drop-head")]
    overflow: OverflowArg,
    /// In a cluster: nodes that hold a replica of the queue [default: 3, or every node of
    /// a smaller cluster]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    replicas: Option<u8>,
}

impl CreateArgs {
    /// Pairs each `--filter` with the `--bind` before it. Clap keeps the two options'
    /// values apart; only their positions on the command line tell which filter
    /// belongs to which binding.
    ///
    /// # Errors
    ///
    /// A `--filter` before any `--bind`, or two for the same binding.
    pub fn pair_filters(&mut self, matches: &ArgMatches) -> anyhow::Result<()> {
        let positioned = |id: &str| -> Vec<(usize, String)> {
            matches
                .indices_of(id)
                .into_iter()
                .flatten()
                .zip(
                    matches
                        .get_many::<String>(id)
                        .into_iter()
                        .flatten()
                        .cloned(),
                )
                .collect()
        };
        let binds = positioned("bind");
        let mut bindings: Vec<(String, Option<String>)> =
            binds.iter().map(|(_, p)| (p.clone(), None)).collect();
        for (at, filter) in positioned("filter") {
            let owner = binds
                .iter()
                .rposition(|(b, _)| *b < at)
                .and_then(|i| bindings.get_mut(i));
            match owner {
                None => bail!("--filter '{filter}' must follow the --bind it applies to"),
                Some((pattern, Some(_))) => {
                    bail!("--bind '{pattern}' has two --filter options; join them with AND")
                }
                Some((_, slot)) => *slot = Some(filter),
            }
        }
        self.bindings = bindings;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OverflowArg {
    DropHead,
    Reject,
}

pub async fn run(client: Client, command: Command) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        Command::Create(a) => {
            let mut config = QueueConfig::new(&a.name);
            for (pattern, filter) in &a.bindings {
                config = match filter {
                    Some(f) => config.bind_filtered(pattern, f),
                    None => config.bind(pattern),
                };
            }
            config.max_deliver = a.max_deliver;
            config.ack_timeout = a.ack_timeout;
            config.dead_letter = a.dead_letter;
            config.ttl = a.ttl;
            config.max_length = a.max_length;
            config.replicas = a.replicas;
            config.overflow = match a.overflow {
                OverflowArg::DropHead => Overflow::DropHead,
                OverflowArg::Reject => Overflow::Reject,
            };
            client.declare_queue(&config).await?;
        }
        Command::Ls { json } => {
            let queues = client.queues().await?;
            if json {
                for q in &queues {
                    writeln!(out, "{}", to_json(q))?;
                }
            } else {
                writeln!(
                    out,
                    "{:<24} {:>10} {:>10} {:>9}  bindings",
                    "queue", "ready", "unacked", "consumers"
                )?;
                for q in &queues {
                    writeln!(
                        out,
                        "{:<24} {:>10} {:>10} {:>9}  {}",
                        q.name,
                        q.stats.ready,
                        q.stats.unacked,
                        q.stats.consumers,
                        bindings(q)
                    )?;
                }
            }
        }
        Command::Info { name, json } => {
            let q = client.queue_info(&name).await?;
            if json {
                writeln!(out, "{}", to_json(&q))?;
            } else if let Value::Object(fields) = to_json(&q) {
                for (k, v) in fields {
                    let v = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    writeln!(out, "{k:<14} {v}")?;
                }
            }
        }
        Command::Rm { name } => client.delete_queue(&name).await?,
        Command::Purge { name } => {
            let n = client.purge_queue(&name).await?;
            writeln!(out, "purged {n} message(s) from {name}")?;
        }
        Command::Move { from, to, count } => {
            let n = client.move_messages(&from, &to, count).await?;
            writeln!(out, "moved {n} message(s) from {from} to {to}")?;
        }
    }
    out.flush().context("writing to standard output")?;
    drop(out);
    client.close().await?;
    Ok(())
}

fn bindings(q: &QueueInfo) -> String {
    q.bindings
        .iter()
        .map(|b| match &b.filter {
            Some(f) => format!("{} [{f}]", b.pattern),
            None => b.pattern.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A queue as one JSON object (the `--json` contract of `ls` and `info`).
fn to_json(q: &QueueInfo) -> Value {
    let o = &q.options;
    let s = &q.stats;
    json!({
        "name": &*q.name,
        "bindings": q.bindings.iter().map(|b| match &b.filter {
            Some(f) => json!({"pattern": &*b.pattern, "filter": &**f}),
            None => json!({"pattern": &*b.pattern}),
        }).collect::<Vec<_>>(),
        "max_deliver": o.max_deliver,
        "ack_timeout_ms": o.ack_timeout_ms,
        "dead_letter": o.dead_letter.as_deref(),
        "ttl_ms": (o.ttl_ms != 0).then_some(o.ttl_ms),
        "max_length": (o.max_length != 0).then_some(o.max_length),
        "overflow": match o.overflow { Overflow::DropHead => "drop-head", Overflow::Reject => "reject" },
        "ready": s.ready,
        "unacked": s.unacked,
        "consumers": s.consumers,
        "published": s.published,
        "delivered": s.delivered,
        "acked": s.acked,
        "redelivered": s.redelivered,
        "dead_lettered": s.dead_lettered,
        "expired": s.expired,
        "dropped": s.dropped,
    })
}
