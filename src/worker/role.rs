//! The one place where a worker starts and stops leading: the leader gauge,
//! the queue's mode, the balancer's count and the published status change
//! together here, so that they never disagree.

use super::*;

impl Worker {
    pub(super) fn take_lead(&self, lease: &Lease) {
        info!(lease = %lease.path(), "holding the lease: leading");
        *self.counted.lock().unwrap() = Some(self.identity.balancer.count());
        self.metrics.leader.set(1);
        self.status.update(|s| {
            s.leadership = status::Leadership::Leading { since_ms: now_ms() };
            s.initial_sync_done = false;
        });
        self.queue.set_leading(true);
    }

    /// Gives the lease up as `end` requires (released at once unless it is
    /// already lost, so that a standby takes over without waiting for the
    /// session timeout).
    pub(super) async fn leave_lead(&self, lease: Lease, end: LeadEnd) {
        self.queue.set_leading(false);
        self.status
            .update(|s| s.leadership = status::Leadership::Waiting { behind: None });
        self.metrics.leader.set(0);
        // Uncounted now (a surplus release was uncounted when claimed).
        drop(self.counted.lock().unwrap().take());
        match end {
            LeadEnd::Shutdown => lease.release().await,
            LeadEnd::Surplus => {
                info!(
                    fair_share = self.identity.balancer.fair_share(),
                    "handing the lease to another instance"
                );
                lease.release().await;
            }
            LeadEnd::LeaseLost => warn!("lease lost: stopped writing; standing by"),
        }
    }
}
