//! The live writer of a node's gossip trace and task timeline (formats, verification and
//! analysis live in the `fleetmesh-trace` crate).
//!
//! A node started with a trace path writes two files:
//!
//! * the **gossip trace** (`<path>`), one JSON object per line in go-libp2p-pubsub's JSON
//!   tracer format ([`gossip`]), so tools and habits built around that tracer work here;
//! * the **task timeline** ([`timeline_path`]), the node's task events as a hash chain with
//!   signed heads ([`timeline`]), so a researcher can prove a trace is complete and untouched.
//!
//! rust-libp2p's gossipsub has no tracer hook, so each event is taken where it is true:
//! PUBLISH where the node publishes, DELIVER/REJECT where the node's validation decides,
//! JOIN/LEAVE where it subscribes and unsubscribes, GRAFT/PRUNE from the changes of the mesh
//! peers per topic (read every event-loop tick), and DUPLICATE from gossipsub's own "message
//! already received" log event, caught by [`layer`] (see `docs/TRACES.md`).
//!
//! The event loop never blocks on tracing: it hands small records to a writer thread over a
//! bounded channel and counts what does not fit. With no trace path there is no tracer at
//! all, and every hook is one `Option` check.

mod layer;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetmesh_crypto::Identity;
use libp2p::{gossipsub, PeerId};

use fleetmesh_trace::gossip::{self, kind};
pub use fleetmesh_trace::TaskRecord;
use fleetmesh_trace::{timeline, timeline_path, unused_path};
pub use layer::layer;

/// Records the writer thread can hold before the event loop starts dropping them. The
/// channel allocates every slot up front, so slots are kept to a pointer and a few words
/// (16,384 x 48 bytes = 768 KiB a node).
const BUFFER: usize = 16 * 1024;
/// Message ids remembered with their topic, so duplicates can name the topic.
const REMEMBERED_TOPICS: usize = 4096;
/// How often the writer flushes and, if records came in, signs a head.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
const HEAD_EVERY: Duration = Duration::from_secs(1);

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// A trace file could not be created.
    #[error("cannot create trace file {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A gossip event as the event loop hands it over (turned into JSON on the writer thread).
struct GossipRec {
    kind: i32,
    ts: i64,
    message_id: Vec<u8>,
    topic: Option<String>,
    peer: Option<PeerId>,
    reason: Option<&'static str>,
}

enum Rec {
    Gossip(Box<GossipRec>),
    Task {
        record: Box<TaskRecord>,
        ts: u64,
        dropped_before: u64,
    },
    /// Shut down; `dropped_before` task records were dropped since the last one sent.
    Close {
        dropped_before: u64,
    },
}

/// Message id -> topic, and the ids oldest first (to bound the map).
type RecentTopics = (HashMap<Vec<u8>, String>, VecDeque<Vec<u8>>);

/// What the duplicate layer needs to reach a node's trace.
pub(crate) struct Shared {
    tx: SyncSender<Rec>,
    dropped: Arc<AtomicU64>,
    /// Recent message ids and their topics, oldest first.
    topics: Mutex<RecentTopics>,
}

impl Shared {
    fn send_gossip(&self, rec: GossipRec) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Rec::Gossip(Box::new(rec)))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remember_topic(&self, id: &[u8], topic: &str) {
        if let Ok(mut g) = self.topics.lock() {
            let (map, order) = &mut *g;
            if map.insert(id.to_vec(), topic.to_owned()).is_none() {
                order.push_back(id.to_vec());
                while order.len() > REMEMBERED_TOPICS {
                    if let Some(old) = order.pop_front() {
                        map.remove(&old);
                    }
                }
            }
        }
    }

    fn topic_of(&self, id: &[u8]) -> Option<String> {
        self.topics.lock().ok()?.0.get(id).cloned()
    }

    /// A DUPLICATE_MESSAGE caught by the layer.
    pub(crate) fn duplicate(&self, message_id: Vec<u8>, from: Option<PeerId>) {
        let topic = self.topic_of(&message_id);
        self.send_gossip(GossipRec {
            kind: kind::DUPLICATE_MESSAGE,
            ts: now_ns() as i64,
            message_id,
            topic,
            peer: from,
            reason: None,
        });
    }
}

