//! Durable writes off the event loop, with group commit.
//!
//! Every engine `Persist` used to be one redb transaction with an fsync on the event loop:
//! while the disk synced, no message, command or finished execution was looked at, and a busy
//! node paid one fsync per change. Now the event loop hands each write to one writer thread
//! over a bounded queue and goes on. The thread commits every write waiting in the queue in
//! one transaction (group commit: one fsync for many changes) and publishes how far the
//! writes are durable.
//!
//! What the engine returns after a write is not performed until that write, and every write
//! before it, is durable: the event loop keeps those actions in [`Held`], in order, and lets
//! them go as the durable sequence number passes theirs. So nothing is acknowledged to a peer
//! or a caller before it would survive a power cut, as before, and a write that failed still
//! turns the answers that followed it in its batch into refusals.
//!
//! The engine's memory is ahead of the disk by at most the writes in flight; a crash loses
//! only changes nobody was told about.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use fleetmesh_crypto::TaskId;
use fleetmesh_engine::{StoreOp, Table};

use prometheus_client::metrics::counter::Counter;

use crate::store::{Store, StoreError};

/// Writes waiting for the writer thread; the event loop blocks on a full queue (backpressure).
const QUEUE: usize = 1024;
/// At most this many writes in one transaction.
const MAX_GROUP: usize = 512;
/// At most this many value bytes in one transaction (inputs and outputs reach 1 MiB each).
const MAX_GROUP_BYTES: usize = 32 << 20;

/// A write that failed: its sequence number, its keys (table, key, was it an insert), why.
pub(crate) type FailedWrite = (u64, Vec<(Table, TaskId, bool)>, StoreError);

/// One unit of work for the writer thread.
enum Job {
    /// An engine transaction, numbered.
    Write { seq: u64, ops: Vec<StoreOp> },
    /// The retention sweep: delete finished records older than the cutoff.
    Sweep { seq: u64, cutoff_ms: u64 },
    /// (tests) Wait here until the sender is dropped or sends.
    #[cfg(any(test, feature = "test-hooks"))]
    Hold(mpsc::Receiver<()>),
    /// (tests) Die as a panic inside redb would.
    #[cfg(test)]
    Panic,
}

impl Job {
    fn seq(&self) -> Option<u64> {
        match self {
            Job::Write { seq, .. } | Job::Sweep { seq, .. } => Some(*seq),
            #[cfg(any(test, feature = "test-hooks"))]
            Job::Hold(_) => None,
            #[cfg(test)]
            Job::Panic => None,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Job::Write { ops, .. } => ops.iter().map(|o| o.value.as_ref().map_or(0, Vec::len)).sum(),
            _ => 0,
        }
    }
}

/// What the writer thread tells the event loop.
struct Shared {
    /// Every write numbered up to this one is done (durable, or failed and listed).
    done: AtomicU64,
    /// Writes that failed, with why; taken by the event loop.
    failed: Mutex<Vec<(u64, StoreError)>>,
    /// Woken after each group.
    notify: tokio::sync::Notify,
    /// Transactions committed (each one fsync).
    commits: Counter,
    /// Value bytes queued and not yet committed (the event loop stops taking work above a
    /// bound: a slow disk must not let megabytes of inputs pile up).
    queued_bytes: AtomicUsize,
    /// The thread ended (it panicked, or the queue closed).
    gone: AtomicBool,
}

/// The event loop's handle on the writer thread.
pub(crate) struct Writer {
    tx: Option<mpsc::SyncSender<Job>>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The last sequence number handed out.
    submitted: u64,
    /// The keys of each write not yet done, to tell the engine which ones failed.
    in_flight: HashMap<u64, Vec<(Table, TaskId, bool)>>,
    /// Set when the thread is gone: every write since counts as failed at once.
    dead: bool,
    lost: Vec<(u64, StoreError)>,
}

impl Writer {
    /// Starts the writer thread on an open store.
    pub(crate) fn start(store: Arc<Store>, commits: Counter) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let shared = Arc::new(Shared {
            done: AtomicU64::new(0),
            failed: Mutex::default(),
            notify: tokio::sync::Notify::new(),
            commits,
            queued_bytes: AtomicUsize::new(0),
            gone: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("fleetmesh-writer".into())
                .spawn(move || run(&store, &rx, &shared))?
        };
        Ok(Self {
            tx: Some(tx),
            shared,
            thread: Some(thread),
            submitted: 0,
            in_flight: HashMap::new(),
            dead: false,
            lost: Vec::new(),
        })
    }

