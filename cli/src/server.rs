//! The local HTTP JSON API (loopback by default).
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/tasks` | submit: `{"input_base64": "...", "model": "<hex>", "redundancy": 2}` or `{"digits_sample": 7}` |
//! | GET | `/v1/tasks` | every task this node requested |
//! | GET | `/v1/tasks/{id}` | one task |
//! | GET | `/v1/tasks/{id}/wait?timeout_ms=N` | waits until verified or failed (or the timeout) |
//! | GET | `/v1/peers` | peers and their adverts |
//! | GET | `/v1/node` | this node's ids and addresses |
//! | GET | `/v1/stats` | this node's counters |
//! | GET | `/healthz` | `ok` while the event loop answers |
//! | GET | `/metrics` | Prometheus text |
//!
//! Errors are `{"error": "..."}` with a 4xx or 5xx status. The request and answer types are
//! the `fleetmesh-api` crate's, shared with the CLI's client and the testnet runner.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleetmesh_api::{ErrorBody, NodeInfo, NodeStats, PeerInfo, SubmitBody, Submitted, TaskView};
use fleetmesh_crypto::TaskId;
use fleetmesh_node::{Client, ClientError};
use serde::Deserialize;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the API on {addr}: {source}")]
pub struct ServeError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// A running API server: its address, and a handle to stop it.
#[must_use = "dropping the handle leaves the server running until the process ends"]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops accepting connections, lets requests in progress finish, and waits for it.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::NodeStopped => StatusCode::SERVICE_UNAVAILABLE,
            ClientError::Rejected(_) => StatusCode::BAD_REQUEST,
            ClientError::UnknownTask(_) => StatusCode::NOT_FOUND,
            ClientError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(code, e.to_string())
    }
}

fn parse_task(id: &str) -> Result<TaskId, ApiError> {
    id.parse().map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("task id: {e}")))
}

/// Binds `addr` and serves the API in the background.
pub async fn serve(addr: SocketAddr, client: Client) -> Result<Server, ServeError> {
    let err = |source| ServeError { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    let app = Router::new()
        .route("/v1/tasks", post(submit).get(list))
        .route("/v1/tasks/{id}", get(status))
        .route("/v1/tasks/{id}/wait", get(wait))
        .route("/v1/peers", get(peers))
        .route("/v1/node", get(node_info))
        .route("/v1/stats", get(stats))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(2 * fleetmesh_protocol::limits::MAX_INPUT_BYTES))
        .with_state(client);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let graceful = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = graceful.await {
            tracing::error!("API server stopped: {e}");
        }
    });
    Ok(Server { addr: bound, stop, task })
}

async fn submit(
    State(c): State<Client>,
    Json(body): Json<SubmitBody>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    use base64::Engine;
    let mut req = body.params;
    let mut expected_label = None;
    req.input = match (body.input_base64, body.digits_sample) {
        (Some(b64), None) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("input_base64: {e}")))?,
        (None, Some(i)) => {
            let set = fleetmesh_node::digits::test_set();
            let s = set.get(i).ok_or_else(|| {
                ApiError(StatusCode::BAD_REQUEST, format!("digits_sample must be below {}", set.len()))
            })?;
            expected_label = Some(s.label);
            s.to_input()
        }
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "give exactly one of input_base64 or digits_sample".into(),
            ))
        }
    };
    let id = c.submit(req).await?;
    Ok((StatusCode::ACCEPTED, Json(Submitted { task_id: id.to_string(), expected_label })))
}

async fn list(State(c): State<Client>) -> Result<Json<Vec<TaskView>>, ApiError> {
    Ok(Json(c.tasks().await?))
}

async fn status(State(c): State<Client>, Path(id): Path<String>) -> Result<Json<TaskView>, ApiError> {
    let id = parse_task(&id)?;
    c.status(id).await?.map(Json).ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown task {id}")))
}

#[derive(Deserialize)]
struct WaitQuery {
    timeout_ms: Option<u64>,
}

async fn wait(
    State(c): State<Client>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_task(&id)?;
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(60_000).min(600_000));
    match tokio::time::timeout(timeout, c.wait(id)).await {
        Ok(r) => Ok(Json(r?)),
        Err(_) => c
            .status(id)
            .await?
            .map(Json)
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown task {id}"))),
    }
}

async fn peers(State(c): State<Client>) -> Result<Json<Vec<PeerInfo>>, ApiError> {
    Ok(Json(c.peers().await?))
}

async fn node_info(State(c): State<Client>) -> Result<Json<NodeInfo>, ApiError> {
    let addrs = c.listen_addrs().await?;
    Ok(Json(NodeInfo {
        peer_id: c.peer_id().to_string(),
        public_key: c.public_key().to_string(),
        listen_addrs: addrs.into_iter().map(|a| format!("{a}/p2p/{}", c.peer_id())).collect(),
    }))
}

async fn stats(State(c): State<Client>) -> Result<Json<NodeStats>, ApiError> {
    Ok(Json(c.stats().await?))
}

async fn health(State(c): State<Client>) -> Result<&'static str, ApiError> {
    c.stats().await?;
    Ok("ok")
}

async fn metrics(State(c): State<Client>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], c.metrics_text())
}
