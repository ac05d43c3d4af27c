//! `fleetmesh trace analyze`: merges the traces of many nodes and measures the mesh.
//!
//! The gossip part computes what go-libp2p-pubsub-tracer's `tracestat` prints (per-peer and
//! total publish, deliver, duplicate and reject counts; the propagation delay CDF, in ms
//! rounded as tracestat rounds) and adds the delivery ratio, duplicates per delivered
//! message and the mesh degree over time. The task part reads the timelines: phase
//! latencies, bids per task, wins per node, declines and rejections by reason.
//!
//! Files are recognised by their first line, not their name, so a folder can hold logs and
//! other files too: a line with `type` is a gossip trace, a line with `seq` and `prev` a task
//! timeline. Timestamps from different nodes are compared directly: on one machine (a
//! testnet, the bench) they share a clock; across machines, delays are only as good as
//! the clocks' sync.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::gossip::{kind, TraceEvent};
use super::timeline::{event, Record};

/// Why traces could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalyzeError {
    /// A path could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing to analyze.
    #[error("no trace files found in {0}")]
    Empty(String),
}

/// Traces read from disk.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Gossip events from every gossip trace.
    pub gossip: Vec<TraceEvent>,
    /// Task timelines: (file, records).
    pub timelines: Vec<(PathBuf, Vec<Record>)>,
    /// Gossip trace files read.
    pub gossip_files: Vec<PathBuf>,
    /// Files that are neither, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Lines that did not parse, per file.
    pub bad_lines: u64,
}

enum Kind {
    Gossip,
    Timeline,
}

fn classify(first: &str) -> Option<Kind> {
    let v: serde_json::Value = serde_json::from_str(first).ok()?;
    let o = v.as_object()?;
    if o.contains_key("seq") && o.contains_key("prev") {
        Some(Kind::Timeline)
    } else if o.get("type").is_some_and(serde_json::Value::is_i64) {
        Some(Kind::Gossip)
    } else {
        None
    }
}

fn collect(path: &Path, explicit: bool, out: &mut Vec<PathBuf>) -> Result<(), AnalyzeError> {
    let meta = std::fs::metadata(path).map_err(|source| AnalyzeError::Read { path: path.into(), source })?;
    if meta.is_dir() {
        let rd =
            std::fs::read_dir(path).map_err(|source| AnalyzeError::Read { path: path.into(), source })?;
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for e in entries {
            collect(&e, false, out)?;
        }
    } else if explicit || path.extension().is_some_and(|x| x == "jsonl" || x == "json") {
        out.push(path.to_owned());
    }
    Ok(())
}

type Lines = std::io::Lines<std::io::BufReader<std::fs::File>>;

/// Opens `f` and reads up to its first non-empty line; `Err` says why the file is skipped.
fn first_line(f: &Path) -> Result<(String, Lines), String> {
    let file = std::fs::File::open(f).map_err(|e| format!("unreadable: {e}"))?;
    let mut lines = std::io::BufReader::new(file).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.trim().is_empty() => continue,
            Some(Ok(l)) => return Ok((l, lines)),
            Some(Err(e)) => return Err(format!("unreadable: {e}")),
            None => return Err("empty".into()),
        }
    }
}

/// Every line from `first` on, parsed; lines that do not parse are counted in `bad`.
fn parse_lines<T: serde::de::DeserializeOwned>(first: String, rest: Lines, bad: &mut u64) -> Vec<T> {
    let mut out = Vec::new();
    for l in std::iter::once(Ok(first)).chain(rest).map_while(Result::ok).filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(&l) {
            Ok(v) => out.push(v),
            Err(_) => *bad += 1,
        }
    }
    out
}

fn files_in(paths: &[PathBuf]) -> Result<Vec<PathBuf>, AnalyzeError> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, true, &mut files)?;
    }
    Ok(files)
}

/// The task timelines among `paths` (files, or folders searched as [`load`] does), told
/// apart by their first line without reading the rest.
pub fn timeline_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, AnalyzeError> {
    Ok(files_in(paths)?
        .into_iter()
        .filter(|f| first_line(f).is_ok_and(|(first, _)| matches!(classify(&first), Some(Kind::Timeline))))
        .collect())
}

/// Reads every trace in `paths` (files, or folders searched recursively for `.jsonl`/`.json`).
pub fn load(paths: &[PathBuf]) -> Result<Inputs, AnalyzeError> {
    let mut inputs = Inputs::default();
    for f in files_in(paths)? {
        let (first, rest) = match first_line(&f) {
            Ok(x) => x,
            Err(why) => {
                inputs.skipped.push((f, why));
                continue;
            }
        };
        match classify(&first) {
            Some(Kind::Gossip) => {
                inputs.gossip.extend(parse_lines::<TraceEvent>(first, rest, &mut inputs.bad_lines));
                inputs.gossip_files.push(f);
            }
            Some(Kind::Timeline) => {
                let records = parse_lines::<Record>(first, rest, &mut inputs.bad_lines);
                inputs.timelines.push((f, records));
            }
            None => inputs.skipped.push((f, "not a gossip trace or task timeline".into())),
        }
    }
    if inputs.gossip.is_empty() && inputs.timelines.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(AnalyzeError::Empty(names.join(", ")));
    }
    Ok(inputs)
}

