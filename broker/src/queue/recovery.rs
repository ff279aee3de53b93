//! Start-up: what the store holds, read back into the queues' state machine and into
//! the state of each queue's task.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tern_storage::{
    DedupEntry, GroupRecord, MessageMeta, QueueId, QueueRecord, Recover, RecoveredChunk,
    StorageError, Store,
};

use super::def::QueueDef;
use super::machine::{Chunk, Machine};
use super::state::QueueState;
use super::{BindingFilters, GroupId};
use crate::filter::FilterLimits;

/// Everything the store held.
pub(crate) struct Recovered {
    /// The journal's side: sequence numbers and settled bitmaps.
    pub machine: Machine,
    pub queues: Vec<RecoveredQueue>,
    /// Metas of messages settled before a crash cut their clean-up short: to forget.
    pub stale_metas: Vec<(QueueId, u64)>,
    pub dedup: Vec<DedupEntry>,
    /// The index of the last log entry the store holds (0: none).
    pub log_index: u64,
    /// In a cluster's first group: the replica groups.
    pub groups: Vec<(GroupId, GroupRecord)>,
}

/// One queue, ready for its task.
pub(crate) struct RecoveredQueue {
    pub id: QueueId,
    pub def: Arc<QueueDef>,
    pub filters: BindingFilters,
    /// Its live messages, each with its delivery count and hold.
    pub state: QueueState,
    /// The replica group that holds its messages, when another group's store does (in
    /// a cluster's directory); then `state` is empty.
    pub placed: Option<GroupId>,
}

/// Reads the whole store, chunk by chunk.
///
/// # Errors
///
/// The store cannot be read, or holds a definition, filter or message this version
/// cannot use: [`StorageError::Corrupt`] naming `data_dir` and every such record.
pub(crate) fn recover(
    store: &dyn Store,
    data_dir: &Path,
    memory: usize,
    filter_limits: FilterLimits,
) -> Result<Recovered, StorageError> {
    let mut r = Reader {
        memory,
        filter_limits,
        queues: HashMap::new(),
        next_seqs: HashMap::new(),
        chunks: HashMap::new(),
        metas: HashMap::new(),
        dedup: Vec::new(),
        log_index: 0,
        next_queue_id: None,
        placements: HashMap::new(),
        groups: Vec::new(),
        errors: Vec::new(),
    };
    store.recover(&mut r)?;
    if !r.errors.is_empty() {
        return Err(StorageError::Corrupt {
            path: data_dir.to_path_buf(),
            detail: r.errors.join("; "),
        });
    }
    let mut machine = Machine::default();
    if let Some(id) = r.next_queue_id {
        machine.recover_next_queue_id(id);
    }
    for pair in &r.dedup {
        machine.recover_pair(pair);
    }
    let mut queues = Vec::with_capacity(r.queues.len());
    for (id, (def, filters, state)) in r.queues {
        let next_seq = r.next_seqs.get(&id).copied().unwrap_or(0);
        let chunks = r.chunks.remove(&id).unwrap_or_default();
        machine.recover_queue(id, (*def).clone(), next_seq, chunks);
        let placed = r.placements.get(&id).copied();
        if let Some(group) = placed {
            machine.recover_placement(id, group);
        }
        queues.push(RecoveredQueue {
            id,
            def,
            filters,
            state,
            placed,
        });
    }
    for (group, record) in &r.groups {
        machine.recover_group(*group, record.clone());
    }
    queues.sort_by_key(|q| q.id);
    Ok(Recovered {
        machine,
        queues,
        stale_metas: r.metas.into_keys().collect(),
        dedup: r.dedup,
        log_index: r.log_index,
        groups: r.groups,
    })
}

/// Receives the store's records.
struct Reader {
    memory: usize,
    filter_limits: FilterLimits,
    queues: HashMap<QueueId, (Arc<QueueDef>, BindingFilters, QueueState)>,
    next_seqs: HashMap<QueueId, u64>,
    chunks: HashMap<QueueId, Vec<(u64, Chunk)>>,
    metas: HashMap<(QueueId, u64), MessageMeta>,
    dedup: Vec<DedupEntry>,
    log_index: u64,
    next_queue_id: Option<QueueId>,
    placements: HashMap<QueueId, GroupId>,
    groups: Vec<(GroupId, GroupRecord)>,
    errors: Vec<String>,
}

impl Recover for Reader {
    fn queue(&mut self, record: QueueRecord) {
        match QueueDef::from_bytes(&record.definition) {
            Ok(def) => match def.compile_filters(&self.filter_limits) {
                Ok(filters) => {
                    let def = Arc::new(def);
                    let state = QueueState::new(Arc::clone(&def), self.memory);
                    self.queues.insert(record.id, (def, filters, state));
                }
                Err(e) => self.errors.push(format!(
                    "queue '{}' has a binding filter that no longer compiles: {e}",
                    record.name
                )),
            },
            Err(e) => self.errors.push(format!(
                "queue {} ('{}') has an unreadable definition: {e}",
                record.id, record.name
            )),
        }
    }

    fn next_seq(&mut self, queue: QueueId, next: u64) {
        self.next_seqs.insert(queue, next);
    }

    fn meta(&mut self, queue: QueueId, seq: u64, meta: MessageMeta) {
        self.metas.insert((queue, seq), meta);
    }

    fn chunk(&mut self, chunk: RecoveredChunk) {
        let Some((_, _, state)) = self.queues.get_mut(&chunk.queue) else {
            return;
        };
        let live = u32::try_from(chunk.live.len()).unwrap_or(u32::MAX);
        let end = chunk.first_seq + u64::from(chunk.len);
        let next = self.next_seqs.entry(chunk.queue).or_insert(0);
        *next = (*next).max(end);
        for m in chunk.live {
            // A message that would not decode would be sent to consumers as a frame
            // they reject: refuse the store instead.
            if let Err(e) = tern_codec::Envelope::decode_bytes(m.envelope.clone()) {
                self.errors.push(format!(
                    "queue {} message {} is unreadable: {e}",
                    chunk.queue, m.seq
                ));
                continue;
            }
            let meta = self.metas.remove(&(chunk.queue, m.seq));
            state.recover(m, meta);
        }
        self.chunks.entry(chunk.queue).or_default().push((
            chunk.first_seq,
            Chunk::recovered(chunk.len, &chunk.settled, live),
        ));
    }

    fn dedup(&mut self, entry: DedupEntry) {
        self.dedup.push(entry);
    }

    fn log_index(&mut self, index: u64) {
        self.log_index = index;
    }

    fn next_queue_id(&mut self, id: QueueId) {
        self.next_queue_id = Some(id);
    }

    fn placement(&mut self, queue: QueueId, group: u64) {
        self.placements.insert(queue, group);
    }

    fn group(&mut self, group: u64, record: GroupRecord) {
        self.groups.push((group, record));
    }
}
