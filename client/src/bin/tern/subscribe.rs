//! `tern sub PATTERN [--group G] [--filter EXPR] [--count N] [--json]`

use std::io::Write;

use anyhow::{bail, Context};
use tern_client::Client;

use crate::output::Printer;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Subject pattern (`*` matches one token, `>` the rest)
    pattern: String,
    /// Join this queue group (each message goes to one member)
    #[arg(long, short = 'g', value_name = "GROUP")]
    group: Option<String>,
    /// Receive only messages this content filter accepts, e.g. "region = 'eu' AND
    /// payload.temp > 30" (see docs/FILTERS.md)
    #[arg(long, short = 'f', value_name = "EXPR")]
    filter: Option<String>,
    /// Exit after this many messages
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Print one JSON object per message, one per line
    #[arg(long)]
    json: bool,
}

pub async fn run(client: Client, args: Args) -> anyhow::Result<()> {
    let mut builder = client.subscribe(&args.pattern);
    if let Some(g) = &args.group {
        builder = builder.group(g);
    }
    if let Some(f) = &args.filter {
        builder = builder.filter(f);
    }
    let mut sub = builder.await?;
    let mut printer = Printer::new(args.json);
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while args.count.is_none_or(|n| seen < n) {
        // Flush before waiting, so a reader of a pipe sees each message promptly,
        // but not between messages that are already here.
        let msg = match sub.try_next() {
            Some(m) => m,
            None => {
                out.flush().context("writing to standard output")?;
                match sub.next().await {
                    Some(m) => m,
                    None => bail!("the subscription ended: the connection to the server is closed"),
                }
            }
        };
        seen += 1;
        printer
            .print(&mut out, seen, &msg)
            .context("writing to standard output")?;
    }
    out.flush().context("writing to standard output")?;
    drop(out);
    drop(sub);
    client.close().await?;
    Ok(())
}
