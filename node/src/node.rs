//! The node: a cloneable [`Client`] over a bounded command channel, and an `EventLoop` task
//! that owns the swarm, the store and all task state.
//!
//! Everything that changes task state happens on the event loop, one event at a time, so
//! there are no locks around task state and the order of persistence and acknowledgement is
//! plain to read: the store is written first, then the peer is answered.
//!
//! Timers are one periodic tick (`TICK`) that checks every deadline; with bounded task
//! counts this is simpler and cheaper than a timer per phase per task.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetmesh_crypto::{Identity, ModelId, PublicKey, TaskId};
use fleetmesh_protocol::ids;
use fleetmesh_protocol::wire::TaskResponse;
use fleetmesh_protocol::Presence;
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, mdns, Multiaddr, PeerId, Swarm};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::behaviour::{Behaviour, BehaviourEvent, BehaviourParams};
use crate::codec::Frame;
use crate::config::NodeConfig;
use crate::executor::{ExecError, Inference, ModelStore};
use crate::metrics::Metrics;
use crate::requester::ReqTask;
use crate::state::TaskView;
use crate::store::Store;
use crate::worker::Job;

const TICK: Duration = Duration::from_millis(50);
const COMMAND_QUEUE: usize = 256;
const MAX_PRESENCE_PEERS: usize = 1024;
const MAX_WAITERS_PER_TASK: usize = 16;
const MAX_REMEMBERED_BIDS: usize = 8192;
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
    #[error("network setup failed: {0}")]
    Network(String),
    /// The trace files could not be created.
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    /// The local API could not bind.
    #[error("cannot start the API on {addr}: {message}")]
    Api {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        message: String,
    },
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

/// A task to submit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SubmitRequest {
    /// Model id (hex); the embedded digits model when absent.
    pub model: Option<String>,
    /// Input bytes.
    #[serde(skip)]
    pub input: Vec<u8>,
    /// Workers (k); the node's default when absent.
    pub redundancy: Option<u8>,
    /// Max price per worker; the node's default when absent.
    pub max_price: Option<u64>,
    /// Bid window, ms.
    pub bid_window_ms: Option<u32>,
    /// Execution timeout, ms.
    pub exec_timeout_ms: Option<u32>,
    /// Overall deadline from now, ms.
    pub deadline_ms: Option<u64>,
}

/// A connected or known peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// libp2p peer id.
    pub peer_id: String,
    /// Whether a connection is open now.
    pub connected: bool,
    /// Models in its last presence advert (hex).
    pub models: Vec<String>,
    /// Free slots in its last presence advert.
    pub free_slots: Option<u32>,
}

