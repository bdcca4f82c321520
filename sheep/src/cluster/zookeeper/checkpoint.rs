//! Checkpoints of the cluster state in ZooKeeper, and trimming the queue behind them.
//!
//! - `checkpoint`: the head, JSON [`Head`]: where the newest complete checkpoint is, its
//!   length and CRC32C, and the ids of the events just before it.
//! - `checkpoints/c-<pos>/p-NNNN`: that checkpoint's image (the [`ClusterState`] JSON) in
//!   chunks well under ZooKeeper's 1 MiB limit on a znode.
//!
//! - `trimmed`: the position up to which queued events may have been deleted.
//!
//! Writing one: the chunks first, then the head (a compare-and-set on its version that never
//! moves it backwards), then older checkpoints go, and last the queued events up to the
//! lowest position that both the checkpoint and every live member have applied, after
//! `trimmed` says so. A reader that finds events missing starts from the checkpoint only
//! when `trimmed` lies past its position; otherwise the gap is sequence numbers spent by
//! deletes, and it reads on. A crash at
//! any step leaves the head on a complete checkpoint, or no head and an untrimmed queue; the
//! next checkpoint finishes what was left. Readers check the length and the CRC, and read
//! again from the head when a newer checkpoint replaced the one they were reading.

use std::collections::BTreeMap;

use zookeeper_client as zk;

use super::{sequence, zk_err, Shared, APPLIED, ATTEMPTS, MEMBERS, QUEUE};
use crate::cluster::DriverError;
use crate::group::ClusterState;

pub(super) const HEAD: &str = "/sheepdog/checkpoint";
pub(super) const CHECKPOINTS: &str = "/sheepdog/checkpoints";
const TRIMMED: &str = "/sheepdog/trimmed";
/// Bytes per chunk znode.
const CHUNK: usize = 512 << 10;
/// Deletes per transaction when trimming. Every transaction wakes each member's watch on the
/// queue, and each then lists it again, so a trim is one transaction where it can be: 4,000
/// deletes of ~45 bytes are ~200 KB, well within ZooKeeper's 1 MB request limit.
const TRIM_BATCH: usize = 4000;
const FORMAT: u32 = 1;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Head {
    format: u32,
    /// The position of the last event the image has applied.
    pub pos: u64,
    chunks: u32,
    len: u64,
    crc32c: u32,
    /// (position, id) of the events before `pos` that a reader must still recognise.
    pub recent: Vec<(u64, u64)>,
}

fn dir_of(pos: u64) -> String {
    format!("{CHECKPOINTS}/c-{pos:020}")
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

fn bad(what: String) -> DriverError {
    DriverError::Task(format!("cluster checkpoint: {what}"))
}

/// The position up to which queued events may be gone (0: none trimmed).
pub(super) async fn trimmed_to(s: &Shared) -> Result<u64, DriverError> {
    match s.client().get_data(TRIMMED).await {
        Ok((d, _)) => Ok(String::from_utf8_lossy(&d).trim().parse().unwrap_or(0)),
        Err(zk::Error::NoNode) => Ok(0),
        Err(e) => Err(zk_err("read the trim position", e)),
    }
}

/// Raises the trim position to `limit` (never lowers it).
async fn mark_trimmed(s: &Shared, limit: u64) -> Result<(), DriverError> {
    let body = limit.to_string().into_bytes();
    match s.client().get_data(TRIMMED).await {
        Ok((d, stat)) => {
            if String::from_utf8_lossy(&d)
                .trim()
                .parse::<u64>()
                .is_ok_and(|t| t >= limit)
            {
                return Ok(());
            }
            s.client()
                .set_data(TRIMMED, &body, Some(stat.version))
                .await
                .map(|_| ())
                .map_err(|e| zk_err("mark the trim position", e))
        }
        Err(zk::Error::NoNode) => match s.client().create(TRIMMED, &body, &persistent()).await {
            Ok(_) => Ok(()),
            Err(e) => Err(zk_err("mark the trim position", e)),
        },
        Err(e) => Err(zk_err("read the trim position", e)),
    }
}

/// The newest checkpoint, if there is one.
pub(super) async fn load(s: &Shared) -> Result<Option<(Head, ClusterState)>, DriverError> {
    for _ in 0..ATTEMPTS {
        let head = match s.client().get_data(HEAD).await {
            Ok((d, _)) => serde_json::from_slice::<Head>(&d).map_err(|e| bad(format!("unreadable head: {e}")))?,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(zk_err("read the checkpoint head", e)),
        };
        if head.format != FORMAT {
            return Err(bad(format!("unknown format {}", head.format)));
        }
        let mut image = Vec::with_capacity(usize::try_from(head.len).unwrap_or(0));
        let mut replaced = false;
        for i in 0..head.chunks {
            match s.client().get_data(&format!("{}/p-{i:04}", dir_of(head.pos))).await {
                Ok((d, _)) => image.extend_from_slice(&d),
                // A newer checkpoint replaced this one while it was read: start over.
                Err(zk::Error::NoNode) => {
                    replaced = true;
                    break;
                }
                Err(e) => return Err(zk_err("read a checkpoint chunk", e)),
            }
        }
        if replaced {
            continue;
        }
        if image.len() as u64 != head.len || crc32c::crc32c(&image) != head.crc32c {
            return Err(bad(format!(
                "checkpoint at {} is damaged ({} bytes, expected {})",
                head.pos,
                image.len(),
                head.len
            )));
        }
        let state = ClusterState::from_checkpoint(&image)
            .map_err(|e| bad(format!("checkpoint at {} does not decode: {e}", head.pos)))?;
        return Ok(Some((head, state)));
    }
    Err(bad(format!("replaced while being read {ATTEMPTS} times")))
}

/// Stores `image` (the state at `pos`) as the checkpoint, removes older ones and trims the
/// queue. Returns the number of events trimmed.
pub(super) async fn write(s: &Shared, pos: u64, image: Vec<u8>, recent: Vec<(u64, u64)>) -> Result<usize, DriverError> {
    let current = match s.client().get_data(HEAD).await {
        Ok((d, stat)) => Some((serde_json::from_slice::<Head>(&d).ok(), stat.version)),
        Err(zk::Error::NoNode) => None,
        Err(e) => return Err(zk_err("read the checkpoint head", e)),
    };
    if let Some((Some(h), _)) = &current {
        if h.pos >= pos {
            return Ok(0);
        }
    }
    let dir = dir_of(pos);
    create(s, &dir, &[]).await?;
    let chunks: Vec<&[u8]> = image.chunks(CHUNK).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        create(s, &format!("{dir}/p-{i:04}"), chunk).await?;
    }
    let head = serde_json::to_vec(&Head {
        format: FORMAT,
        pos,
        chunks: chunks.len() as u32,
        len: image.len() as u64,
        crc32c: crc32c::crc32c(&image),
        recent,
    })
    .map_err(|e| bad(e.to_string()))?;
    // Compare-and-set: a head written meanwhile (by a member that took over) wins.
    let switched = match current {
        Some((_, version)) => s.client().set_data(HEAD, &head, Some(version)).await.map(|_| ()),
        None => s.client().create(HEAD, &head, &persistent()).await.map(|_| ()),
    };
    match switched {
        Ok(()) => {}
        Err(zk::Error::BadVersion | zk::Error::NodeExists) => {
            remove_dir(s, &dir).await;
            return Ok(0);
        }
        Err(e) => return Err(zk_err("write the checkpoint head", e)),
    }
    remove_others(s, &dir).await;
    trim(s, pos).await
}

