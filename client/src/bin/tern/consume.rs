//! `tern consume QUEUE [--count N] [--prefetch N] [--json] [--no-ack]`

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::Value;
use tern_client::Client;

use crate::output::Printer;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Queue to consume from
    queue: String,
    /// Exit after this many deliveries
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Most deliveries held unacknowledged at once
    #[arg(long, default_value_t = 64, value_name = "N")]
    prefetch: u32,
    /// Print one JSON object per delivery, one per line
    #[arg(long)]
    json: bool,
    /// Do not acknowledge: deliveries are settled as they are sent (one sent just before
    /// a crash or leader change may come again)
    #[arg(long, conflicts_with = "exactly_once")]
    no_ack: bool,
    /// Consume exactly once under this durable consumer name
    #[arg(long, value_name = "NAME")]
    exactly_once: Option<String>,
    /// With --exactly-once: remember handed-out messages in this file across restarts
    #[arg(long, value_name = "FILE", requires = "exactly_once")]
    state: Option<PathBuf>,
}

pub async fn run(client: Client, args: Args) -> anyhow::Result<()> {
    let mut builder = client.consume(&args.queue).prefetch(args.prefetch);
    if args.no_ack {
        builder = builder.auto_ack();
    }
    if let Some(name) = &args.exactly_once {
        builder = builder.exactly_once(name);
    }
    if let Some(path) = &args.state {
        builder = builder.state_file(path);
    }
    let mut consumer = builder.await?;
    let mut printer = Printer::new(args.json);
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while args.count.is_none_or(|n| seen < n) {
        let Some(delivery) = consumer.next().await else {
            bail!("the consumer ended: the connection to the server is closed, or the queue was deleted");
        };
        seen += 1;
        printer
            .print_with(
                &mut out,
                seen,
                &delivery.message,
                &[("delivery_count", Value::from(delivery.delivery_count))],
            )
            .context("writing to standard output")?;
        // Flushed before the ack: a message is acknowledged only once it was printed.
        out.flush().context("writing to standard output")?;
        delivery
            .ack()
            .await
            .with_context(|| format!("acknowledging delivery {}", delivery.delivery_id))?;
    }
    drop(out);
    consumer.cancel().await?;
    client.close().await?;
    Ok(())
}
