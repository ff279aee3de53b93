//! `tern req SUBJECT [PAYLOAD]` and `tern reply PATTERN (--echo | --exec COMMAND)`.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use tern_client::{Client, Error, ERROR_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::output::Printer;

#[derive(Debug, clap::Args)]
pub struct ReqArgs {
    /// Subject to send the request to
    subject: String,
    /// Request payload; `-` reads all of standard input; nothing sends an empty one
    payload: Option<String>,
    /// Header to add, as key=value (repeatable)
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE", value_parser = super::parse_header)]
    headers: Vec<(String, String)>,
    /// How long to wait for the reply
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the reply as one JSON object
    #[arg(long)]
    json: bool,
}

pub async fn req(client: Client, args: ReqArgs) -> anyhow::Result<()> {
    let payload = match args.payload.as_deref() {
        Some("-") => {
            let mut buf = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut buf)
                .await
                .context("reading standard input")?;
            Bytes::from(buf)
        }
        Some(p) => Bytes::copy_from_slice(p.as_bytes()),
        None => Bytes::new(),
    };
    let reply = client
        .request(&args.subject, payload)
        .headers(super::headers(&args.headers))
        .timeout(args.timeout)
        .await;
    let reply = match reply {
        Ok(r) => r,
        Err(Error::Timeout) => bail!(
            "timed out: no reply on '{}' within {}",
            args.subject,
            humantime::format_duration(args.timeout)
        ),
        Err(e) => return Err(e.into()),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        Printer::new(true).print(&mut out, 1, &reply)?;
    } else {
        out.write_all(&reply.payload)?;
        if !reply.payload.ends_with(b"\n") {
            writeln!(out)?;
        }
    }
    out.flush()?;
    drop(out);
    client.close().await?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ReplyArgs {
    /// Subject pattern to answer requests on
    pattern: String,
    /// Join this queue group (requests are shared among its members)
    #[arg(long, short = 'g', value_name = "GROUP")]
    group: Option<String>,
    /// Answer each request with its own payload
    #[arg(long, conflicts_with = "exec", required_unless_present = "exec")]
    echo: bool,
    /// Answer with the standard output of COMMAND (run by `sh -c`), given the request
    /// payload on its standard input; a failing command sends an error reply
    #[arg(long, value_name = "COMMAND")]
    exec: Option<String>,
    /// Exit after answering this many requests
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

pub async fn reply(client: Client, args: ReplyArgs) -> anyhow::Result<()> {
    let mut builder = client.subscribe(&args.pattern);
    if let Some(g) = &args.group {
        builder = builder.group(g);
    }
    let mut sub = builder.await?;
    let mut answered = 0u64;
    while args.count.is_none_or(|n| answered < n) {
        let Some(request) = sub.next().await else {
            bail!("the subscription ended: the connection to the server is closed");
        };
        let Some(reply_to) = request.reply_to.as_deref() else {
            continue;
        };
        let answer = match &args.exec {
            Some(command) => run(command, &request.payload).await,
            None => Ok(request.payload.clone()),
        };
        let publish = match answer {
            Ok(payload) => client.publish(reply_to, payload),
            Err(message) => client
                .publish(reply_to, Bytes::new())
                .header(ERROR_HEADER, &message),
        };
        publish.await?;
        answered += 1;
    }
    drop(sub);
    client.close().await?;
    Ok(())
}

/// Runs `command` with `input` on its standard input. Its standard output is the
/// answer; a non-zero exit is an error, described by its standard error.
async fn run(command: &str, input: &[u8]) -> Result<Bytes, String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run '{command}': {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is fine.
        let _ = stdin.write_all(input).await;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("'{command}' failed: {e}"))?;
    if output.status.success() {
        Ok(Bytes::from(output.stdout))
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let failed = format!("'{command}' exited with {}", output.status);
        match stderr.lines().next().map(str::trim) {
            Some(first) if !first.is_empty() => Err(format!("{failed}: {first}")),
            _ => Err(failed),
        }
    }
}
