//! `fleetmesh node run`: a node and its local HTTP API until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use fleetmesh_node::{Node, NodeConfig};

#[derive(Subcommand)]
pub(crate) enum NodeCommand {
    /// Run a node until Ctrl-C.
    Run(RunArgs),
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// TOML config file; flags and env override it.
    #[arg(long, env = "FLEETMESH_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Data directory (key, store, models) [default: the config's data_dir, else
    /// ./fleetmesh-data].
    #[arg(long, env = "FLEETMESH_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Listen multiaddr (repeatable).
    #[arg(long, env = "FLEETMESH_LISTEN", value_delimiter = ',')]
    pub(crate) listen: Vec<String>,
    /// Bootstrap multiaddr ending in /p2p/<id> (repeatable; /dns4/ works).
    #[arg(long, env = "FLEETMESH_BOOTSTRAP", value_delimiter = ',')]
    pub(crate) bootstrap: Vec<String>,
    /// Turn mDNS discovery off.
    #[arg(long, env = "FLEETMESH_NO_MDNS", value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) no_mdns: bool,
    /// Local API address (loopback by default); `off` disables it.
    #[arg(long, env = "FLEETMESH_API")]
    pub(crate) api: Option<String>,
    /// File holding the API's bearer token. An API bound beyond loopback always needs one:
    /// without this flag the node creates `<data dir>/api.token` (mode 0600).
    #[arg(long, env = "FLEETMESH_API_TOKEN_FILE")]
    pub(crate) api_token_file: Option<PathBuf>,
    /// The API's bearer token itself (for containers; prefer --api-token-file).
    #[arg(long, env = "FLEETMESH_API_TOKEN", hide_env_values = true)]
    pub(crate) api_token: Option<String>,
    /// Tasks run at once.
    #[arg(long, env = "FLEETMESH_SLOTS")]
    pub(crate) slots: Option<u32>,
    /// Do not bid on other nodes' tasks.
    #[arg(long, env = "FLEETMESH_NO_SERVE", value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) no_serve: bool,
    /// The lowest price this node bids.
    #[arg(long, env = "FLEETMESH_PRICE_FLOOR")]
    pub(crate) price_floor: Option<u64>,
    /// Write a gossip trace here (go-libp2p-pubsub JSON tracer format) and the signed task
    /// timeline beside it (`x.jsonl` -> `x.timeline.jsonl`).
    #[arg(long, env = "FLEETMESH_TRACE")]
    pub(crate) trace: Option<PathBuf>,
}

pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => NodeConfig::from_toml_file(p)?,
        None => NodeConfig::default(),
    };
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if !args.listen.is_empty() {
        cfg.listen = args.listen;
    }
    if !args.bootstrap.is_empty() {
        cfg.bootstrap = args.bootstrap;
    }
    if args.no_mdns {
        cfg.mdns = false;
    }
    if let Some(api) = args.api {
        cfg.api_addr = if api == "off" {
            None
        } else {
            Some(api.parse().with_context(|| format!("--api {api:?}: expected ip:port or off"))?)
        };
    }
    if let Some(s) = args.slots {
        cfg.slots = s;
    }
    if args.no_serve {
        cfg.serve = false;
    }
    if let Some(p) = args.price_floor {
        cfg.price_floor = p;
    }
    if let Some(t) = args.trace {
        cfg.trace = Some(t);
    }
    let node = Node::spawn(cfg.clone()).await?;
    let addrs = node.client.listen_addrs().await?;
    eprintln!("fleetmesh node {}", node.client.peer_id());
    for a in addrs {
        eprintln!("  listening on {a}/p2p/{}", node.client.peer_id());
    }
    // The API starts once the node runs, and stops first at shutdown: no request reaches a
    // node that is going away.
    let server = match cfg.api_addr {
        Some(addr) => {
            let token = match (&args.api_token, &args.api_token_file) {
                (Some(t), _) => Some(t.trim().to_owned()),
                (None, Some(path)) => Some(fleetmesh_cli::server::read_token(path)?),
                (None, None) if !addr.ip().is_loopback() => {
                    let path = cfg.data_dir.join("api.token");
                    let token = fleetmesh_cli::server::load_or_create_token(&path)?;
                    eprintln!(
                        "  API token in {} (send it as: Authorization: Bearer <token>)",
                        path.display()
                    );
                    Some(token)
                }
                (None, None) => None,
            };
            let opts = fleetmesh_cli::server::ServeOptions { token, ..Default::default() };
            Some(fleetmesh_cli::server::serve(addr, node.client.clone(), opts).await?)
        }
        None => None,
    };
    if let Some(s) = &server {
        eprintln!("  API on http://{}", s.addr);
    }
    // Ctrl-C, or SIGTERM from `docker stop`: shut down cleanly (final trace head included).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    eprintln!("shutting down");
    if let Some(s) = server {
        s.shutdown().await;
    }
    node.stop().await;
    Ok(())
}