/// Counters for the demo and the status command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Jobs this node executed and got a receipt for.
    pub jobs_receipted: u64,
    /// Jobs this node executed.
    pub jobs_executed: u64,
    /// Bids this node sent.
    pub bids_sent: u64,
    /// Requested tasks held in memory (unfinished plus the most recent finished).
    pub tasks_in_memory: u64,
    /// Served jobs held in memory (unfinished plus the most recent finished).
    pub jobs_in_memory: u64,
    /// Trace events this node had to drop because its trace writer fell behind.
    #[serde(default)]
    pub trace_events_dropped: u64,
}

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
    Shutdown(oneshot::Sender<()>),
    #[cfg(feature = "test-hooks")]
    PublishRaw(String, Vec<u8>, oneshot::Sender<Result<(), String>>),
    #[cfg(feature = "test-hooks")]
    PutRawRecord(Vec<u8>, Vec<u8>, oneshot::Sender<Result<(), String>>),
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

    /// (tests) Publishes raw bytes on a gossip topic.
    #[cfg(feature = "test-hooks")]
    pub async fn publish_raw(&self, topic: &str, bytes: Vec<u8>) -> Result<Result<(), String>, ClientError> {
        self.call(|tx| Command::PublishRaw(topic.to_owned(), bytes, tx)).await
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
    /// Where the local API listens, if enabled.
    pub api_addr: Option<std::net::SocketAddr>,
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
        let store = Store::open(&config.data_dir)?;
        let models = Arc::new(ModelStore::open(&config.data_dir.join("models"))?);
        let mut secret = identity.secret_bytes();
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes(secret.as_mut())
            .map_err(|e| NodeError::Network(format!("key: {e}")))?;
        let mut registry = prometheus_client::registry::Registry::with_prefix("fleetmesh");
        let p2p_metrics = libp2p::metrics::Metrics::new(registry.sub_registry_with_prefix("libp2p"));
        let metrics = Metrics::new(&mut registry);
        let params = BehaviourParams { mdns: config.mdns };
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .map_err(|e| NodeError::Network(e.to_string()))?
            .with_quic()
            .with_dns()
            .map_err(|e| NodeError::Network(e.to_string()))?
            .with_behaviour(|key| Behaviour::new(key, &params))
            .map_err(|e| NodeError::Network(e.to_string()))?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(Duration::from_millis(config.idle_connection_timeout_ms))
            })
            .build();

        for addr in &config.listen {
            let ma: Multiaddr = addr.parse().map_err(|e: libp2p::multiaddr::Error| NodeError::Address {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
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
            Some(path) => Some(crate::trace::Tracer::open(path, identity.clone(), *swarm.local_peer_id())?),
            None => None,
        };
        for topic in TOPICS {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&gossipsub::IdentTopic::new(topic))
                .map_err(|e| NodeError::Network(format!("subscribe: {e}")))?;
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
                Ok(SwarmEvent::ListenerError { error, .. }) => {
                    return Err(NodeError::Network(error.to_string()))
                }
                Ok(SwarmEvent::ListenerClosed { reason: Err(error), .. }) => {
                    return Err(NodeError::Network(error.to_string()))
                }
                Ok(_) => {}
                Err(_) => return Err(NodeError::Network("listeners did not come up within 5 s".into())),
            }
        }
        for (peer, addr) in &bootstrap {
            swarm.behaviour_mut().kad.add_address(peer, addr.clone());
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, "bootstrap dial failed: {e}");
            }
        }

        let public = identity.public();
        let peer_id = *swarm.local_peer_id();
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let slots = config.slots.max(1) as usize;
        let (exec_tx, exec_rx) = mpsc::channel(config.max_queue as usize + slots);
        let registry = Arc::new(Mutex::new(registry));
        let client = Client { tx, peer_id, public, metrics: registry };
        let api_addr = match config.api_addr {
            Some(addr) => Some(crate::api::serve(addr, client.clone()).await?),
            None => None,
        };
        let span = tracer.as_ref().map_or_else(tracing::Span::none, crate::trace::Tracer::span);
        let mut event_loop = EventLoop {
            swarm,
            identity,
            tracer,
            config,
            store: Arc::new(store),
            models,
            metrics,
            p2p_metrics,
            commands: rx,
            exec_tx,
            exec_rx,
            exec_slots: Arc::new(Semaphore::new(slots)),
            requests: HashMap::new(),
            jobs: HashMap::new(),
            bids_sent: HashSet::new(),
            bids_sent_order: VecDeque::new(),
            spec_lookups: HashMap::new(),
            provider_lookups: HashMap::new(),
            open_lookups: HashSet::new(),
            outbound: HashMap::new(),
            presence: HashMap::new(),
            providing: HashSet::new(),
            open_tasks_dirty: HashSet::new(),
            next_open_flush: tokio::time::Instant::now(),
            waiters: HashMap::new(),
            stats: NodeStats::default(),
            next_presence: tokio::time::Instant::now(),
            next_dht_scan: tokio::time::Instant::now() + Duration::from_secs(1),
            next_compaction: tokio::time::Instant::now(),
            bootstrap,
            first_result: None,
        };
        event_loop.resume()?;
        let task = tokio::spawn(tracing::Instrument::instrument(event_loop.run(), span));
        Ok(Self { client, task, api_addr })
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
pub(crate) enum Outbound {
    Bid,
    Award { task: TaskId, worker: PublicKey },
    Decline,
    Result { task: TaskId },
    Receipt,
    Raw(oneshot::Sender<Result<TaskResponse, String>>),
}

/// A finished (or failed) execution, back from the blocking pool.
pub(crate) struct ExecDone {
    pub(crate) task: TaskId,
    pub(crate) result: Result<Inference, ExecError>,
}

