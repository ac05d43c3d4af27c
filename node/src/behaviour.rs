//! The node's one `NetworkBehaviour`. Field order is polling order: connection limits first,
//! then the protocols that keep the mesh together, then the task protocol.

use std::time::Duration;

use fleetmesh_protocol::ids;
use libp2p::request_response::ProtocolSupport;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{gossipsub, identify, identity, kad, mdns, ping, request_response, StreamProtocol};

use crate::codec::TaskCodec;

/// Everything the node speaks.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Caps connections so a flood of peers cannot exhaust memory or file descriptors.
    pub(crate) limits: libp2p::connection_limits::Behaviour,
    /// Refuses new connections while the process uses more memory than allowed.
    pub(crate) memory: libp2p::memory_connection_limits::Behaviour,
    /// Caps connections from one IP address (loopback exempt), so one host cannot take them all.
    pub(crate) per_ip: crate::per_ip::Behaviour,
    /// Tells peers our listen addresses and protocols; feeds their addresses into Kademlia.
    pub(crate) identify: identify::Behaviour,
    /// Keeps connections alive and measures round-trip time.
    pub(crate) ping: ping::Behaviour,
    /// Finds peers on the local network; off where multicast is unwanted (testnets, fleets).
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// The DHT: task specs, open-task indexes and per-model provider records.
    pub(crate) kad: kad::Behaviour<crate::dht::Store>,
    /// Task announcements and presence adverts. Only our topics can be subscribed to
    /// (a whitelist filter), and peers are scored: invalid messages cost a peer its place.
    pub(crate) gossipsub:
        gossipsub::Behaviour<gossipsub::IdentityTransform, gossipsub::WhitelistSubscriptionFilter>,
    /// Bids, awards, results and receipts, point to point; requests on an earlier version's
    /// task protocol are answered with a refusal naming ours.
    pub(crate) tasks: request_response::Behaviour<TaskCodec>,
}

pub(crate) struct BehaviourParams {
    pub(crate) mdns: bool,
    /// New connections are refused while the process uses more than this.
    pub(crate) max_memory_bytes: usize,
    /// Established connections from one IP address (loopback exempt).
    pub(crate) max_connections_per_ip: usize,
}

impl Behaviour {
    pub(crate) fn new(
        key: &identity::Keypair,
        params: &BehaviourParams,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let peer_id = key.public().to_peer_id();

        let limits = libp2p::connection_limits::Behaviour::new(
            libp2p::connection_limits::ConnectionLimits::default()
                .with_max_established(Some(512))
                .with_max_established_incoming(Some(384))
                .with_max_established_per_peer(Some(4))
                .with_max_pending_incoming(Some(64)),
        );
        let memory = libp2p::memory_connection_limits::Behaviour::with_max_bytes(params.max_memory_bytes);
        let per_ip = crate::per_ip::Behaviour::new(params.max_connections_per_ip);

        let identify = identify::Behaviour::new(
            identify::Config::new(ids::IDENTIFY_PROTOCOL.to_owned(), key.public())
                .with_agent_version(format!("fleetmesh/{}", env!("CARGO_PKG_VERSION"))),
        );

        let mdns = if params.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(|e| format!("mdns: {e}"))?,
            )
        } else {
            None
        };

        let mut kad_config = kad::Config::new(StreamProtocol::new(ids::KAD_PROTOCOL));
        kad_config
            .set_query_timeout(Duration::from_secs(15))
            // Records are validated before they are stored (see `EventLoop::on_kad_inbound`).
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_record_ttl(Some(Duration::from_secs(6 * 3600)))
            // Provider records are short-lived and republished often: a key whose provider
            // list fake providers filled frees itself in minutes, not hours.
            .set_provider_record_ttl(Some(Duration::from_secs(15 * 60)))
            .set_provider_publication_interval(Some(Duration::from_secs(5 * 60)))
            .set_publication_interval(Some(Duration::from_secs(600)))
            .set_periodic_bootstrap_interval(Some(Duration::from_secs(60)));
        let store_config = kad::store::MemoryStoreConfig {
            max_records: 16 * 1024,
            max_value_bytes: fleetmesh_protocol::limits::MAX_RECORD_BYTES,
            max_providers_per_key: 256,
            max_provided_keys: 4096,
        };
        // Room for 4,096 of our own records beyond what other peers may fill.
        let store = crate::dht::Store::new(peer_id, store_config, 4096);
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
        // Every fleetmesh node answers DHT queries: vehicles behind NAT get relays later,
        // but a node that stays in client mode would never store task records.
        kad.set_mode(Some(kad::Mode::Server));

        // Anonymous gossip (wire version 2): every payload is a signed envelope the
        // application verifies anyway, so gossipsub's own signature, sequence number and
        // author were a second signature per message, made and checked for nothing. Messages
        // that carry them are refused; ids are the content's hash.
        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(Duration::from_millis(500))
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .validate_messages()
            // Peer exchange: a peer pruned from a full mesh learns other peers to dial.
            .do_px()
            .max_transmit_size(fleetmesh_protocol::limits::MAX_GOSSIP_BYTES + 1024)
            // Content-addressed ids: the same signed bytes are the same message.
            .message_id_fn(|m: &gossipsub::Message| message_id(m.topic.as_str(), &m.data))
            .build()
            .map_err(|e| format!("gossipsub config: {e}"))?;
        let filter = gossipsub::WhitelistSubscriptionFilter(
            [ids::TOPIC_TASKS, ids::TOPIC_PRESENCE]
                .iter()
                .map(|t| gossipsub::IdentTopic::new(*t).hash())
                .collect(),
        );
        let mut gossipsub = gossipsub::Behaviour::new_with_subscription_filter(
            gossipsub::MessageAuthenticity::Anonymous,
            gossip_config,
            filter,
        )
        .map_err(|e| format!("gossipsub: {e}"))?;
        let (score_params, thresholds) = peer_scoring();
        gossipsub.with_peer_score(score_params, thresholds).map_err(|e| format!("gossipsub scoring: {e}"))?;

        // Our task protocol both ways; earlier versions' inbound only, to refuse them clearly.
        let protocols = std::iter::once((StreamProtocol::new(ids::TASK_PROTOCOL), ProtocolSupport::Full))
            .chain(
                ids::OBSOLETE_TASK_PROTOCOLS
                    .iter()
                    .map(|p| (StreamProtocol::new(p), ProtocolSupport::Inbound)),
            );
        let tasks = request_response::Behaviour::with_codec(
            TaskCodec::default(),
            protocols,
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(30))
                // Control messages are small and answered at once; 32 streams at a time per
                // connection is plenty, and bounds what one peer makes the node buffer.
                .with_max_concurrent_streams(32),
        );

        Ok(Self {
            limits,
            memory,
            per_ip,
            identify,
            ping: ping::Behaviour::default(),
            mdns: mdns.into(),
            kad,
            gossipsub,
            tasks,
        })
    }
}