/// p50/p99/max of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Values.
    pub count: u64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Stats {
    /// Of `values` (any order).
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            count: v.len() as u64,
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// Event counts of one peer (or all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// PUBLISH_MESSAGE.
    pub publish: u64,
    /// DELIVER_MESSAGE.
    pub deliver: u64,
    /// DUPLICATE_MESSAGE.
    pub duplicate: u64,
    /// REJECT_MESSAGE.
    pub reject: u64,
    /// JOIN.
    pub join: u64,
    /// LEAVE.
    pub leave: u64,
    /// GRAFT.
    pub graft: u64,
    /// PRUNE.
    pub prune: u64,
}

/// Mean, min and max mesh degree of one topic at one time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshSample {
    /// Seconds since the first event of the trace.
    pub t_s: f64,
    /// The topic.
    pub topic: String,
    /// Peers counted (those that joined the topic).
    pub peers: u64,
    /// Mean degree.
    pub mean: f64,
    /// Smallest degree.
    pub min: u64,
    /// Largest degree.
    pub max: u64,
}

/// One task event placed on a node's lane, for the timeline plot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LaneEvent {
    /// Seconds since the first event of the trace.
    pub t_s: f64,
    /// The event name.
    pub event: String,
}

/// Task figures from the timelines.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskFigures {
    /// Tasks seen announced, or awarded on standing offers, by a traced requester.
    pub tasks: u64,
    /// Of those, awarded on standing offers (no announcement and no bid round first).
    pub on_offers: u64,
    /// Of those, verified.
    pub verified: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Phase latencies in ms (announce_to_first_bid, announce_to_award,
    /// award_to_first_result, first_result_to_verified, announce_to_verified; for tasks
    /// awarded on standing offers offer_award_to_verified; and the workers'
    /// award_to_result_sent).
    pub phases_ms: BTreeMap<String, Stats>,
    /// Bids a requester took per task.
    pub bids_per_task: Stats,
    /// Awards won, per node.
    pub wins_per_node: BTreeMap<String, u64>,
    /// Bids declined by requesters, by reason.
    pub declines: BTreeMap<String, u64>,
    /// Results rejected, by reason.
    pub rejections: BTreeMap<String, u64>,
    /// Failures, by reason.
    pub failures: BTreeMap<String, u64>,
    /// Timeline records the nodes dropped (gap records).
    pub records_dropped: u64,
    /// Per node (peer id), its task events in time order.
    #[serde(skip)]
    pub lanes: BTreeMap<String, Vec<LaneEvent>>,
}

/// The whole analysis; `--json` prints it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Analysis {
    /// Gossip trace files read.
    pub gossip_files: u64,
    /// Task timeline files read.
    pub timeline_files: u64,
    /// Lines that did not parse.
    pub bad_lines: u64,
    /// Peers with events in the gossip traces.
    pub peers: u64,
    /// Topics seen.
    pub topics: Vec<String>,
    /// Distinct messages published or received.
    pub messages: u64,
    /// PUBLISH_MESSAGE events.
    pub publishes: u64,
    /// DELIVER_MESSAGE events.
    pub deliveries: u64,
    /// DUPLICATE_MESSAGE events.
    pub duplicates: u64,
    /// REJECT_MESSAGE events.
    pub rejects: u64,
    /// Counts per peer (peer id).
    pub per_peer: BTreeMap<String, Counts>,
    /// Delay from a message's first publish to each delivery, ms.
    pub delivery_delay_ms: Stats,
    /// tracestat's CDF: (delay ms, deliveries at or below it).
    pub delay_cdf: Vec<(u64, u64)>,
    /// Deliveries over expected deliveries (nodes subscribed to the topic when the message
    /// was published, except the publisher); absent when no JOIN was traced.
    pub delivery_ratio: Option<f64>,
    /// Expected deliveries that did not happen.
    pub missed_deliveries: u64,
    /// Duplicates per delivered message.
    pub duplicates_per_delivery: f64,
    /// Duplicates per message per traced node: duplicates / (messages × peers).
    pub duplicates_per_message_per_node: f64,
    /// (duplicates a message drew in the whole mesh, messages with that many).
    pub duplicates_histogram: Vec<(u64, u64)>,
    /// Mesh degree over time, per topic.
    pub mesh_degree: Vec<MeshSample>,
    /// Gossip events the nodes said they dropped (from their signed timeline heads).
    pub gossip_dropped: u64,
    /// Task figures.
    pub tasks: TaskFigures,
}

/// A node's time in a topic: [joined, left), Unix ns.
type Membership = (i64, i64);

struct Msg {
    topic: Option<String>,
    publish: Option<(i64, Vec<u8>)>,
    delivered_to: Vec<(Vec<u8>, i64)>,
    duplicates: u64,
}

/// A peer id as libp2p prints it (base58btc of its multihash); bytes that are no peer id
/// multihash (identity of at most 42 bytes, or sha2-256) are shown in hex.
fn peer_name(bytes: &[u8]) -> String {
    let multihash = match bytes {
        [0x00, len, rest @ ..] => usize::from(*len) == rest.len() && rest.len() <= 42,
        [0x12, 0x20, rest @ ..] => rest.len() == 32,
        _ => false,
    };
    if multihash {
        bs58::encode(bytes).into_string()
    } else {
        format!("0x{}", hex::encode(bytes))
    }
}