pub(crate) struct EventLoop {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) identity: Arc<Identity>,
    /// Gossip and task traces, when the node was started with a trace path.
    pub(crate) tracer: Option<crate::trace::Tracer>,
    pub(crate) config: NodeConfig,
    pub(crate) store: Arc<Store>,
    pub(crate) models: Arc<ModelStore>,
    pub(crate) metrics: Metrics,
    p2p_metrics: libp2p::metrics::Metrics,
    commands: mpsc::Receiver<Command>,
    pub(crate) exec_tx: mpsc::Sender<ExecDone>,
    exec_rx: mpsc::Receiver<ExecDone>,
    pub(crate) exec_slots: Arc<Semaphore>,
    /// Tasks this node requested.
    pub(crate) requests: HashMap<TaskId, ReqTask>,
    /// Tasks this node was awarded.
    pub(crate) jobs: HashMap<TaskId, Job>,
    /// (task, round) pairs this node already bid on, oldest evicted first.
    pub(crate) bids_sent: HashSet<(TaskId, u32)>,
    bids_sent_order: VecDeque<(TaskId, u32)>,
    /// DHT lookups of task specs this node may bid on: (task, round).
    pub(crate) spec_lookups: HashMap<kad::QueryId, (TaskId, u32)>,
    /// DHT lookups of requesters with open tasks for a model.
    pub(crate) provider_lookups: HashMap<kad::QueryId, ModelId>,
    /// DHT lookups of one requester's open-task record.
    pub(crate) open_lookups: HashSet<kad::QueryId>,
    pub(crate) outbound: HashMap<OutboundRequestId, Outbound>,
    /// The last presence advert of each peer.
    pub(crate) presence: HashMap<PeerId, Presence>,
    /// Models this node announced itself as a provider of open tasks for.
    pub(crate) providing: HashSet<ModelId>,
    /// Models whose open-tasks record must be rewritten on the next flush.
    pub(crate) open_tasks_dirty: HashSet<ModelId>,
    next_open_flush: tokio::time::Instant,
    waiters: HashMap<TaskId, Vec<oneshot::Sender<Result<TaskView, ClientError>>>>,
    pub(crate) stats: NodeStats,
    next_presence: tokio::time::Instant,
    next_dht_scan: tokio::time::Instant,
    next_compaction: tokio::time::Instant,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    /// (test hooks) the first result this worker produced, for replay.
    #[allow(dead_code)]
    pub(crate) first_result: Option<(fleetmesh_crypto::SignedEnvelope, Vec<u8>)>,
}

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
                Some(done) = self.exec_rx.recv() => self.on_exec_done(done),
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown(tx)) => { let _ = tx.send(()); break; }
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
        }
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

    /// Appends a task event to the timeline, if the node traces; `make` runs only then.
    pub(crate) fn trace_task(&mut self, make: impl FnOnce() -> crate::trace::TaskRecord) {
        if let Some(t) = self.tracer.as_mut() {
            t.task(make());
        }
    }

    /// Loads persisted tasks and jobs and picks each up where it stopped.
    fn resume(&mut self) -> Result<(), NodeError> {
        let (reqs, bad) = self.store.load_all::<ReqTask>(crate::store::REQUESTS)?;
        for t in bad {
            tracing::error!(task = %t, "requested task record does not decode; skipped");
        }
        for (id, task) in reqs {
            self.requests.insert(id, task);
        }
        let (jobs, bad) = self.store.load_all::<Job>(crate::store::JOBS)?;
        for t in bad {
            tracing::error!(task = %t, "job record does not decode; skipped");
        }
        for (id, job) in jobs {
            self.jobs.insert(id, job);
        }
        self.resume_requests();
        self.resume_jobs();
        Ok(())
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(req, tx) => {
                let _ = tx.send(self.submit(*req));
            }
            Command::Status(id, tx) => {
                let view = self.requests.get(&id).map(ReqTask::view);
                let _ = tx.send(view.or_else(|| self.load_request(&id).map(|t| t.view())));
            }
            Command::Wait(id, tx) => match self.requests.get(&id) {
                // Only finished tasks leave memory, so one found in the store is finished.
                None => {
                    let r = self
                        .load_request(&id)
                        .map(|t| t.view())
                        .ok_or_else(|| ClientError::UnknownTask(id.to_string()));
                    let _ = tx.send(r);
                }
                Some(t) if t.phase.is_terminal() => {
                    let _ = tx.send(Ok(t.view()));
                }
                Some(_) => {
                    let w = self.waiters.entry(id).or_default();
                    w.retain(|s| !s.is_closed());
                    if w.len() >= MAX_WAITERS_PER_TASK {
                        let _ = tx.send(Err(ClientError::Rejected("too many waiters on this task".into())));
                    } else {
                        w.push(tx);
                    }
                }
            },
            Command::Tasks(tx) => {
                let mut all: Vec<TaskView> = self.requests.values().map(ReqTask::view).collect();
                all.sort_by_key(|v| v.timings.submitted_ms);
                let _ = tx.send(all);
            }
            Command::Peers(tx) => {
                let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
                let mut peers: Vec<PeerInfo> = connected
                    .iter()
                    .chain(self.presence.keys().filter(|p| !connected.contains(p)))
                    .map(|p| {
                        let adv = self.presence.get(p);
                        PeerInfo {
                            peer_id: p.to_string(),
                            connected: connected.contains(p),
                            models: adv
                                .map(|a| a.models.iter().map(|m| m.to_string()).collect())
                                .unwrap_or_default(),
                            free_slots: adv.map(|a| a.free_slots),
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
                self.outbound.insert(id, Outbound::Raw(tx));
            }
            Command::Stats(tx) => {
                let stats = NodeStats {
                    trace_events_dropped: self.tracer.as_ref().map_or(0, crate::trace::Tracer::dropped),
                    tasks_in_memory: self.requests.len() as u64,
                    jobs_in_memory: self.jobs.len() as u64,
                    ..self.stats.clone()
                };
                let _ = tx.send(stats);
            }
            Command::Shutdown(_) => {}
            #[cfg(feature = "test-hooks")]
            Command::PublishRaw(topic, bytes, tx) => {
                let r =
                    self.swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(topic), bytes);
                let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
            }
            #[cfg(feature = "test-hooks")]
            Command::PutRawRecord(key, value, tx) => {
                let r =
                    self.swarm.behaviour_mut().kad.put_record(kad::Record::new(key, value), kad::Quorum::One);
                let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
            }
        }
    }

    /// Tells everyone waiting on `task` that it finished.
    pub(crate) fn notify_finished(&mut self, task: &TaskId) {
        let Some(view) = self.requests.get(task).map(ReqTask::view) else { return };
        for w in self.waiters.remove(task).unwrap_or_default() {
            let _ = w.send(Ok(view.clone()));
        }
    }

    pub(crate) fn remember_bid(&mut self, key: (TaskId, u32)) -> bool {
        if !self.bids_sent.insert(key) {
            return false;
        }
        self.bids_sent_order.push_back(key);
        while self.bids_sent_order.len() > MAX_REMEMBERED_BIDS {
            if let Some(old) = self.bids_sent_order.pop_front() {
                self.bids_sent.remove(&old);
            }
        }
        true
    }

    fn on_tick(&mut self) {
        let now = tokio::time::Instant::now();
        self.requester_tick();
        self.worker_tick();
        if now >= self.next_open_flush && !self.open_tasks_dirty.is_empty() {
            self.next_open_flush = now + Duration::from_millis(500);
            self.flush_open_tasks();
        }
        if let Some(t) = self.tracer.as_mut() {
            t.mesh_changes(&self.swarm.behaviour().gossipsub, &TOPICS);
        }
        if now >= self.next_compaction {
            self.next_compaction = now + Duration::from_secs(1);
            self.forget_old_finished();
        }
        if now >= self.next_presence {
            self.next_presence = now + Duration::from_millis(self.config.presence_interval_ms.max(100));
            self.publish_presence();
        }
        if now >= self.next_dht_scan && self.config.serve {
            self.next_dht_scan = now + Duration::from_millis(self.config.dht_scan_interval_ms.max(100));
            self.scan_dht_for_open_tasks();
        }
    }

    /// Drops the oldest finished tasks and jobs from memory beyond the configured number.
    /// They stay in the store: status reads them from there, and awards and re-sent results
    /// for them are answered from there.
    fn forget_old_finished(&mut self) {
        let cap = self.config.max_finished_in_memory;
        let mut done: Vec<(u64, TaskId)> = self
            .requests
            .iter()
            .filter(|(_, t)| t.phase.is_terminal())
            .map(|(id, t)| (t.times.finished_ms, *id))
            .collect();
        if done.len() > cap {
            done.sort_unstable();
            for (_, id) in &done[..done.len() - cap] {
                self.requests.remove(id);
            }
        }
        let mut done: Vec<(u64, TaskId)> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.is_finished())
            .map(|(id, j)| (j.result_deadline_ms, *id))
            .collect();
        if done.len() > cap {
            done.sort_unstable();
            for (_, id) in &done[..done.len() - cap] {
                self.jobs.remove(id);
            }
        }
    }

    fn publish_presence(&mut self) {
        let free = self.exec_slots.available_permits() as u32;
        let advert = Presence {
            v: fleetmesh_protocol::WIRE_VERSION,
            models: if self.config.serve {
                self.models
                    .list()
                    .into_iter()
                    .take(fleetmesh_protocol::limits::MAX_MODELS_PER_ADVERT)
                    .collect()
            } else {
                Vec::new()
            },
            free_slots: free,
            price_floor: self.config.price_floor,
            at_ms: now_ms(),
        };
        let env = fleetmesh_protocol::Signed::sign(&advert, &self.identity);
        self.publish(ids::TOPIC_PRESENCE, &env);
    }

    /// Publishes a signed envelope; false when no peer is subscribed yet.
    pub(crate) fn publish(&mut self, topic: &str, env: &fleetmesh_crypto::SignedEnvelope) -> bool {
        let bytes = fleetmesh_protocol::encode(env);
        match self.swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(topic), bytes) {
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

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        self.p2p_metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => {
                self.p2p_metrics.record(&e);
                if let identify::Event::Received { peer_id, info, .. } = e {
                    if info.protocols.iter().any(|p| p.as_ref() == ids::KAD_PROTOCOL) {
                        for addr in info.listen_addrs {
                            self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => {
                self.p2p_metrics.record(&e);
                self.on_kad_event(e);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => {
                self.p2p_metrics.record(&e);
                if let gossipsub::Event::Message { propagation_source, message_id, message } = e {
                    self.on_gossip(propagation_source, message_id, message);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.p2p_metrics.record(&e),
            SwarmEvent::Behaviour(BehaviourEvent::Tasks(e)) => self.on_task_event(e),
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => self.on_peer_gone(peer_id),
            _ => {}
        }
    }

    fn on_task_event(&mut self, event: request_response::Event<Frame, TaskResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let response = match request {
                        Frame::Request(req) => self.on_request(peer, req),
                        Frame::Malformed(reason) => {
                            self.metrics.malformed_requests.inc();
                            tracing::debug!(%peer, %reason, "malformed request");
                            TaskResponse::Refused(fleetmesh_protocol::wire::Refusal::Invalid(reason))
                        }
                        // The codec never yields `Raw` inbound.
                        Frame::Raw(_) => TaskResponse::Refused(fleetmesh_protocol::wire::Refusal::Invalid(
                            "unexpected raw frame".into(),
                        )),
                    };
                    let _ = self.swarm.behaviour_mut().tasks.send_response(channel, response);
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(out) = self.outbound.remove(&request_id) {
                        self.on_response(peer, out, Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(out) = self.outbound.remove(&request_id) {
                    self.on_response(peer, out, Err(error.to_string()));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "inbound request failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_request(&mut self, peer: PeerId, req: fleetmesh_protocol::wire::TaskRequest) -> TaskResponse {
        use fleetmesh_protocol::wire::TaskRequest as R;
        match req {
            R::Bid { bid } => self.on_bid(peer, bid),
            R::Result { task_id, header, output } => self.on_result(peer, task_id, header, output),
            R::Award { spec, award, input } => self.on_award(peer, spec, award, input),
            R::Decline { decline } => self.on_decline(decline),
            R::Receipt { receipt } => self.on_receipt(receipt),
            _ => TaskResponse::Refused(fleetmesh_protocol::wire::Refusal::Invalid(
                "unsupported request".into(),
            )),
        }
    }

    fn on_response(&mut self, peer: PeerId, out: Outbound, response: Result<TaskResponse, String>) {
        match out {
            Outbound::Raw(tx) => {
                let _ = tx.send(response);
            }
            Outbound::Bid | Outbound::Decline | Outbound::Receipt => {
                if let Err(e) = response {
                    tracing::debug!(%peer, "request failed: {e}");
                }
            }
            Outbound::Award { task, worker } => self.on_award_response(task, worker, response),
            Outbound::Result { task } => self.on_result_response(task, response),
        }
    }

    fn on_peer_gone(&mut self, peer: PeerId) {
        self.presence.remove(&peer);
        self.requester_peer_gone(peer);
    }

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        use fleetmesh_protocol::{Announcement, Signed};
        let limit = fleetmesh_protocol::limits::MAX_GOSSIP_BYTES;
        let topic = message.topic.clone();
        let acceptance = if message.topic == gossipsub::IdentTopic::new(ids::TOPIC_TASKS).hash() {
            match Announcement::open_bytes(&message.data, limit) {
                Ok((env, a)) => {
                    self.on_announcement(env.signer, a);
                    gossipsub::MessageAcceptance::Accept
                }
                Err(_) => gossipsub::MessageAcceptance::Reject,
            }
        } else if message.topic == gossipsub::IdentTopic::new(ids::TOPIC_PRESENCE).hash() {
            match Presence::open_bytes(&message.data, limit) {
                // Adverts are only believed from the peer that signed them.
                Ok((env, p)) if message.source.is_some_and(|s| Some(env.signer) == public_key_of(&s)) => {
                    if let Some(src) = message.source {
                        if self.presence.len() < MAX_PRESENCE_PEERS || self.presence.contains_key(&src) {
                            self.presence.insert(src, p);
                        }
                    }
                    gossipsub::MessageAcceptance::Accept
                }
                _ => gossipsub::MessageAcceptance::Reject,
            }
        } else {
            gossipsub::MessageAcceptance::Ignore
        };
        if acceptance == gossipsub::MessageAcceptance::Reject {
            self.metrics.gossip_rejected.inc();
        }
        if let Some(t) = &self.tracer {
            t.validated(&id, topic.as_str(), source, &acceptance);
        }
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &source, acceptance);
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest { request } => self.on_kad_inbound(request),
            kad::Event::OutboundQueryProgressed { id, result, step, .. } => match result {
                kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(rec))) => {
                    if let Some(key) = self.spec_lookups.remove(&id) {
                        self.on_spec_found(key, rec.record.value);
                        self.finish_query(id);
                    } else if self.open_lookups.remove(&id) {
                        self.on_open_tasks_found(rec.record.value);
                        self.finish_query(id);
                    }
                }
                kad::QueryResult::GetRecord(_) if step.last => {
                    if let Some((task, round)) = self.spec_lookups.remove(&id) {
                        tracing::debug!(%task, round, "task spec not found in the DHT");
                    }
                    self.open_lookups.remove(&id);
                }
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers, ..
                })) => {
                    if let Some(model) = self.provider_lookups.get(&id).copied() {
                        self.on_providers_found(model, providers);
                    }
                }
                kad::QueryResult::GetProviders(_) if step.last => {
                    self.provider_lookups.remove(&id);
                }
                _ if step.last => {
                    self.provider_lookups.remove(&id);
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn finish_query(&mut self, id: kad::QueryId) {
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            q.finish();
        }
    }

    /// Records are validated before they are stored: a task spec must verify and hash to its
    /// key; an open-tasks record must verify and be signed by the requester its key names.
    fn on_kad_inbound(&mut self, request: kad::InboundRequest) {
        match request {
            kad::InboundRequest::PutRecord { record: Some(record), source, .. } => {
                use libp2p::kad::store::RecordStore;
                if crate::requester::record_is_valid(&record.key.to_vec(), &record.value) {
                    if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(record) {
                        tracing::debug!("record not stored: {e}");
                    }
                } else {
                    self.metrics.records_refused.inc();
                    tracing::debug!(%source, "refused an invalid DHT record");
                }
            }
            kad::InboundRequest::AddProvider { record: Some(record) } => {
                if matches!(
                    ids::RecordKey::parse(&record.key.to_vec()),
                    Some(ids::RecordKey::ModelProviders(_))
                ) {
                    use libp2p::kad::store::RecordStore;
                    let _ = self.swarm.behaviour_mut().kad.store_mut().add_provider(record);
                } else {
                    self.metrics.records_refused.inc();
                }
            }
            _ => {}
        }
    }
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
    }
}
