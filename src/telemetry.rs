//! Logging: JSON lines for machines, text for people; `RUST_LOG` filters, default `info`.

use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Where log lines go: the service logs to stdout; helper commands keep stdout for their output;
/// the demo writes them to a file, so they do not interrupt its narrative.
#[derive(Debug)]
pub enum LogTarget {
    Stdout,
    Stderr,
    File(std::fs::File),
}

/// Lines the service's log writer holds before a logging call waits for it: about 0.5 MB of
/// JSON lines at most, and a 32 kB channel set up at start.
const LOG_BUFFER_LINES: usize = 1024;

/// Keeps the service's log writer running; dropping it writes out what is still queued
/// (waiting at most a second), so hold it until the process is about to exit.
#[derive(Debug)]
#[must_use = "dropping it stops the log writer"]
pub struct LogGuard {
    _writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the global subscriber (once; later calls are no-ops).
///
/// The service's stdout is written by a thread of its own: a request's or an approval's log
/// lines are queued, not written, on its path, and the writer sends whatever has queued in one
/// write (docs/benchmark.md, "Round 11"). It never drops a line: when the queue is full, the
/// logging call waits, as a direct write to a slow stdout would. Helper commands and files
/// are written directly.
///
/// `RUST_LOG` takes a level and `target=level` pairs (`info`, `warn,sym_circleci_approver=debug`),
/// tracing's `Targets` syntax: what operators set in practice. (Span and field filters would
/// need a regex engine in the binary for a feature nobody here uses.)
pub fn init(format: LogFormat, default_filter: &str, target: LogTarget) -> LogGuard {
    let fallback = || {
        Targets::from_str(default_filter)
            .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => Targets::from_str(spec.trim()).unwrap_or_else(|e| {
            eprintln!("RUST_LOG {spec:?} is not a valid filter ({e}); using {default_filter:?}");
            fallback()
        }),
        _ => fallback(),
    };
    let to_file = matches!(target, LogTarget::File(_));
    let (writer, guard) = match target {
        LogTarget::Stdout => {
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .buffered_lines_limit(LOG_BUFFER_LINES)
                .thread_name("log-writer")
                // Buffered: the lines queued since the last write go out in one write.
                .finish(std::io::BufWriter::new(std::io::stdout()));
            (BoxMakeWriter::new(writer), Some(guard))
        }
        LogTarget::Stderr => (BoxMakeWriter::new(std::io::stderr), None),
        LogTarget::File(file) => (BoxMakeWriter::new(std::sync::Mutex::new(file)), None),
    };
    let layer = tracing_subscriber::fmt::layer()
        // Colour codes belong on a terminal, not in a file.
        .with_ansi(!to_file && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => registry.with(layer).try_init(),
    };
    LogGuard { _writer: guard }
}

/// At most `per_second` log lines a second for one kind of event (a flood of forged requests
/// must not become a flood of log lines); the lines that are let through say how many were
/// left out before them. Shared by reference across tasks.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u64,
    /// The current one-second window, as seconds since `origin`.
    window: std::sync::atomic::AtomicU64,
    in_window: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
    origin: std::time::Instant,
}

impl RateLimit {
    pub fn per_second(per_second: u64) -> Self {
        Self {
            per_second,
            window: std::sync::atomic::AtomicU64::new(0),
            in_window: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
            origin: std::time::Instant::now(),
        }
    }

    /// Some(lines left out since the last one let through) when this one may be logged.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.origin.elapsed().as_secs();
        if self.window.swap(now, SeqCst) != now {
            self.in_window.store(0, SeqCst);
        }
        if self.in_window.fetch_add(1, SeqCst) < self.per_second {
            Some(self.suppressed.swap(0, SeqCst))
        } else {
            self.suppressed.fetch_add(1, SeqCst);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_to_the_limit_and_the_next_line_counts_what_was_left_out() {
        let limit = RateLimit::per_second(3);
        let allowed = (0..100).filter_map(|_| limit.allow()).count();
        // All 100 fall in one second on any machine that runs this test in time; if the second
        // turned over mid-burst, at most one more window's worth got through.
        assert!((3..=6).contains(&allowed), "{allowed}");
    }
}
