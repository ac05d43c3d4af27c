//! The local HTTP JSON API (loopback by default).
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/tasks` | submit: `{"input_base64": "...", "model": "<hex>", "redundancy": 2}`, `{"digits_sample": 7}`, or a batch: `{"digits_samples": [1, 2, 3]}` or `{"input_base64": "...", "batch": 3}` |
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

use std::collections::HashMap;
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
    /// Stops accepting connections, lets requests in progress finish (for at most
    /// [`SHUTDOWN_GRACE`]), and waits for it.
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

/// How the API protects itself.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A bearer token every request but `/healthz` must carry (`Authorization: Bearer ...`).
    /// Required on any bind beyond loopback; optional on loopback.
    pub token: Option<String>,
    /// Requests handled at once; more are answered 503 at once.
    pub max_concurrent: usize,
    /// Connections open at once, idle or not; more wait in the kernel's accept queue until
    /// one closes. With [`ServeOptions::header_timeout`] this bounds what clients that connect
    /// and send nothing can hold; one remote address (loopback exempt) may hold an eighth.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers; an idle keep-alive
    /// connection is closed after as long.
    pub header_timeout: Duration,
    /// How long a request may take to send its body, from when its handling starts; a slower
    /// one is answered 408 and its connection closed.
    pub body_timeout: Duration,
    /// How long a write of an answer may wait on a client that does not read; then the
    /// connection is closed.
    pub write_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            token: None,
            max_concurrent: 64,
            max_connections: 128,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// How long a shutdown waits for requests in progress (a long poll is cut after it).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every request passes through (see [`guard`]).
#[derive(Clone)]
struct Guard {
    token: Option<std::sync::Arc<str>>,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    body_timeout: Duration,
}

/// The largest request body the API reads (a submit's input in base64, with room).
const MAX_BODY_BYTES: usize = 2 * fleetmesh_protocol::limits::MAX_INPUT_BYTES;

/// Binds `addr` and serves the API in the background. A bind beyond loopback without a
/// token is refused: anyone who can reach the port could submit work or read results.
pub async fn serve(addr: SocketAddr, client: Client, opts: ServeOptions) -> Result<Server, ServeError> {
    let err = |source| ServeError { addr, source };
    if !addr.ip().is_loopback() && opts.token.as_deref().is_none_or(str::is_empty) {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "an API reachable beyond loopback needs a token (--api-token-file)",
        )));
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    let guard = Guard {
        token: opts.token.map(std::sync::Arc::from),
        slots: std::sync::Arc::new(tokio::sync::Semaphore::new(opts.max_concurrent.max(1))),
        body_timeout: opts.body_timeout,
    };
    let app = Router::new()
        .route("/v1/tasks", post(submit).get(list))
        .route("/v1/tasks/{id}", get(status))
        .route("/v1/tasks/{id}/wait", get(wait))
        .route("/v1/peers", get(peers))
        .route("/v1/node", get(node_info))
        .route("/v1/stats", get(stats))
        .route("/v1/vehicle", get(vehicle).put(set_vehicle))
        .route("/v1/ledger", get(ledger))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(guard, guard_layer))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(client);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = Limits {
        max_connections: opts.max_connections.max(1),
        header_timeout: opts.header_timeout,
        write_timeout: opts.write_timeout,
    };
    let task = tokio::spawn(accept_loop(listener, app, limits, stopped));
    Ok(Server { addr: bound, stop, task })
}

/// What [`accept_loop`] bounds.
struct Limits {
    max_connections: usize,
    header_timeout: Duration,
    write_timeout: Duration,
}

/// Serves connections until `stopped`: at most `max_connections` at once (a permit is taken
/// before accepting, so the rest wait in the kernel's queue), each over HTTP/1 with a
/// deadline for request headers and for each write. axum's own `serve` has none of these:
/// hyper's header timeout needs a timer it does not set, it accepts without bound, and
/// neither has a write timeout.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    Limits { max_connections, header_timeout, write_timeout }: Limits,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    // Connections open per remote address (loopback exempt: local tools share it): one host
    // cannot take every place of an API bound beyond loopback.
    let per_ip = std::sync::Arc::new(std::sync::Mutex::new(PerIp::new((max_connections / 8).max(1))));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
    loop {
        let permit = tokio::select! {
            _ = &mut stopped => break,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, ip) = tokio::select! {
            _ = &mut stopped => break,
            r = listener.accept() => match r {
                Ok((stream, remote)) => (stream, remote.ip()),
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // wait a little rather than spin.
                    tracing::debug!("API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !per_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner).open(ip) {
            tracing::debug!(%ip, "API connection refused: too many already open from this address");
            continue; // dropping the stream closes it, and the permit frees its place
        }
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let io = hyper_util::rt::TokioIo::new(WriteDeadline::new(stream, write_timeout));
        let conn = graceful.watch(http.serve_connection(io, service));
        let per_ip = per_ip.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("API connection ended: {e}");
            }
            per_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner).close(ip);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::debug!("API requests still running at shutdown were cut");
    }
}

/// Connections open per remote address, at most `max` each; loopback is not counted (local
/// tools share it, and whoever runs on the vehicle can do worse than fill the API).
struct PerIp {
    open: HashMap<std::net::IpAddr, usize>,
    max: usize,
}

impl PerIp {
    fn new(max: usize) -> Self {
        Self { open: HashMap::new(), max }
    }

    /// Counts a new connection from `ip`; false when `ip` already holds `max`.
    fn open(&mut self, ip: std::net::IpAddr) -> bool {
        if ip.is_loopback() {
            return true;
        }
        let n = self.open.entry(ip).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// A connection from `ip` ended.
    fn close(&mut self, ip: std::net::IpAddr) {
        if let Some(n) = self.open.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&ip);
            }
        }
    }
}

/// Whether a Host header names this machine's loopback (any port): what a browser page from
/// elsewhere cannot send, so DNS rebinding cannot reach an API without a token.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The checks in front of every handler: a bounded number of requests at once; the token
/// when one is set (all but `/healthz`); without a token, only loopback Host names.
async fn guard_layer(
    State(g): State<Guard>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Owned copies: the request itself must not be borrowed across the await below.
    let (authorization, host, open) = {
        let headers = request.headers();
        let header = |name: axum::http::header::HeaderName| -> String {
            headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
        };
        let open = request.uri().path() == "/healthz";
        (header(axum::http::header::AUTHORIZATION), header(axum::http::header::HOST), open)
    };
    match &g.token {
        // With a token, `/healthz` answers anyone (orchestrators probe it by name).
        Some(_) if open => {}
        Some(token) => {
            let given = authorization;
            let ok = given
                .strip_prefix("Bearer ")
                .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
            if !ok {
                return ApiError(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong API token (send Authorization: Bearer <the token file's contents>)"
                        .into(),
                )
                .into_response();
            }
        }
        _ => {
            if !loopback_host(&host) {
                return ApiError(
                    StatusCode::FORBIDDEN,
                    "this API answers only requests addressed to localhost".into(),
                )
                .into_response();
            }
        }
    }
    // Counted after the checks: requests that fail them cannot take the places of those that
    // pass.
    let Ok(_slot) = g.slots.clone().try_acquire_owned() else {
        return ApiError(StatusCode::SERVICE_UNAVAILABLE, "too many requests at once; try again".into())
            .into_response();
    };
    // `/healthz` answers anyone and reads no body: its place is given back at once, whatever
    // a stranger claims to send.
    if open {
        return next.run(request).await;
    }
    // The body is read here, under a deadline, so a client that sends it slowly cannot hold
    // a place for longer; the handler then reads it from memory.
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(g.body_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            // Over the limit, or the client went away mid-body.
            let too_large =
                std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let mut r = if too_large {
                ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("the body exceeds {MAX_BODY_BYTES} bytes"))
            } else {
                ApiError(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))
            }
            .into_response();
            r.headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            return r;
        }
        Err(_) => {
            let secs = g.body_timeout.as_secs_f64();
            let mut r =
                ApiError(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {secs} s"))
                    .into_response();
            r.headers_mut()
                .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            return r;
        }
    };
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(body))).await
}

/// A connection whose writes may wait at most `limit` on a client that does not read: past
/// it the write fails (hyper then closes the connection). Reads pass through untouched (the
/// header and body deadlines bound them).
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Set when a write first found the client not reading; cleared by any write that goes on.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self { inner, limit, stalled: None }
    }

    /// What a write that is pending returns: still pending, or an error once past the limit.
    fn pending<T>(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future;
        let limit = self.limit;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading the answer",
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn done<T>(
        &mut self,
        r: std::task::Poll<std::io::Result<T>>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<T>> {
        match r {
            std::task::Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.done(r, cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.done(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.done(r, cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_shutdown(cx);
        self.done(r, cx)
    }
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint (see the table in api/src/lib.rs)".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError(StatusCode::METHOD_NOT_ALLOWED, "this endpoint does not take that method".into())
}

/// The fields `POST /v1/tasks` knows: any other is refused, so a typo
/// (`"redundancey": 3`) is an error instead of a silently ignored wish.
const SUBMIT_FIELDS: [&str; 11] = [
    "model",
    "redundancy",
    "max_price",
    "bid_window_ms",
    "exec_timeout_ms",
    "deadline_ms",
    "batch",
    "tolerance",
    "input_base64",
    "digits_sample",
    "digits_samples",
];

/// A JSON body, or the framework's rejection as the documented `{"error": ...}`.
fn json_body(
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<serde_json::Value, ApiError> {
    match body {
        Ok(Json(v)) => Ok(v),
        Err(rejection) => Err(ApiError(rejection.status(), rejection.body_text())),
    }
}

async fn submit(
    State(c): State<Client>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    use base64::Engine;
    let value = json_body(body)?;
    let Some(fields) = value.as_object() else {
        return Err(ApiError(StatusCode::BAD_REQUEST, "the body must be a JSON object".into()));
    };
    if let Some(unknown) = fields.keys().find(|k| !SUBMIT_FIELDS.contains(&k.as_str())) {
        let known = SUBMIT_FIELDS.join(", ");
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("unknown field {unknown:?}; known: {known}")));
    }
    let body: SubmitBody = serde_json::from_value(value)
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid task: {e}")))?;
    let mut req = body.params;
    let (mut expected_label, mut expected_labels) = (None, Vec::new());
    // Parsed only for a submit that names samples.
    let named = body.digits_sample.is_some() || body.digits_samples.is_some();
    let set = if named { fleetmesh_node::digits::test_set() } else { Vec::new() };
    let sample = |i: usize| {
        set.get(i).ok_or_else(|| {
            ApiError(StatusCode::BAD_REQUEST, format!("digits samples must be below {}", set.len()))
        })
    };
    req.input = match (body.input_base64, body.digits_sample, body.digits_samples) {
        (Some(b64), None, None) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("input_base64: {e}")))?,
        (None, Some(i), None) => {
            let s = sample(i)?;
            expected_label = Some(s.label);
            s.to_input()
        }
        (None, None, Some(list)) => {
            // Counted before any input is built (the body may list a million samples).
            let max = fleetmesh_protocol::batch::MAX_BATCH;
            let n = match u16::try_from(list.len()) {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    let why =
                        format!("digits_samples lists {} samples; a batch holds 1 to {max}", list.len());
                    return Err(ApiError(StatusCode::BAD_REQUEST, why));
                }
            };
            if let Some(b) = req.batch.filter(|b| *b != n) {
                let why = format!("batch is {b} but digits_samples lists {n} samples");
                return Err(ApiError(StatusCode::BAD_REQUEST, why));
            }
            req.batch = Some(n);
            let mut input = Vec::new();
            for i in list {
                let s = sample(i)?;
                expected_labels.push(s.label);
                input.extend(s.to_input());
            }
            input
        }
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "give exactly one of input_base64, digits_sample or digits_samples".into(),
            ))
        }
    };
    let id = c.submit(req).await?;
    Ok((StatusCode::ACCEPTED, Json(Submitted { task_id: id.to_string(), expected_label, expected_labels })))
}

async fn list(State(c): State<Client>) -> Result<Json<Vec<TaskView>>, ApiError> {
    Ok(Json(c.tasks().await?))
}

/// A path parameter, or the JSON error for one that does not decode (`/v1/tasks/%FF`).
type PathParam = Result<Path<String>, axum::extract::rejection::PathRejection>;

fn path_param(p: PathParam) -> Result<String, ApiError> {
    p.map(|Path(id)| id).map_err(|r| ApiError(r.status(), r.body_text()))
}

async fn status(State(c): State<Client>, id: PathParam) -> Result<Json<TaskView>, ApiError> {
    let id = parse_task(&path_param(id)?)?;
    c.status(id).await?.map(Json).ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown task {id}")))
}

#[derive(Deserialize)]
struct WaitQuery {
    timeout_ms: Option<u64>,
}

async fn wait(
    State(c): State<Client>,
    id: PathParam,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskView>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError(r.status(), r.body_text()))?;
    let id = parse_task(&path_param(id)?)?;
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

/// The owner's ledger: what serving earned and cost, by day.
async fn ledger(State(c): State<Client>) -> Result<Json<fleetmesh_api::LedgerView>, ApiError> {
    Ok(Json(c.ledger().await?))
}

/// The vehicle as the node sees it: its state, whether it takes work, and why not.
async fn vehicle(State(c): State<Client>) -> Result<Json<fleetmesh_api::VehicleView>, ApiError> {
    Ok(Json(c.stats().await?.vehicle))
}

/// A vehicle integration reports the state (`[vehicle] source = "api"`); the answer is what
/// follows from it and the owner's policy.
async fn set_vehicle(
    State(c): State<Client>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<fleetmesh_api::VehicleView>, ApiError> {
    let value = json_body(body)?;
    let state: fleetmesh_api::VehicleState = serde_json::from_value(value)
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid vehicle state: {e}")))?;
    Ok(Json(c.set_vehicle(state).await?))
}

/// `ok` when the event loop answers within 2 s (a loop stalled behind its disk, or wedged,
/// says so instead of holding the probe).
async fn health(State(c): State<Client>) -> Result<&'static str, ApiError> {
    match tokio::time::timeout(Duration::from_secs(2), c.stats()).await {
        Ok(r) => r.map(|_| "ok").map_err(ApiError::from),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node's event loop did not answer within 2 s".into(),
        )),
    }
}

async fn metrics(State(c): State<Client>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], c.metrics_text())
}

/// Reads a token file (surrounding whitespace ignored); an empty file is an error.
pub fn read_token(path: &std::path::Path) -> Result<String, std::io::Error> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("API token file {}: {e}", path.display())))?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(token)
}

/// The token in `path`, or a new random one written there with mode 0600.
pub fn load_or_create_token(path: &std::path::Path) -> Result<String, std::io::Error> {
    match read_token(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
            let token = hex::encode(bytes);
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                o.mode(0o600);
            }
            let mut f = o.open(path)?;
            f.write_all(token.as_bytes())?;
            f.sync_all()?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_at_most_its_share_and_loopback_is_not_counted() {
        let mut p = PerIp::new(2);
        let (a, b) = ("10.0.0.7".parse().unwrap(), "10.0.0.8".parse().unwrap());
        assert!(p.open(a) && p.open(a));
        assert!(!p.open(a), "a third connection from one address");
        assert!(p.open(b), "another address is not affected");
        p.close(a);
        assert!(p.open(a), "a closed connection frees its place");
        for _ in 0..10 {
            assert!(p.open("127.0.0.1".parse().unwrap()));
        }
        p.close(b);
        assert!(!p.open.contains_key(&b), "an address with nothing open is forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_to_a_client_that_does_not_read_fails_after_the_limit_and_reading_resets_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = tokio::io::duplex(1024);
        let mut conn = WriteDeadline::new(server, Duration::from_secs(30));
        // Fills the pipe; the client reads a little now and then, so the writes go on.
        let started = tokio::time::Instant::now();
        let mut sink = [0u8; 512];
        conn.write_all(&[1; 1024]).await.unwrap();
        for _ in 0..4 {
            let write = conn.write_all(&[2; 512]);
            let read = async {
                tokio::time::sleep(Duration::from_secs(20)).await;
                client.read_exact(&mut sink).await.unwrap();
            };
            let (w, ()) = tokio::join!(write, read);
            w.unwrap();
        }
        assert!(started.elapsed() >= Duration::from_secs(80), "slow reading is not stalling");
        // Now the client stops reading: the next write fails after the limit, not before.
        let before = tokio::time::Instant::now();
        let err = conn.write_all(&[3; 512]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let waited = before.elapsed();
        assert!(waited >= Duration::from_secs(30) && waited < Duration::from_secs(31), "{waited:?}");
    }
}
