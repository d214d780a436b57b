//! Prometheus metrics: the text exposition (PURE) and the small HTTP server that serves it.
//!
//! What it owns: turning a [`Report`] into the Prometheus text format, version 0.0.4, and answering
//! `GET /metrics` with the latest one. What it must never do: touch the data path. Workers send
//! their snapshots to the main thread as they already do for `--stats-interval`; the main thread
//! merges them into a `Report` and swaps it into [`Published`]; the server thread takes the
//! current `Arc<Report>` under a lock held only for that pointer copy, and renders outside it. No
//! worker ever sees the lock, so a slow scraper costs the relay nothing.
//!
//! Why hand-written: the metric set is fixed (one family per `Counters` field, drops by reason,
//! two latency histograms), the format is a line per sample, and rendering from the `Report` we
//! already have keeps one source of truth. The `prometheus` crate (0.14) would add 13 crates to
//! tunfwd's 32, protobuf among them, and a registry of atomics updated beside our counters (the
//! shared registry the house style avoids); `prometheus-client` would add 8 and still want its
//! own metric types registered and updated; `tiny_http` would add 5, and its own threads and
//! parser, for what is here a dozen lines of request-line parsing. This module adds no
//! dependency, in about as many lines as the glue to those crates would take.
//! A real parser (the `prometheus-parse` crate, a dev-dependency) checks its output in the tests.
//!
//! The server is deliberately small, and bounded whatever its clients do: one thread, non-blocking
//! sockets and `poll(2)` over the listener and every open connection. Each connection has
//! [`REQUEST_DEADLINE`] (2 s) from its accept to the last byte of its answer, however slowly it
//! sends its request or reads the answer, and is closed when that passes; the request head is
//! capped at [`MAX_REQUEST_HEAD`] (8 KiB); at most [`MAX_CONNECTIONS`] (64) are open at once, and
//! one more evicts the connection nearest its deadline (the oldest, as every deadline is as
//! long); every response says `Connection: close`. A Prometheus scrape's request arrives whole
//! within a round trip and is answered in the poll turn it arrives in, so slow clients, even a
//! table full of them, cost it at most a turn. Memory is bounded by the table: 64 heads or
//! answers. The decisions (what a connection waits for, when it expires, whom to evict) are a
//! pure table, `Connections`, tested on fake time without a socket; the thread around it only
//! turns them into system calls.

//!
//! `render` writes the exposition (PURE); `server` is the HTTP server and its connection table.

mod render;
mod server;

pub use render::render;
pub use server::{bind, fuzz_request, spawn_server};

use crate::stats::Report;
use std::sync::{Arc, Mutex};

/// The latest report, shared between the main thread (which replaces it) and the server thread
/// (which reads it). The lock guards one pointer copy; workers never touch it.
pub struct Published {
    latest: Mutex<Arc<Report>>,
    /// The latest report's exposition, rendered once per report rather than once per scrape
    /// (rendering a 64-queue report takes about a millisecond, and any client may ask).
    rendered: Mutex<Option<(Arc<Report>, Arc<str>)>>,
}

impl Published {
    pub fn new(report: Report) -> Arc<Published> {
        Arc::new(Published {
            latest: Mutex::new(Arc::new(report)),
            rendered: Mutex::new(None),
        })
    }

    pub fn publish(&self, report: Report) {
        let report = Arc::new(report);
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }

    pub fn latest(&self) -> Arc<Report> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The latest report as `/metrics` serves it: rendered at the first scrape after it was
    /// published, and the same text for every scrape until the next one. Only the server
    /// thread calls this, so the lock is never contended.
    pub fn rendered(&self) -> Arc<str> {
        let latest = self.latest();
        let mut cache = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((report, text)) = &*cache
            && Arc::ptr_eq(report, &latest)
        {
            return text.clone();
        }
        let text: Arc<str> = render(&latest).into();
        *cache = Some((latest, text.clone()));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report is rendered once however many scrapes ask, and again once a new one is published.
    #[test]
    fn a_report_is_rendered_once_per_publication() {
        let published = Published::new(render::tests::report());
        let first = published.rendered();
        assert!(
            Arc::ptr_eq(&first, &published.rendered()),
            "served from the cache"
        );
        assert_eq!(&*first, render(&published.latest()));
        published.publish(render::tests::report());
        let second = published.rendered();
        assert!(!Arc::ptr_eq(&first, &second), "a new report, rendered anew");
        assert_eq!(&*second, render(&published.latest()));
    }
}
