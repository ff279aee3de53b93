//! `tern cluster status|add-node|remove-node`

use std::io::Write;

use serde_json::{json, Value};
use tern_client::{Client, ClusterInfo, MemberRole};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the members, their roles and addresses, and which node leads
    Status {
        /// One JSON object
        #[arg(long)]
        json: bool,
    },
    /// Add a node, started with --cluster-join, to the cluster (it catches up, then votes)
    #[command(name = "add-node")]
    AddNode {
        /// The new node's id
        id: u64,
        /// The address of its peer listener (its --cluster-listen), HOST:PORT
        peer_addr: String,
    },
    /// Remove a node from the cluster (a dead one, before replacing it)
    #[command(name = "remove-node")]
    RemoveNode {
        /// The node's id
        id: u64,
    },
}

pub async fn run(client: Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Status { json } => {
            let info = client.cluster_info().await?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            if json {
                writeln!(out, "{}", to_json(&info))?;
            } else {
                print(&mut out, &info)?;
            }
            out.flush()?;
        }
        Command::AddNode { id, peer_addr } => {
            client.add_node(id, &peer_addr).await?;
            println!("node {id} added");
        }
        Command::RemoveNode { id } => {
            client.remove_node(id).await?;
            println!("node {id} removed");
        }
    }
    client.close().await?;
    Ok(())
}

/// The cluster as JSON (`null` members and leader when the server runs alone).
pub fn to_json(info: &ClusterInfo) -> Value {
    if info.node_id == 0 {
        return json!({ "node_id": 0, "members": [] });
    }
    json!({
        "node_id": info.node_id,
        "term": info.term,
        "leader": (info.leader != 0).then_some(info.leader),
        "members": info.members.iter().map(|m| json!({
            "node_id": m.node_id,
            "peer_addr": &*m.peer_addr,
            "client_addr": m.client_addr.as_deref(),
            "role": role(m.role),
            "leader": m.node_id == info.leader,
            "lag": m.lag,
        })).collect::<Vec<_>>(),
    })
}

/// The cluster as lines of text.
pub fn print(out: &mut impl Write, info: &ClusterInfo) -> std::io::Result<()> {
    if info.node_id == 0 {
        return writeln!(out, "cluster       none (this server runs alone)");
    }
    let leader = match info.leader {
        0 => "none (electing)".to_string(),
        n => format!("node {n}"),
    };
    writeln!(
        out,
        "cluster       node {} of {}, term {}, leader {leader}",
        info.node_id,
        info.members.len(),
        info.term
    )?;
    writeln!(
        out,
        "queues        every queue led by the leader, replicated on every voter"
    )?;
    for m in &info.members {
        let mut notes = vec![role(m.role).to_string()];
        if m.node_id == info.leader {
            notes.push("leader".into());
        }
        if m.node_id == info.node_id {
            notes.push("this node".into());
        }
        if m.lag > 0 {
            notes.push(format!("{} entries behind", m.lag));
        }
        writeln!(
            out,
            "  node {:<4} peer {:<21} clients {:<21} {}",
            m.node_id,
            &*m.peer_addr,
            m.client_addr.as_deref().unwrap_or("?"),
            notes.join(", ")
        )?;
    }
    Ok(())
}

fn role(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Voter => "voter",
        MemberRole::Learner => "learner",
    }
}