    /// Queues an engine transaction; returns its sequence number. Blocks only while the
    /// queue is full (the disk is behind by [`QUEUE`] transactions).
    pub(crate) fn submit(&mut self, ops: Vec<StoreOp>) -> u64 {
        let seq = self.next();
        self.in_flight.insert(seq, ops.iter().map(|o| (o.table, o.key, o.value.is_some())).collect());
        let job = Job::Write { seq, ops };
        self.shared.queued_bytes.fetch_add(job.bytes(), Ordering::Relaxed);
        self.send(job);
        seq
    }

    /// Value bytes queued for the thread and not yet committed.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Relaxed)
    }

    /// Queues the retention sweep (its outcome is logged by the writer thread).
    pub(crate) fn sweep(&mut self, cutoff_ms: u64) {
        let seq = self.next();
        self.send(Job::Sweep { seq, cutoff_ms });
    }

    fn next(&mut self) -> u64 {
        self.submitted = self.submitted.saturating_add(1);
        self.submitted
    }

    fn send(&mut self, job: Job) {
        let Some(seq) = job.seq() else { return };
        let sent = !self.dead && self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            self.mark_dead();
            self.lost.push((seq, StoreError::Db("the store's writer thread stopped".into())));
        }
    }

    /// The thread is gone: every write not known to be durable failed (those it was
    /// committing, and those still queued, are lost with it).
    fn mark_dead(&mut self) {
        if self.dead {
            return;
        }
        tracing::error!("the store's writer thread stopped: every durable write now fails");
        let durable = self.shared.done.load(Ordering::Acquire);
        let mut lost: Vec<u64> = self.in_flight.keys().copied().filter(|s| *s > durable).collect();
        lost.sort_unstable();
        for seq in lost {
            if !self.lost.iter().any(|(s, _)| *s == seq) {
                self.lost.push((seq, StoreError::Db("the store's writer thread stopped".into())));
            }
        }
        self.dead = true;
    }

    /// The last sequence number handed out.
    pub(crate) fn submitted(&self) -> u64 {
        self.submitted
    }

    /// Every write up to this sequence number is done.
    pub(crate) fn done(&self) -> u64 {
        if self.dead {
            self.submitted
        } else {
            self.shared.done.load(Ordering::Acquire)
        }
    }

    /// How far the writes are done, and those that failed since the last call (sequence
    /// number, keys, why). Every failure at or below the returned number is in the list.
    pub(crate) fn progress(&mut self) -> (u64, Vec<FailedWrite>) {
        if self.shared.gone.load(Ordering::Acquire) && self.tx.is_some() {
            self.mark_dead();
        }
        // `done` first: the thread lists a group's failures before it advances `done`.
        let done = self.done();
        let mut failed = std::mem::take(&mut self.lost);
        failed.extend(std::mem::take(&mut *self.shared.failed.lock().unwrap_or_else(|e| e.into_inner())));
        let failed: Vec<_> = failed
            .into_iter()
            .map(|(seq, e)| (seq, self.in_flight.remove(&seq).unwrap_or_default(), e))
            .collect();
        self.in_flight.retain(|seq, _| *seq > done);
        (done, failed)
    }

    /// Resolves when the writer thread has finished a group since it was last awaited.
    pub(crate) async fn progressed(&self) {
        self.shared.notify.notified().await;
    }

    /// (tests) Stops the writer thread before its next transaction until the returned
    /// sender is dropped: writes queue up meanwhile, and then go in one group.
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn hold(&mut self) -> mpsc::Sender<()> {
        let (tx, rx) = mpsc::channel();
        if let Some(w) = self.tx.as_ref() {
            let _ = w.send(Job::Hold(rx));
        }
        tx
    }

    /// Waits until every queued write is done, then stops the thread.
    pub(crate) async fn close(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has written what was queued; waiting for
        // it releases the store, so the same data dir can be opened again at once.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Says the thread is gone when it ends, by a panic as much as by a closed queue.
struct Gone<'a>(&'a Shared);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        self.0.gone.store(true, Ordering::Release);
        self.0.notify.notify_one();
    }
}