/// Analyzes what [`load`] read. With `topic`, the gossip figures cover that topic only (as
/// tracestat's `-topic`): its messages, found by any event that names the topic, and its
/// membership and mesh events.
pub fn analyze(inputs: &Inputs, topic: Option<&str>) -> Analysis {
    let mut a = Analysis {
        gossip_files: inputs.gossip_files.len() as u64,
        timeline_files: inputs.timelines.len() as u64,
        bad_lines: inputs.bad_lines,
        ..Analysis::default()
    };
    let in_topic: Option<BTreeSet<&[u8]>> = topic.map(|t| {
        inputs.gossip.iter().filter(|e| e.topic() == Some(t)).filter_map(TraceEvent::message_id).collect()
    });
    let keep = |e: &TraceEvent| match (&in_topic, e.message_id()) {
        (None, _) => true,
        (Some(ids), Some(id)) => ids.contains(id),
        (Some(_), None) => e.topic() == topic,
    };
    let mut events: Vec<&TraceEvent> = inputs.gossip.iter().filter(|e| keep(e)).collect();
    events.sort_by_key(|e| e.timestamp);
    let t0 = events.first().map(|e| e.timestamp).unwrap_or(0);

    let mut per_peer: HashMap<Vec<u8>, Counts> = HashMap::new();
    let mut topics = BTreeSet::new();
    let mut msgs: HashMap<Vec<u8>, Msg> = HashMap::new();
    // (peer, topic) -> membership intervals [join, leave).
    let mut joined: HashMap<(Vec<u8>, String), Vec<Membership>> = HashMap::new();
    for e in &events {
        let c = per_peer.entry(e.peer_id.clone()).or_default();
        if let Some(t) = e.topic() {
            topics.insert(t.to_owned());
        }
        fn msg<'m>(msgs: &'m mut HashMap<Vec<u8>, Msg>, id: &[u8]) -> &'m mut Msg {
            msgs.entry(id.to_vec()).or_insert(Msg {
                topic: None,
                publish: None,
                delivered_to: Vec::new(),
                duplicates: 0,
            })
        }
        match e.kind {
            kind::PUBLISH_MESSAGE => {
                c.publish += 1;
                if let Some(id) = e.message_id() {
                    let m = msg(&mut msgs, id);
                    if m.publish.is_none() {
                        m.publish = Some((e.timestamp, e.peer_id.clone()));
                    }
                    m.topic = m.topic.take().or_else(|| e.topic().map(str::to_owned));
                }
            }
            kind::DELIVER_MESSAGE => {
                c.deliver += 1;
                if let Some(id) = e.message_id() {
                    let m = msg(&mut msgs, id);
                    m.delivered_to.push((e.peer_id.clone(), e.timestamp));
                    m.topic = m.topic.take().or_else(|| e.topic().map(str::to_owned));
                }
            }
            kind::DUPLICATE_MESSAGE => {
                c.duplicate += 1;
                if let Some(id) = e.message_id() {
                    msg(&mut msgs, id).duplicates += 1;
                }
            }
            kind::REJECT_MESSAGE => {
                c.reject += 1;
                if let Some(id) = e.message_id() {
                    msg(&mut msgs, id);
                }
            }
            kind::JOIN => {
                c.join += 1;
                if let Some(t) = e.topic() {
                    joined
                        .entry((e.peer_id.clone(), t.to_owned()))
                        .or_default()
                        .push((e.timestamp, i64::MAX));
                }
            }
            kind::LEAVE => {
                c.leave += 1;
                if let Some(t) = e.topic() {
                    if let Some(last) =
                        joined.get_mut(&(e.peer_id.clone(), t.to_owned())).and_then(|v| v.last_mut())
                    {
                        last.1 = last.1.min(e.timestamp);
                    }
                }
            }
            kind::GRAFT => c.graft += 1,
            kind::PRUNE => c.prune += 1,
            _ => {}
        }
    }
    // A node killed without a LEAVE and started again JOINs anew: its earlier membership
    // ended with its last traced event before the restart.
    let mut seen: HashMap<&[u8], Vec<i64>> = HashMap::new();
    for e in &events {
        seen.entry(&e.peer_id[..]).or_default().push(e.timestamp);
    }
    for ((peer, _), spans) in joined.iter_mut() {
        spans.sort_unstable();
        let Some(ts) = seen.get(&peer[..]) else { continue };
        for i in 0..spans.len().saturating_sub(1) {
            if spans[i].1 == i64::MAX {
                let before_restart = ts.partition_point(|t| *t < spans[i + 1].0);
                spans[i].1 = before_restart.checked_sub(1).map_or(spans[i].0, |k| ts[k]) + 1;
            }
        }
    }
    let total = per_peer.values().fold(Counts::default(), |mut t, c| {
        t.publish += c.publish;
        t.deliver += c.deliver;
        t.duplicate += c.duplicate;
        t.reject += c.reject;
        t
    });
    a.peers = per_peer.len() as u64;
    a.per_peer = per_peer.iter().map(|(p, c)| (peer_name(p), *c)).collect();
    a.topics = topics.into_iter().collect();
    a.messages = msgs.len() as u64;
    a.publishes = total.publish;
    a.deliveries = total.deliver;
    a.duplicates = total.duplicate;
    a.rejects = total.reject;

    // Delays, the CDF and the delivery ratio.
    let mut delays = Vec::new();
    let mut cdf: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut expected, mut delivered) = (0u64, 0u64);
    let mut dup_hist: BTreeMap<u64, u64> = BTreeMap::new();
    for m in msgs.values() {
        *dup_hist.entry(m.duplicates).or_default() += 1;
        let Some((t_pub, publisher)) = &m.publish else { continue };
        for (_, t) in &m.delivered_to {
            let dt = (t - t_pub).max(0);
            delays.push(dt as f64 / 1e6);
            // tracestat rounds to the nearest millisecond this way.
            *cdf.entry(((dt + 499_999) / 1_000_000) as u64).or_default() += 1;
        }
        if let Some(topic) = &m.topic {
            let subscribers: BTreeSet<&Vec<u8>> = joined
                .iter()
                .filter(|((p, t), spans)| {
                    t == topic && p != publisher && spans.iter().any(|(j, l)| j <= t_pub && l > t_pub)
                })
                .map(|((p, _), _)| p)
                .collect();
            let got: BTreeSet<&Vec<u8>> =
                m.delivered_to.iter().map(|(p, _)| p).filter(|p| subscribers.contains(p)).collect();
            expected += subscribers.len() as u64;
            delivered += got.len() as u64;
        }
    }
    a.delivery_delay_ms = Stats::of(&delays);
    let mut running = 0;
    a.delay_cdf = cdf
        .into_iter()
        .map(|(ms, n)| {
            running += n;
            (ms, running)
        })
        .collect();
    if expected > 0 {
        a.delivery_ratio = Some(delivered as f64 / expected as f64);
        a.missed_deliveries = expected - delivered;
    }
    if a.deliveries > 0 {
        a.duplicates_per_delivery = a.duplicates as f64 / a.deliveries as f64;
    }
    if a.messages > 0 && a.peers > 0 {
        a.duplicates_per_message_per_node = a.duplicates as f64 / (a.messages as f64 * a.peers as f64);
    }
    a.duplicates_histogram = dup_hist.into_iter().collect();
    a.mesh_degree = mesh_degree(&events, t0);
    a.gossip_dropped = inputs
        .timelines
        .iter()
        .filter_map(|(_, rs)| rs.iter().rev().find(|r| r.event == event::HEAD).and_then(|r| r.gossip_dropped))
        .sum();
    a.tasks = task_figures(&inputs.timelines, t0);
    a
}

