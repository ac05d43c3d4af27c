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
//! | GET | `/healthz` | `ok` while the event loop answers |
//! | GET | `/metrics` | Prometheus text |
//!
//! Errors are `{"error": "..."}` with a 4xx or 5xx status.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleetmesh_crypto::TaskId;
use serde::{Deserialize, Serialize};

use crate::node::{Client, ClientError, NodeError, SubmitRequest};

/// The body of `POST /v1/tasks`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SubmitBody {
    /// Task parameters (model, redundancy, price, timeouts).
    #[serde(flatten)]
    pub params: SubmitRequest,
    /// The input, base64.
    pub input_base64: Option<String>,
    /// Use this sample of the embedded digits test set as the input.
    pub digits_sample: Option<usize>,
}

/// The answer to a submit.
#[derive(Debug, Serialize, Deserialize)]
pub struct Submitted {
    /// The new task's id.
    pub task_id: String,
    /// For digits samples: the true label.
    pub expected_label: Option<u8>,
}

/// Node identity and addresses.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    /// libp2p peer id.
    pub peer_id: String,
    /// ed25519 public key (hex).
    pub public_key: String,
    /// Listen addresses with `/p2p/<id>` appended.
    pub listen_addrs: Vec<String>,
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::NodeStopped => StatusCode::SERVICE_UNAVAILABLE,
            ClientError::Rejected(_) => StatusCode::BAD_REQUEST,
            ClientError::UnknownTask(_) => StatusCode::NOT_FOUND,
            ClientError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        };
        Self(code, e.to_string())
    }
}

fn parse_task(id: &str) -> Result<TaskId, ApiError> {
    id.parse().map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("task id: {e}")))
}

/// Binds `addr` and serves the API in the background; returns the bound address.
pub(crate) async fn serve(addr: SocketAddr, client: Client) -> Result<SocketAddr, NodeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::Api { addr, message: e.to_string() })?;
    let bound = listener.local_addr().map_err(|e| NodeError::Api { addr, message: e.to_string() })?;
    let app = Router::new()
        .route("/v1/tasks", post(submit).get(list))
        .route("/v1/tasks/{id}", get(status))
        .route("/v1/tasks/{id}/wait", get(wait))
        .route("/v1/peers", get(peers))
        .route("/v1/node", get(node_info))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(2 * fleetmesh_protocol::limits::MAX_INPUT_BYTES))
        .with_state(client);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("API server stopped: {e}");
        }
    });
    Ok(bound)
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
            let set = crate::digits::test_set();
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

async fn list(State(c): State<Client>) -> Result<Json<Vec<crate::TaskView>>, ApiError> {
    Ok(Json(c.tasks().await?))
}

async fn status(State(c): State<Client>, Path(id): Path<String>) -> Result<Json<crate::TaskView>, ApiError> {
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
) -> Result<Json<crate::TaskView>, ApiError> {
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

async fn peers(State(c): State<Client>) -> Result<Json<Vec<crate::PeerInfo>>, ApiError> {
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

async fn health(State(c): State<Client>) -> Result<&'static str, ApiError> {
    c.stats().await?;
    Ok("ok")
}

async fn metrics(State(c): State<Client>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], c.metrics_text())
}