/// The writer thread: take what is queued, commit it as one transaction, say so.
fn run(store: &Store, rx: &mpsc::Receiver<Job>, shared: &Shared) {
    let _gone = Gone(shared);
    while let Ok(first) = rx.recv() {
        let mut group = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            #[cfg(any(test, feature = "test-hooks"))]
            if let Job::Hold(release) = job {
                if group.is_empty() {
                    let _ = release.recv();
                    next = rx.try_recv().ok();
                    continue;
                }
                // Finish this group first, then hold.
                commit(store, shared, std::mem::take(&mut group));
                let _ = release.recv();
                bytes = 0;
                next = rx.try_recv().ok();
                continue;
            }
            #[cfg(test)]
            if matches!(job, Job::Panic) {
                panic!("(test) the writer thread dies");
            }
            bytes = bytes.saturating_add(job.bytes());
            group.push(job);
            if group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit(store, shared, group);
        }
    }
}

fn commit(store: &Store, shared: &Shared, group: Vec<Job>) {
    let Some(last) = group.iter().filter_map(Job::seq).max() else { return };
    let writes: Vec<&[StoreOp]> = group
        .iter()
        .filter_map(|j| match j {
            Job::Write { ops, .. } => Some(ops.as_slice()),
            _ => None,
        })
        .collect();
    let mut failed = Vec::new();
    if !writes.is_empty() {
        if store.apply_all(&writes).is_ok() {
            shared.commits.inc();
        } else {
            // One of them is bad (or the disk is): write each alone, so only the failing
            // ones are refused.
            for job in &group {
                if let Job::Write { seq, ops } = job {
                    match store.apply_all(&[ops]) {
                        Ok(()) => {
                            shared.commits.inc();
                        }
                        Err(e) => failed.push((*seq, e)),
                    }
                }
            }
        }
    }
    for job in &group {
        if let Job::Sweep { cutoff_ms, .. } = job {
            match store.sweep_finished(*cutoff_ms) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(records = n, "deleted finished tasks and jobs past the retention period")
                }
                Err(e) => tracing::warn!("retention sweep failed: {e}"),
            }
        }
    }
    if !failed.is_empty() {
        shared.failed.lock().unwrap_or_else(|e| e.into_inner()).extend(failed);
    }
    let bytes: usize = group.iter().map(Job::bytes).sum();
    let _ = shared
        .queued_bytes
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| Some(q.saturating_sub(bytes)));
    shared.done.store(last, Ordering::Release);
    shared.notify.notify_one();
}

/// Actions kept back until the writes before them are durable, in the order the engine
/// returned them.
pub(crate) struct Held<A> {
    queue: VecDeque<Entry<A>>,
    /// Writes that failed, while an action held behind them may still ask.
    failed: BTreeSet<u64>,
}

struct Entry<A> {
    item: A,
    /// Performed once every write up to this one is done.
    after: u64,
    /// The writes earlier in the same batch: if one failed, the action is refused.
    guards: Range<u64>,
}

impl<A> Default for Held<A> {
    fn default() -> Self {
        Self { queue: VecDeque::new(), failed: BTreeSet::new() }
    }
}

impl<A> Held<A> {
    /// Actions waiting.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Keeps `item` until every write up to `after` is done; `guards` are the writes of its
    /// own batch before it.
    pub(crate) fn push(&mut self, item: A, after: u64, guards: Range<u64>) {
        self.queue.push_back(Entry { item, after, guards });
    }

    /// Records that write `seq` failed.
    pub(crate) fn fail(&mut self, seq: u64) {
        self.failed.insert(seq);
    }

