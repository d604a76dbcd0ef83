//! A panic in one route's task stays in that route.
//!
//! A bug that one node triggers (a name, a payload) is met again at every
//! start: exiting the process on it turned one bad node into a crash loop in
//! which no route mirrored anything. Instead, each route's capture and each
//! route/target worker runs under [`supervise`]: a panic is logged, counted
//! (`zkbridge_errors_total{kind="panic"}`), reported by the caller's
//! `on_panic` (status, `/readyz`), and the task is started afresh after a
//! backoff that grows while it keeps failing. Unwinding drops the task's
//! lease, whose node the lock client deletes, so a standby instance can take
//! the route/target over meanwhile. The other routes go on.
//!
//! A panic anywhere else (wiring, HTTP) still ends the process with exit
//! code 70, so that the service manager restarts it: [`install_panic_hook`]
//! tells the two apart.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tracing::error;

use crate::backoff::Backoff;
use crate::shutdown::Shutdown;

tokio::task_local! {
    /// Set while a supervised task runs: its panics are its own.
    static SUPERVISED: ();
}

/// Exit code of a panic outside a supervised task (EX_SOFTWARE).
pub const PANIC_EXIT_CODE: i32 = 70;

/// Logs every panic; ends the process on one that no supervisor catches.
pub fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        if SUPERVISED.try_with(|_| ()).is_ok() {
            error!(panic = %info, "internal error in a route's task: restarting that task");
        } else {
            error!(panic = %info, "internal error: exiting so that the process is restarted");
            std::process::exit(PANIC_EXIT_CODE);
        }
    }));
}

/// Runs the task `start` makes until it returns, restarting it after each
/// panic (with `on_panic(message, retry_in)` called first) until `shutdown`.
pub async fn supervise<Task, Fut>(mut start: Task, mut on_panic: impl FnMut(&str, Duration), mut shutdown: Shutdown)
where
    Task: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let started = tokio::time::Instant::now();
        let Err(panic) = SUPERVISED.scope((), AssertUnwindSafe(start()).catch_unwind()).await else {
            return;
        };
        // A task that ran a good while before failing starts the backoff
        // over: it is not failing in a loop.
        if started.elapsed() > Duration::from_secs(300) {
            backoff.reset();
        }
        let message = panic_message(&*panic);
        let retry_in = backoff.next_delay();
        on_panic(&message, retry_in);
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {}
            _ = shutdown.requested() => return,
        }
        if shutdown.is_requested() {
            return;
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_with_a_growing_backoff() {
        let runs = Arc::new(AtomicU32::new(0));
        let delays = Arc::new(Mutex::new(Vec::new()));
        let (_stop, shutdown) = crate::shutdown::channel();
        let counted = runs.clone();
        let seen = delays.clone();
        supervise(
            move || {
                let counted = counted.clone();
                async move {
                    if counted.fetch_add(1, Ordering::SeqCst) < 3 {
                        panic!("boom");
                    }
                }
            },
            move |message, retry_in| {
                assert_eq!(message, "boom");
                seen.lock().unwrap().push(retry_in);
            },
            shutdown,
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 4, "three panics, then a clean end");
        let delays = delays.lock().unwrap().clone();
        assert_eq!(delays.len(), 3);
        assert!(delays[0] < delays[1] && delays[1] < delays[2], "{delays:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_between_restarts() {
        let (stop, shutdown) = crate::shutdown::channel();
        let handle = tokio::spawn(supervise(|| async { panic!("always") }, |_, _| {}, shutdown));
        tokio::time::sleep(Duration::from_millis(10)).await;
        stop.fire();
        tokio::time::timeout(Duration::from_secs(1), handle)
            .await
            .expect("supervisor stopped")
            .unwrap();
    }
}
