//! A typed client for the node's local API (feature `client`).

use std::time::Duration;

use crate::{ErrorBody, NodeInfo, NodeStats, PeerInfo, SubmitBody, Submitted, TaskView};

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The node could not be reached (not running, wrong address, timed out).
    #[error("node API unreachable at {url}: {source} (is the node running, and its API on?)")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The node answered with an error status.
    #[error("{status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The node's error message.
        message: String,
    },
    /// The node's answer did not decode.
    #[error("unexpected answer from {url}: {source}")]
    Decode {
        /// The URL called.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
}

impl ApiError {
    /// The HTTP status, when the node answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The API of one node, at `http://host:port`.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl ApiClient {
    /// A client for the node at `base` (`http://127.0.0.1:7070`); each call gives up after
    /// `timeout` (a wait call after its own timeout plus this).
    pub fn new(base: impl Into<String>, timeout: Duration) -> Result<Self, ApiError> {
        let base = base.into().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|source| ApiError::Unreachable { url: base.clone(), source })?;
        Ok(Self { http, base, token: None })
    }

    /// Sends `token` as `Authorization: Bearer` with every call (an API bound beyond
    /// loopback needs it).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    fn authorized(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn answer<T: serde::de::DeserializeOwned>(
        &self,
        url: String,
        r: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, ApiError> {
        let r = r.map_err(|source| ApiError::Unreachable { url: url.clone(), source })?;
        let status = r.status();
        if !status.is_success() {
            let text = r.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&text).map(|e| e.error).unwrap_or(text);
            return Err(ApiError::Status { status: status.as_u16(), message });
        }
        r.json().await.map_err(|source| ApiError::Decode { url, source })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let url = format!("{}{path}", self.base);
        let r = self.authorized(self.http.get(&url)).send().await;
        self.answer(url, r).await
    }

    /// `POST /v1/tasks`.
    pub async fn submit(&self, body: &SubmitBody) -> Result<Submitted, ApiError> {
        let url = format!("{}/v1/tasks", self.base);
        let r = self.authorized(self.http.post(&url)).json(body).send().await;
        self.answer(url, r).await
    }

    /// `GET /v1/tasks/{id}`; `None` when the node does not know the task.
    pub async fn status(&self, task: &str) -> Result<Option<TaskView>, ApiError> {
        match self.get(&format!("/v1/tasks/{task}")).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/tasks/{id}/wait`: the task once verified or failed, or as it stands after
    /// `timeout`.
    pub async fn wait(&self, task: &str, timeout: Duration) -> Result<TaskView, ApiError> {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let url = format!("{}/v1/tasks/{task}/wait?timeout_ms={ms}", self.base);
        let r = self
            .authorized(self.http.get(&url))
            .timeout(timeout.saturating_add(Duration::from_secs(10)))
            .send()
            .await;
        self.answer(url, r).await
    }

    /// `GET /v1/tasks`.
    pub async fn tasks(&self) -> Result<Vec<TaskView>, ApiError> {
        self.get("/v1/tasks").await
    }

    /// `GET /v1/peers`.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, ApiError> {
        self.get("/v1/peers").await
    }

    /// `GET /v1/node`.
    pub async fn node(&self) -> Result<NodeInfo, ApiError> {
        self.get("/v1/node").await
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Result<NodeStats, ApiError> {
        self.get("/v1/stats").await
    }

    /// `GET /v1/ledger`.
    pub async fn ledger(&self) -> Result<crate::LedgerView, ApiError> {
        self.get("/v1/ledger").await
    }

    /// `PUT /v1/vehicle`: a vehicle integration reports the state.
    pub async fn set_vehicle(&self, state: &crate::VehicleState) -> Result<crate::VehicleView, ApiError> {
        let url = format!("{}/v1/vehicle", self.base);
        let r = self.authorized(self.http.put(&url)).json(state).send().await;
        self.answer(url, r).await
    }

    /// `GET /v1/vehicle`.
    pub async fn vehicle(&self) -> Result<crate::VehicleView, ApiError> {
        self.get("/v1/vehicle").await
    }

    /// `GET /healthz`: Ok while the node answers.
    pub async fn health(&self) -> Result<(), ApiError> {
        let url = format!("{}/healthz", self.base);
        let r = self.http.get(&url).send().await.map_err(|source| ApiError::Unreachable { url, source })?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(ApiError::Status { status: r.status().as_u16(), message: r.text().await.unwrap_or_default() })
        }
    }
}
