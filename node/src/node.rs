//! The node: a cloneable [`Client`] over a bounded command channel, and an `EventLoop` task
//! that owns the swarm, the store, the executor and the [`Engine`].
//!
//! The event loop is the engine's driver and holds no protocol logic of its own: it turns
//! swarm events, commands, finished executions and a periodic tick into engine
//! [`Input`]s, and performs the [`Action`]s the engine returns, in order (a durable write
//! before the answer it guards). Everything that changes task state happens inside
//! [`Engine::handle`], one input at a time, so the same lifecycle runs unchanged in unit tests
//! and in the simulator.
//!
//! Timers are one periodic tick (`TICK`) that the engine checks every deadline on; with
//! bounded task counts this is simpler and cheaper than a timer per phase per task.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetmesh_crypto::{Identity, ModelId, PublicKey, TaskId};
use fleetmesh_protocol::ids;
use fleetmesh_protocol::wire::{Refusal, TaskResponse};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, mdns, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use crate::behaviour::{Behaviour, BehaviourEvent, BehaviourParams};
use crate::codec::Frame;
use crate::config::NodeConfig;
use crate::executor::{ExecError, ModelStore};
use crate::metrics::Metrics;
use crate::store::Store;
use fleetmesh_api::TaskView;
use fleetmesh_engine::{
    Action, CallId, Engine, EngineConfig, ExecOutput, GossipId, Input, Job, Lookup, Metric, Outgoing,
    ReplyId, ReqTask, SendFailure, SendTag, Topic, Verdict,
};

const TICK: Duration = Duration::from_millis(50);
const COMMAND_QUEUE: usize = 256;
/// Finished executions waiting for the event loop (at most `slots` run at once).
const EXEC_QUEUE: usize = 64;
const MAX_WAITERS_PER_TASK: usize = 16;
/// The gossip topics every node joins.
const TOPICS: [&str; 2] = [ids::TOPIC_TASKS, ids::TOPIC_PRESENCE];

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The key file could not be loaded or created.
    #[error(transparent)]
    Key(#[from] fleetmesh_crypto::KeystoreError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The model store could not be opened.
    #[error(transparent)]
    Models(#[from] ExecError),
    /// A listen or bootstrap address is not a valid multiaddr.
    #[error("invalid address {addr:?}: {message}")]
    Address {
        /// The address as given.
        addr: String,
        /// Why.
        message: String,
    },
    /// The transport or a protocol failed to start.
    #[error("network setup failed ({stage}): {source}")]
    Network {
        /// What was being set up.
        stage: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A listen address's port is taken by another process (libp2p listens with
    /// SO_REUSEPORT, which would otherwise let two nodes share a port and split its
    /// connections between them).
    #[error(
        "cannot listen on {addr}: the port is in use (is another node running with this address?): {source}"
    )]
    PortInUse {
        /// The address as given.
        addr: String,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// A listener failed to come up.
    #[error("cannot listen: {0}")]
    Listen(#[source] std::io::Error),
    /// The listeners did not report their addresses within 5 s.
    #[error("the listeners did not come up within 5 s")]
    ListenTimeout,
    /// The node stopped while starting.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The trace files could not be created.
    #[error(transparent)]
    Trace(#[from] crate::tracer::TraceError),
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node has stopped.
    #[error("the node has shut down")]
    NodeStopped,
    /// The request was refused, with the reason.
    #[error("{0}")]
    Rejected(String),
    /// The node does not know this task.
    #[error("unknown task {0}")]
    UnknownTask(String),
    /// Waiting took longer than the caller allowed.
    #[error("timed out")]
    Timeout,
}

use fleetmesh_api::{NodeStats, PeerInfo, SubmitRequest};

pub(crate) enum Command {
    Submit(Box<SubmitRequest>, oneshot::Sender<Result<TaskId, ClientError>>),
    Status(TaskId, oneshot::Sender<Option<TaskView>>),
    Wait(TaskId, oneshot::Sender<Result<TaskView, ClientError>>),
    Tasks(oneshot::Sender<Vec<TaskView>>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), ClientError>>),
    SendRaw(PeerId, Box<Frame>, oneshot::Sender<Result<TaskResponse, String>>),
    Stats(oneshot::Sender<NodeStats>),
    Ledger(oneshot::Sender<fleetmesh_api::LedgerView>),
    SetVehicle(fleetmesh_api::VehicleState, oneshot::Sender<Result<fleetmesh_api::VehicleView, ClientError>>),
    Shutdown(oneshot::Sender<()>),
    #[cfg(feature = "test-hooks")]
    PublishRaw(String, Vec<u8>, oneshot::Sender<Result<(), String>>),
    #[cfg(feature = "test-hooks")]
    PutRawRecord(Vec<u8>, Vec<u8>, oneshot::Sender<Result<(), String>>),
    #[cfg(feature = "test-hooks")]
    HoldWrites(oneshot::Sender<std::sync::mpsc::Sender<()>>),
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    peer_id: PeerId,
    public: PublicKey,
    metrics: Arc<Mutex<prometheus_client::registry::Registry>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("peer_id", &self.peer_id).finish_non_exhaustive()
    }
}

impl Client {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| ClientError::NodeStopped)?;
        rx.await.map_err(|_| ClientError::NodeStopped)
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// This node's public key (its identity for signatures).
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Submits a task; returns its id once the spec is persisted and announced.
    pub async fn submit(&self, req: SubmitRequest) -> Result<TaskId, ClientError> {
        self.call(|tx| Command::Submit(Box::new(req), tx)).await?
    }

    /// The task's current view, if this node requested it.
    pub async fn status(&self, task: TaskId) -> Result<Option<TaskView>, ClientError> {
        self.call(|tx| Command::Status(task, tx)).await
    }

    /// Waits until the task is verified or failed. Cancel-safe: dropping the future only
    /// drops the wait, not the task.
    pub async fn wait(&self, task: TaskId) -> Result<TaskView, ClientError> {
        self.call(|tx| Command::Wait(task, tx)).await?
    }

    /// Every task this node requested.
    pub async fn tasks(&self) -> Result<Vec<TaskView>, ClientError> {
        self.call(Command::Tasks).await
    }

    /// Connected peers and what their adverts say.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, ClientError> {
        self.call(Command::Peers).await
    }

    /// The addresses the node listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, ClientError> {
        self.call(Command::ListenAddrs).await
    }

    /// Dials an address (with `/p2p/<id>` it is also added to the DHT routing table).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), ClientError> {
        self.call(|tx| Command::Dial(addr, tx)).await?
    }

    /// Sends a frame on the task protocol and returns the answer; for tests of hostile input.
    pub async fn send_raw(
        &self,
        peer: PeerId,
        frame: Frame,
    ) -> Result<Result<TaskResponse, String>, ClientError> {
        self.call(|tx| Command::SendRaw(peer, Box::new(frame), tx)).await
    }

    /// Counters.
    pub async fn stats(&self) -> Result<NodeStats, ClientError> {
        self.call(Command::Stats).await
    }

    /// The owner's ledger: what serving earned and cost, by day.
    pub async fn ledger(&self) -> Result<fleetmesh_api::LedgerView, ClientError> {
        self.call(Command::Ledger).await
    }

    /// Reports the vehicle's state (with `[vehicle] source = "api"`): the node takes work
    /// or not as the owner's policy says, and answers with what follows.
    pub async fn set_vehicle(
        &self,
        state: fleetmesh_api::VehicleState,
    ) -> Result<fleetmesh_api::VehicleView, ClientError> {
        self.call(|tx| Command::SetVehicle(state, tx)).await?
    }

    /// (tests) Publishes raw bytes on a gossip topic.
    #[cfg(feature = "test-hooks")]
    pub async fn publish_raw(&self, topic: &str, bytes: Vec<u8>) -> Result<Result<(), String>, ClientError> {
        self.call(|tx| Command::PublishRaw(topic.to_owned(), bytes, tx)).await
    }

    /// (tests) Holds the store's writer thread before its next transaction until the
    /// returned sender is dropped: writes queue up, and what waits for them is held.
    #[cfg(feature = "test-hooks")]
    pub async fn hold_writes(&self) -> Result<std::sync::mpsc::Sender<()>, ClientError> {
        self.call(Command::HoldWrites).await
    }

    /// (tests) Puts a raw record into the DHT, bypassing every check.
    #[cfg(feature = "test-hooks")]
    pub async fn put_raw_record(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<Result<(), String>, ClientError> {
        self.call(|tx| Command::PutRawRecord(key, value, tx)).await
    }

    /// Prometheus text exposition of libp2p's and the node's metrics.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        if let Ok(reg) = self.metrics.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        }
        out
    }

    /// Stops the node: the event loop ends and the swarm closes its connections. State is
    /// already persisted, so a node started on the same data dir resumes.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.call(Command::Shutdown).await
    }
}