/// Creates a persistent znode; one that exists already (a retried create, or an attempt
/// that crashed before its head was written, with the same bytes) is fine.
async fn create(s: &Shared, path: &str, data: &[u8]) -> Result<(), DriverError> {
    s.retry("write a checkpoint", |c| async move {
        match c.create(path, data, &persistent()).await {
            Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await
}

/// Removes the checkpoints other than `keep` (older ones, and attempts that never became
/// the head). Failures are left for the next checkpoint.
async fn remove_others(s: &Shared, keep: &str) {
    let Ok(dirs) = s.client().list_children(CHECKPOINTS).await else {
        return;
    };
    for d in dirs {
        let path = format!("{CHECKPOINTS}/{d}");
        if path != keep {
            remove_dir(s, &path).await;
        }
    }
}

async fn remove_dir(s: &Shared, dir: &str) {
    if let Ok(chunks) = s.client().list_children(dir).await {
        for c in chunks {
            let _ = s.client().delete(&format!("{dir}/{c}"), None).await;
        }
    }
    let _ = s.client().delete(dir, None).await;
}

/// Deletes the queued events up to the lowest of `pos` and what every live member has
/// applied (a member that never reported holds everything). Oldest first, in transactions.
async fn trim(s: &Shared, pos: u64) -> Result<usize, DriverError> {
    let live = s
        .retry("list members", |c| async move { c.list_children(MEMBERS).await })
        .await?;
    let applied = applied_by(s, &live).await?;
    let limit = live
        .iter()
        .map(|m| applied.get(m).copied().unwrap_or(0))
        .fold(pos, u64::min);
    let names = s
        .retry("list the queue", |c| async move { c.list_children(QUEUE).await })
        .await?;
    let mut old: Vec<(u64, String)> = names
        .into_iter()
        .filter_map(|n| sequence(&n).map(|q| (q, n)))
        .filter(|(q, _)| *q < limit)
        .collect();
    old.sort();
    if old.is_empty() {
        return Ok(0);
    }
    mark_trimmed(s, limit).await?;
    let mut trimmed = 0;
    for batch in old.chunks(TRIM_BATCH) {
        let client = s.client();
        let mut w = client.new_multi_writer();
        for (_, name) in batch {
            w.add_delete(&format!("{QUEUE}/{name}"), None)
                .map_err(|e| zk_err("trim", e))?;
        }
        w.commit().await.map_err(|e| zk_err("trim the queue", e.into()))?;
        trimmed += batch.len();
    }
    Ok(trimmed)
}

/// How far each of `members` has applied the queue, in one request.
async fn applied_by(s: &Shared, members: &[String]) -> Result<BTreeMap<String, u64>, DriverError> {
    let client = s.client();
    let mut r = client.new_multi_reader();
    for m in members {
        r.add_get_data(&format!("{APPLIED}/{m}"))
            .map_err(|e| zk_err("read applied", e))?;
    }
    let results = r.commit().await.map_err(|e| zk_err("read applied positions", e))?;
    Ok(members
        .iter()
        .zip(results)
        .filter_map(|(m, res)| match res {
            zk::MultiReadResult::Data { data, .. } => {
                let p = String::from_utf8_lossy(&data).trim().parse().ok()?;
                Some((m.clone(), p))
            }
            _ => None,
        })
        .collect())
}
