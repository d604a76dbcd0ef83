//! Shutdown as a type. Whoever owns a group of tasks holds the [`Trigger`];
//! each task holds a [`Shutdown`] and asks it whether to stop, or awaits
//! [`Shutdown::requested`] beside its work. A dropped trigger counts as a
//! request: a task whose owner is gone stops instead of running unowned.

use tokio::sync::watch;

/// Stops the tasks holding its [`Shutdown`]s.
pub struct Trigger(watch::Sender<bool>);

/// A task's view of its owner's [`Trigger`]. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A trigger and the first view of it.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Whether the tasks should stop now.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Resolves once a stop is requested (at once when it already was).
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fired_or_dropped_trigger_stops_every_view() {
        let (trigger, mut shutdown) = channel();
        let mut other = shutdown.clone();
        assert!(!shutdown.is_requested());
        trigger.fire();
        shutdown.requested().await;
        other.requested().await;
        assert!(shutdown.is_requested() && other.is_requested());

        let (trigger, mut orphan) = channel();
        drop(trigger);
        assert!(orphan.is_requested(), "nobody left to stop it: it stops");
        orphan.requested().await;
    }
}
