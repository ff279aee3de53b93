//! Queue administration: declare, delete, query, purge, move.
//!
//! Validation happens at once, in the session. The rest waits on the journal or on
//! queue tasks, so it runs as a task of its own and answers the connection when done;
//! the session goes on reading meanwhile.

use std::future::Future;
use std::sync::Arc;

use tern_codec::{
    Done, ErrorCode, ErrorFrame, Ok as OkFrame, QueueDeclare, QueueDelete, QueueInfo, QueueMove,
    QueuePurge, QueueQuery, QueueStats,
};
use tokio::sync::oneshot;

use super::Reject;
use crate::journal::{Op, Refused};
use crate::outbound::{Outbound, Wakes};
use crate::queue::def::{validate_name, QueueDef};
use crate::queue::{QueueHandle, QueueInput};
use crate::session::state::Session;
use crate::shared::Shared;

/// What an admin request answers with.
enum Answer {
    Ok,
    Info(QueueInfo),
    /// Every queue's info, then DONE with their number.
    List(Vec<QueueInfo>),
    Done(u64),
}

/// Refuses queue administration to users without the `admin` permission.
fn require_admin(session: &Session, what: &str, queue: &str) -> Result<(), Reject> {
    if session.principal.permissions.admin {
        Ok(())
    } else {
        Err(Reject::denied(what, queue))
    }
}

/// Runs `work` in the background and sends its answer (with `id`) on the connection.
fn run<F>(session: &Session, id: u32, work: impl FnOnce(Arc<Shared>) -> F)
where
    F: Future<Output = Result<Answer, Reject>> + Send + 'static,
{
    let outbound = Arc::clone(&session.outbound);
    let fut = work(Arc::clone(&session.shared));
    tokio::spawn(async move {
        let answer = fut.await;
        let mut wakes = Wakes::default();
        send(&outbound, id, answer, &mut wakes);
        wakes.wake_all();
    });
}

fn send(outbound: &Arc<Outbound>, id: u32, answer: Result<Answer, Reject>, wakes: &mut Wakes) {
    match answer {
        Ok(Answer::Ok) => outbound.push_control(&OkFrame { id }, wakes),
        Ok(Answer::Info(info)) => outbound.push_control(&info, wakes),
        Ok(Answer::List(infos)) => {
            let count = infos.len() as u64;
            for info in infos {
                outbound.push_control(&info, wakes);
            }
            outbound.push_control(&Done { id, count }, wakes);
        }
        Ok(Answer::Done(count)) => outbound.push_control(&Done { id, count }, wakes),
        Err(r) => outbound.push_control(&ErrorFrame::new(id, r.code, r.message), wakes),
    }
}

fn not_found(name: &str) -> Reject {
    Reject::new(ErrorCode::QueueNotFound, format!("no queue named '{name}'"))
}

fn gone(name: &str) -> Reject {
    Reject::new(
        ErrorCode::QueueNotFound,
        format!("queue '{name}' was deleted meanwhile"),
    )
}

async fn info(id: u32, queue: &QueueHandle) -> Result<QueueInfo, Reject> {
    let stats = queue.stats().await.ok_or_else(|| gone(&queue.def.name))?;
    Ok(QueueInfo {
        id,
        name: queue.def.name.as_str().into(),
        bindings: queue.def.wire_bindings(),
        options: queue.def.wire_options(),
        stats,
    })
}

/// Waits for a journal operation built around `done`.
async fn journal(
    shared: &Shared,
    op: impl FnOnce(crate::journal::Done) -> Op,
) -> Result<(), Reject> {
    let (tx, rx) = oneshot::channel();
    shared.durable.journal.send(op(Box::new(move |r| {
        let _ = tx.send(r);
    })));
    Ok(rx.await.unwrap_or(Err(Refused::ShuttingDown))?)
}

/// Hands `queue` an input that changes messages and answers how many, then waits
/// until the journal has made those changes durable: DONE promises they stick.
async fn count_then_sync(
    shared: &Shared,
    queue: &QueueHandle,
    input: impl FnOnce(oneshot::Sender<u64>) -> QueueInput,
) -> Result<Answer, Reject> {
    let name = &queue.def.name;
    let (reply, rx) = oneshot::channel();
    queue.tx.send(input(reply)).await.map_err(|_| gone(name))?;
    let n = rx.await.map_err(|_| gone(name))?;
    shared.durable.journal.barrier().await?;
    Ok(Answer::Done(n))
}

