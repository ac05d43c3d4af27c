//! A whole mesh in one process on loopback: what the integration tests, the demo and the
//! benchmarks start. N nodes listen on 127.0.0.1 over TCP and QUIC (even nodes dial the
//! bootstrap over TCP, odd ones over QUIC) and find each other through node 0 and the DHT.

use std::time::{Duration, Instant};

use crate::node::{ClientError, Node, NodeError};
use crate::NodeConfig;

/// A node config for a loopback mesh member.
pub fn loopback_config(data_dir: std::path::PathBuf) -> NodeConfig {
    NodeConfig {
        data_dir,
        listen: vec!["/ip4/127.0.0.1/tcp/0".into(), "/ip4/127.0.0.1/udp/0/quic-v1".into()],
        mdns: false,
        api_addr: None,
        presence_interval_ms: 1_000,
        dht_scan_interval_ms: 2_000,
        ..NodeConfig::default()
    }
}

/// Starts `n` nodes on loopback, node 0 the bootstrap of the others (TCP for even nodes,
/// QUIC for odd ones). `configure` may change each node's config.
pub async fn spawn_local_mesh(
    root: &std::path::Path,
    n: usize,
    mut configure: impl FnMut(usize, &mut NodeConfig),
) -> Result<Vec<Node>, NodeError> {
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    let mut boot: Vec<String> = Vec::new();
    for i in 0..n {
        let mut cfg = loopback_config(root.join(format!("node{i}")));
        if i > 0 {
            let pick = if i % 2 == 0 { "/tcp/" } else { "/quic-v1" };
            cfg.bootstrap = boot.iter().filter(|a| a.contains(pick)).cloned().collect();
            if cfg.bootstrap.is_empty() {
                // Node 0 does not listen on that transport: use whatever it has.
                cfg.bootstrap = boot.clone();
            }
        }
        configure(i, &mut cfg);
        let node = Node::spawn(cfg).await?;
        if i == 0 {
            let id = node.client.peer_id();
            let addrs = node.client.listen_addrs().await?;
            boot = addrs.iter().map(|a| format!("{a}/p2p/{id}")).collect();
        }
        nodes.push(node);
    }
    Ok(nodes)
}

/// Waits until every node sees at least `min_peers` connected peers with presence adverts.
pub async fn wait_for_mesh(nodes: &[Node], min_peers: usize, timeout: Duration) -> Result<(), ClientError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut ready = true;
        for n in nodes {
            let peers = n.client.peers().await?;
            if peers.iter().filter(|p| p.connected && !p.models.is_empty()).count() < min_peers {
                ready = false;
                break;
            }
        }
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ClientError::Timeout);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