/// A running node.
pub struct Node {
    /// The handle.
    pub client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Loads (or creates) the identity in `config.data_dir`, opens the store, starts the
    /// swarm and, if configured, the local API.
    pub async fn spawn(config: NodeConfig) -> Result<Self, NodeError> {
        config.validate()?;
        let (identity, _) = fleetmesh_crypto::load_or_create_identity(&config.data_dir.join("node.key"))?;
        Self::spawn_with_identity(config, identity).await
    }

    /// As [`Node::spawn`] with a given identity.
    pub async fn spawn_with_identity(config: NodeConfig, identity: Identity) -> Result<Self, NodeError> {
        config.validate()?;
        let store = Arc::new(Store::open(&config.data_dir)?);
        let models = Arc::new(ModelStore::open(&config.data_dir.join("models"))?);
        let mut secret = identity.secret_bytes();
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes(secret.as_mut())
            .map_err(|e| NodeError::Network { stage: "key", source: e.into() })?;
        let mut registry = prometheus_client::registry::Registry::with_prefix("fleetmesh");
        let p2p_metrics = libp2p::metrics::Metrics::new(&mut registry);
        let metrics = Metrics::new(&mut registry);
        let params = BehaviourParams {
            mdns: config.mdns,
            max_memory_bytes: config.max_memory_bytes,
            max_connections_per_ip: config.max_connections_per_ip,
        };
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .map_err(|e| NodeError::Network { stage: "tcp", source: e.into() })?
            .with_quic()
            .with_dns()
            .map_err(|e| NodeError::Network { stage: "dns", source: e.into() })?
            .with_behaviour(|key| Behaviour::new(key, &params))
            .map_err(|e| NodeError::Network { stage: "behaviour", source: e.into() })?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(Duration::from_millis(config.idle_connection_timeout_ms))
            })
            .build();

        for addr in &config.listen {
            let ma: Multiaddr = addr.parse().map_err(|e: libp2p::multiaddr::Error| NodeError::Address {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
            probe_port(&ma).map_err(|source| NodeError::PortInUse { addr: addr.clone(), source })?;
            swarm
                .listen_on(ma)
                .map_err(|e| NodeError::Address { addr: addr.clone(), message: format!("{e:?}") })?;
        }
        let mut bootstrap = Vec::new();
        for addr in &config.bootstrap {
            let ma: Multiaddr = addr.parse().map_err(|e: libp2p::multiaddr::Error| NodeError::Address {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
            let Some(peer) = peer_of(&ma) else {
                return Err(NodeError::Address {
                    addr: addr.clone(),
                    message: "must end in /p2p/<peer id>".into(),
                });
            };
            bootstrap.push((peer, ma));
        }
        let identity = Arc::new(identity);
        let tracer = match &config.trace {
            Some(path) => Some(crate::tracer::Tracer::open(path, identity.clone(), *swarm.local_peer_id())?),
            None => None,
        };
        for topic in TOPICS {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&gossipsub::IdentTopic::new(topic))
                .map_err(|e| NodeError::Network { stage: "subscribe", source: e.into() })?;
            if let Some(t) = &tracer {
                t.membership(topic, true);
            }
        }
        // Wait for the listeners to come up so callers can read the addresses at once.
        let mut listening = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while listening < config.listen.len() {
            match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
                Ok(SwarmEvent::NewListenAddr { .. }) => listening += 1,
                Ok(SwarmEvent::ListenerError { error, .. }) => return Err(NodeError::Listen(error)),
                Ok(SwarmEvent::ListenerClosed { reason: Err(error), .. }) => {
                    return Err(NodeError::Listen(error))
                }
                Ok(_) => {}
                Err(_) => return Err(NodeError::ListenTimeout),
            }
        }
        for (peer, addr) in &bootstrap {
            swarm.behaviour_mut().kad.add_address(peer, addr.clone());
        }

        let public = identity.public();
        let peer_id = *swarm.local_peer_id();
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (exec_tx, exec_rx) = mpsc::channel(EXEC_QUEUE);
        let registry = Arc::new(Mutex::new(registry));
        let client = Client { tx, peer_id, public, metrics: registry };
        let span = tracer.as_ref().map_or_else(tracing::Span::none, crate::tracer::Tracer::span);
        let now = now_ms();
        let mut settings = engine_config(&config);
        if let Some(path) = &config.operator_cert {
            settings.operator_cert = Some(read_operator_cert(path, &public, now)?);
        }
        for model in models.list() {
            match models.input_bytes(&model) {
                Ok(bytes) => {
                    settings.model_inputs.insert(model, bytes);
                }
                Err(e) => tracing::warn!(%model, "cannot read the model's input size: {e}"),
            }
            match models.output_bytes(&model) {
                Ok(bytes) => {
                    settings.model_outputs.insert(model, bytes);
                }
                Err(e) => tracing::warn!(%model, "cannot run the model to learn its output size: {e}"),
            }
        }
        let engine = Engine::new(identity.clone(), settings, models.list().into_iter().collect(), now);
        // Last: a node that fails to start leaves no thread holding its store open.
        let writer = crate::writer::Writer::start(store.clone(), metrics.store_commits.clone())
            .map_err(|e| crate::store::StoreError::Db(format!("cannot start the writer thread: {e}")))?;
        let mut event_loop = EventLoop {
            swarm,
            engine,
            store,
            durable: Durable { writer, held: Default::default(), answers: VecDeque::new(), known: 0 },
            tracer,
            meters: Meters { node: metrics, p2p: p2p_metrics },
            commands: rx,
            executor: Executor {
                models,
                tx: exec_tx,
                rx: exec_rx,
                running: tokio::task::JoinSet::new(),
                stops: HashMap::new(),
                #[cfg(feature = "test-hooks")]
                delay_ms: config.exec_delay_ms,
            },
            pending: Pending::default(),
            vehicle: crate::vehicle::VehicleFeed::new(config.vehicle.clone(), now),
            bootstrap: bootstrap.into_iter().map(|(peer, addr)| Bootstrap::new(peer, addr)).collect(),
            dht_guard: crate::dht::PutBudget::default(),
            housekeeping: Housekeeping {
                loopback_mesh: !config.listen.is_empty()
                    && config
                        .listen
                        .iter()
                        .all(|a| a.parse::<Multiaddr>().is_ok_and(|a| crate::dht::is_loopback(&a))),
                data_dir: config.data_dir.clone(),
                min_free_disk_bytes: config.min_free_disk_bytes,
                retention_ms: (config.retention_days > 0)
                    .then(|| u64::from(config.retention_days).saturating_mul(24 * 3600 * 1000)),
                disk_low: false,
                next_disk_check: tokio::time::Instant::now(),
                next_sweep: tokio::time::Instant::now(),
                warned_versions: fleetmesh_engine::bounded::BoundedMap::new(256),
                last_version_warning: None,
                version_cuts: VecDeque::new(),
            },
        };
        // The vehicle's state before any restored job may start: a node restarted while its
        // car drives (or before its integration answers) must not run them.
        event_loop.poll_vehicle(now_ms());
        event_loop.resume()?;
        let task = tokio::spawn(tracing::Instrument::instrument(event_loop.run(), span));
        Ok(Self { client, task })
    }

    /// Shuts the node down and waits for its event loop to end.
    pub async fn stop(self) {
        let _ = self.client.shutdown().await;
        let _ = self.task.await;
    }

    /// Ends the node abruptly, as a crash or a power cut would: no goodbye to anyone.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// The engine's settings from the node's configuration.
fn engine_config(c: &NodeConfig) -> EngineConfig {
    EngineConfig {
        serve: c.serve,
        slots: c.slots.max(1),
        max_queue: c.max_queue,
        max_jobs_per_requester: c.max_jobs_per_requester,
        max_batch: c.max_batch.min(fleetmesh_protocol::batch::MAX_BATCH),
        price_floor: c.price_floor,
        owner: c.owner.clone(),
        operator_cert: None,
        tasks: c.tasks.clone(),
        trust: c.trust.clone(),
        default_model: Some(crate::digits::model_id()),
        model_inputs: Default::default(),
        model_outputs: Default::default(),
        presence_interval_ms: c.presence_interval_ms.max(100),
        dht_scan_interval_ms: c.dht_scan_interval_ms.max(100),
        max_finished_in_memory: c.max_finished_in_memory,
        #[cfg(feature = "test-hooks")]
        misbehave: c.misbehave,
        #[cfg(feature = "test-hooks")]
        ignore_task_gossip: c.ignore_task_gossip,
    }
}

/// This node's operator certificate from `path`: it must decode, be signed by its operator,
/// name this node's key and be valid now (a node showing a certificate nobody accepts would
/// only look certified to its operator).
fn read_operator_cert(
    path: &std::path::Path,
    me: &PublicKey,
    now: u64,
) -> Result<fleetmesh_crypto::SignedEnvelope, NodeError> {
    let invalid = |m: String| NodeError::Config(crate::config::ConfigError::Invalid(m));
    let bytes = std::fs::read(path)
        .map_err(|e| invalid(format!("operator_cert: cannot read {}: {e}", path.display())))?;
    let env: fleetmesh_crypto::SignedEnvelope = fleetmesh_protocol::decode(&bytes, 4096)
        .map_err(|e| invalid(format!("operator_cert: {} is not a certificate: {e}", path.display())))?;
    let (operator, until) = fleetmesh_protocol::operator_of(&env, me, now)
        .map_err(|e| invalid(format!("operator_cert {}: {e}", path.display())))?;
    tracing::info!(%operator, until_ms = until, "certified by operator");
    Ok(env)
}

/// Binds a fixed TCP or UDP port of a listen address without SO_REUSEPORT, and lets it go:
/// fails when another socket holds the port. Port 0 (any free port) is not probed.
fn probe_port(addr: &Multiaddr) -> std::io::Result<()> {
    use libp2p::multiaddr::Protocol;
    let mut ip: Option<std::net::IpAddr> = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a.into()),
            Protocol::Ip6(a) => ip = Some(a.into()),
            Protocol::Tcp(port) if port != 0 => {
                if let Some(ip) = ip {
                    drop(std::net::TcpListener::bind((ip, port))?);
                }
            }
            Protocol::Udp(port) if port != 0 => {
                if let Some(ip) = ip {
                    drop(std::net::UdpSocket::bind((ip, port))?);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The `/p2p/<id>` part of an address.
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// The libp2p peer id of a fleetmesh public key.
pub(crate) fn peer_id_of(key: &PublicKey) -> PeerId {
    match libp2p::identity::ed25519::PublicKey::try_from_bytes(&key.to_bytes()) {
        Ok(pk) => libp2p::identity::PublicKey::from(pk).to_peer_id(),
        // Unreachable: a PublicKey is always a valid ed25519 key.
        Err(_) => PeerId::random(),
    }
}

/// The fleetmesh public key inside an ed25519 peer id.
pub(crate) fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    let ed = pk.try_into_ed25519().ok()?;
    PublicKey::from_bytes(&ed.to_bytes()).ok()
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What an outbound request was for, to route its answer.
#[allow(clippy::large_enum_variant)] // one per request in flight, bounded by libp2p
enum Outbound {
    /// Sent for the engine: the answer goes back to it.
    Engine { tag: SendTag, peer: PublicKey },
    /// Sent by a test through [`Client::send_raw`].
    Raw(oneshot::Sender<Result<TaskResponse, String>>),
}

/// A DHT query the engine asked for.
enum Query {
    Record(Lookup),
    Providers(ModelId),
}

/// Everything waiting for an answer, by the id the engine or libp2p gave it.
#[derive(Default)]
struct Pending {
    next_id: u64,
    outbound: HashMap<OutboundRequestId, Outbound>,
    replies: HashMap<ReplyId, ResponseChannel<TaskResponse>>,
    gossip: HashMap<GossipId, (gossipsub::MessageId, PeerId, &'static str)>,
    queries: HashMap<kad::QueryId, Query>,
    calls: HashMap<CallId, oneshot::Sender<Result<TaskId, ClientError>>>,
    waiters: HashMap<TaskId, Vec<oneshot::Sender<Result<TaskView, ClientError>>>>,
}

impl Pending {
    fn id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    /// The protocol logic: requester and worker.
    engine: Engine,
    /// The durable store (redb), read here; written by the writer thread.
    store: Arc<Store>,
    /// The writer thread, and the actions that wait for its writes.
    durable: Durable,
    /// Gossip and task traces, when the node was started with a trace path.
    tracer: Option<crate::tracer::Tracer>,
    /// The node's and libp2p's counters.
    meters: Meters,
    /// Commands from `Client` handles.
    commands: mpsc::Receiver<Command>,
    /// Model runs on the blocking pool.
    executor: Executor,
    /// What waits for an answer: requests, replies, gossip verdicts, DHT queries, callers.
    pending: Pending,
    /// The vehicle's state source.
    vehicle: crate::vehicle::VehicleFeed,
    /// Bootstrap peers, dialled until connected and again whenever the connection drops.
    bootstrap: Vec<Bootstrap>,
    /// Disk space checks, the retention sweep, and the DHT's per-peer write budget.
    housekeeping: Housekeeping,
    /// How many DHT records each peer stored here lately.
    dht_guard: crate::dht::PutBudget,
}

/// Durable writes in flight, and what the engine asked for after them.
struct Durable {
    writer: crate::writer::Writer,
    held: crate::writer::Held<Action>,
    /// Answers to callers about task state, each waiting until the writes before it (that
    /// state) are durable: a caller never sees a result a power cut could take back.
    answers: VecDeque<(u64, Answer)>,
    /// Every write up to this one is done and its failure, if any, reported to the engine.
    /// An action produced after that knows of those failures; a write that failed above it
    /// taints the actions the engine produced without knowing.
    known: u64,
}

impl Durable {
    /// Actions and answers waiting for the disk.
    fn backlog(&self) -> usize {
        self.held.len().saturating_add(self.answers.len())
    }
}

/// A caller's answer, computed now, sent once durable.
enum Answer {
    Status(oneshot::Sender<Option<TaskView>>, Option<TaskView>),
    Wait(oneshot::Sender<Result<TaskView, ClientError>>, Result<TaskView, ClientError>),
    Tasks(oneshot::Sender<Vec<TaskView>>, Vec<TaskView>),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Status(tx, v) => drop(tx.send(v)),
            Answer::Wait(tx, v) => drop(tx.send(v)),
            Answer::Tasks(tx, v) => drop(tx.send(v)),
        }
    }
}

/// While this many actions wait for the disk, the event loop takes no new input from peers,
/// callers or executions (the disk is the bottleneck; let the queues upstream hold).
const MAX_HELD: usize = 4096;
/// Nor while this many bytes wait for the writer thread (inputs and outputs reach 1 MiB).
const MAX_QUEUED_BYTES: usize = 256 << 20;

/// The node's and libp2p's counters, in one Prometheus registry.
struct Meters {
    node: Metrics,
    p2p: libp2p::metrics::Metrics,
}

/// Runs models on the blocking pool (the engine decides how many at once) and hands each
/// result back to the event loop as an engine input.
struct Executor {
    models: Arc<ModelStore>,
    tx: mpsc::Sender<Input>,
    rx: mpsc::Receiver<Input>,
    /// Runs in progress, awaited at shutdown.
    running: tokio::task::JoinSet<()>,
    /// A flag per job running ([`Action::Stop`] sets it: a batch stops between inputs);
    /// removed when its run ends, so it holds at most the running jobs.
    stops: HashMap<TaskId, Arc<std::sync::atomic::AtomicBool>>,
    /// (tests) Sleep this long before each inference.
    #[cfg(feature = "test-hooks")]
    delay_ms: u64,
}

impl Executor {
    /// Runs `model` on `input` (read from the store by the caller): a job's
    /// ([`Input::Executed`]), or with `check` a requested task's own check
    /// ([`Input::Checked`], the output's digest).
    fn execute(
        &mut self,
        (task, model, batch, until_ms): (TaskId, ModelId, Option<u16>, u64),
        input: Result<Option<Vec<u8>>, crate::store::StoreError>,
        check: bool,
    ) {
        let (models, tx) = (self.models.clone(), self.tx.clone());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if !check {
            self.stops.insert(task, stop.clone());
        }
        #[cfg(feature = "test-hooks")]
        let delay = Duration::from_millis(self.delay_ms);
        self.running.spawn(async move {
            #[cfg(feature = "test-hooks")]
            tokio::time::sleep(delay).await;
            let result = match input {
                Ok(Some(input)) => tokio::task::spawn_blocking(move || {
                    models
                        .run_batch(&model, batch, &input, &|| {
                            now_ms() > until_ms || stop.load(std::sync::atomic::Ordering::Relaxed)
                        })
                        .map(|i| ExecOutput {
                            output: i.output,
                            run_time_us: i.run_time_us,
                            runtime: crate::executor::runtime_profile(),
                        })
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(format!("executor task failed: {e}"))),
                Ok(None) => Err("input missing from the store".to_owned()),
                Err(e) => Err(format!("input unreadable: {e}")),
            };
            let done = if check {
                match result.and_then(|r| {
                    fleetmesh_protocol::batch::output_digest(batch, &r.output)
                        .map(|d| (d, r.output))
                        .map_err(|e| e.to_string())
                }) {
                    Ok((d, output)) => Input::Checked { task, result: Ok(d), output },
                    Err(e) => Input::Checked { task, result: Err(e), output: Vec::new() },
                }
            } else {
                Input::Executed { task, result }
            };
            let _ = tx.send(done).await;
        });
    }

    /// Runs `model` once on an all-zero input.
    fn self_test(&mut self, model: ModelId) {
        let (models, tx) = (self.models.clone(), self.tx.clone());
        self.running.spawn(async move {
            let ok =
                tokio::task::spawn_blocking(move || models.self_test(&model)).await.is_ok_and(|r| r.is_ok());
            let _ = tx.send(Input::SelfTested { model, ok }).await;
        });
    }
}

/// The node's periodic care of its data dir.
struct Housekeeping {
    /// Every configured listen address is loopback (an in-process mesh): then, and only
    /// then, peers' loopback addresses are worth dialling. (The swarm's listeners cannot
    /// tell: a node listening on 0.0.0.0 lists 127.0.0.1 too.)
    loopback_mesh: bool,
    data_dir: std::path::PathBuf,
    min_free_disk_bytes: u64,
    retention_ms: Option<u64>,
    disk_low: bool,
    next_disk_check: tokio::time::Instant,
    next_sweep: tokio::time::Instant,
    /// Peers already warned about for speaking another wire version (later refusals are
    /// logged at debug level, so a redialling old peer does not flood the log).
    warned_versions: fleetmesh_engine::bounded::BoundedMap<PeerId, ()>,
    /// When the last such warning was logged.
    last_version_warning: Option<tokio::time::Instant>,
    /// Peers of another version to disconnect once their grace is over, in order.
    version_cuts: VecDeque<(PeerId, tokio::time::Instant)>,
}

/// How long a peer of another wire version stays connected after identify told us: time for
/// the refusal of a request it sent at once to reach it.
const VERSION_GRACE: Duration = Duration::from_secs(2);
/// Peers of another version waiting for their grace to end, at most.
const MAX_VERSION_CUTS: usize = 256;

/// A peer's string for a log line: at most 64 characters, control characters as `?`.
fn printable(s: &str) -> String {
    s.chars().take(64).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Free bytes on the disk that holds `dir` (the mount point with the longest matching path).
fn free_disk_bytes(dir: &std::path::Path) -> Option<u64> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
}

/// A bootstrap peer and how reaching it goes.
struct Bootstrap {
    peer: PeerId,
    addr: Multiaddr,
    connected: bool,
    last_error: Option<String>,
    next_dial: tokio::time::Instant,
    backoff: Duration,
    /// It answered as another fleetmesh wire version: dialled at the longest backoff until a
    /// connection shows ours.
    other_version: bool,
}

impl Bootstrap {
    fn new(peer: PeerId, addr: Multiaddr) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            peer,
            addr,
            connected: false,
            last_error: None,
            next_dial: now,
            backoff: Duration::from_secs(1),
            other_version: false,
        }
    }
}

/// Longest wait between two dials of an unreachable bootstrap peer.
const MAX_BOOTSTRAP_BACKOFF: Duration = Duration::from_secs(60);

impl EventLoop {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !self.bootstrap.is_empty() {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
        loop {
            tokio::select! {
                // Local work first: finished executions and commands before new remote work.
                biased;
                // The disk's progress: let out what waited for it.
                _ = self.durable.writer.progressed() => {
                    self.drive(VecDeque::new());
                    self.answer_orphans();
                }
                Some(done) = self.executor.rx.recv(), if self.taking_input() => {
                    if let Input::Executed { task, .. } = &done {
                        self.executor.stops.remove(task);
                    }
                    self.step(done);
                    while self.executor.running.try_join_next().is_some() {}
                }
                cmd = self.commands.recv(), if self.taking_input() => match cmd {
                    Some(Command::Shutdown(tx)) => { let _ = tx.send(()); break; }
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = tick.tick() => {
                    self.poll_vehicle(now_ms());
                    self.step(Input::Tick);
                    self.meters.node.set_vehicle(self.engine.availability());
                    self.meters.node.set_ledger(&self.engine.worker.ledger.total());
                    self.dial_bootstrap();
                    self.disconnect_graylisted();
                    self.cut_other_versions();
                    self.housekeeping();
                    if let Some(t) = self.tracer.as_mut() {
                        t.mesh_changes(&self.swarm.behaviour().gossipsub, &TOPICS);
                    }
                }
                event = self.swarm.select_next_some(), if self.taking_input() => {
                    self.on_swarm_event(event)
                }
            }
        }
        // Ordered shutdown: no new command or remote work is taken (the loop ended); the
        // executions still running finish and their results are persisted, so a restart does
        // not run them again. Inference is bounded by its execution timeout; 30 s at most.
        let drain = async {
            while let Some(joined) = self.executor.running.join_next().await {
                if joined.is_ok() {
                    while let Ok(done) = self.executor.rx.try_recv() {
                        self.step(done);
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), drain).await.is_err() {
            tracing::warn!("executions still running at shutdown were abandoned; they run again on restart");
        }
        // Every write the engine asked for reaches the disk, and what waited for it goes out.
        let flush = async {
            while self.durable.writer.done() < self.durable.writer.submitted() {
                self.durable.writer.progressed().await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), flush).await.is_err() {
            tracing::warn!("the disk did not finish the last writes within 30 s at shutdown");
        }
        self.drive(VecDeque::new());
        self.durable.writer.close().await;
        if let Some(mut tracer) = self.tracer.take() {
            // Leave the topics (peers drop this node from their meshes at once) and say so.
            for topic in TOPICS {
                if self.swarm.behaviour_mut().gossipsub.unsubscribe(&gossipsub::IdentTopic::new(topic)) {
                    tracer.membership(topic, false);
                }
            }
            tracer.mesh_changes(&self.swarm.behaviour().gossipsub, &TOPICS);
            let dropped = tracer.dropped();
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "the trace writer fell behind; events were dropped (counted in the trace)"
                );
            }
            tracer.close().await;
        }
        tracing::debug!(peer = %self.swarm.local_peer_id(), "event loop stopped");
    }

    /// Whether the loop takes new input: not while the disk is far behind (actions held, or
    /// bytes queued for the writer, over their bounds).
    fn taking_input(&self) -> bool {
        self.durable.backlog() < MAX_HELD && self.durable.writer.queued_bytes() < MAX_QUEUED_BYTES
    }

    /// Feeds one input to the engine and performs what it returns, then any inputs those
    /// actions produced at once (a publish that failed, an award whose input is missing).
    fn step(&mut self, input: Input) {
        self.drive(VecDeque::from([input]));
    }

    /// Lets out what the disk's progress allows, then feeds `queue` to the engine.
    fn drive(&mut self, mut queue: VecDeque<Input>) {
        self.release(&mut queue);
        while let Some(input) = queue.pop_front() {
            let actions = self.engine.handle(now_ms(), input);
            self.perform(actions, &mut queue);
        }
    }

    /// Queues the batch's writes on the writer thread and holds every other action until the
    /// writes before it are durable (all of them: effects leave in the engine's order).
    fn perform(&mut self, actions: Vec<Action>, follow_up: &mut VecDeque<Input>) {
        // Writes the engine had not heard the fate of when it produced these actions.
        let first = self.durable.known.saturating_add(1);
        for action in actions {
            match action {
                Action::Persist(ops) => {
                    self.durable.writer.submit(ops);
                    self.meters.node.store_writes.inc();
                }
                action => {
                    let after = self.durable.writer.submitted();
                    self.durable.held.push(action, after, first..after.saturating_add(1));
                }
            }
        }
        self.release(follow_up);
    }

    /// The engine answers every request, perhaps after a durable write: once nothing is held,
    /// a request still unanswered means a bug, and gets `Unavailable` rather than a hang.
    fn answer_orphans(&mut self) {
        if self.durable.held.len() > 0 || self.pending.replies.is_empty() {
            return;
        }
        for (_, channel) in std::mem::take(&mut self.pending.replies) {
            tracing::error!("a request the engine did not answer was refused (a bug)");
            let r = TaskResponse::Refused(Refusal::Unavailable);
            let _ = self.swarm.behaviour_mut().tasks.send_response(channel, r);
        }
    }

    /// Performs the held actions whose writes are done; reports failed writes to the engine.
    fn release(&mut self, follow_up: &mut VecDeque<Input>) {
        let (done, failed) = self.durable.writer.progress();
        for (seq, keys, e) in failed {
            tracing::error!("could not persist: {e}");
            self.durable.held.fail(seq);
            // First in line: the engine hears of it before any other input.
            follow_up.push_front(Input::PersistFailed { keys });
        }
        self.durable.known = done;
        while let Some((action, failed)) = self.durable.held.pop_ready(done) {
            self.effect(action, failed, follow_up);
        }
        while self.durable.answers.front().is_some_and(|(seq, _)| *seq <= done) {
            if let Some((_, answer)) = self.durable.answers.pop_front() {
                answer.send();
            }
        }
    }

    /// Performs one action. `failed`: a durable write before it in its batch failed, so it
    /// must not promise a peer or a caller anything.
    fn effect(&mut self, action: Action, failed: bool, follow_up: &mut VecDeque<Input>) {
        {
            match action {
                Action::Persist(ops) => {
                    // Not held (perform queues writes); kept for completeness.
                    self.durable.writer.submit(ops);
                }
                Action::Reply { reply, response } => {
                    let response =
                        if failed { TaskResponse::Refused(Refusal::Unavailable) } else { response };
                    if let Some(channel) = self.pending.replies.remove(&reply) {
                        let _ = self.swarm.behaviour_mut().tasks.send_response(channel, response);
                    }
                }
                Action::Submitted { call, result } => {
                    let result = match (failed, result) {
                        (true, Ok(_)) => Err(ClientError::Rejected("could not persist the task".into())),
                        (_, r) => r.map_err(|e| ClientError::Rejected(e.to_string())),
                    };
                    if let Some(tx) = self.pending.calls.remove(&call) {
                        let _ = tx.send(result);
                    }
                }
                Action::Send { to, request, tag } => {
                    if !failed {
                        self.send(to, request, tag, follow_up);
                    } else {
                        // Held back; the engine hears so, as it would of a lost request.
                        let result =
                            Err(SendFailure::Network("not sent: a durable write before it failed".into()));
                        follow_up.push_back(Input::Response { tag, peer: to, result });
                    }
                }
                Action::Validate { msg, verdict } => self.validate(msg, verdict),
                Action::Publish { topic, data, announce } => {
                    // An announcement after a failed write is of a round not on disk.
                    let ok = !failed && self.publish(topic.name(), data);
                    if let Some((task, round)) = announce {
                        follow_up.push_back(Input::Published { task, round, ok });
                    }
                }
                Action::PutRecord { key, value } => {
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    if let Err(e) = kad.put_record(kad::Record::new(key, value), kad::Quorum::One) {
                        tracing::warn!("could not store a DHT record locally: {e}");
                    }
                }
                Action::Provide { key } => {
                    if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(kad::RecordKey::new(&key))
                    {
                        tracing::warn!("could not start providing: {e}");
                    }
                }
                Action::GetRecord { key, lookup } => {
                    let qid = self.swarm.behaviour_mut().kad.get_record(kad::RecordKey::new(&key));
                    self.pending.queries.insert(qid, Query::Record(lookup));
                }
                Action::GetProviders { model } => {
                    let key = kad::RecordKey::new(&ids::model_provider_key(&model));
                    let qid = self.swarm.behaviour_mut().kad.get_providers(key);
                    self.pending.queries.insert(qid, Query::Providers(model));
                }
                Action::Execute { task, model, batch, until_ms } => {
                    let input = self.store.get_raw(crate::store::JOB_INPUTS, &task);
                    self.executor.execute((task, model, batch, until_ms), input, false);
                }
                // The requester's own run of its task, to check the workers against.
                Action::Check { task, model, batch, until_ms } => {
                    let input = self.store.get_raw(crate::store::REQUEST_INPUTS, &task);
                    self.executor.execute((task, model, batch, until_ms), input, true);
                }
                Action::SelfTest { model } => self.executor.self_test(model),
                Action::Stop { task } => {
                    if let Some(stop) = self.executor.stops.get(&task) {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Action::Trace(record) => {
                    if let Some(t) = self.tracer.as_mut() {
                        t.task(*record);
                    }
                }
                // Not after a failed write: the engine writes the task again, and callers
                // waiting get its state at their timeout.
                Action::Finished(task) if !failed => self.notify_finished(&task),
                Action::Finished(_) => {}
                Action::Count(m) => self.count(m),
            }
        }
    }

    fn count(&self, m: Metric) {
        let c = &self.meters.node;
        let counter = match m {
            Metric::TasksSubmitted => &c.tasks_submitted,
            Metric::TasksVerified => &c.tasks_verified,
            Metric::TasksFailed => &c.tasks_failed,
            Metric::BidsReceived => &c.bids_received,
            Metric::BidsSent => &c.bids_sent,
            Metric::BidsDeclined => &c.bids_declined,
            Metric::ResultsReceived => &c.results_received,
            Metric::ResultsRejected => &c.results_rejected,
            Metric::Disagreements => &c.disagreements,
            Metric::Reawards => &c.reawards,
            Metric::JobsExecuted => &c.jobs_executed,
            Metric::GossipRejected => &c.gossip_rejected,
            Metric::OwnChecks => &c.own_checks,
            Metric::SpotChecks => &c.spot_checks,
            Metric::WorkersDistrusted => &c.workers_distrusted,
            Metric::OfferAwards => &c.tasks_awarded_on_offers,
            Metric::JobsReleased => &c.jobs_released,
            Metric::TasksReleased => &c.tasks_released,
        };
        counter.inc();
    }

    fn send(&mut self, to: PublicKey, request: Outgoing, tag: SendTag, follow_up: &mut VecDeque<Input>) {
        let request = match request {
            Outgoing::Request(r) => r,
            Outgoing::Award { spec, award, task } => {
                match self.store.get_raw(crate::store::REQUEST_INPUTS, &task) {
                    Ok(Some(input)) => fleetmesh_protocol::wire::TaskRequest::Award { spec, award, input },
                    other => {
                        let why = match other {
                            Ok(_) => "no such record".to_owned(),
                            Err(e) => e.to_string(),
                        };
                        follow_up.push_back(Input::Response {
                            tag,
                            peer: to,
                            result: Err(SendFailure::InputMissing(why)),
                        });
                        return;
                    }
                }
            }
        };
        let rid = self.swarm.behaviour_mut().tasks.send_request(&peer_id_of(&to), Frame::Request(request));
        self.pending.outbound.insert(rid, Outbound::Engine { tag, peer: to });
    }

    /// Dials the bootstrap peers that are due: each until it is connected, with a backoff
    /// that doubles up to a minute, and a warning that says why it failed.
    fn dial_bootstrap(&mut self) {
        let now = tokio::time::Instant::now();
        let mut dialled = false;
        for b in self.bootstrap.iter_mut().filter(|b| !b.connected && now >= b.next_dial) {
            b.next_dial = now + b.backoff;
            b.backoff = (b.backoff * 2).min(MAX_BOOTSTRAP_BACKOFF);
            if self.swarm.is_connected(&b.peer) {
                b.connected = true;
                continue;
            }
            if let Err(e) = self.swarm.dial(b.addr.clone()) {
                tracing::warn!(addr = %b.addr, "cannot dial bootstrap peer: {e}");
                b.last_error = Some(e.to_string());
            }
            dialled = true;
        }
        if dialled {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    /// Reads the vehicle's state source and tells the engine when it changed.
    fn poll_vehicle(&mut self, now: u64) {
        if let Some(state) = self.vehicle.poll(now) {
            self.step(Input::Vehicle(state));
            self.meters.node.set_vehicle(self.engine.availability());
        }
    }

    fn vehicle_view(&self) -> fleetmesh_api::VehicleView {
        crate::vehicle::view(self.vehicle.source(), self.engine.vehicle(), self.engine.availability())
    }

    /// Every 10 s: is the data disk nearly full? (no new work while it is). Every hour, and
    /// at start: delete finished tasks and jobs older than the retention period.
    fn housekeeping(&mut self) {
        let now = tokio::time::Instant::now();
        let h = &mut self.housekeeping;
        if now >= h.next_disk_check {
            h.next_disk_check = now + Duration::from_secs(10);
            let free = free_disk_bytes(&h.data_dir);
            let low = free.is_some_and(|f| f < h.min_free_disk_bytes);
            if low != h.disk_low {
                h.disk_low = low;
                if low {
                    tracing::warn!(
                        free = free.unwrap_or(0),
                        min = h.min_free_disk_bytes,
                        "the data disk is nearly full: taking no new work until space is freed"
                    );
                } else {
                    tracing::info!("the data disk has room again: taking new work");
                }
                self.step(Input::DiskLow(low));
            }
        }
        let h = &mut self.housekeeping;
        if let Some(retention) = h.retention_ms.filter(|_| now >= h.next_sweep) {
            h.next_sweep = now + Duration::from_secs(3600);
            self.durable.writer.sweep(now_ms().saturating_sub(retention));
        }
    }

    /// A peer that announced another fleetmesh wire version: it shares no protocol with this
    /// node, so it is told (by the closed connection here; by a refusal naming our version if
    /// it sends a task request) and disconnected, with a warning that says what to upgrade. A
    /// bootstrap peer in that state is redialled at the longest backoff, and `health` shows why.
    fn refuse_other_version(&mut self, peer: PeerId, theirs: &str, agent: &str) {
        self.meters.node.peers_other_version.inc();
        // The peer's own strings: cut short and stripped of control characters before they
        // reach a log line or `health`.
        let why = format!(
            "peer speaks {} ({}); this node speaks {} (fleetmesh {}): upgrade the older one",
            printable(theirs),
            printable(agent),
            ids::IDENTIFY_PROTOCOL,
            env!("CARGO_PKG_VERSION")
        );
        let mut bootstrap = false;
        for b in self.bootstrap.iter_mut().filter(|b| b.peer == peer) {
            bootstrap = true;
            b.other_version = true;
            b.backoff = MAX_BOOTSTRAP_BACKOFF;
            b.last_error = Some(why.clone());
        }
        // One warning per peer, and at most one every 10 s for peers that are not bootstrap
        // peers (peer ids cost nothing to make).
        let now = tokio::time::Instant::now();
        let h = &mut self.housekeeping;
        let quiet = h.last_version_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
        if bootstrap || (quiet && h.warned_versions.insert(peer, ())) {
            h.last_version_warning = Some(now);
            tracing::warn!(%peer, "disconnecting a peer of another wire version: {why}");
        } else {
            tracing::debug!(%peer, "disconnecting a peer of another wire version: {why}");
        }
        self.swarm.behaviour_mut().kad.remove_peer(&peer);
        // After a short grace, so a request it sent with its first bytes still gets the
        // refusal that names our version (a full queue of pending cuts disconnects at once).
        if h.version_cuts.len() < MAX_VERSION_CUTS {
            h.version_cuts.push_back((peer, now + VERSION_GRACE));
        } else {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Disconnects the peers of another version whose grace is over.
    fn cut_other_versions(&mut self) {
        let now = tokio::time::Instant::now();
        while let Some(&(peer, at)) = self.housekeeping.version_cuts.front() {
            if at > now {
                break;
            }
            self.housekeeping.version_cuts.pop_front();
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Disconnects peers whose gossip score fell below the graylist threshold (they sent
    /// invalid messages): gossipsub already ignores them; this frees their connection too.
    /// Their score is kept for an hour, so reconnecting does not clean the slate.
    fn disconnect_graylisted(&mut self) {
        let gs = &self.swarm.behaviour().gossipsub;
        let bad: Vec<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|p| gs.peer_score(p).is_some_and(|s| s < crate::behaviour::GRAYLIST_SCORE))
            .copied()
            .collect();
        for peer in bad {
            tracing::warn!(%peer, "disconnecting a peer that sent invalid gossip (score below the graylist)");
            self.meters.node.peers_graylisted.inc();
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn bootstrap_event(&mut self, peer: &PeerId, connected: bool, error: Option<String>) {
        for b in self.bootstrap.iter_mut().filter(|b| b.peer == *peer) {
            if connected {
                // Bootstrap peers are trusted for peer exchange (their app score passes
                // the PX threshold); nobody else is.
                let gs = &mut self.swarm.behaviour_mut().gossipsub;
                gs.set_application_score(peer, crate::behaviour::BOOTSTRAP_APP_SCORE);
            }
            if connected && !b.connected && !b.other_version {
                tracing::info!(addr = %b.addr, "connected to bootstrap peer");
                b.backoff = Duration::from_secs(1);
                b.last_error = None;
            }
            if !connected && b.connected {
                let wait = if b.other_version { b.backoff } else { Duration::from_secs(1) };
                b.next_dial = tokio::time::Instant::now() + wait;
            }
            b.connected = connected;
            if let Some(e) = &error {
                if b.last_error.is_none() {
                    tracing::warn!(addr = %b.addr, "bootstrap peer unreachable (retrying with backoff): {e}");
                }
                b.last_error = Some(e.clone());
            }
        }
    }

    /// Publishes bytes; false when no peer is subscribed yet.
    fn publish(&mut self, topic: &str, data: Vec<u8>) -> bool {
        match self.swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(topic), data) {
            Ok(id) => {
                if let Some(t) = &self.tracer {
                    t.publish(&id, topic);
                }
                true
            }
            Err(gossipsub::PublishError::Duplicate) => true,
            Err(e) => {
                tracing::debug!(topic, "publish failed: {e}");
                false
            }
        }
    }

    fn validate(&mut self, msg: GossipId, verdict: Verdict) {
        let Some((id, source, topic)) = self.pending.gossip.remove(&msg) else { return };
        let acceptance = match verdict {
            Verdict::Accept => gossipsub::MessageAcceptance::Accept,
            Verdict::Reject => gossipsub::MessageAcceptance::Reject,
            Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
        };
        if let Some(t) = &self.tracer {
            t.validated(&id, topic, source, &acceptance);
        }
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &source, acceptance);
    }

    /// Loads persisted tasks and jobs and hands them to the engine to pick up.
    fn resume(&mut self) -> Result<(), NodeError> {
        let (reqs, bad) = self.store.load_all::<ReqTask>(crate::store::REQUESTS)?;
        for t in bad {
            tracing::error!(task = %t, "requested task record does not decode; skipped");
        }
        let (jobs, bad) = self.store.load_all::<Job>(crate::store::JOBS)?;
        for t in bad {
            tracing::error!(task = %t, "job record does not decode; skipped");
        }
        let (ledger, bad) =
            self.store.load_all::<fleetmesh_engine::reputation::Standing>(crate::store::REPUTATION)?;
        if !bad.is_empty() {
            tracing::error!(records = bad.len(), "reputation records do not decode; skipped");
        }
        self.engine.restore_reputation(ledger);
        let (days, bad) = self.store.load_all::<fleetmesh_engine::ledger::DayTotals>(crate::store::LEDGER)?;
        if !bad.is_empty() {
            tracing::error!(records = bad.len(), "owner's ledger records do not decode; skipped");
        }
        self.engine.restore_ledger(days);
        let actions = self.engine.restore(now_ms(), reqs, jobs);
        let mut follow_up = VecDeque::new();
        self.perform(actions, &mut follow_up);
        self.drive(follow_up);
        Ok(())
    }

    /// A requested task as persisted (for tasks no longer held in memory).
    fn load_request(&self, id: &TaskId) -> Option<ReqTask> {
        let bytes = self.store.get_raw(crate::store::REQUESTS, id).ok()??;
        fleetmesh_protocol::decode(&bytes, usize::MAX).ok()
    }

    fn view(&self, id: &TaskId) -> Option<TaskView> {
        self.engine.view(id).or_else(|| self.load_request(id).map(|t| t.view()))
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(req, tx) => {
                let call = self.pending.id();
                self.pending.calls.insert(call, tx);
                self.step(Input::Submit { call, request: *req, nonce: nonce() });
            }
            Command::Status(id, tx) => {
                let view = self.view(&id);
                self.answer(Answer::Status(tx, view));
            }
            Command::Wait(id, tx) => match self.engine.requester.get(&id) {
                // Only finished tasks leave memory, so one found in the store is finished.
                None => {
                    let r = self.view(&id).ok_or_else(|| ClientError::UnknownTask(id.to_string()));
                    self.answer(Answer::Wait(tx, r));
                }
                Some(t) if t.phase.is_terminal() => {
                    let view = Ok(t.view());
                    self.answer(Answer::Wait(tx, view));
                }
                Some(_) => {
                    let w = self.pending.waiters.entry(id).or_default();
                    w.retain(|s| !s.is_closed());
                    if w.len() >= MAX_WAITERS_PER_TASK {
                        let _ = tx.send(Err(ClientError::Rejected("too many waiters on this task".into())));
                    } else {
                        w.push(tx);
                    }
                }
            },
            Command::Tasks(tx) => {
                let mut all: Vec<TaskView> =
                    self.engine.requester.tasks().map(|(_, t)| t.summary()).collect();
                all.sort_by_key(|v| v.timings.submitted_ms);
                self.answer(Answer::Tasks(tx, all));
            }
            Command::Peers(tx) => {
                let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
                let adverts: HashMap<PeerId, &fleetmesh_protocol::Presence> =
                    self.engine.presence().iter().map(|(k, a)| (peer_id_of(k), &a.advert)).collect();
                let mut peers: Vec<PeerInfo> = connected
                    .iter()
                    .chain(adverts.keys().filter(|p| !connected.contains(p)))
                    .map(|p| {
                        let adv = adverts.get(p);
                        PeerInfo {
                            peer_id: p.to_string(),
                            connected: connected.contains(p),
                            models: adv
                                .map(|a| a.models.iter().map(|m| m.to_string()).collect())
                                .unwrap_or_default(),
                            free_slots: adv.map(|a| a.free_slots),
                            offer_until_ms: adv.and_then(|a| a.offer_until_ms),
                            score: self.swarm.behaviour().gossipsub.peer_score(p),
                        }
                    })
                    .collect();
                peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                let _ = tx.send(peers);
            }
            Command::ListenAddrs(tx) => {
                let _ = tx.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial(addr, tx) => {
                if let Some(peer) = peer_of(&addr) {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                }
                let r = self.swarm.dial(addr).map_err(|e| ClientError::Rejected(e.to_string()));
                let _ = tx.send(r);
            }
            Command::SendRaw(peer, frame, tx) => {
                let id = self.swarm.behaviour_mut().tasks.send_request(&peer, *frame);
                self.pending.outbound.insert(id, Outbound::Raw(tx));
            }
            Command::Stats(tx) => {
                let w = &self.engine.worker;
                let stats = NodeStats {
                    jobs_receipted: w.jobs_receipted,
                    jobs_executed: w.jobs_executed,
                    bids_sent: w.bids_sent,
                    trace_events_dropped: self.tracer.as_ref().map_or(0, crate::tracer::Tracer::dropped),
                    tasks_in_memory: self.engine.requester.len() as u64,
                    jobs_in_memory: w.len() as u64,
                    jobs_running: u64::from(w.running()),
                    peers_connected: self.swarm.connected_peers().count() as u64,
                    vehicle: self.vehicle_view(),
                    bootstrap: self
                        .bootstrap
                        .iter()
                        .map(|b| fleetmesh_api::BootstrapStatus {
                            addr: b.addr.to_string(),
                            connected: b.connected,
                            last_error: b.last_error.clone(),
                        })
                        .collect(),
                };
                let _ = tx.send(stats);
            }
            Command::Ledger(tx) => {
                let _ = tx.send(crate::vehicle::ledger_view(
                    &self.engine.worker.ledger,
                    self.engine.config().owner.device_power_w,
                ));
            }
            Command::SetVehicle(state, tx) => {
                let now = now_ms();
                let r = self.vehicle.put(state, now).map_err(ClientError::Rejected);
                if r.is_ok() {
                    self.poll_vehicle(now);
                }
                let _ = tx.send(r.map(|()| self.vehicle_view()));
            }
            Command::Shutdown(_) => {}
            #[cfg(feature = "test-hooks")]
            Command::PublishRaw(topic, bytes, tx) => {
                let r =
                    self.swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(topic), bytes);
                let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
            }
            #[cfg(feature = "test-hooks")]
            Command::HoldWrites(tx) => {
                let _ = tx.send(self.durable.writer.hold());
            }
            #[cfg(feature = "test-hooks")]
            Command::PutRawRecord(key, value, tx) => {
                let r =
                    self.swarm.behaviour_mut().kad.put_record(kad::Record::new(key, value), kad::Quorum::One);
                let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
            }
        }
    }

    /// Sends a caller the task state it asked for once every write before it is durable (at
    /// once when nothing is in flight).
    fn answer(&mut self, answer: Answer) {
        let after = self.durable.writer.submitted();
        if self.durable.answers.is_empty() && self.durable.writer.done() >= after {
            answer.send();
        } else {
            self.durable.answers.push_back((after, answer));
        }
    }

    /// Tells everyone waiting on `task` that it finished.
    fn notify_finished(&mut self, task: &TaskId) {
        let Some(view) = self.view(task) else {
            self.pending.waiters.remove(task);
            return;
        };
        for w in self.pending.waiters.remove(task).unwrap_or_default() {
            let _ = w.send(Ok(view.clone()));
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        self.meters.p2p.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => {
                self.meters.p2p.record(&e);
                if let identify::Event::Received { peer_id, info, .. } = e {
                    let speaks_ours = info.protocols.iter().any(|p| p.as_ref() == ids::TASK_PROTOCOL);
                    if ids::other_version(&info.protocol_version, speaks_ours) {
                        self.refuse_other_version(peer_id, &info.protocol_version, &info.agent_version);
                        return;
                    }
                    for b in self.bootstrap.iter_mut().filter(|b| b.peer == peer_id && b.other_version) {
                        tracing::info!(addr = %b.addr, "bootstrap peer now speaks this node's wire version");
                        b.other_version = false;
                        b.last_error = None;
                        b.backoff = Duration::from_secs(1);
                    }
                    if info.protocols.iter().any(|p| p.as_ref() == ids::KAD_PROTOCOL) {
                        // A peer's own claims about where it listens: only addresses others
                        // could dial, at most a few, enter the routing table.
                        let local = self.housekeeping.loopback_mesh;
                        for addr in crate::dht::routable(info.listen_addrs, local) {
                            self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                // Anyone on the LAN can answer mDNS: the same address filter as identify, and a
                // bound on how many peers one burst of answers makes this node dial.
                let local = self.housekeeping.loopback_mesh;
                let mut dials = 0usize;
                for (peer, addr) in list {
                    if crate::dht::routable(vec![addr.clone()], local).is_empty() {
                        continue;
                    }
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if dials >= crate::dht::MAX_ADDRS_PER_PEER {
                        continue;
                    }
                    dials = dials.saturating_add(1);
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => {
                self.meters.p2p.record(&e);
                self.on_kad_event(e);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => {
                self.meters.p2p.record(&e);
                if let gossipsub::Event::Message { propagation_source, message_id, message } = e {
                    self.on_gossip(propagation_source, message_id, message);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.meters.p2p.record(&e),
            SwarmEvent::Behaviour(BehaviourEvent::Tasks(e)) => self.on_task_event(e),
            SwarmEvent::ConnectionEstablished { peer_id, num_established, .. }
                if num_established.get() == 1 =>
            {
                self.bootstrap_event(&peer_id, true, None);
                if let Some(pk) = public_key_of(&peer_id) {
                    self.step(Input::Connected(pk));
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.bootstrap_event(&peer_id, false, None);
                if let Some(pk) = public_key_of(&peer_id) {
                    self.step(Input::Disconnected(pk));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. }
                if !self.swarm.is_connected(&peer) =>
            {
                self.bootstrap_event(&peer, false, Some(error.to_string()));
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        self.meters.node.gossip_received.inc();
        let topic = [Topic::Tasks, Topic::Presence]
            .into_iter()
            .find(|t| gossipsub::IdentTopic::new(t.name()).hash() == message.topic);
        let Some(topic) = topic else {
            if let Some(t) = &self.tracer {
                t.validated(&id, message.topic.as_str(), source, &gossipsub::MessageAcceptance::Ignore);
            }
            self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                &id,
                &source,
                gossipsub::MessageAcceptance::Ignore,
            );
            return;
        };
        let msg = self.pending.id();
        self.pending.gossip.insert(msg, (id, source, topic.name()));
        self.step(Input::Gossip { msg, topic, data: message.data });
    }

    fn on_task_event(&mut self, event: request_response::Event<Frame, TaskResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.meters.node.requests_received.inc();
                    let refuse = |m: String| TaskResponse::Refused(Refusal::Invalid(m));
                    let (request, from) = match (request, public_key_of(&peer)) {
                        (Frame::Request(req), Some(from)) => (req, from),
                        (Frame::Request(_), None) => {
                            let r = refuse("peer id is not an ed25519 key".into());
                            let _ = self.swarm.behaviour_mut().tasks.send_response(channel, r);
                            return;
                        }
                        (Frame::Obsolete(protocol), _) => {
                            self.meters.node.peers_other_version.inc();
                            tracing::debug!(%peer, %protocol, "request on an obsolete task protocol");
                            let r = refuse(ids::obsolete_refusal(&protocol));
                            let _ = self.swarm.behaviour_mut().tasks.send_response(channel, r);
                            return;
                        }
                        (Frame::Malformed(reason), _) => {
                            self.meters.node.malformed_requests.inc();
                            tracing::debug!(%peer, %reason, "malformed request");
                            let _ = self.swarm.behaviour_mut().tasks.send_response(channel, refuse(reason));
                            return;
                        }
                        // Too many large requests in flight: as a worker with no free slot
                        // answers (an award goes elsewhere, a result is sent again later).
                        (Frame::Busy, _) => {
                            self.meters.node.large_requests_refused.inc();
                            tracing::debug!(%peer, "large request refused: the budget for them is spent");
                            let r = TaskResponse::Refused(Refusal::NoCapacity);
                            let _ = self.swarm.behaviour_mut().tasks.send_response(channel, r);
                            return;
                        }
                        // The codec never yields `Raw` inbound.
                        (Frame::Raw(_), _) => {
                            let r = refuse("unexpected raw frame".into());
                            let _ = self.swarm.behaviour_mut().tasks.send_response(channel, r);
                            return;
                        }
                    };
                    let reply = self.pending.id();
                    self.pending.replies.insert(reply, channel);
                    self.step(Input::Request { reply, from, request });
                    self.answer_orphans();
                }
                request_response::Message::Response { request_id, response } => {
                    self.meters.node.responses_received.inc();
                    self.on_response(request_id, Ok(response));
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                self.on_response(request_id, Err(error.to_string()));
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "inbound request failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_response(&mut self, request_id: OutboundRequestId, response: Result<TaskResponse, String>) {
        match self.pending.outbound.remove(&request_id) {
            Some(Outbound::Raw(tx)) => {
                let _ = tx.send(response);
            }
            Some(Outbound::Engine { tag, peer }) => {
                if let Err(e) = &response {
                    tracing::debug!(peer = %peer.fmt_short(), "request failed: {e}");
                }
                let result = response.map_err(SendFailure::Network);
                self.step(Input::Response { tag, peer, result });
            }
            None => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed { id, result, step, .. } = event else {
            if let kad::Event::InboundRequest { request } = event {
                self.on_kad_inbound(request);
            }
            return;
        };
        let input = match result {
            kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(rec))) => {
                match self.pending.queries.remove(&id) {
                    Some(Query::Record(lookup)) => {
                        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                            q.finish();
                        }
                        Some(Input::Record { lookup, value: Some(rec.record.value) })
                    }
                    Some(other) => {
                        self.pending.queries.insert(id, other);
                        None
                    }
                    None => None,
                }
            }
            kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) => {
                let model = match self.pending.queries.get(&id) {
                    Some(Query::Providers(m)) => Some(*m),
                    _ => None,
                };
                if step.last {
                    self.pending.queries.remove(&id);
                }
                model.map(|model| Input::Providers {
                    model,
                    providers: providers.iter().filter_map(public_key_of).collect(),
                    last: step.last,
                })
            }
            _ if step.last => match self.pending.queries.remove(&id) {
                Some(Query::Record(lookup)) => Some(Input::Record { lookup, value: None }),
                Some(Query::Providers(model)) => {
                    Some(Input::Providers { model, providers: Vec::new(), last: true })
                }
                None => None,
            },
            _ => None,
        };
        if let Some(input) = input {
            self.step(input);
        }
    }

    /// Records are validated before they are stored: a task spec must verify and hash to its
    /// key; an open-tasks record must verify and be signed by the requester its key names.
    fn on_kad_inbound(&mut self, request: kad::InboundRequest) {
        use libp2p::kad::store::RecordStore;
        match request {
            kad::InboundRequest::PutRecord { record: Some(mut record), source, .. } => {
                if !self.dht_guard.allow(source, tokio::time::Instant::now()) {
                    self.meters.node.records_refused.inc();
                    tracing::debug!(%source, "refused a DHT record: the peer stores too many");
                } else if fleetmesh_protocol::records::record_is_valid(&record.key.to_vec(), &record.value) {
                    // A task spec is kept until its task's deadline at most, not the store's 6 h.
                    if let Some(until) =
                        crate::dht::spec_expiry(&record.key.to_vec(), &record.value, now_ms())
                    {
                        let at = std::time::Instant::now() + until;
                        record.expires = Some(record.expires.map_or(at, |e| e.min(at)));
                    }
                    // A replayed older copy (of an open-tasks record) does not replace the
                    // current one.
                    let current =
                        self.swarm.behaviour_mut().kad.store_mut().get(&record.key).map(|r| r.value.clone());
                    if current.is_some_and(|old| {
                        !fleetmesh_protocol::records::record_replaces(
                            &record.key.to_vec(),
                            &old,
                            &record.value,
                        )
                    }) {
                        self.meters.node.records_refused.inc();
                        tracing::debug!(%source, "refused a DHT record older than the one held");
                        return;
                    }
                    // Room is kept for this node's own records: a peer does not get it by
                    // naming this node as the publisher.
                    if record.publisher == Some(*self.swarm.local_peer_id()) {
                        record.publisher = Some(source);
                    }
                    if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(record) {
                        tracing::debug!("record not stored: {e}");
                    }
                } else {
                    self.meters.node.records_refused.inc();
                    tracing::debug!(%source, "refused an invalid DHT record");
                }
            }
            kad::InboundRequest::AddProvider { record: Some(record) } => {
                if !self.dht_guard.allow(record.provider, tokio::time::Instant::now()) {
                    self.meters.node.records_refused.inc();
                } else if matches!(
                    ids::RecordKey::parse(&record.key.to_vec()),
                    Some(ids::RecordKey::ModelProviders(_))
                ) {
                    // The addresses are the peer's own claim: only routable ones, a few.
                    let local = self.housekeeping.loopback_mesh;
                    let mut record = record;
                    record.addresses = crate::dht::routable(std::mem::take(&mut record.addresses), local);
                    let _ = self.swarm.behaviour_mut().kad.store_mut().add_provider(record);
                } else {
                    self.meters.node.records_refused.inc();
                }
            }
            _ => {}
        }
    }
}

/// A fresh number for a task spec, so identical submissions are distinct tasks.
fn nonce() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    n ^ now_ms().rotate_left(20) ^ u64::from(std::process::id()).rotate_left(44)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_and_public_key_convert_both_ways() {
        let id = Identity::generate().unwrap();
        let peer = peer_id_of(&id.public());
        assert_eq!(public_key_of(&peer), Some(id.public()));
        let mut secret = id.secret_bytes();
        let kp = libp2p::identity::Keypair::ed25519_from_bytes(secret.as_mut()).unwrap();
        assert_eq!(kp.public().to_peer_id(), peer);
        // The engine names peers without libp2p: the same string libp2p prints.
        assert_eq!(id.public().peer_id(), peer.to_string());
    }
}
