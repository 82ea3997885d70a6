//! Logging: JSON lines for machines, text for people; `RUST_LOG` filters, default `info`.

use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Where log lines go: the service logs to stdout; helper commands keep stdout for their output.
#[derive(Debug, Clone, Copy)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// Installs the global subscriber (once; later calls are no-ops).
pub fn init(format: LogFormat, default_filter: &str, target: LogTarget) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("RUST_LOG {spec:?} is not a valid filter ({e}); using {default_filter:?}");
            EnvFilter::new(default_filter)
        }),
        _ => EnvFilter::new(default_filter),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(match target {
            LogTarget::Stdout => BoxMakeWriter::new(std::io::stdout),
            LogTarget::Stderr => BoxMakeWriter::new(std::io::stderr),
        });
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