fn mesh_degree(events: &[&TraceEvent], t0: i64) -> Vec<MeshSample> {
    let changes: Vec<&&TraceEvent> =
        events.iter().filter(|e| matches!(e.kind, kind::GRAFT | kind::PRUNE | kind::JOIN)).collect();
    let (Some(first), Some(last)) = (events.first(), events.last()) else { return Vec::new() };
    if changes.is_empty() {
        return Vec::new();
    }
    let span = (last.timestamp - first.timestamp).max(1);
    // About 60 samples, at least 100 ms apart.
    let step = (span / 60).max(100_000_000);
    let mut degree: HashMap<(Vec<u8>, String), i64> = HashMap::new();
    let mut out = Vec::new();
    let mut i = 0;
    let mut t = first.timestamp;
    while t <= last.timestamp + step {
        while i < changes.len() && changes[i].timestamp <= t {
            let e = changes[i];
            if let Some(topic) = e.topic() {
                let d = degree.entry((e.peer_id.clone(), topic.to_owned())).or_default();
                match e.kind {
                    kind::GRAFT => *d += 1,
                    kind::PRUNE => *d = (*d - 1).max(0),
                    _ => {}
                }
            }
            i += 1;
        }
        let mut per_topic: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for ((_, topic), d) in &degree {
            per_topic.entry(topic).or_default().push(*d);
        }
        for (topic, ds) in per_topic {
            out.push(MeshSample {
                t_s: (t - t0) as f64 / 1e9,
                topic: topic.to_owned(),
                peers: ds.len() as u64,
                mean: ds.iter().sum::<i64>() as f64 / ds.len() as f64,
                min: ds.iter().copied().min().unwrap_or(0) as u64,
                max: ds.iter().copied().max().unwrap_or(0) as u64,
            });
        }
        t += step;
    }
    out
}

#[derive(Default)]
struct TaskTimes {
    announced: Option<u64>,
    /// Awarded on standing offers (no announcement, no bid).
    on_offers: Option<u64>,
    first_bid: Option<u64>,
    awarded: Option<u64>,
    first_result: Option<u64>,
    verified: Option<u64>,
    failed: bool,
    bids: u64,
}

/// The reason an `awarded` record gives for a round decided on standing offers.
pub const OFFERS: &str = "standing offers";

