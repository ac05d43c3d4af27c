//! Helpers for in-process mesh tests (feature `test-hooks`): start a mesh, wait for it,
//! submit and wait for tasks. Every wait is bounded, and a helper that fails panics with what
//! it saw, as a test should.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::local::{spawn_local_mesh, wait_for_mesh};
use crate::{Client, Node, NodeConfig, Phase, SubmitRequest, TaskView};
use fleetmesh_crypto::TaskId;

pub const WAIT: Duration = Duration::from_secs(60);

pub async fn mesh(
    dir: &std::path::Path,
    n: usize,
    configure: impl FnMut(usize, &mut NodeConfig),
) -> Vec<Node> {
    let nodes = tokio::time::timeout(WAIT, spawn_local_mesh(dir, n, configure))
        .await
        .expect("mesh start timed out")
        .unwrap();
    nodes
}

/// Waits until every serving node sees `min` peers with adverts.
pub async fn ready(nodes: &[Node], min: usize) {
    wait_for_mesh(nodes, min, WAIT).await.expect("mesh did not form");
}

pub fn digits_task(sample: usize, k: u8) -> (SubmitRequest, u8) {
    let s = &crate::digits::test_set()[sample];
    (SubmitRequest { input: s.to_input(), redundancy: Some(k), ..SubmitRequest::default() }, s.label)
}

pub async fn wait_done(c: &Client, id: TaskId) -> TaskView {
    tokio::time::timeout(WAIT, c.wait(id)).await.expect("task did not finish in time").unwrap()
}

pub async fn wait_until(what: &str, f: impl AsyncFnMut() -> bool) {
    wait_until_with(what, f, String::new).await;
}

/// As [`wait_until`], adding `state()` to the failure message.
pub async fn wait_until_with(what: &str, mut f: impl AsyncFnMut() -> bool, state: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what} {}", state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn assert_verified(v: &TaskView, label: u8) {
    assert_eq!(v.phase, Phase::Verified, "task not verified: {v:#?}");
    assert_eq!(v.label, Some(u32::from(label)), "wrong label: {v:#?}");
    // At least k agreeing workers: more where the requester had an unknown worker checked
    // by another one (market v2 reputation: a lone k = 1 result from an unknown worker is
    // replicated, a trusted one's is spot-checked now and then).
    assert!(v.verified_by.len() >= usize::from(v.redundancy), "too few agreeing workers: {v:#?}");
}

pub async fn stop_all(nodes: Vec<Node>) {
    for n in nodes {
        tokio::time::timeout(Duration::from_secs(10), n.stop()).await.expect("node did not stop");
    }
}

/// The value of a counter in a node's Prometheus text (0 when absent).
pub fn counter(c: &Client, name: &str) -> u64 {
    c.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A well-formed bid (unsigned) for a task no node has heard of, for tests of what a node
/// does with requests it cannot place.
pub fn unknown_task_bid() -> fleetmesh_protocol::Bid {
    fleetmesh_protocol::Bid {
        v: 1,
        task_id: TaskId::of(b"x"),
        round: 0,
        price: 1,
        promised_ms: 1,
        queue_depth: 0,
        free_slots: 1,
        depart_ms: None,
    }
}

/// A peer of an earlier wire version, for tests of how a node refuses it: a bare libp2p swarm
/// that announces `identify_version` (none: no identify at all) and speaks the task protocol
/// under the name `task_protocol`.
#[derive(libp2p::swarm::NetworkBehaviour)]
struct OldPeerBehaviour {
    identify: libp2p::swarm::behaviour::toggle::Toggle<libp2p::identify::Behaviour>,
    tasks: libp2p::request_response::Behaviour<crate::codec::TaskCodec>,
}

fn old_peer(identify_version: Option<&str>, task_protocol: &'static str) -> libp2p::Swarm<OldPeerBehaviour> {
    use libp2p::request_response::{Config, ProtocolSupport};
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(libp2p::tcp::Config::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| OldPeerBehaviour {
            identify: identify_version
                .map(|v| {
                    libp2p::identify::Behaviour::new(libp2p::identify::Config::new(v.into(), key.public()))
                })
                .into(),
            tasks: libp2p::request_response::Behaviour::with_codec(
                crate::codec::TaskCodec::default(),
                [(libp2p::StreamProtocol::new(task_protocol), ProtocolSupport::Full)],
                Config::default(),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

/// The node's first TCP listen address (the old peer speaks TCP only).
async fn tcp_addr(node: &Client) -> libp2p::Multiaddr {
    node.listen_addrs()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_))))
        .expect("a TCP listen address")
}

/// Sends one request to `node` as a peer speaking `task_protocol` (and announcing
/// `identify_version` in identify, when given) and returns the answer, or why there was none.
pub async fn old_peer_request(
    node: &Client,
    identify_version: Option<&str>,
    task_protocol: &'static str,
    request: fleetmesh_protocol::wire::TaskRequest,
) -> Result<fleetmesh_protocol::wire::TaskResponse, String> {
    use futures::StreamExt;
    use libp2p::request_response::{Event, Message};
    use libp2p::swarm::SwarmEvent;
    let mut swarm = old_peer(identify_version, task_protocol);
    let addr = tcp_addr(node).await;
    let target = node.peer_id();
    swarm.add_peer_address(target, addr);
    swarm.behaviour_mut().tasks.send_request(&target, crate::Frame::Request(request));
    let run = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(OldPeerBehaviourEvent::Tasks(Event::Message {
                    message: Message::Response { response, .. },
                    ..
                })) => return Ok(response),
                SwarmEvent::Behaviour(OldPeerBehaviourEvent::Tasks(Event::OutboundFailure {
                    error, ..
                })) => return Err(error.to_string()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, run).await.unwrap_or_else(|_| Err("no answer in time".into()))
}

/// Connects to `node` as a peer announcing `identify_version` and speaking `task_protocol`;
/// true when the node closes the connection within `within`.
pub async fn old_peer_is_disconnected(
    node: &Client,
    identify_version: &str,
    task_protocol: &'static str,
    within: Duration,
) -> bool {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    let mut swarm = old_peer(Some(identify_version), task_protocol);
    let addr = tcp_addr(node).await;
    swarm.dial(addr).unwrap();
    let run = async {
        let mut connected = false;
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => connected = true,
                SwarmEvent::ConnectionClosed { num_established: 0, .. } if connected => return true,
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("cannot reach the node: {error}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(within, run).await.unwrap_or(false)
}
