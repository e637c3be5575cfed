//! Sealing a stale replica's marks before it is declared in sync.
//!
//! A resync source declares a stale replica in sync once no server holds marks for it (see
//! [`crate::resync`]). Between its count of the marks and the group's commit, a write routed
//! by the old view could still fail on that replica and have the current replicas record it as
//! missed — after the count. The replica would then be declared in sync without that write,
//! and the mark dropped as no longer needed: an acknowledged write in one copy only. So the
//! source first *seals* the replica at every server that may hold marks for it
//! ([`Seals::seal`]): from then on that server refuses (`Rerouted`) any new mark for it
//! carried by a change routed by the sealed epoch or an earlier one, and the count is taken
//! under the same lock, so each such mark is either counted or refused. The in-sync commit
//! names the sealed epoch and is refused if the volume's epoch moved meanwhile. A gateway whose
//! marks are refused routes its change again by the newer view, in which the replica is
//! current and takes the change itself (or fails and is marked stale again).
//!
//! Once a server's view shows a later epoch, a mark for a replica that is current for the
//! chunk in that view, carried by a change of an older epoch, is refused the same way: it is
//! the same race, seen after the commit. A server's marks for itself (its copy is suspect) are
//! never refused. The source lifts its seals when it does not declare the replica in sync after
//! all (some server still holds marks for it, or the group refused): the replica may itself be
//! asking for a chunk to be marked for it. A seal lapses after [`SEAL_LEASE`] in any case, so
//! that an in-sync commit that never comes (the group cannot be reached) does not keep refusing
//! writes. A seal is not lifted after the commit: a server that has not seen the new epoch yet
//! must still refuse.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_types::{ServerId, VolumeId};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::view::VolumeView;

/// How long a seal refuses marks if no later epoch comes.
pub const SEAL_LEASE: Duration = Duration::from_secs(30);

/// The sealed (volume, replica)s of this server: the epoch sealed, and when.
pub type Sealed = HashMap<(VolumeId, ServerId), (u64, Instant)>;

/// The seals of this server (see the module documentation).
#[derive(Default)]
pub struct Seals {
    sealed: Arc<RwLock<Sealed>>,
}

/// Held while admitted marks are recorded: a seal waits for them.
pub type MarksAdmitted = OwnedRwLockReadGuard<Sealed>;

impl Seals {
    /// Admits marks for `missed` (recorded by server `me`) of `chunk` of `volume`, carried by a
    /// change routed by `epoch`, where `view` is this server's view of the volume. Returns the
    /// guard to hold until they are recorded (`None` when there are none), or why they are
    /// refused.
    pub async fn admit(
        &self,
        volume: VolumeId,
        chunk: u64,
        missed: &[ServerId],
        epoch: u64,
        me: ServerId,
        view: Option<&VolumeView>,
    ) -> Result<Option<MarksAdmitted>, String> {
        if missed.iter().all(|s| *s == me) {
            return Ok(None);
        }
        let sealed = self.sealed.clone().read_owned().await;
        for server in missed.iter().filter(|s| **s != me) {
            if let Some((at, since)) = sealed.get(&(volume, *server)) {
                if epoch <= *at && since.elapsed() < SEAL_LEASE {
                    return Err(format!(
                        "server {server} is being declared in sync for volume {volume} at epoch {at}; route the change again"
                    ));
                }
            }
            if let Some(v) = view {
                if v.epoch > epoch && v.current(*server, chunk) {
                    return Err(format!(
                        "server {server} is current for chunk {chunk} of volume {volume} at epoch {}, not {epoch}; route the change again",
                        v.epoch
                    ));
                }
            }
        }
        Ok(Some(sealed))
    }

    /// Seals `server` for `volume` at `epoch`, once the marks being recorded are in; returns
    /// the seal's lock, under which the caller counts the marks left.
    pub async fn seal(
        &self,
        volume: VolumeId,
        server: ServerId,
        epoch: u64,
    ) -> OwnedRwLockWriteGuard<Sealed> {
        let mut sealed = self.sealed.clone().write_owned().await;
        sealed.retain(|_, (_, since)| since.elapsed() < SEAL_LEASE);
        let entry = sealed
            .entry((volume, server))
            .or_insert((epoch, Instant::now()));
        *entry = (entry.0.max(epoch), Instant::now());
        sealed
    }

    /// Lifts the seal of `server` for `volume` at `epoch` (or earlier): it is not declared in
    /// sync after all (marks were left, or the group refused), so marks for it are needed again.
    pub async fn lift(&self, volume: VolumeId, server: ServerId, epoch: u64) {
        let mut sealed = self.sealed.write().await;
        if sealed
            .get(&(volume, server))
            .is_some_and(|(at, _)| *at <= epoch)
        {
            sealed.remove(&(volume, server));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sealed_replica_takes_no_marks_of_the_sealed_epoch_or_earlier() {
        let seals = Seals::default();
        let (volume, me, stale) = (
            VolumeId::new_random(),
            ServerId::new_random(),
            ServerId::new_random(),
        );
        assert!(seals
            .admit(volume, 0, &[stale], 5, me, None)
            .await
            .expect("not sealed yet")
            .is_some());
        drop(seals.seal(volume, stale, 5).await);
        for epoch in [4, 5] {
            let refused = seals.admit(volume, 0, &[stale], epoch, me, None).await;
            assert!(refused.is_err(), "epoch {epoch} admitted");
        }
        assert!(seals.admit(volume, 0, &[stale], 6, me, None).await.is_ok());
        // Lifted (it was not declared in sync after all): its marks are taken again.
        seals.lift(volume, stale, 5).await;
        assert!(seals.admit(volume, 0, &[stale], 5, me, None).await.is_ok());
        // Its own marks and another server's are not sealed.
        assert!(seals.admit(volume, 0, &[me], 5, me, None).await.is_ok());
        assert!(seals
            .admit(volume, 0, &[ServerId::new_random()], 5, me, None)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_seal_waits_for_the_marks_being_recorded() {
        let seals = Arc::new(Seals::default());
        let (volume, me, stale) = (
            VolumeId::new_random(),
            ServerId::new_random(),
            ServerId::new_random(),
        );
        let recording = seals
            .admit(volume, 0, &[stale], 5, me, None)
            .await
            .expect("admitted");
        let sealing = {
            let seals = seals.clone();
            tokio::spawn(async move { drop(seals.seal(volume, stale, 5).await) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !sealing.is_finished(),
            "the seal did not wait for the marks"
        );
        drop(recording);
        sealing.await.expect("sealed");
    }
}