fn task_figures(timelines: &[(PathBuf, Vec<Record>)], t0: i64) -> TaskFigures {
    let mut f = TaskFigures::default();
    let mut tasks: HashMap<String, TaskTimes> = HashMap::new();
    let mut worker_runs = Vec::new();
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
    for (_, records) in timelines {
        let node =
            records.iter().find(|r| r.event == event::START).and_then(|r| r.node.clone()).unwrap_or_default();
        let mut accepted: HashMap<&str, u64> = HashMap::new();
        for r in records {
            let lane_event = !matches!(r.event.as_str(), event::START | event::HEAD | event::GAP);
            if lane_event {
                f.lanes
                    .entry(node.clone())
                    .or_default()
                    .push(LaneEvent { t_s: (r.ts as i64 - t0) as f64 / 1e9, event: r.event.clone() });
            }
            if r.event == event::GAP {
                f.records_dropped += r.dropped.unwrap_or(0);
            }
            let Some(task) = r.task.as_deref() else { continue };
            let first = |slot: &mut Option<u64>| {
                if slot.is_none() {
                    *slot = Some(r.ts);
                }
            };
            match r.event.as_str() {
                event::ANNOUNCED => first(&mut tasks.entry(task.to_owned()).or_default().announced),
                event::BID_RECEIVED => {
                    let t = tasks.entry(task.to_owned()).or_default();
                    first(&mut t.first_bid);
                    t.bids += 1;
                }
                event::AWARDED => {
                    let t = tasks.entry(task.to_owned()).or_default();
                    first(&mut t.awarded);
                    if r.reason.as_deref() == Some(OFFERS) {
                        first(&mut t.on_offers);
                    }
                    for w in r.winners.iter().flatten() {
                        *f.wins_per_node.entry(w.clone()).or_default() += 1;
                    }
                }
                event::RESULT_RECEIVED => first(&mut tasks.entry(task.to_owned()).or_default().first_result),
                event::VERIFIED => first(&mut tasks.entry(task.to_owned()).or_default().verified),
                event::FAILED => {
                    tasks.entry(task.to_owned()).or_default().failed = true;
                    *f.failures.entry(r.reason.clone().unwrap_or_default()).or_default() += 1;
                }
                event::BID_DECLINED | event::DECLINE_SENT => {
                    *f.declines.entry(r.reason.clone().unwrap_or_default()).or_default() += 1;
                }
                event::RESULT_REJECTED => {
                    *f.rejections.entry(r.reason.clone().unwrap_or_default()).or_default() += 1;
                }
                event::AWARD_ACCEPTED => {
                    accepted.insert(task, r.ts);
                }
                event::RESULT_SENT => {
                    if let Some(a) = accepted.remove(task) {
                        worker_runs.push(ms(a, r.ts));
                    }
                }
                _ => {}
            }
        }
    }
    let mut phases: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut bids = Vec::new();
    for t in tasks.values() {
        // A task starts with its first announcement, or, awarded on standing offers, with
        // that award.
        let (ann, start) = match (t.announced, t.on_offers) {
            (Some(a), _) => (Some(a), a),
            (None, Some(o)) => (None, o),
            (None, None) => continue,
        };
        f.tasks += 1;
        if t.on_offers.is_some() {
            f.on_offers += 1;
        }
        bids.push(t.bids as f64);
        if t.verified.is_some() {
            f.verified += 1;
        } else if t.failed {
            f.failed += 1;
        }
        let mut add = |name, a: Option<u64>, b: Option<u64>| {
            if let (Some(a), Some(b)) = (a, b) {
                phases.entry(name).or_default().push(ms(a, b));
            }
        };
        add("announce_to_first_bid", ann, t.first_bid);
        add("announce_to_award", ann, t.awarded);
        add("award_to_first_result", t.awarded, t.first_result);
        add("first_result_to_verified", t.first_result, t.verified);
        add("announce_to_verified", ann, t.verified);
        if ann.is_none() {
            add("offer_award_to_verified", Some(start), t.verified);
        }
    }
    if !worker_runs.is_empty() {
        phases.insert("worker_award_to_result_sent", worker_runs);
    }
    f.phases_ms = phases.into_iter().map(|(k, v)| (k.to_owned(), Stats::of(&v))).collect();
    f.bids_per_task = Stats::of(&bids);
    f
}

