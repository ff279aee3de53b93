//! `tern cluster status|add-node|remove-node`

use std::io::Write;

use serde_json::{json, Value};
use tern_client::{Client, ClusterInfo, GroupInfo, MemberRole};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the members, their roles and addresses, and each group's leader, replicas and queues
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
            let groups = groups(&client).await;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            if json {
                writeln!(out, "{}", to_json(&info, &groups))?;
            } else {
                print(&mut out, &info, &groups)?;
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

/// The cluster's groups (none from a server older than groups, or alone).
pub async fn groups(client: &Client) -> Vec<GroupInfo> {
    client.cluster_groups().await.unwrap_or_default()
}

/// The cluster as JSON (`null` members and leader when the server runs alone).
pub fn to_json(info: &ClusterInfo, groups: &[GroupInfo]) -> Value {
    if info.node_id == 0 {
        return json!({ "node_id": 0, "members": [] });
    }
    json!({
        "groups": groups.iter().map(|g| json!({
            "group": g.group,
            "leader": (g.leader != 0).then_some(g.leader),
            "replicas": &g.members,
            "queues": g.queues.iter().map(|q| &**q).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
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
pub fn print(
    out: &mut impl Write,
    info: &ClusterInfo,
    groups: &[GroupInfo],
) -> std::io::Result<()> {
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
    for g in groups {
        let leader = match g.leader {
            0 => "none known".to_string(),
            n => format!("node {n}"),
        };
        let replicas: Vec<String> = g.members.iter().map(u64::to_string).collect();
        let queues: Vec<&str> = g.queues.iter().map(|q| &**q).collect();
        let what = if g.group == 1 {
            "membership and directory; "
        } else {
            ""
        };
        writeln!(
            out,
            "  group {:<3} leader {leader}, replicas on {}; {what}queues: {}",
            g.group,
            replicas.join(", "),
            if queues.is_empty() {
                "none".to_string()
            } else {
                queues.join(", ")
            }
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
