//! The operational HTTP routes every service serves: `/metrics` (the Prometheus text format, or
//! OpenMetrics with exemplars when the scraper's `Accept` asks for it), `/health/live`,
//! `/health/ready`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Serves `router` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "http listening");
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
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
        if let Err(e) = serve(addr, router, stopped(http_stop)).await {
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
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
