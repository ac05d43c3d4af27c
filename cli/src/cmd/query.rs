//! `fleetmesh status`, `peers`, `health`: read a running node's API.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use fleetmesh_api::client::ApiClient;

/// Where the node's API is.
#[derive(Args, Clone)]
pub(crate) struct ApiArgs {
    /// The node's API, e.g. http://127.0.0.1:7070 (or just 127.0.0.1:7070)
    #[arg(long, env = "FLEETMESH_API_URL", default_value = "http://127.0.0.1:7070")]
    pub(crate) api: String,
    /// File holding the API token (needed when the node's API is bound beyond loopback).
    #[arg(long, env = "FLEETMESH_API_TOKEN_FILE")]
    pub(crate) token_file: Option<std::path::PathBuf>,
}

impl ApiArgs {
    /// A client for it; each call gives up after `timeout`.
    pub(crate) fn client(&self, timeout: Duration) -> Result<ApiClient> {
        let token = match (&self.token_file, std::env::var("FLEETMESH_API_TOKEN").ok()) {
            (Some(path), _) => Some(fleetmesh_cli::server::read_token(path)?),
            (None, token) => token.filter(|t| !t.trim().is_empty()).map(|t| t.trim().to_owned()),
        };
        // `node run --api` takes ip:port; accept the same here.
        let url = if self.api.contains("://") { self.api.clone() } else { format!("http://{}", self.api) };
        Ok(ApiClient::new(url, timeout)?.with_token(token))
    }
}

/// `fleetmesh status <task>`.
#[derive(Args)]
pub(crate) struct StatusArgs {
    /// Task id (hex).
    pub(crate) task: String,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

pub(crate) async fn status(a: StatusArgs) -> Result<()> {
    match a.api.client(Duration::from_secs(10))?.status(&a.task).await? {
        Some(v) => say!("{}", serde_json::to_string_pretty(&v)?),
        None => bail!("the node does not know task {}", a.task),
    }
    Ok(())
}

pub(crate) async fn peers(api: ApiArgs) -> Result<()> {
    let peers = api.client(Duration::from_secs(10))?.peers().await?;
    let now = unix_ms();
    say!("{:<54} {:<9} {:<6} {:<8} models", "peer id", "connected", "slots", "offer");
    for p in peers {
        let models: Vec<String> = p.models.iter().map(|m| m.chars().take(8).collect()).collect();
        let slots = p.free_slots.map_or("-".into(), |s| s.to_string());
        // How much longer its standing offer stands.
        let offer = match p.offer_until_ms {
            Some(until) if until >= now => format!("{}s", (until - now) / 1000),
            Some(_) => "expired".into(),
            None => "-".into(),
        };
        say!("{:<54} {:<9} {:<6} {:<8} {}", p.peer_id, p.connected, slots, offer, models.join(","));
    }
    Ok(())
}

/// `fleetmesh ledger`.
#[derive(Args)]
pub(crate) struct LedgerArgs {
    /// Print the ledger as JSON (the API's `LedgerView`).
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

pub(crate) async fn ledger(a: LedgerArgs) -> Result<()> {
    let l = a.api.client(Duration::from_secs(10))?.ledger().await?;
    if a.json {
        say!("{}", serde_json::to_string(&l)?);
        return Ok(());
    }
    say!("{:<10} {:>8} {:>10} {:>12}", "date", "tasks", "credits", "energy Wh");
    for d in l.days.iter().chain(std::iter::once(&l.total)) {
        say!("{:<10} {:>8} {:>10} {:>12.4}", d.date, d.tasks, d.credits, d.energy_mj as f64 / 3_600_000.0);
    }
    say!(
        "(energy: run time times device_power_w = {} W, the owner's declared power model)",
        l.device_power_w
    );
    Ok(())
}

/// The time now, Unix ms.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Exit 0 while the node answers (container health checks); say on stderr what is wrong
/// with its connectivity.
pub(crate) async fn health(api: ApiArgs) -> Result<()> {
    let client = api.client(Duration::from_secs(3))?;
    client.health().await?;
    if let Ok(stats) = client.stats().await {
        if stats.peers_connected == 0 {
            eprintln!("warning: no peer connected (check --bootstrap, mDNS, or the firewall)");
        }
        for b in stats.bootstrap.iter().filter(|b| !b.connected) {
            let why = b.last_error.as_deref().unwrap_or("not connected yet");
            eprintln!("warning: bootstrap peer {} unreachable: {why}", b.addr);
        }
        // A vehicle that takes no work says why (a desktop or depot server always serves).
        let v = &stats.vehicle;
        for r in &v.refusals {
            eprintln!("not serving ({}): {}", r.reason, r.message);
        }
        if v.source != "none" && !v.source.is_empty() {
            let depart = v.depart_ms.map_or_else(
                || "none expected".to_owned(),
                |d| format!("in {} min", d.saturating_sub(unix_ms()) / 60_000),
            );
            eprintln!(
                "vehicle ({}): {}, {} slot(s), departure {depart}",
                v.source,
                if v.serving { "serving" } else { "not serving" },
                v.slots
            );
        }
    }
    say!("ok");
    Ok(())
}