/// Declares a queue; in a cluster, of `replicas` replicas (0: the default).
///
/// # Errors
///
/// An invalid definition, or more replicas than there are nodes (the rest is answered
/// later).
pub(crate) fn declare(session: &mut Session, d: QueueDeclare, replicas: u8) -> Result<(), Reject> {
    require_admin(session, "declare queue", &d.name)?;
    // A node that does not know the membership yet (just started) lets the leader
    // place the queue, which never gives it more replicas than there are nodes.
    let nodes = session
        .shared
        .durable
        .replica
        .as_ref()
        .map_or(1, |r| r.voters().len());
    if usize::from(replicas) > nodes && nodes > 0 {
        return Err(Reject::new(
            ErrorCode::InvalidQueue,
            match session.shared.durable.replica {
                None => format!("replicas {replicas}: this server runs alone"),
                Some(_) => format!("replicas {replicas}: the cluster has {nodes} nodes"),
            },
        ));
    }
    let config = &session.shared.config;
    let def = QueueDef::from_declare(&d, &config.queues, &config.limits.subject)?;
    // Checked before anything is stored: a queue must not be stored if it cannot run.
    def.compile_filters(&config.limits.filter)
        .map_err(|e| Reject::new(ErrorCode::InvalidFilter, e.to_string()))?;
    run(session, d.id, move |shared| async move {
        // A follower may apply the declare after the leader answers it: it answers
        // from the definition, with no counters (they are the leader's to tell).
        let declared = QueueInfo {
            id: d.id,
            name: def.name.as_str().into(),
            bindings: def.wire_bindings(),
            options: def.wire_options(),
            stats: QueueStats::default(),
        };
        let name = def.name.clone();
        // The machine decides: a new queue, the same one again (no change), or a name
        // taken by another definition.
        let (tx, rx) = oneshot::channel();
        shared.durable.journal.send(Op::PutQueue {
            def,
            replicas,
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        });
        rx.await.unwrap_or(Err(Refused::ShuttingDown))?;
        if shared.durable.not_leader_of(&name).is_some() {
            return Ok(Answer::Info(declared));
        }
        let queue = shared
            .durable
            .queues
            .get(&name)
            .ok_or_else(|| gone(&name))?;
        info(d.id, &queue).await.map(Answer::Info)
    });
    Ok(())
}

/// # Errors
///
/// Never at once; the queue's absence is answered later.
pub(crate) fn delete(session: &mut Session, d: QueueDelete) -> Result<(), Reject> {
    require_admin(session, "delete queue", &d.name)?;
    run(session, d.id, move |shared| async move {
        let queue = shared
            .durable
            .queues
            .get(&d.name)
            .ok_or_else(|| not_found(&d.name))?;
        // The queue stops once the delete is applied.
        let id = queue.id;
        journal(&shared, move |done| Op::DeleteQueue { queue: id, done }).await?;
        Ok(Answer::Ok)
    });
    Ok(())
}

/// A user sees the queues it may consume from or administer, and no other: to the
/// rest, a queue's name, bindings and depth are none of its business, and an unseen
/// queue is answered exactly as an absent one, so that asking reveals nothing.
///
/// # Errors
///
/// Never at once; an unknown name is answered later.
pub(crate) fn query(session: &mut Session, q: QueueQuery) -> Result<(), Reject> {
    // A list is the first group's leader's, which knows every queue.
    Reject::unless_leader(session, &q.name)?;
    let permissions = Arc::clone(&session.principal.permissions);
    let visible = move |name: &str| permissions.admin || permissions.consume.allows(name);
    run(session, q.id, move |shared| async move {
        if q.name.is_empty() {
            let mut infos = Vec::new();
            for queue in shared.durable.queues.all() {
                if !visible(&queue.def.name) {
                    continue;
                }
                // A queue deleted while listing is simply left out.
                if let Ok(i) = info(q.id, &queue).await {
                    infos.push(i);
                }
            }
            return Ok(Answer::List(infos));
        }
        let find = || {
            shared
                .durable
                .queues
                .get(&q.name)
                .filter(|queue| visible(&queue.def.name))
                .ok_or_else(|| not_found(&q.name))
        };
        let queue = find()?;
        match info(q.id, &queue).await {
            Ok(i) => Ok(Answer::Info(i)),
            // In a cluster the queues' tasks move when the leader changes: this node
            // stopped leading, or started (and replaced the queue's task) meanwhile.
            Err(_) if shared.durable.replica.is_some() => {
                match shared.durable.not_leader_of(&q.name) {
                    Some(redirect) => Err(Reject::new(ErrorCode::NotLeader, redirect)),
                    None => {
                        let queue = find()?;
                        info(q.id, &queue).await.map(Answer::Info)
                    }
                }
            }
            Err(e) => Err(e),
        }
    });
    Ok(())
}

/// # Errors
///
/// Never at once; an unknown name is answered later.
pub(crate) fn purge(session: &mut Session, p: QueuePurge) -> Result<(), Reject> {
    require_admin(session, "purge queue", &p.name)?;
    Reject::unless_leader(session, &p.name)?;
    run(session, p.id, move |shared| async move {
        let queue = shared
            .durable
            .queues
            .get(&p.name)
            .ok_or_else(|| not_found(&p.name))?;
        count_then_sync(&shared, &queue, |reply| QueueInput::Purge { reply }).await
    });
    Ok(())
}

/// # Errors
///
/// Invalid names, or moving a queue into itself.
pub(crate) fn move_messages(session: &mut Session, m: QueueMove) -> Result<(), Reject> {
    require_admin(session, "move messages from queue", &m.from)?;
    Reject::unless_leader(session, &m.from)?;
    for name in [&m.from, &m.to] {
        validate_name(name).map_err(|e| Reject::new(ErrorCode::InvalidQueue, e))?;
    }
    if m.from == m.to {
        return Err(Reject::new(
            ErrorCode::InvalidQueue,
            "cannot move messages from a queue into itself",
        ));
    }
    run(session, m.id, move |shared| async move {
        let from = shared
            .durable
            .queues
            .get(&m.from)
            .ok_or_else(|| not_found(&m.from))?;
        let to = shared
            .durable
            .queues
            .get(&m.to)
            .ok_or_else(|| not_found(&m.to))?;
        count_then_sync(&shared, &from, |reply| QueueInput::MoveTo {
            to: to.id,
            max: m.max,
            reply,
        })
        .await
    });
    Ok(())
}
