//! Progress of `zkbridge sync`: a bar on a terminal, plain periodic lines
//! otherwise (logs, CI), and a final summary.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::bridge::Bridge;

/// Totals over every route/target of a sync.
#[derive(Default, Clone, Copy)]
struct Totals {
    scanned: u64,
    planned: u64,
    written: u64,
    deleted: u64,
}

fn totals(bridge: &Bridge) -> Totals {
    let mut t = Totals::default();
    for w in bridge.mirrors() {
        let s = w.status.borrow();
        t.scanned += s.scanned;
        t.planned += s.planned;
        t.written += s.written;
        t.deleted += s.deleted;
    }
    t
}

pub struct SyncProgress {
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl SyncProgress {
    pub fn new(_bridge: &Bridge) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} ops ({per_sec}, ETA {eta}) {msg}",
                )
                .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        SyncProgress {
            bar,
            last_line: Instant::now(),
        }
    }

    pub fn tick(&mut self, bridge: &Bridge, started: Instant) {
        let t = totals(bridge);
        let done = t.written + t.deleted;
        match &self.bar {
            Some(bar) => {
                bar.set_length(t.planned.max(done));
                bar.set_position(done);
                bar.set_message(format!(
                    "scanned {}, written {}, deleted {}",
                    t.scanned, t.written, t.deleted
                ));
            }
            None if self.last_line.elapsed() >= Duration::from_secs(2) => {
                self.last_line = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let rate = done as f64 / secs;
                let eta = if rate > 0.0 && t.planned > done {
                    format!("{:.0}s", (t.planned - done) as f64 / rate)
                } else {
                    "-".into()
                };
                eprintln!(
                    "sync: scanned {} nodes, written {}, deleted {} of {} planned ops, {rate:.0} ops/s, ETA {eta}",
                    t.scanned, t.written, t.deleted, t.planned
                );
            }
            None => {}
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// One line per route/target and a total.
    pub fn summary(&self, bridge: &Bridge, started: Instant) -> String {
        let t = totals(bridge);
        let mut out = String::new();
        for w in bridge.mirrors() {
            let checkpoint = w
                .status
                .borrow()
                .checkpoint
                .as_ref()
                .map(|c| format!("{:#x}", c.source_zxid))
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!("{}/{}: synced, checkpoint {checkpoint}\n", w.route, w.target));
        }
        let secs = started.elapsed().as_secs_f64();
        out.push_str(&format!(
            "sync done in {secs:.1}s: {} nodes scanned, {} written, {} deleted ({:.0} ops/s)\n",
            t.scanned,
            t.written,
            t.deleted,
            (t.written + t.deleted) as f64 / secs.max(0.001)
        ));
        out
    }
}
