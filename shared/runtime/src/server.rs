//! The HTTP endpoint of a daemon's metrics and health, on the address of
//! `[imaged] metrics_bind`:
//!
//! * `GET /metrics` — every metric of [`Metrics`] in the Prometheus text
//!   format; the daemon's queue gauges are refreshed from the catalog first.
//! * `GET /healthz` — JSON with readiness, whether the catalog answers a
//!   ping, and the last pass; `200` when healthy, `503` otherwise.
//!
//! Both answers are bounded in time: a catalog that hangs makes `/healthz`
//! say "unreachable" after [`PROBE_TIMEOUT`] and leaves the queue gauges
//! at their previous values rather than stalling the scrape.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use imaged_catalog::Catalog;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::RuntimeError;
use crate::metrics::{CONTENT_TYPE, Metrics, PassOutcome};

/// Longest wait for the catalog ping of `/healthz` and for the queue
/// refresh of `/metrics`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a stopping server waits for open scrapes before it drops them.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Reads the daemon's queue gauges afresh (e.g. from the catalog); called
/// before each `/metrics` answer.
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// What the endpoints consult besides the registry.
#[derive(Clone, Default)]
pub struct Probes {
    /// The catalog `/healthz` pings; without one the database is not part of
    /// the verdict (a cache daemon without the central catalog).
    pub catalog: Option<Catalog>,
    /// Queue refresh before `/metrics`.
    pub refresh: Option<Refresh>,
}

impl Probes {
    /// Probes that ping `catalog` and run no refresh.
    pub fn catalog(catalog: Catalog) -> Self {
        Probes {
            catalog: Some(catalog),
            refresh: None,
        }
    }

    /// Adds a refresh run before each `/metrics` answer.
    pub fn with_refresh<F, Fut>(mut self, refresh: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.refresh = Some(Arc::new(move || Box::pin(refresh())));
        self
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    probes: Probes,
}

/// A running metrics/health server; stop it with [`MetricsServer::stop`].
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` (`host:port`; port 0 picks a free one) and serves.
    /// Failing to bind is an error the daemon must refuse to start on.
    pub async fn start(
        addr: &str,
        metrics: Metrics,
        probes: Probes,
    ) -> Result<MetricsServer, RuntimeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RuntimeError::MetricsBind {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| RuntimeError::MetricsBind {
                addr: addr.to_string(),
                source,
            })?;
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(health_handler))
            .with_state(AppState { metrics, probes });
        let stop = CancellationToken::new();
        let signal = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::error!(%error, "metrics server failed");
            }
        });
        tracing::info!(addr = %local, "serving /metrics and /healthz");
        Ok(MetricsServer {
            addr: local,
            stop,
            task,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open scrapes finish briefly, then drops them.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(STOP_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    if let Some(refresh) = &s.probes.refresh
        && tokio::time::timeout(PROBE_TIMEOUT, refresh())
            .await
            .is_err()
    {
        tracing::warn!("queue metrics not refreshed: the catalog did not answer in time");
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.metrics.encode())
}

async fn health_handler(State(s): State<AppState>) -> impl IntoResponse {
    let (status, body) = health(&s.metrics, &s.probes).await;
    (status, axum::Json(body))
}

/// The `/healthz` verdict and body.
pub async fn health(metrics: &Metrics, probes: &Probes) -> (StatusCode, serde_json::Value) {
    let database = match &probes.catalog {
        None => None,
        Some(c) => Some(match tokio::time::timeout(PROBE_TIMEOUT, c.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
        }),
    };
    let ready = metrics.is_ready();
    let last = metrics.last_pass();
    let db_ok = database.as_ref().is_none_or(Result::is_ok);
    let pass_ok = last
        .as_ref()
        .is_none_or(|p| p.outcome != PassOutcome::Error);
    let healthy = ready && db_ok && pass_ok;
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "daemon": metrics.program(),
        "version": env!("CARGO_PKG_VERSION"),
        "ready": ready,
        "uptime_seconds": metrics.uptime().as_secs_f64(),
        "database": match &database {
            None => json!(null),
            Some(Ok(())) => json!({"reachable": true, "error": null}),
            Some(Err(e)) => json!({"reachable": false, "error": e}),
        },
        "last_pass": last.map(|p| json!({
            "pass": p.pass,
            "outcome": p.outcome.as_str(),
            "finished_at": p.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "duration_seconds": p.duration.as_secs_f64(),
            "error": p.error,
        })),
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