/// A node's tracer, owned by its event loop.
pub(crate) struct Tracer {
    shared: Arc<Shared>,
    span: tracing::Span,
    registration: u64,
    /// Mesh peers per topic as last seen, to turn changes into GRAFT/PRUNE.
    mesh: HashMap<gossipsub::TopicHash, BTreeSet<PeerId>>,
    /// Task records dropped since the last one that got through.
    task_gap: u64,
    writer: Option<std::thread::JoinHandle<()>>,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Tracer {
    /// Creates both files and starts the writer thread.
    pub(crate) fn open(path: &Path, identity: Arc<Identity>, local: PeerId) -> Result<Self, TraceError> {
        Self::open_with_buffer(path, identity, local, BUFFER)
    }

    fn open_with_buffer(
        path: &Path,
        identity: Arc<Identity>,
        local: PeerId,
        buffer: usize,
    ) -> Result<Self, TraceError> {
        let create = |p: &Path| {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|source| TraceError::Create { path: p.to_owned(), source })?;
            }
            std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(p)
                .map_err(|source| TraceError::Create { path: p.to_owned(), source })
        };
        if path.is_dir() {
            return Err(TraceError::Create {
                path: path.to_owned(),
                source: std::io::Error::other("is a folder; give a file name such as traces/node.jsonl"),
            });
        }
        let path = &unused_path(path);
        let gossip_file = create(path)?;
        let tl_path = timeline_path(path);
        let tl_file = create(&tl_path)?;
        tracing::info!(gossip = %path.display(), timeline = %tl_path.display(), "tracing");
        let chain = timeline::ChainWriter::start(BufWriter::new(tl_file), local.to_string(), now_ns())
            .map_err(|source| TraceError::Create { path: tl_path, source })?;
        let (tx, rx) = std::sync::mpsc::sync_channel(buffer);
        let dropped = Arc::new(AtomicU64::new(0));
        let shared =
            Arc::new(Shared { tx, dropped: dropped.clone(), topics: Mutex::new(Default::default()) });
        let writer = Writer {
            gossip: BufWriter::new(gossip_file),
            chain,
            identity,
            local: local.to_bytes(),
            written: 0,
            dropped,
            failed: false,
        };
        let handle = std::thread::Builder::new()
            .name("fleetmesh-trace".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| TraceError::Create { path: path.to_owned(), source })?;
        let registration = layer::register(&shared);
        let span = tracing::info_span!(target: layer::SPAN_TARGET, "fleetmesh_trace", trace = registration);
        Ok(Self { shared, span, registration, mesh: HashMap::new(), task_gap: 0, writer: Some(handle) })
    }

    /// The span the event loop runs in, so the duplicate layer finds this tracer.
    pub(crate) fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    fn gossip(
        &self,
        kind: i32,
        message_id: &[u8],
        topic: &str,
        peer: Option<PeerId>,
        reason: Option<&'static str>,
    ) {
        self.shared.send_gossip(GossipRec {
            kind,
            ts: now_ns() as i64,
            message_id: message_id.to_vec(),
            topic: Some(topic.to_owned()),
            peer,
            reason,
        });
    }

    /// The node published a message.
    pub(crate) fn publish(&self, id: &gossipsub::MessageId, topic: &str) {
        self.shared.remember_topic(&id.0, topic);
        self.gossip(kind::PUBLISH_MESSAGE, &id.0, topic, None, None);
    }

    /// Validation accepted (`Accept`), rejected (`Reject`) or ignored a message.
    pub(crate) fn validated(
        &self,
        id: &gossipsub::MessageId,
        topic: &str,
        from: PeerId,
        acceptance: &gossipsub::MessageAcceptance,
    ) {
        self.shared.remember_topic(&id.0, topic);
        match acceptance {
            gossipsub::MessageAcceptance::Accept => {
                self.gossip(kind::DELIVER_MESSAGE, &id.0, topic, Some(from), None)
            }
            // go-libp2p-pubsub's reason strings.
            gossipsub::MessageAcceptance::Reject => {
                self.gossip(kind::REJECT_MESSAGE, &id.0, topic, Some(from), Some("validation failed"))
            }
            gossipsub::MessageAcceptance::Ignore => {
                self.gossip(kind::REJECT_MESSAGE, &id.0, topic, Some(from), Some("validation ignored"))
            }
        }
    }

    /// Subscribed (`true`) or unsubscribed.
    pub(crate) fn membership(&self, topic: &str, joined: bool) {
        self.gossip(if joined { kind::JOIN } else { kind::LEAVE }, &[], topic, None, None);
    }

    /// Compares the mesh with the last look and traces GRAFT/PRUNE for the changes.
    pub(crate) fn mesh_changes<D, F>(&mut self, gs: &gossipsub::Behaviour<D, F>, topics: &[&str])
    where
        D: gossipsub::DataTransform + Send + 'static,
        F: gossipsub::TopicSubscriptionFilter + Send + 'static,
    {
        for name in topics {
            let hash = gossipsub::IdentTopic::new(*name).hash();
            let now: BTreeSet<PeerId> = gs.mesh_peers(&hash).copied().collect();
            let before = self.mesh.remove(&hash).unwrap_or_default();
            for p in now.difference(&before) {
                self.gossip(kind::GRAFT, &[], name, Some(*p), None);
            }
            for p in before.difference(&now) {
                self.gossip(kind::PRUNE, &[], name, Some(*p), None);
            }
            self.mesh.insert(hash, now);
        }
    }

    /// Appends a task event to the timeline.
    pub(crate) fn task(&mut self, record: TaskRecord) {
        let rec = Rec::Task { record: Box::new(record), ts: now_ns(), dropped_before: self.task_gap };
        match self.shared.tx.try_send(rec) {
            Ok(()) => self.task_gap = 0,
            Err(_) => self.task_gap += 1,
        }
    }

    /// Writes the final signed head and waits for the writer to finish.
    pub(crate) async fn close(mut self) {
        // Blocking send: at shutdown a short wait for room is fine, and the final head must land.
        let shared = self.shared.clone();
        let handle = self.writer.take();
        let dropped_before = std::mem::take(&mut self.task_gap);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = shared.tx.send(Rec::Close { dropped_before });
            if let Some(h) = handle {
                let _ = h.join();
            }
        })
        .await;
    }

    /// Events the tracer had to drop so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed) + self.task_gap
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        layer::unregister(self.registration);
    }
}