impl Analysis {
    /// The report as text: tracestat's summary first, then what it does not print.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "=== Trace Summary ===");
        let _ =
            writeln!(s, "Files: {} gossip traces, {} task timelines", self.gossip_files, self.timeline_files);
        let _ = writeln!(s, "Peers: {}", self.peers);
        let _ = writeln!(s, "Topics: {}", self.topics.join(","));
        let _ = writeln!(s, "Messages: {}", self.messages);
        let _ = writeln!(s, "Published Messages: {}", self.publishes);
        let _ = writeln!(s, "Delivered Messages: {}", self.deliveries);
        let _ = writeln!(s, "Duplicate Messages: {}", self.duplicates);
        let _ = writeln!(s, "Rejected Messages: {}", self.rejects);
        if self.bad_lines > 0 {
            let _ = writeln!(s, "Unreadable lines: {}", self.bad_lines);
        }
        if self.gossip_dropped > 0 {
            let _ = writeln!(s, "Events the nodes dropped (trace buffer full): {}", self.gossip_dropped);
        }
        let d = &self.delivery_delay_ms;
        let _ = writeln!(s, "\n=== Propagation ===");
        let _ = writeln!(
            s,
            "delivery delay (ms, from first publish): n {}  p50 {:.2}  p99 {:.2}  max {:.2}",
            d.count, d.p50, d.p99, d.max
        );
        match self.delivery_ratio {
            Some(r) => {
                let _ = writeln!(
                    s,
                    "delivery ratio: {:.4} ({} expected deliveries missed)",
                    r, self.missed_deliveries
                );
            }
            None => {
                let _ = writeln!(s, "delivery ratio: unknown (no JOIN events traced)");
            }
        }
        let _ = writeln!(
            s,
            "duplicates per delivery: {:.2}; per message per node: {:.3}",
            self.duplicates_per_delivery, self.duplicates_per_message_per_node
        );
        if !self.delay_cdf.is_empty() {
            let _ = writeln!(s, "\n=== Propagation Delay CDF (ms) ===");
            let total = self.delay_cdf.last().map_or(1, |x| x.1).max(1);
            // At most 25 rows: every row when short, otherwise evenly spaced ones and the last.
            let step = self.delay_cdf.len().div_ceil(25).max(1);
            for (i, (ms, n)) in self.delay_cdf.iter().enumerate() {
                if i % step == 0 || i + 1 == self.delay_cdf.len() {
                    let _ = writeln!(s, "{ms} {n} ({:.1}%)", *n as f64 * 100.0 / total as f64);
                }
            }
        }
        if !self.per_peer.is_empty() {
            let _ = writeln!(s, "\n=== Per Peer ===");
            let _ = writeln!(
                s,
                "{:<54} {:>7} {:>7} {:>9} {:>6} {:>5} {:>5}",
                "peer", "publish", "deliver", "duplicate", "reject", "graft", "prune"
            );
            for (p, c) in &self.per_peer {
                let _ = writeln!(
                    s,
                    "{:<54} {:>7} {:>7} {:>9} {:>6} {:>5} {:>5}",
                    p, c.publish, c.deliver, c.duplicate, c.reject, c.graft, c.prune
                );
            }
        }
        if !self.mesh_degree.is_empty() {
            let _ = writeln!(s, "\n=== Mesh Degree (mean [min-max] over peers) ===");
            for topic in &self.topics {
                let samples: Vec<&MeshSample> =
                    self.mesh_degree.iter().filter(|m| m.topic == *topic).collect();
                // About 12 rows per topic.
                let step = samples.len().div_ceil(12).max(1);
                for m in samples.iter().step_by(step) {
                    let _ = writeln!(
                        s,
                        "{:>8.1}s {:<22} {:>5.2} [{}-{}] over {} peers",
                        m.t_s, m.topic, m.mean, m.min, m.max, m.peers
                    );
                }
            }
        }
        let t = &self.tasks;
        if self.timeline_files > 0 {
            let _ = writeln!(s, "\n=== Tasks ===");
            let _ = writeln!(
                s,
                "tasks: {}  verified: {}  failed: {}  awarded on standing offers: {}",
                t.tasks, t.verified, t.failed, t.on_offers
            );
            let _ = writeln!(s, "{:<28} {:>6} {:>10} {:>10} {:>10}", "phase (ms)", "n", "p50", "p99", "max");
            for (name, st) in &t.phases_ms {
                let _ = writeln!(
                    s,
                    "{:<28} {:>6} {:>10.2} {:>10.2} {:>10.2}",
                    name, st.count, st.p50, st.p99, st.max
                );
            }
            let b = &t.bids_per_task;
            let _ = writeln!(s, "bids per task: mean {:.2}  p50 {}  max {}", b.mean, b.p50, b.max);
            if !t.wins_per_node.is_empty() {
                let _ = writeln!(s, "wins per node:");
                for (n, w) in &t.wins_per_node {
                    let _ = writeln!(s, "  {n} {w}");
                }
            }
            for (title, map) in
                [("declines", &t.declines), ("rejections", &t.rejections), ("failures", &t.failures)]
            {
                if !map.is_empty() {
                    let _ = writeln!(s, "{title} by reason:");
                    for (r, n) in map {
                        let _ = writeln!(s, "  {n:>5} {r}");
                    }
                }
            }
            if t.records_dropped > 0 {
                let _ = writeln!(s, "timeline records the nodes dropped: {}", t.records_dropped);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::gossip::*;
    use super::*;

    const MS: i64 = 1_000_000;

    fn peer(n: u8) -> Vec<u8> {
        let id = fleetmesh_crypto::Identity::from_secret_bytes(&[n; 32]);
        bs58::decode(id.public().peer_id()).into_vec().unwrap()
    }

    fn ev(kind: i32, who: u8, t_ms: i64) -> TraceEvent {
        TraceEvent {
            kind,
            peer_id: peer(who),
            timestamp: 1_000_000 * MS + t_ms * MS,
            ..TraceEvent::default()
        }
    }

    fn join(who: u8, t_ms: i64) -> TraceEvent {
        TraceEvent { join: Some(TopicBody { topic: Some("t".into()) }), ..ev(kind::JOIN, who, t_ms) }
    }

    fn publish(who: u8, id: u8, t_ms: i64) -> TraceEvent {
        TraceEvent {
            publish_message: Some(PublishMessage { message_id: vec![id], topic: Some("t".into()) }),
            ..ev(kind::PUBLISH_MESSAGE, who, t_ms)
        }
    }

    fn deliver(who: u8, id: u8, from: u8, t_ms: i64) -> TraceEvent {
        TraceEvent {
            deliver_message: Some(DeliverMessage {
                message_id: vec![id],
                topic: Some("t".into()),
                received_from: peer(from),
            }),
            ..ev(kind::DELIVER_MESSAGE, who, t_ms)
        }
    }

    fn duplicate(who: u8, id: u8, t_ms: i64) -> TraceEvent {
        TraceEvent {
            duplicate_message: Some(DuplicateMessage { message_id: vec![id], ..Default::default() }),
            ..ev(kind::DUPLICATE_MESSAGE, who, t_ms)
        }
    }

    fn graft(who: u8, other: u8, t_ms: i64) -> TraceEvent {
        TraceEvent {
            graft: Some(PeerTopic { peer_id: peer(other), topic: Some("t".into()) }),
            ..ev(kind::GRAFT, who, t_ms)
        }
    }

    /// Three peers; message 1 from A reaches B at 10 ms and C at 30 ms (C also gets a copy
    /// twice more); message 2 from B reaches A at 5 ms and never reaches C.
    fn synthetic() -> Inputs {
        let gossip = vec![
            join(1, 0),
            join(2, 0),
            join(3, 0),
            graft(1, 2, 50),
            graft(2, 1, 50),
            graft(1, 3, 60),
            graft(3, 1, 60),
            publish(1, 1, 1000),
            deliver(2, 1, 1, 1010),
            deliver(3, 1, 1, 1030),
            duplicate(3, 1, 1031),
            duplicate(3, 1, 1032),
            publish(2, 2, 2000),
            deliver(1, 2, 2, 2005),
            TraceEvent {
                reject_message: Some(RejectMessage { message_id: vec![9], ..Default::default() }),
                ..ev(kind::REJECT_MESSAGE, 2, 2100)
            },
        ];
        Inputs { gossip, ..Inputs::default() }
    }

    #[test]
    fn gossip_figures_match_a_trace_with_known_answers() {
        let a = analyze(&synthetic(), None);
        assert_eq!(a.peers, 3);
        assert_eq!(a.messages, 3, "two delivered messages and one rejected one");
        assert_eq!((a.publishes, a.deliveries, a.duplicates, a.rejects), (2, 3, 2, 1));
        // Delays 10, 30 and 5 ms.
        assert_eq!(a.delivery_delay_ms.count, 3);
        assert_eq!(a.delivery_delay_ms.p50, 10.0);
        assert_eq!(a.delivery_delay_ms.max, 30.0);
        assert_eq!(a.delay_cdf, vec![(5, 1), (10, 2), (30, 3)]);
        // Four expected deliveries (two subscribers besides each publisher), three happened.
        assert_eq!(a.delivery_ratio, Some(0.75));
        assert_eq!(a.missed_deliveries, 1);
        assert!((a.duplicates_per_delivery - 2.0 / 3.0).abs() < 1e-9);
        // Message 1 drew two duplicates, messages 2 and 9 none.
        assert_eq!(a.duplicates_histogram, vec![(0, 2), (2, 1)]);
        let c = a.per_peer[&bs58::encode(peer(3)).into_string()];
        assert_eq!((c.deliver, c.duplicate, c.graft, c.join), (1, 2, 1, 1));
        // After the grafts A has degree 2 and B, C degree 1.
        let last = a.mesh_degree.last().unwrap();
        assert_eq!((last.min, last.max, last.peers), (1, 2, 3));
        assert!((last.mean - 4.0 / 3.0).abs() < 1e-9);
        // Another topic: none of these messages, no mesh.
        let other = analyze(&synthetic(), Some("u"));
        assert_eq!((other.messages, other.deliveries, other.duplicates), (0, 0, 0));
        assert!(other.mesh_degree.is_empty());
        let same = analyze(&synthetic(), Some("t"));
        assert_eq!((same.messages, same.deliveries, same.duplicates), (2, 3, 2), "the reject named no topic");
    }

    fn rec(event: &str, task: &str, t_ms: u64) -> Record {
        Record { ts: 5_000_000_000 + t_ms * 1_000_000, ..Record::about(event, &task) }
    }

    #[test]
    fn a_killed_and_restarted_node_is_not_expected_while_down() {
        // Peer 2 joins, is killed after 100 ms (no LEAVE) and joins again at 3000 ms. The
        // message published at 2000 ms cannot reach it; the one at 4000 ms does.
        let gossip = vec![
            join(1, 0),
            join(2, 0),
            graft(2, 1, 100),
            join(2, 3000),
            publish(1, 1, 2000),
            publish(1, 2, 4000),
            deliver(2, 2, 1, 4010),
        ];
        let a = analyze(&Inputs { gossip, ..Inputs::default() }, None);
        assert_eq!(a.delivery_ratio, Some(1.0));
        assert_eq!(a.missed_deliveries, 0);
        // Without the restart the node counts as subscribed throughout and missed one.
        let gossip =
            vec![join(1, 0), join(2, 0), publish(1, 1, 2000), publish(1, 2, 4000), deliver(2, 2, 1, 4010)];
        let a = analyze(&Inputs { gossip, ..Inputs::default() }, None);
        assert_eq!((a.delivery_ratio, a.missed_deliveries), (Some(0.5), 1));
    }

    #[test]
    fn task_figures_match_timelines_with_known_answers() {
        let requester = vec![
            Record { node: Some("R".into()), ..Record::new(event::START) },
            rec(event::ANNOUNCED, "a", 0),
            rec(event::BID_RECEIVED, "a", 4),
            rec(event::BID_RECEIVED, "a", 6),
            Record { winners: Some(vec!["W".into()]), ..rec(event::AWARDED, "a", 10) },
            Record { reason: Some("Outbid".into()), ..rec(event::BID_DECLINED, "a", 10) },
            rec(event::RESULT_RECEIVED, "a", 40),
            rec(event::VERIFIED, "a", 41),
            rec(event::ANNOUNCED, "b", 100),
            Record { reason: Some("no bids".into()), ..rec(event::FAILED, "b", 900) },
            Record { dropped: Some(4), ..Record::new(event::GAP) },
            // Awarded on standing offers: no announcement, no bid.
            Record {
                winners: Some(vec!["W".into()]),
                reason: Some(OFFERS.into()),
                ..rec(event::AWARDED, "c", 200)
            },
            rec(event::RESULT_RECEIVED, "c", 230),
            rec(event::VERIFIED, "c", 231),
        ];
        let worker = vec![
            Record { node: Some("W".into()), ..Record::new(event::START) },
            rec(event::AWARD_ACCEPTED, "a", 12),
            rec(event::RESULT_SENT, "a", 37),
        ];
        let inputs =
            Inputs { timelines: vec![("r".into(), requester), ("w".into(), worker)], ..Inputs::default() };
        let t = analyze(&inputs, None).tasks;
        assert_eq!((t.tasks, t.verified, t.failed, t.on_offers), (3, 2, 1, 1));
        assert_eq!(t.phases_ms["offer_award_to_verified"].p50, 31.0);
        assert_eq!(t.phases_ms["announce_to_verified"].count, 1, "only announced tasks");
        assert_eq!(t.phases_ms["announce_to_first_bid"].p50, 4.0);
        assert_eq!(t.phases_ms["announce_to_award"].p50, 10.0);
        assert_eq!(t.phases_ms["award_to_first_result"].p50, 30.0);
        assert_eq!(t.phases_ms["first_result_to_verified"].p50, 1.0);
        assert_eq!(t.phases_ms["announce_to_verified"].p50, 41.0);
        assert_eq!(t.phases_ms["worker_award_to_result_sent"].p50, 25.0);
        assert_eq!(t.bids_per_task.max, 2.0);
        assert_eq!(t.bids_per_task.mean, 2.0 / 3.0);
        assert_eq!(t.wins_per_node["W"], 2);
        assert_eq!(t.declines["Outbid"], 1);
        assert_eq!(t.failures["no bids"], 1);
        assert_eq!(t.records_dropped, 4);
        assert_eq!(t.lanes["R"].len(), 12, "start and gap are not lane events");
    }

    #[test]
    fn folders_are_read_by_content_and_other_files_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> =
            synthetic().gossip.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
        std::fs::write(dir.path().join("a.jsonl"), lines.join("\n")).unwrap();
        std::fs::write(dir.path().join("log.json"), "{\"level\":\"info\"}\n").unwrap();
        std::fs::write(dir.path().join("empty.jsonl"), "").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a trace").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.jsonl"), format!("{}\n{{broken\n", lines[0])).unwrap();
        let inputs = load(&[dir.path().to_owned()]).unwrap();
        assert_eq!(inputs.gossip_files.len(), 2);
        assert_eq!(inputs.gossip.len(), lines.len() + 1);
        assert_eq!(inputs.bad_lines, 1);
        assert_eq!(inputs.skipped.len(), 2, "{:?}", inputs.skipped);
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(load(&[empty.path().to_owned()]), Err(AnalyzeError::Empty(_))));
        assert!(matches!(load(&[dir.path().join("missing")]), Err(AnalyzeError::Read { .. })));
    }

    #[cfg(feature = "plot")]
    #[test]
    fn plots_are_written_for_a_real_analysis() {
        let dir = tempfile::tempdir().unwrap();
        let a = analyze(&synthetic(), None);
        let files = super::super::plot::write_all(&a, dir.path()).unwrap();
        let names: Vec<String> =
            files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["delivery_delay_cdf.svg", "duplicates_histogram.svg", "mesh_degree.svg"]);
        for f in files {
            let svg = std::fs::read_to_string(f).unwrap();
            assert!(svg.starts_with("<svg") && (svg.contains("<polyline") || svg.contains("<rect")));
        }
    }
}
