//! The node's embedded transactional store (redb) in the data dir.
//!
//! Requester tasks and worker jobs are written here before the node acknowledges anything
//! about them, so a node killed at any point restarts knowing every task it accepted.
//! Values are CBOR; a record that no longer decodes is reported and skipped on load, never a
//! reason to refuse to start.

use std::path::Path;

use fleetmesh_crypto::TaskId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;

/// A table of CBOR values keyed by task id.
#[derive(Clone, Copy)]
pub(crate) struct Table(TableDefinition<'static, &'static [u8], &'static [u8]>);

/// Tasks this node requested.
pub(crate) const REQUESTS: Table = Table(TableDefinition::new("requests"));
/// Inputs of tasks this node requested.
pub(crate) const REQUEST_INPUTS: Table = Table(TableDefinition::new("request_inputs"));
/// Tasks this node was awarded.
pub(crate) const JOBS: Table = Table(TableDefinition::new("jobs"));
/// Inputs of tasks this node was awarded.
pub(crate) const JOB_INPUTS: Table = Table(TableDefinition::new("job_inputs"));
/// The requester's reputation ledger: one record per worker, keyed by its public key.
pub(crate) const REPUTATION: Table = Table(TableDefinition::new("reputation"));
/// The owner's ledger: totals by day, kept when the jobs behind them leave the store.
pub(crate) const LEDGER: Table = Table(TableDefinition::new("ledger"));

/// The store table behind an engine table.
pub(crate) fn table_of(t: fleetmesh_engine::Table) -> Table {
    use fleetmesh_engine::Table as T;
    match t {
        T::Requests => REQUESTS,
        T::RequestInputs => REQUEST_INPUTS,
        T::Jobs => JOBS,
        T::JobInputs => JOB_INPUTS,
        T::Reputation => REPUTATION,
        T::Ledger => LEDGER,
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb failed (I/O, corruption, or another process holds the file).
    #[error("store: {0}")]
    Db(String),
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into().to_string())
}

/// The records that decoded, and the keys of those that did not.
pub(crate) type Loaded<T> = (Vec<(TaskId, T)>, Vec<TaskId>);

/// The open store.
pub(crate) struct Store {
    db: Database,
    #[cfg(test)]
    fail_keys: std::sync::Mutex<std::collections::HashSet<TaskId>>,
}

impl Store {
    /// Opens (or creates) `dir/fleetmesh.redb`.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Db(format!("{}: {e}", dir.display())))?;
        let path = dir.join("fleetmesh.redb");
        let db = Database::create(&path).map_err(|e| {
            StoreError::Db(format!(
                "{}: {e} (is another fleetmesh node using this data dir?)",
                path.display()
            ))
        })?;
        let txn = db.begin_write().map_err(db_err)?;
        for t in [REQUESTS, REQUEST_INPUTS, JOBS, JOB_INPUTS, REPUTATION, LEDGER] {
            txn.open_table(t.0).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Self {
            db,
            #[cfg(test)]
            fail_keys: Default::default(),
        })
    }

    /// Writes several values in one durable transaction.
    #[cfg(test)]
    pub(crate) fn put_many(&self, items: &[(Table, &TaskId, &[u8])]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        for (table, key, value) in items {
            let mut t = txn.open_table(table.0).map_err(db_err)?;
            t.insert(key.as_bytes().as_slice(), *value).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Performs engine transactions (inserts and deletes), in order, as one durable
    /// transaction: all of them or none.
    pub(crate) fn apply_all(&self, batches: &[&[fleetmesh_engine::StoreOp]]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        for op in batches.iter().flat_map(|b| b.iter()) {
            #[cfg(test)]
            if self.fail_keys.lock().unwrap().contains(&op.key) {
                return Err(StoreError::Db("(test) this key fails".into()));
            }
            let mut t = txn.open_table(table_of(op.table).0).map_err(db_err)?;
            match &op.value {
                Some(v) => {
                    t.insert(op.key.as_bytes().as_slice(), v.as_slice()).map_err(db_err)?;
                }
                None => {
                    t.remove(op.key.as_bytes().as_slice()).map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)
    }

    /// (tests) Every transaction that writes `key` fails from now on.
    #[cfg(test)]
    pub(crate) fn fail_key(&self, key: TaskId) {
        self.fail_keys.lock().unwrap().insert(key);
    }

    /// Writes one CBOR value durably.
    #[cfg(test)]
    pub(crate) fn put<T: serde::Serialize>(
        &self,
        table: Table,
        key: &TaskId,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = fleetmesh_protocol::encode(value);
        self.put_many(&[(table, key, &bytes)])
    }

    /// Reads raw bytes.
    pub(crate) fn get_raw(&self, table: Table, key: &TaskId) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(table.0).map_err(db_err)?;
        Ok(t.get(key.as_bytes().as_slice()).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    /// Deletes finished tasks and jobs (with their inputs) that finished before `cutoff_ms`;
    /// returns how many records went. Unfinished ones are never touched.
    pub(crate) fn sweep_finished(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        use fleetmesh_engine::{Job, ReqTask, StoreOp, Table as T};
        let mut ops = Vec::new();
        let (reqs, _) = self.load_all::<ReqTask>(REQUESTS)?;
        for (id, t) in reqs {
            if t.phase.is_terminal() && t.times.finished_ms < cutoff_ms {
                ops.push(StoreOp { table: T::Requests, key: id, value: None });
                ops.push(StoreOp { table: T::RequestInputs, key: id, value: None });
            }
        }
        let (jobs, _) = self.load_all::<Job>(JOBS)?;
        for (id, j) in jobs {
            if j.is_finished() && j.result_deadline_ms < cutoff_ms {
                ops.push(StoreOp { table: T::Jobs, key: id, value: None });
                ops.push(StoreOp { table: T::JobInputs, key: id, value: None });
            }
        }
        let n = ops.len() / 2;
        if !ops.is_empty() {
            self.apply_all(&[&ops])?;
        }
        Ok(n)
    }

    /// Every value in a table that decodes; the ones that do not are returned by key.
    pub(crate) fn load_all<T: DeserializeOwned>(&self, table: Table) -> Result<Loaded<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(table.0).map_err(db_err)?;
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for entry in t.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let Ok(key) = <[u8; 32]>::try_from(k.value()) else { continue };
            let key = TaskId::from_bytes(key);
            match fleetmesh_protocol::decode::<T>(v.value(), usize::MAX) {
                Ok(val) => ok.push((key, val)),
                Err(_) => bad.push(key),
            }
        }
        Ok((ok, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId::of(b"t");
        {
            let s = Store::open(dir.path()).unwrap();
            s.put(JOBS, &id, &vec![1u32, 2, 3]).unwrap();
            s.put_many(&[(JOB_INPUTS, &id, b"input")]).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let (all, bad) = s.load_all::<Vec<u32>>(JOBS).unwrap();
        assert_eq!(all, vec![(id, vec![1, 2, 3])]);
        assert!(bad.is_empty());
        assert_eq!(s.get_raw(JOB_INPUTS, &id).unwrap().unwrap(), b"input");
    }

    #[test]
    fn the_retention_sweep_deletes_only_old_finished_records() {
        use fleetmesh_engine::{Action, Engine, EngineConfig, Input, StoreOp, SubmitRequest};
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = std::sync::Arc::new(fleetmesh_crypto::Identity::from_secret_bytes(&[5; 32]));
        let model = fleetmesh_crypto::ModelId::of(b"m");
        let config = EngineConfig { default_model: Some(model), ..EngineConfig::default() };
        let mut e = Engine::new(id, config, Default::default(), 1_000);
        // Two tasks; one fails at its deadline (finished at 10 s), one is still open.
        let mut persisted: Vec<StoreOp> = Vec::new();
        for (n, deadline) in [(1u8, 5_000u64), (2, 10_000_000)] {
            let request = SubmitRequest {
                input: vec![n; 4],
                deadline_ms: Some(deadline),
                bid_window_ms: Some(10),
                exec_timeout_ms: Some(10),
                ..SubmitRequest::default()
            };
            for a in e.handle(1_000, Input::Submit { call: 1, request, nonce: u64::from(n) }) {
                if let Action::Persist(ops) = a {
                    persisted.extend(ops);
                }
            }
        }
        for a in e.handle(10_000, Input::Tick) {
            if let Action::Persist(ops) = a {
                persisted.extend(ops);
            }
        }
        s.apply_all(&[&persisted]).unwrap();
        let (all, _) = s.load_all::<fleetmesh_engine::ReqTask>(REQUESTS).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(s.sweep_finished(9_000).unwrap(), 0, "nothing finished before 9 s");
        assert_eq!(s.sweep_finished(20_000).unwrap(), 1, "the failed task goes");
        let (left, _) = s.load_all::<fleetmesh_engine::ReqTask>(REQUESTS).unwrap();
        assert_eq!(left.len(), 1);
        assert!(!left[0].1.phase.is_terminal(), "the open task stays");
    }

    #[test]
    fn undecodable_records_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (good, broken) = (TaskId::of(b"a"), TaskId::of(b"b"));
        s.put(JOBS, &good, &7u32).unwrap();
        s.put_many(&[(JOBS, &broken, &[0xff, 0x00])]).unwrap();
        let (all, bad) = s.load_all::<u32>(JOBS).unwrap();
        assert_eq!(all, vec![(good, 7)]);
        assert_eq!(bad, vec![broken]);
    }
}
