//! Reading the queue: every event, in sequence order, exactly once, in batches; from the
//! checkpoint when the events before it are gone.
//!
//! Sequence numbers only grow, but they have holes: a delete spends numbers too, and the
//! queue znode's `cversion` does not say which (it runs ahead of the numbers once events
//! have been deleted), so a reader goes by the names it lists. Only trims delete events,
//! after recording how far they go (`trimmed`), and only events a checkpoint covers. So when
//! the first listed event lies past `next`, the reader reads `trimmed` once: if it reaches
//! past `next`, the events in between are gone and the node starts from the checkpoint;
//! otherwise the hole is numbers spent by deletes, and it reads on from the first listed.
//! A member that keeps up reads the trim position about once per trim, never the checkpoint.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use zookeeper_client as zk;

use super::{checkpoint, sequence, Envelope, Shared, QUEUE, TICK};
use crate::cluster::{Delivered, Delivery};
use crate::group::Event;

/// Events read in one multi-read request.
const BATCH: usize = 256;
/// Event ids remembered to drop a duplicate left by a retried append.
const REMEMBERED: usize = 4096;

/// The ids of recently delivered events, with their positions: a retried append can leave
/// an event twice, and the second copy must be delivered as nothing. Checkpoints carry them,
/// so a node that starts from a checkpoint also knows the ids of the events it skipped.
#[derive(Default)]
pub(super) struct Recent {
    order: VecDeque<(u64, u64)>,
    ids: HashSet<u64>,
}

impl Recent {
    /// Records `id` at `pos`; false if it was delivered already.
    fn insert(&mut self, pos: u64, id: u64) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back((pos, id));
        if self.order.len() > REMEMBERED {
            if let Some((_, old)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }

    /// (position, id) of the remembered events up to `pos`.
    pub(super) fn upto(&self, pos: u64) -> Vec<(u64, u64)> {
        self.order.iter().copied().filter(|&(p, _)| p <= pos).collect()
    }

    fn replace(&mut self, recent: &[(u64, u64)]) {
        self.order.clear();
        self.ids.clear();
        for &(p, id) in recent {
            self.insert(p, id);
        }
    }
}

/// What one pass over a listing ended with.
enum Pass {
    /// Every listed event was delivered.
    Done,
    /// Something failed or vanished; list again soon.
    Again,
    /// The receiver is gone.
    Closed,
}

pub(super) async fn read_queue(s: Arc<Shared>, tx: UnboundedSender<Delivery>) {
    // The lowest sequence number that may still hold an event not delivered here.
    let mut next: u64 = 0;
    let mut last_error = None;
    while !s.stopped.load(Ordering::Acquire) {
        let client = s.client();
        let (children, watcher) = match client.list_and_watch_children(QUEUE).await {
            Ok(listed) => {
                last_error = None;
                listed
            }
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "cannot list the ZooKeeper queue");
                }
                last_error = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut seqs: Vec<(u64, String)> = children
            .into_iter()
            .filter_map(|n| sequence(&n).map(|q| (q, n)))
            .filter(|(q, _)| *q >= next)
            .collect();
        seqs.sort();
        if let Some(&(first, _)) = seqs.first() {
            if first > next {
                match skip_hole(&s, next, &tx).await {
                    Hole::Spent => next = first,
                    Hole::Trimmed(pos) => {
                        next = pos;
                        seqs.retain(|(q, _)| *q >= next);
                    }
                    Hole::Unknown => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Hole::Closed => return,
                }
            }
        }
        match deliver(&s, &client, &seqs, &mut next, &tx).await {
            Pass::Closed => return,
            Pass::Again => tokio::time::sleep(Duration::from_millis(50)).await,
            Pass::Done => {
                let _ = tokio::time::timeout(TICK, watcher.changed()).await;
            }
        }
    }
}

