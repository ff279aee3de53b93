//! `tern server info [--json]`

use std::io::Write;
use std::time::Duration;

use serde_json::json;
use tern_client::Client;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the server's version, uptime, listeners, connections, queues and store
    Info {
        /// One JSON object
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(client: Client, command: Command) -> anyhow::Result<()> {
    let Command::Info { json } = command;
    let i = client.server_info().await?;
    // A server older than clusters does not know the question: it is alone.
    let cluster = client.cluster_info().await.ok();
    let groups = crate::cluster::groups(&client).await;
    let value = json!({
        "server_id": &*i.server_id,
        "version": &*i.version,
        "uptime_ms": i.uptime_ms,
        "listeners": i.listeners.iter().map(|l| &**l).collect::<Vec<_>>(),
        "connections": i.connections,
        "subscriptions": i.subscriptions,
        "queues": i.queues,
        "store_bytes": i.store_bytes,
        "sync": &*i.sync,
        "messages_in": i.messages_in,
        "messages_out": i.messages_out,
        "cluster": cluster.as_ref().map(|c| crate::cluster::to_json(c, &groups)),
    });
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        writeln!(out, "{value}")?;
    } else {
        let uptime = humantime::format_duration(Duration::from_secs(i.uptime_ms / 1000));
        writeln!(out, "server        {} (tern {})", i.server_id, i.version)?;
        writeln!(out, "uptime        {uptime}")?;
        for l in &i.listeners {
            writeln!(out, "listening on  {l}")?;
        }
        writeln!(out, "connections   {}", i.connections)?;
        writeln!(out, "subscriptions {}", i.subscriptions)?;
        writeln!(out, "queues        {}", i.queues)?;
        writeln!(
            out,
            "store         {} bytes, sync = {}",
            i.store_bytes, i.sync
        )?;
        writeln!(
            out,
            "messages      {} in, {} out",
            i.messages_in, i.messages_out
        )?;
        if let Some(cluster) = &cluster {
            crate::cluster::print(&mut out, cluster, &groups)?;
        }
    }
    out.flush()?;
    drop(out);
    client.close().await?;
    Ok(())
}
