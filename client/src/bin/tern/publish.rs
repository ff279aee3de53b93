//! `tern pub SUBJECT [PAYLOAD] [-H key=value]... [--count N]`

use anyhow::{bail, Context};
use bytes::Bytes;
use tern_client::Client;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Subject to publish on
    subject: String,
    /// Message payload; `-` or nothing reads standard input, one message per line
    payload: Option<String>,
    /// Header to add, as key=value (repeatable)
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE", value_parser = super::parse_header)]
    headers: Vec<(String, String)>,
    /// Subject replies should go to
    #[arg(long, value_name = "SUBJECT")]
    reply_to: Option<String>,
    /// Publish the payload this many times
    #[arg(long, default_value_t = 1, value_name = "N")]
    count: u64,
}

pub async fn run(client: Client, args: Args) -> anyhow::Result<()> {
    let headers = super::headers(&args.headers);
    let send = |payload: Bytes| {
        let mut p = client
            .publish(&args.subject, payload)
            .headers(headers.clone());
        if let Some(r) = &args.reply_to {
            p = p.reply_to(r);
        }
        p
    };
    match args.payload.as_deref() {
        Some(payload) if payload != "-" => {
            let payload = Bytes::copy_from_slice(payload.as_bytes());
            for _ in 0..args.count {
                send(payload.clone()).await?;
            }
        }
        _ => {
            if args.count != 1 {
                bail!("--count repeats a payload given as an argument; standard input already sends one message per line");
            }
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Some(line) = lines.next_line().await.context("reading standard input")? {
                send(Bytes::from(line)).await?;
            }
        }
    }
    client
        .close()
        .await
        .context("the server did not confirm the messages")?;
    Ok(())
}
