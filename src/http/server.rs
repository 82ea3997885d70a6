//! The HTTP server: an accept loop over hyper's HTTP/1 connections, with the limits a public
//! port needs.
//!
//! - At most `MAX_CONNECTIONS` open connections; past that a new one is closed at once.
//! - `HEADER_READ_TIMEOUT`: a client that does not finish its request headers in time is
//!   disconnected (hyper's own timer; it also runs while a keep-alive connection waits for
//!   its next request).
//! - `IDLE_TIMEOUT`: a keep-alive connection with no request for this long is closed.
//! - The body-read timeout is the webhook handler's (`BODY_READ_TIMEOUT`).
//! - On shutdown: stop accepting, close connections with no request in flight (idle ones,
//!   and ones still sending headers), let requests in flight finish for up to
//!   `SHUTDOWN_GRACE`, then drop whatever is left.
//!
//! Each limit counts in `sym_approver_connections_closed_total{reason}` when it trips.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::HttpConfig;
use crate::metrics::Metrics;

/// Why a connection was closed by the server (a metrics label).
pub use crate::metrics::connection_reason as reason;

/// Serves `router` on `listener` until `shutdown`, then drains within the grace period.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let mut connections = JoinSet::new();
    let accept_errors = crate::telemetry::RateLimit::per_second(1);
    let refusals = crate::telemetry::RateLimit::per_second(1);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off a moment instead of spinning.
                if let Some(suppressed) = accept_errors.allow() {
                    tracing::warn!(error = %e, suppressed, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics.connection_closed(reason::OVER_CAPACITY);
            if let Some(suppressed) = refusals.allow() {
                tracing::warn!(
                    max = config.max_connections,
                    suppressed,
                    "connection refused: MAX_CONNECTIONS open"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics.connection_opened();
        let connection = Connection {
            router: router.clone(),
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        connections.spawn(async move {
            connection.run(stream).await;
            drop(permit);
        });
    }
    drop(listener);
    // Connections saw the same token: idle ones close now, busy ones after their response.
    let open = connections.len();
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let left = connections.len();
        for _ in 0..left {
            metrics.connection_closed(reason::SHUTDOWN_FORCED);
        }
        connections.abort_all();
        tracing::warn!(
            left,
            grace_s = config.shutdown_grace.as_secs_f64(),
            "connections still open after SHUTDOWN_GRACE were dropped"
        );
    } else if open > 0 {
        tracing::info!(connections = open, "open connections closed");
    }
}

struct Connection {
    router: Router,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(CountingIo {
            inner: stream,
            activity: Arc::clone(&activity),
        });
        let router = self.router;
        let tracked = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let router = router.clone();
            let activity = Arc::clone(&tracked);
            async move {
                activity.request_started();
                let response = router.oneshot(request.map(Body::new)).await;
                activity.request_finished();
                response
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(true);
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let mut tick = tokio::time::interval(
            (self.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        );
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        if e.is_timeout() {
                            self.metrics.connection_closed(reason::HEADER_TIMEOUT);
                        }
                    }
                    break;
                }
                () = self.shutdown.cancelled(), if !closing => {
                    if activity.in_flight() == 0 {
                        // Idle, or still sending headers: no request has started, so none is
                        // cut off by closing now (a client that was sending one retries).
                        break;
                    }
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = tick.tick(), if !closing => {
                    if activity.idle_for() >= self.idle_timeout {
                        self.metrics.connection_closed(reason::IDLE);
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
        self.metrics.connection_finished();
    }
}

/// What a connection is doing, for the idle timeout: requests in flight, requests served,
/// and whether bytes of a next request have arrived since the last response.
struct Activity {
    started: Instant,
    active: AtomicUsize,
    served: AtomicU64,
    /// Milliseconds since `started` of the last response.
    last_response_ms: AtomicU64,
    read_since_response: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            active: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            last_response_ms: AtomicU64::new(0),
            read_since_response: AtomicBool::new(false),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn in_flight(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    fn request_started(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
    }

    fn request_finished(&self) {
        self.read_since_response.store(false, Ordering::SeqCst);
        self.last_response_ms
            .store(self.elapsed_ms(), Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// How long the connection has been idle between requests. Zero before its first
    /// request (the header-read timeout covers that), during one, and once bytes of the
    /// next one have arrived.
    fn idle_for(&self) -> Duration {
        if self.active.load(Ordering::SeqCst) > 0
            || self.served.load(Ordering::SeqCst) == 0
            || self.read_since_response.load(Ordering::SeqCst)
        {
            return Duration::ZERO;
        }
        let last = self.last_response_ms.load(Ordering::SeqCst);
        Duration::from_millis(self.elapsed_ms().saturating_sub(last))
    }
}

/// The socket, noting when bytes arrive.
struct CountingIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity
                .read_since_response
                .store(true, Ordering::SeqCst);
        }
        polled
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
