//! The operational HTTP routes every service serves: `/metrics` (the Prometheus text format, or
//! OpenMetrics with exemplars when the scraper's `Accept` asks for it), `/health/live`,
//! `/health/ready`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::Registry;

/// Whether a service is ready for traffic; flipped by the service as its dependencies come up.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct OpsState {
    registry: Registry,
    readiness: Readiness,
}

pub fn router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(OpsState { registry, readiness })
}

/// The Prometheus text format, or OpenMetrics with exemplars for a scraper that asks for it.
async fn metrics(State(s): State<OpsState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if crate::metrics::wants_openmetrics(accept) {
        let body = crate::metrics::render_openmetrics(&s.registry, crate::metrics::exemplars());
        return ([(header::CONTENT_TYPE, crate::metrics::OPENMETRICS_CONTENT_TYPE)], body).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::render(&s.registry)).into_response()
}

async fn live() -> Response {
    axum::Json(serde_json::json!({"status": "alive"})).into_response()
}

async fn ready(State(s): State<OpsState>) -> Response {
    if s.readiness.is_ready() {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"status": "not ready"}))).into_response()
    }
}

/// How long a client may take to send a request's head (request line and headers), unless a
/// service sets its own: a connection that trickles it is closed, so slow or stuck clients
/// cannot pile up connections. The deadline runs from when the server waits for a head, so it
/// also closes a connection that sends nothing — opened and silent, or kept alive after its
/// last request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `addr` until `shutdown` resolves; then stops accepting, lets the requests
/// in flight finish and closes idle connections. `header_timeout`: see [`HEADER_READ_TIMEOUT`].
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    header_timeout: Duration,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "http listening");
    serve_on(listener, router, shutdown, header_timeout).await;
    Ok(())
}

/// The accept loop of [`serve`]: one HTTP/1 connection per client, each with `header_timeout`
/// for every request head, all watched for a graceful shutdown.
async fn serve_on(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    header_timeout: Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let accept_errors = crate::logs::Throttle::per_second();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin or give up.
                    if let Some(suppressed) = accept_errors.allow() {
                        tracing::warn!(error = %e, suppressed, "cannot accept a connection");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// For a service whose main loop is not async: serves `router` on `addr` from `runtime` until
/// `stop` is set, and sets `stop` on the first SIGTERM or SIGINT, logging `on_signal`.
pub fn serve_until_stopped(runtime: &tokio::runtime::Runtime, addr: SocketAddr, router: Router, stop: Arc<AtomicBool>, on_signal: &'static str) {
    let http_stop = stop.clone();
    runtime.spawn(async move {
        if let Err(e) = serve(addr, router, stopped(http_stop), HEADER_READ_TIMEOUT).await {
            tracing::error!(error = %e, %addr, "ops http server failed");
        }
    });
    stop_on_signal(runtime, stop, Some(on_signal));
}

/// Sets `stop` on the first SIGTERM or SIGINT (Ctrl-C), from a task on `runtime`, logging
/// `on_signal` when given.
pub fn stop_on_signal(runtime: &tokio::runtime::Runtime, stop: Arc<AtomicBool>, on_signal: Option<&'static str>) {
    runtime.spawn(async move {
        shutdown_signal().await;
        if let Some(message) = on_signal {
            tracing::info!("{message}");
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// Resolves once `stop` is set (checked every 100 ms): a shutdown future for `serve` in services
/// whose main loop is not async.
pub async fn stopped(stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Instant;

    use super::*;

    /// Sends `bytes` on a fresh connection and reads until the server closes it (or 5 s pass);
    /// what came back, and how long until the close.
    fn exchange(addr: SocketAddr, bytes: &'static [u8]) -> (String, Duration) {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        stream.write_all(bytes).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
    }

    async fn server(header_timeout: Duration) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let router = Router::new()
            .route("/x", get(|| async { "ok" }))
            .route("/slow", get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "slow ok"
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_on(listener, router, async move { let _ = stopped.await; }, header_timeout));
        (addr, stop, task)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_request_head_that_trickles_is_cut_off_and_whole_ones_are_served() {
        let (addr, _stop, _task) = server(Duration::from_millis(300)).await;
        let (answer, _) = tokio::task::spawn_blocking(move || exchange(addr, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ok"), "{answer}");
        // The head never ends: the connection is closed once the deadline passes, without an answer.
        let (answer, took) = tokio::task::spawn_blocking(move || exchange(addr, b"GET /x HTTP/1.1\r\nHost: a\r\n")).await.unwrap();
        assert!(!answer.contains("200 OK"), "{answer}");
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(4), "closed after {took:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn idle_connections_are_closed_after_the_head_deadline() {
        let (addr, _stop, _task) = server(Duration::from_millis(300)).await;
        // Connected, nothing sent; and kept alive after a request, nothing more sent: neither
        // holds a connection (a file descriptor and a task) past the deadline.
        for sent in [&b""[..], b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"] {
            let (answer, took) = tokio::task::spawn_blocking(move || exchange(addr, sent)).await.unwrap();
            assert_eq!(answer.contains("200 OK"), !sent.is_empty(), "{answer}");
            assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(4), "closed after {took:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn shutting_down_finishes_the_requests_in_flight() {
        let (addr, stop, task) = server(HEADER_READ_TIMEOUT).await;
        let slow = tokio::task::spawn_blocking(move || exchange(addr, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.send(()).unwrap();
        let (answer, _) = slow.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("slow ok"), "{answer}");
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("the server stops once its connections are done").unwrap();
        assert!(std::net::TcpStream::connect(addr).is_err(), "still accepting after the shutdown");
    }
}
