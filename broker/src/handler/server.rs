//! SERVER_QUERY: what this server is and how it is doing.

use tern_codec::{ServerInfo, ServerQuery};

use super::Reject;
use crate::session::state::Session;

/// Answers with the server's SERVER_INFO.
///
/// # Errors
///
/// None: a store that cannot be measured reports size 0.
pub(crate) fn query(session: &mut Session, q: ServerQuery) -> Result<(), Reject> {
    let shared = &session.shared;
    let stats = shared.stats.snapshot();
    let info = ServerInfo {
        id: q.id,
        server_id: shared.server_id.as_str().into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_ms: u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        listeners: shared.listeners().into_iter().map(Into::into).collect(),
        connections: stats.connections,
        subscriptions: shared.router.subscription_count() as u64,
        queues: shared.durable.queues.len() as u64,
        store_bytes: shared.durable.store.size_on_disk().unwrap_or(0),
        sync: shared.config.store.sync.to_string().into(),
        messages_in: stats.messages_in,
        messages_out: stats.messages_out,
    };
    session.reply(&info);
    Ok(())
}
