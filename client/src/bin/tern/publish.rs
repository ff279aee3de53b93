//! `tern pub SUBJECT [PAYLOAD] [-H key=value]... [--count N] [--qos 0|1|2]`

use std::collections::VecDeque;

use anyhow::{bail, Context};
use bytes::Bytes;
use tern_client::{Client, PendingConfirm, Qos};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Confirms awaited at once: enough to keep the broker's group commit busy, few
/// enough that a failure is reported soon after it happens.
const WINDOW: usize = 1024;

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
    /// 0: at most once; 1: at least once (exit 0 only when every message was
    /// confirmed durable); 2: exactly once (deduplicated by producer and sequence)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Producer id for --qos 2 [default: a fresh random id]
    #[arg(long, value_name = "ID")]
    producer: Option<String>,
    /// First sequence number for --qos 2; each message takes the next
    #[arg(long, default_value_t = 1, value_name = "N")]
    sequence: u64,
    /// Fail when no subscriber and no queue takes a message
    #[arg(long)]
    mandatory: bool,
}

/// Publishes and keeps up to [`WINDOW`] confirms in flight.
struct Publisher<'a> {
    client: &'a Client,
    args: &'a Args,
    headers: tern_client::Headers,
    qos: Qos,
    producer: String,
    next_sequence: u64,
    pending: VecDeque<PendingConfirm>,
    failed: u64,
    first_error: Option<tern_client::Error>,
}

impl Publisher<'_> {
    async fn send(&mut self, payload: Bytes) -> anyhow::Result<()> {
        let a = self.args;
        let mut p = self
            .client
            .publish(&a.subject, payload)
            .headers(self.headers.clone())
            .qos(self.qos);
        if let Some(r) = &a.reply_to {
            p = p.reply_to(r);
        }
        if a.mandatory {
            p = p.mandatory();
        }
        if self.qos == Qos::ExactlyOnce {
            p = p.idempotent(&self.producer, self.next_sequence);
            self.next_sequence += 1;
        }
        if self.qos == Qos::AtMostOnce && !a.mandatory {
            p.await?;
            return Ok(());
        }
        self.pending.push_back(p.send().await?);
        while self.pending.len() >= WINDOW {
            self.settle_one().await;
        }
        Ok(())
    }

    async fn settle_one(&mut self) {
        if let Some(confirm) = self.pending.pop_front() {
            if let Err(e) = confirm.await {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Waits for every confirm, then for the server to have processed the unconfirmed
    /// (QoS 0) publishes too: a refusal of one of those comes back as an error that
    /// answers no request, and must fail the command like a refused confirm.
    async fn finish(mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            self.settle_one().await;
        }
        if let Some(e) = self.first_error {
            bail!(
                "{} message(s) were not confirmed; the first error: {e}",
                self.failed
            );
        }
        self.client
            .flush()
            .await
            .context("the server did not answer")?;
        let refused = self.client.take_errors();
        if let Some(e) = refused.first() {
            match refused.len() {
                1 => bail!("the server refused a message: {e}"),
                n => bail!("the server refused {n} messages; the first: {e}"),
            }
        }
        Ok(())
    }
}

pub async fn run(client: Client, args: Args) -> anyhow::Result<()> {
    let qos = Qos::from_u8(args.qos).context("QoS must be 0, 1 or 2")?;
    let mut publisher = Publisher {
        client: &client,
        args: &args,
        headers: super::headers(&args.headers),
        qos,
        producer: args
            .producer
            .clone()
            .unwrap_or_else(|| format!("tern-cli-{:016x}", fastrand::u64(..))),
        next_sequence: args.sequence,
        pending: VecDeque::new(),
        failed: 0,
        first_error: None,
    };
    match args.payload.as_deref() {
        Some(payload) if payload != "-" => {
            let payload = Bytes::copy_from_slice(payload.as_bytes());
            for _ in 0..args.count {
                publisher.send(payload.clone()).await?;
            }
        }
        _ => {
            if args.count != 1 {
                bail!("--count repeats a payload given as an argument; standard input already sends one message per line");
            }
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Some(line) = lines.next_line().await.context("reading standard input")? {
                publisher.send(Bytes::from(line)).await?;
            }
        }
    }
    publisher.finish().await?;
    client
        .close()
        .await
        .context("the server did not confirm the messages")?;
    Ok(())
}