    /// The next action whose writes are all done, and whether one of its batch's writes
    /// failed. Actions leave in order: one still waiting keeps those behind it.
    pub(crate) fn pop_ready(&mut self, done: u64) -> Option<(A, bool)> {
        if self.queue.front()?.after > done {
            return None;
        }
        let e = self.queue.pop_front()?;
        let tainted = self.failed.range(e.guards.clone()).next().is_some();
        // Failures no waiting action can ask about any more are forgotten.
        let oldest = self.queue.front().map_or(u64::MAX, |f| f.guards.start);
        self.failed = self.failed.split_off(&oldest);
        Some((e.item, tainted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmesh_engine::Table as T;

    fn op(key: u8, value: &[u8]) -> StoreOp {
        StoreOp { table: T::Requests, key: TaskId::from_bytes([key; 32]), value: Some(value.to_vec()) }
    }

    async fn wait_done(w: &Writer, seq: u64) {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while w.done() < seq {
                w.progressed().await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn writes_queued_together_commit_as_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let commits = Counter::default();
        let mut w = Writer::start(store.clone(), commits.clone()).unwrap();
        let release = w.hold();
        let mut last = 0;
        for i in 0..100u8 {
            last = w.submit(vec![op(i, &[i])]);
        }
        assert_eq!(w.done(), 0, "nothing is durable while the writer is held");
        assert_eq!(commits.get(), 0);
        drop(release);
        wait_done(&w, last).await;
        assert_eq!(commits.get(), 1, "100 queued writes are one transaction");
        assert!(w.progress().1.is_empty());
        for i in 0..100u8 {
            let key = TaskId::from_bytes([i; 32]);
            assert_eq!(store.get_raw(crate::store::REQUESTS, &key).unwrap(), Some(vec![i]));
        }
        w.close().await;
    }

    #[tokio::test]
    async fn a_failing_write_fails_alone_and_is_reported_with_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        store.fail_key(TaskId::from_bytes([7; 32]));
        let mut w = Writer::start(store.clone(), Counter::default()).unwrap();
        let release = w.hold();
        let a = w.submit(vec![op(1, b"a")]);
        let bad = w.submit(vec![op(2, b"b"), op(7, b"bad")]);
        let c = w.submit(vec![op(3, b"c")]);
        drop(release);
        wait_done(&w, c).await;
        let (_, failed) = w.progress();
        assert_eq!(failed.len(), 1, "only the batch with the bad key fails");
        let (seq, keys, _) = &failed[0];
        assert_eq!(*seq, bad);
        assert_eq!(keys.len(), 2);
        assert!(a < bad && bad < c);
        let get = |k: u8| store.get_raw(crate::store::REQUESTS, &TaskId::from_bytes([k; 32])).unwrap();
        assert_eq!(get(1), Some(b"a".to_vec()));
        assert_eq!(get(2), None, "a failed transaction writes nothing");
        assert_eq!(get(3), Some(b"c".to_vec()));
        w.close().await;
    }

    #[tokio::test]
    async fn close_waits_for_every_queued_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut w = Writer::start(store.clone(), Counter::default()).unwrap();
        for i in 0..50u8 {
            w.submit(vec![op(i, &[i; 1000])]);
        }
        w.close().await;
        for i in 0..50u8 {
            assert!(store.get_raw(crate::store::REQUESTS, &TaskId::from_bytes([i; 32])).unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn writes_lost_with_a_dead_writer_thread_are_reported_failed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut w = Writer::start(store, Counter::default()).unwrap();
        let release = w.hold();
        if let Some(tx) = w.tx.as_ref() {
            tx.send(Job::Panic).unwrap();
        }
        let a = w.submit(vec![op(1, b"a")]);
        let b = w.submit(vec![op(2, b"b")]);
        drop(release);
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !w.shared.gone.load(Ordering::Acquire) {
                w.progressed().await;
            }
        })
        .await
        .unwrap();
        let (done, failed) = w.progress();
        assert_eq!(done, b, "nothing waits for a dead thread");
        let seqs: Vec<u64> = failed.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(seqs, vec![a, b], "both queued writes are reported failed");
        // And every later write fails at once.
        let c = w.submit(vec![op(3, b"c")]);
        let (done, failed) = w.progress();
        assert_eq!((done, failed.len()), (c, 1));
    }

    #[test]
    fn held_actions_leave_in_order_once_their_writes_are_done() {
        let mut h = Held::default();
        h.push("before any write", 0, 1..1);
        h.push("after write 1", 1, 1..2);
        h.push("no write of its own, but behind write 1", 1, 3..3);
        h.push("after write 3", 3, 2..4);
        assert_eq!(h.pop_ready(0), Some(("before any write", false)));
        assert_eq!(h.pop_ready(0), None, "write 1 is not done");
        assert_eq!(h.pop_ready(1), Some(("after write 1", false)));
        assert_eq!(h.pop_ready(1), Some(("no write of its own, but behind write 1", false)));
        assert_eq!(h.pop_ready(2), None);
        h.fail(3);
        assert_eq!(h.pop_ready(3), Some(("after write 3", true)), "its batch's write 3 failed");
        assert_eq!(h.len(), 0);
        assert!(h.failed.is_empty(), "nobody waits on the failure any more");
    }

    #[test]
    fn a_failed_write_taints_only_its_own_batch() {
        let mut h = Held::default();
        h.push("batch A reply", 1, 1..2);
        h.push("batch B reply", 2, 2..3);
        h.fail(1);
        assert_eq!(h.pop_ready(2), Some(("batch A reply", true)));
        assert_eq!(h.pop_ready(2), Some(("batch B reply", false)));
    }
}
