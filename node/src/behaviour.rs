//! The node's one `NetworkBehaviour`. Field order is polling order: connection limits first,
//! then the protocols that keep the mesh together, then the task protocol.

use std::time::Duration;

use fleetmesh_protocol::ids;
use libp2p::kad::store::MemoryStore;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{gossipsub, identify, identity, kad, mdns, ping, request_response, StreamProtocol};

use crate::codec::TaskCodec;

/// Everything the node speaks.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Caps connections so a flood of peers cannot exhaust memory or file descriptors.
    pub(crate) limits: libp2p::connection_limits::Behaviour,
    /// Tells peers our listen addresses and protocols; feeds their addresses into Kademlia.
    pub(crate) identify: identify::Behaviour,
    /// Keeps connections alive and measures round-trip time.
    pub(crate) ping: ping::Behaviour,
    /// Finds peers on the local network; off where multicast is unwanted (testnets, fleets).
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// The DHT: task specs, open-task indexes and per-model provider records.
    pub(crate) kad: kad::Behaviour<MemoryStore>,
    /// Task announcements and presence adverts.
    pub(crate) gossipsub: gossipsub::Behaviour,
    /// Bids, awards, declines, results and receipts, point to point.
    pub(crate) tasks: request_response::Behaviour<TaskCodec>,
}

pub(crate) struct BehaviourParams {
    pub(crate) mdns: bool,
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
                .with_max_established_per_peer(Some(4))
                .with_max_pending_incoming(Some(128)),
        );

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
            .set_provider_record_ttl(Some(Duration::from_secs(6 * 3600)))
            .set_publication_interval(Some(Duration::from_secs(600)))
            .set_periodic_bootstrap_interval(Some(Duration::from_secs(60)));
        let store_config = kad::store::MemoryStoreConfig {
            max_records: 16 * 1024,
            max_value_bytes: fleetmesh_protocol::limits::MAX_RECORD_BYTES,
            max_providers_per_key: 64,
            max_provided_keys: 4096,
        };
        let mut kad =
            kad::Behaviour::with_config(peer_id, MemoryStore::with_config(peer_id, store_config), kad_config);
        // Every fleetmesh node answers DHT queries: vehicles behind NAT get relays later,
        // but a node that stays in client mode would never store task records.
        kad.set_mode(Some(kad::Mode::Server));

        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(Duration::from_millis(500))
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            // Peer exchange: a peer pruned from a full mesh learns other peers to dial.
            .do_px()
            .max_transmit_size(fleetmesh_protocol::limits::MAX_GOSSIP_BYTES + 1024)
            // Content-addressed ids: the same signed bytes are the same message.
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
            })
            .build()
            .map_err(|e| format!("gossipsub config: {e}"))?;
        let gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)
                .map_err(|e| format!("gossipsub: {e}"))?;

        let tasks = request_response::Behaviour::with_codec(
            TaskCodec,
            [(StreamProtocol::new(ids::TASK_PROTOCOL), request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(30))
                .with_max_concurrent_streams(256),
        );

        Ok(Self {
            limits,
            identify,
            ping: ping::Behaviour::default(),
            mdns: mdns.into(),
            kad,
            gossipsub,
            tasks,
        })
    }
}