/// What lies between `next` and the first listed event.
enum Hole {
    /// Numbers spent by deletes: nothing to deliver.
    Spent,
    /// Trimmed events: the checkpoint at this position was delivered instead.
    Trimmed(u64),
    /// Unreadable for now; list again.
    Unknown,
    /// The receiver is gone.
    Closed,
}

/// Finds out whether events from `next` on were trimmed, and if so delivers the checkpoint.
async fn skip_hole(s: &Shared, next: u64, tx: &UnboundedSender<Delivery>) -> Hole {
    match checkpoint::trimmed_to(s).await {
        Ok(t) if t <= next => return Hole::Spent,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot read how far the queue is trimmed; retrying");
            return Hole::Unknown;
        }
    }
    let (head, image) = match checkpoint::load(s).await {
        Ok(Some(found)) if found.0.pos > next => found,
        Ok(_) => {
            tracing::error!(
                next,
                "queued events were trimmed, but no checkpoint covers them; retrying"
            );
            return Hole::Unknown;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the cluster checkpoint; retrying");
            return Hole::Unknown;
        }
    };
    let pos = head.pos;
    s.recent.lock().unwrap_or_else(|p| p.into_inner()).replace(&head.recent);
    *s.members.lock().unwrap_or_else(|p| p.into_inner()) = image.lives();
    s.cadence.restart();
    let cp = Delivery {
        pos,
        what: Delivered::Checkpoint(Box::new(image)),
    };
    if tx.send(cp).is_err() {
        return Hole::Closed;
    }
    Hole::Trimmed(pos)
}

/// Reads and delivers the listed events from `next` on, `BATCH` per request.
async fn deliver(
    s: &Shared,
    client: &zk::Client,
    seqs: &[(u64, String)],
    next: &mut u64,
    tx: &UnboundedSender<Delivery>,
) -> Pass {
    for batch in seqs.chunks(BATCH) {
        let mut reader = client.new_multi_reader();
        for (_, name) in batch {
            if let Err(e) = reader.add_get_data(&format!("{QUEUE}/{name}")) {
                tracing::error!(event = %name, error = %e, "bad queue path");
                return Pass::Again;
            }
        }
        let results = match reader.commit().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read queued events; retrying");
                return Pass::Again;
            }
        };
        for ((q, name), result) in batch.iter().zip(results) {
            let data = match result {
                zk::MultiReadResult::Data { data, .. } => data,
                // Trimmed since the listing: the checkpoint covers it; the next pass starts there.
                zk::MultiReadResult::Error { err: zk::Error::NoNode } => return Pass::Again,
                other => {
                    tracing::warn!(event = %name, result = ?other, "cannot read a queued event; retrying");
                    return Pass::Again;
                }
            };
            *next = q + 1;
            let pos = q + 1;
            let env: Envelope = match serde_json::from_slice(&data) {
                Ok(env) => env,
                Err(e) => {
                    tracing::error!(event = %name, error = %e, "skipping an unreadable queued event");
                    continue;
                }
            };
            let fresh = s.recent.lock().unwrap_or_else(|p| p.into_inner()).insert(pos, env.id);
            let what = if fresh {
                track_members(s, &env.event);
                s.cadence.delivered();
                Delivered::Event(env.event)
            } else {
                Delivered::Nothing
            };
            if tx.send(Delivery { pos, what }).is_err() {
                return Pass::Closed;
            }
        }
    }
    Pass::Done
}

/// Keeps the driver's own list of members (for announcing the leaves of vanished ones).
fn track_members(s: &Shared, ev: &Event) {
    let mut m = s.members.lock().unwrap_or_else(|p| p.into_inner());
    match ev {
        Event::Join { node, incarnation, .. } => {
            m.insert(node.addr, *incarnation);
        }
        Event::Leave { addr, incarnation, .. } if incarnation.is_none_or(|i| m.get(addr) == Some(&i)) => {
            m.remove(addr);
        }
        Event::Shutdown => m.clear(),
        _ => {}
    }
}