/// The writer thread: turns records into lines, keeps the chain, signs heads.
struct Writer {
    gossip: BufWriter<std::fs::File>,
    chain: timeline::ChainWriter<BufWriter<std::fs::File>>,
    identity: Arc<Identity>,
    local: Vec<u8>,
    written: u64,
    dropped: Arc<AtomicU64>,
    failed: bool,
}

impl Writer {
    fn run(mut self, rx: Receiver<Rec>) {
        let mut last_flush = Instant::now();
        let mut last_head = Instant::now();
        loop {
            match rx.recv_timeout(FLUSH_EVERY) {
                Ok(Rec::Gossip(g)) => {
                    let line = self.gossip_line(*g);
                    let r = self.gossip_write(&line);
                    self.check(r);
                }
                Ok(Rec::Task { record, ts, dropped_before }) => {
                    self.gap(dropped_before, ts);
                    let r = self.chain.append(*record, ts);
                    self.check(r);
                }
                Ok(Rec::Close { dropped_before }) => {
                    self.gap(dropped_before, now_ns());
                    self.head(true);
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The node was killed without a shutdown: keep what was written, no final head.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                last_flush = Instant::now();
                if self.chain.unsigned() > 0 && last_head.elapsed() >= HEAD_EVERY {
                    last_head = Instant::now();
                    self.head(false);
                }
                self.flush();
            }
        }
        self.flush();
    }

    fn gap(&mut self, dropped: u64, ts: u64) {
        if dropped > 0 {
            let gap = TaskRecord { dropped: Some(dropped), ..TaskRecord::new(timeline::event::GAP) };
            let r = self.chain.append(gap, ts);
            self.check(r);
        }
    }

    fn gossip_write(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.gossip.write_all(line)?;
        self.gossip.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    fn head(&mut self, is_final: bool) {
        // The gossip counters a head signs must cover what is on disk, so flush first.
        let _ = self.gossip.flush();
        let dropped = self.dropped.load(Ordering::Relaxed);
        let r = self.chain.head(&self.identity, self.written, dropped, is_final, now_ns());
        self.check(r);
    }

    fn flush(&mut self) {
        let a = self.gossip.flush();
        self.check(a);
        let b = self.chain.flush();
        self.check(b);
    }

    fn check(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r {
            if !self.failed {
                tracing::error!("writing the trace failed: {e}; the trace is incomplete from here on");
                self.failed = true;
            }
        }
    }

    fn gossip_line(&self, g: GossipRec) -> Vec<u8> {
        use gossip::*;
        let peer = g.peer.map(|p| p.to_bytes()).unwrap_or_default();
        let mut e = gossip::TraceEvent {
            kind: g.kind,
            peer_id: self.local.clone(),
            timestamp: g.ts,
            ..TraceEvent::default()
        };
        match g.kind {
            kind::PUBLISH_MESSAGE => {
                e.publish_message = Some(PublishMessage { message_id: g.message_id, topic: g.topic })
            }
            kind::REJECT_MESSAGE => {
                e.reject_message = Some(RejectMessage {
                    message_id: g.message_id,
                    received_from: peer,
                    reason: g.reason.map(str::to_owned),
                    topic: g.topic,
                })
            }
            kind::DUPLICATE_MESSAGE => {
                e.duplicate_message =
                    Some(DuplicateMessage { message_id: g.message_id, received_from: peer, topic: g.topic })
            }
            kind::DELIVER_MESSAGE => {
                e.deliver_message =
                    Some(DeliverMessage { message_id: g.message_id, topic: g.topic, received_from: peer })
            }
            kind::JOIN => e.join = Some(TopicBody { topic: g.topic }),
            kind::LEAVE => e.leave = Some(TopicBody { topic: g.topic }),
            kind::GRAFT => e.graft = Some(PeerTopic { peer_id: peer, topic: g.topic }),
            kind::PRUNE => e.prune = Some(PeerTopic { peer_id: peer, topic: g.topic }),
            _ => {}
        }
        serde_json::to_vec(&e).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_slots_stay_small() {
        // Every slot of the bounded channel is allocated up front, per node.
        assert!(std::mem::size_of::<Rec>() <= 32, "{}", std::mem::size_of::<Rec>());
    }

    #[test]
    fn a_folder_is_no_trace_file() {
        let dir = tempfile::tempdir().unwrap();
        let id = Arc::new(Identity::from_secret_bytes(&[4; 32]));
        let local = crate::node::peer_id_of(&id.public());
        let err = Tracer::open(dir.path(), id, local).err().unwrap();
        assert!(err.to_string().contains("is a folder"), "{err}");
    }

    /// With a tiny buffer the writer falls behind: whatever it drops is counted, in the
    /// signed head (gossip) and as gap records (timeline), so written + dropped = sent.
    #[tokio::test]
    async fn a_full_buffer_drops_but_never_silently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.jsonl");
        let id = Arc::new(Identity::from_secret_bytes(&[3; 32]));
        let local = crate::node::peer_id_of(&id.public());
        let mut t = Tracer::open_with_buffer(&path, id, local, 2).unwrap();
        let topic = fleetmesh_protocol::ids::TOPIC_TASKS;
        let (gossip_sent, tasks_sent) = (5_000u64, 3_000u64);
        for i in 0..gossip_sent {
            t.publish(&gossipsub::MessageId::from(i.to_be_bytes().to_vec()), topic);
            if i < tasks_sent {
                t.task(TaskRecord::about(timeline::event::ANNOUNCED, &i));
            }
        }
        t.close().await;
        let gossip_lines = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
        let v = timeline::verify_file(&timeline_path(&path)).unwrap();
        assert!(v.problems.is_empty() && v.complete, "{v:?}");
        let (written, dropped) = v.gossip_counts.unwrap();
        assert_eq!(written, gossip_lines);
        assert_eq!(written + dropped, gossip_sent, "gossip events lost without a count");
        // A 2-slot buffer against a writer that formats JSON: drops are all but certain, and
        // without them this test would not test the counting.
        assert!(dropped > 0, "nothing was dropped; the test did not exercise a full buffer");
        let text = std::fs::read_to_string(timeline_path(&path)).unwrap();
        let announced = text.lines().filter(|l| l.contains("\"announced\"")).count() as u64;
        assert_eq!(announced + v.dropped_by_node, tasks_sent, "task records lost without a count");
    }
}
