//! Peer writes still landing, by object and the epoch they were accepted at.
//!
//! A gateway acknowledges a write once every replica of its epoch has it, and does not
//! send it again to the nodes that own the object at the next epoch: they get it only by
//! recovery, copying an old holder's copy. So a copy read for recovery at epoch E must
//! hold every write its node accepted before E. Epochs reach nodes at slightly different
//! moments, and a write accepted just before its node moved on may still be on its way to
//! the disk; a recovery read of an object at E first waits for the node to reach E (after
//! which it accepts no write of an older epoch) and then for those writes to the object to
//! land.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use protocol::Oid;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Landing {
    /// Writes in flight, by object and the epoch their request names.
    writes: Mutex<BTreeMap<(Oid, u32), usize>>,
    /// Woken when the last write of an object and epoch landed.
    landed: Notify,
}

/// One write in flight; it has landed (or failed) when this is dropped.
pub struct InFlight<'a> {
    landing: &'a Landing,
    key: (Oid, u32),
}

impl Landing {
    fn counts(&self) -> MutexGuard<'_, BTreeMap<(Oid, u32), usize>> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a write into `oid` of `epoch` in flight. Taken before the write's epoch is
    /// checked, so a recovery read that saw this node at a newer epoch either waits for it
    /// or it is refused.
    pub fn enter(&self, oid: Oid, epoch: u32) -> InFlight<'_> {
        let key = (oid, epoch);
        *self.counts().entry(key).or_default() += 1;
        InFlight { landing: self, key }
    }

    fn before(&self, oid: Oid, epoch: u32) -> bool {
        self.counts().range((oid, 0)..(oid, epoch)).next().is_some()
    }

    /// Waits until no write into `oid` of an epoch before `epoch` is in flight; `false`
    /// when some still are after `limit`.
    pub async fn drained_before(&self, oid: Oid, epoch: u32, limit: Duration) -> bool {
        let drained = async {
            loop {
                // Listening before looking, so a write that lands in between wakes us.
                let woken = self.landed.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if !self.before(oid, epoch) {
                    return;
                }
                woken.await;
            }
        };
        tokio::time::timeout(limit, drained).await.is_ok()
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut counts = self.landing.counts();
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
                drop(counts);
                self.landing.landed.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(5);
    const X: Oid = Oid(0x00ab_0000_0000_0001);
    const Y: Oid = Oid(0x00ab_0000_0000_0002);

    #[tokio::test]
    async fn a_recovery_read_waits_for_the_writes_of_older_epochs_only() {
        let l = Landing::default();
        let old = l.enter(X, 3);
        let same = l.enter(X, 4);
        assert!(
            !l.drained_before(X, 4, Duration::from_millis(50)).await,
            "a write of epoch 3 is still landing"
        );
        assert!(
            l.drained_before(X, 3, LONG).await,
            "nothing before epoch 3 is in flight"
        );
        assert!(
            l.drained_before(Y, 4, LONG).await,
            "other objects' writes do not hold it"
        );
        let waiting = l.drained_before(X, 4, LONG);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waiting.as_mut())
                .await
                .is_err(),
            "the read waits while the old write is in flight"
        );
        drop(old);
        assert!(waiting.await, "the read goes on once the old write landed");
        assert!(
            l.drained_before(X, 4, LONG).await,
            "a write of its own epoch does not hold it"
        );
        drop(same);
        assert!(l.counts().is_empty());
    }

    #[tokio::test]
    async fn writes_of_one_epoch_hold_a_read_until_the_last_lands() {
        let l = Landing::default();
        let (a, b) = (l.enter(X, 7), l.enter(X, 7));
        drop(a);
        assert!(!l.drained_before(X, 8, Duration::from_millis(50)).await);
        drop(b);
        assert!(l.drained_before(X, 8, LONG).await);
    }
}