/// A gossip message's id: blake3 over its topic and its data. The same bytes are the same
/// message on one topic; the topic is in it because gossipsub caches an id before the
/// application validates the message: with the data alone, a peer that sent an announcement's
/// bytes on the presence topic first (rejected there) made the real announcement a
/// "duplicate", dropped unseen, and got the honest peers relaying it penalised.
pub(crate) fn message_id(topic: &str, data: &[u8]) -> gossipsub::MessageId {
    let mut h = blake3::Hasher::new();
    h.update(&(topic.len() as u64).to_le_bytes());
    h.update(topic.as_bytes());
    h.update(data);
    gossipsub::MessageId::from(h.finalize().as_bytes().to_vec())
}

/// Score below which a peer is graylisted (its messages ignored) and disconnected.
pub(crate) const GRAYLIST_SCORE: f64 = -80.0;
/// Application score given to bootstrap peers: enough to pass the PX threshold, so peer
/// exchange is taken from them only.
pub(crate) const BOOTSTRAP_APP_SCORE: f64 = 20.0;

/// Gossipsub peer scoring for fleetmesh's traffic: few messages, every one validated by the
/// application. What counts is invalid messages (weight -10, squared: one costs 10, three
/// cost 90 and graylist the sender); the delivery-rate penalties of the defaults are off,
/// because a quiet mesh would punish honest peers for having nothing to forward; IP
/// colocation is off, because vehicles behind one carrier NAT, and in-process test meshes,
/// share addresses. Peer exchange is accepted only from peers with a score of 10, which only
/// bootstrap peers reach (their application score).
fn peer_scoring() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 600.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.5,
        first_message_deliveries_cap: 20.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..gossipsub::TopicScoreParams::default()
    };
    let params = gossipsub::PeerScoreParams {
        topics: [ids::TOPIC_TASKS, ids::TOPIC_PRESENCE]
            .iter()
            .map(|t| (gossipsub::IdentTopic::new(*t).hash(), topic.clone()))
            .collect(),
        app_specific_weight: 1.0,
        ip_colocation_factor_weight: 0.0,
        ..gossipsub::PeerScoreParams::default()
    };
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: GRAYLIST_SCORE,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 5.0,
    };
    (params, thresholds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_on_two_topics_are_two_messages() {
        let data = b"an announcement's bytes";
        let tasks = gossipsub::IdentTopic::new(ids::TOPIC_TASKS).hash();
        let presence = gossipsub::IdentTopic::new(ids::TOPIC_PRESENCE).hash();
        assert_ne!(message_id(tasks.as_str(), data), message_id(presence.as_str(), data));
        assert_eq!(message_id(tasks.as_str(), data), message_id(tasks.as_str(), data));
        assert_ne!(message_id(tasks.as_str(), data), message_id(tasks.as_str(), b"other bytes"));
    }
}
