//! What the node lets into its DHT: a write budget per peer, task specs kept no longer than
//! their task lives, and only dialable addresses from a peer's own claims (identify).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::kad::{ProviderRecord, Record, RecordKey};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Records (and provider records) one peer may store here per minute: a busy requester puts
/// one spec per task and its open-tasks record every 2 s at most.
pub(crate) const PUTS_PER_MINUTE: u32 = 256;
/// Peers whose budget is tracked at once; beyond it the oldest windows are dropped.
const MAX_TRACKED: usize = 4096;
/// Addresses taken from one identify message.
pub(crate) const MAX_ADDRS_PER_PEER: usize = 8;

/// A per-peer budget of DHT writes in a one-minute window, so no peer fills the store.
#[derive(Default)]
pub(crate) struct PutBudget {
    windows: HashMap<PeerId, (tokio::time::Instant, u32)>,
}

impl PutBudget {
    /// Counts one write by `peer`; false once it spent its budget for this minute.
    pub(crate) fn allow(&mut self, peer: PeerId, now: tokio::time::Instant) -> bool {
        if self.windows.len() >= MAX_TRACKED && !self.windows.contains_key(&peer) {
            self.windows.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let w = self.windows.entry(peer).or_insert((now, 0));
        if now.duration_since(w.0) >= Duration::from_secs(60) {
            *w = (now, 0);
        }
        w.1 = w.1.saturating_add(1);
        w.1 <= PUTS_PER_MINUTE
    }
}

/// For a task spec record: how long until its task's deadline (at least a minute, so a
/// record put just before the deadline is still readable).
pub(crate) fn spec_expiry(key: &[u8], value: &[u8], now_ms: u64) -> Option<Duration> {
    use fleetmesh_protocol::Signed;
    match fleetmesh_protocol::ids::RecordKey::parse(key)? {
        fleetmesh_protocol::ids::RecordKey::Task(_) => {
            let (_, spec) =
                fleetmesh_protocol::TaskSpec::open_bytes(value, fleetmesh_protocol::limits::MAX_RECORD_BYTES)
                    .ok()?;
            Some(Duration::from_millis(spec.deadline_ms.saturating_sub(now_ms).max(60_000)))
        }
        _ => None,
    }
}

fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(a) => Some(a.into()),
        Protocol::Ip6(a) => Some(a.into()),
        _ => None,
    })
}

/// Whether an address is on loopback.
pub(crate) fn is_loopback(addr: &Multiaddr) -> bool {
    ip_of(addr).is_some_and(|ip| ip.is_loopback())
}

/// The addresses from a peer's identify message worth dialling: no unspecified or multicast
/// addresses, loopback only when this node itself listens on loopback (an in-process mesh),
/// and at most [`MAX_ADDRS_PER_PEER`]. DNS names pass (the testnet uses them).
pub(crate) fn routable(addrs: Vec<Multiaddr>, local_loopback: bool) -> Vec<Multiaddr> {
    addrs
        .into_iter()
        .filter(|a| match ip_of(a) {
            Some(ip) if ip.is_unspecified() || ip.is_multicast() => false,
            Some(ip) if ip.is_loopback() => local_loopback,
            _ => true,
        })
        .take(MAX_ADDRS_PER_PEER)
        .collect()
}

/// Provider keys kept for this node's own (the models it provides open tasks for).
const RESERVED_PROVIDER_KEYS: usize = 256;

/// The DHT record store: libp2p's memory store, with room kept for this node's own records.
///
/// Other peers' records are capped at `max_foreign`; this node's own (its task specs and
/// open-tasks records, published by it) may use the rest. Without the reserve, peers with
/// many keys could fill the store with valid records, and every later `put_record` of the
/// node's own would fail locally before reaching the network.
pub(crate) struct Store {
    local: PeerId,
    inner: MemoryStore,
    foreign: usize,
    max_foreign: usize,
    /// Provider keys other peers' records created; at most `max_foreign_keys` of them (the
    /// rest of the inner store's keys stay for this node's own).
    provider_keys: std::collections::HashSet<RecordKey>,
    max_foreign_keys: usize,
}

impl Store {
    /// `max_records` in all, of which `reserved` only for this node's own.
    pub(crate) fn new(local: PeerId, mut config: MemoryStoreConfig, reserved: usize) -> Self {
        let max_foreign = config.max_records;
        config.max_records = config.max_records.saturating_add(reserved);
        let max_foreign_keys = config.max_provided_keys;
        config.max_provided_keys = config.max_provided_keys.saturating_add(RESERVED_PROVIDER_KEYS);
        Self {
            local,
            inner: MemoryStore::with_config(local, config),
            foreign: 0,
            max_foreign,
            provider_keys: std::collections::HashSet::new(),
            max_foreign_keys,
        }
    }

    fn is_foreign(&self, r: &Record) -> bool {
        r.publisher != Some(self.local)
    }
}

impl RecordStore for Store {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.inner.get(k)
    }

    fn put(&mut self, r: Record) -> libp2p::kad::store::Result<()> {
        let was_foreign = self.inner.get(&r.key).map(|old| self.is_foreign(&old));
        let foreign = self.is_foreign(&r);
        if foreign && was_foreign != Some(true) && self.foreign >= self.max_foreign {
            return Err(libp2p::kad::store::Error::MaxRecords);
        }
        self.inner.put(r)?;
        match (was_foreign, foreign) {
            (Some(true), false) => self.foreign = self.foreign.saturating_sub(1),
            (Some(false) | None, true) => self.foreign = self.foreign.saturating_add(1),
            _ => {}
        }
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        if self.inner.get(k).is_some_and(|old| self.is_foreign(&old)) {
            self.foreign = self.foreign.saturating_sub(1);
        }
        self.inner.remove(k);
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.inner.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> libp2p::kad::store::Result<()> {
        // Keys that other peers' records created count against their cap; keys this node
        // provides itself do not.
        let foreign = record.provider != self.local;
        let new_key = self.inner.providers(&record.key).is_empty();
        if foreign && new_key && self.provider_keys.len() >= self.max_foreign_keys {
            return Err(libp2p::kad::store::Error::MaxProvidedKeys);
        }
        let key = record.key.clone();
        self.inner.add_provider(record)?;
        if foreign && new_key {
            self.provider_keys.insert(key);
        }
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.inner.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.inner.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.inner.remove_provider(k, p);
        if self.inner.providers(k).is_empty() {
            self.provider_keys.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_a_budget_of_writes_per_minute() {
        let mut b = PutBudget::default();
        let (p, q) = (PeerId::random(), PeerId::random());
        let t0 = tokio::time::Instant::now();
        for _ in 0..PUTS_PER_MINUTE {
            assert!(b.allow(p, t0));
        }
        assert!(!b.allow(p, t0), "over budget");
        assert!(b.allow(q, t0), "another peer has its own");
        assert!(b.allow(p, t0 + Duration::from_secs(61)), "a new minute, a new budget");
    }

    #[test]
    fn only_dialable_addresses_from_identify_enter_the_routing_table() {
        let a = |s: &str| -> Multiaddr { s.parse().unwrap() };
        let claims = vec![
            a("/ip4/0.0.0.0/tcp/4001"),
            a("/ip4/224.0.0.1/udp/5353"),
            a("/ip4/127.0.0.1/tcp/4001"),
            a("/ip4/192.0.2.7/tcp/4001"),
            a("/dns4/boot1/tcp/4001"),
        ];
        assert_eq!(
            routable(claims.clone(), false),
            vec![a("/ip4/192.0.2.7/tcp/4001"), a("/dns4/boot1/tcp/4001")]
        );
        assert_eq!(routable(claims, true).len(), 3, "loopback kept when we are on loopback too");
        let many: Vec<Multiaddr> = (0..50).map(|i| a(&format!("/ip4/192.0.2.7/tcp/{}", 1000 + i))).collect();
        assert_eq!(routable(many, false).len(), MAX_ADDRS_PER_PEER);
    }

    #[test]
    fn a_spec_record_lives_until_its_deadline() {
        use fleetmesh_protocol::Signed;
        let id = fleetmesh_crypto::Identity::from_secret_bytes(&[3; 32]);
        let spec = fleetmesh_protocol::TaskSpec {
            v: 1,
            model: fleetmesh_crypto::ModelId::of(b"m"),
            input_digest: fleetmesh_crypto::InputDigest::of(b"i"),
            input_size: 1,
            redundancy: 1,
            max_price: 1,
            created_ms: 0,
            bid_window_ms: 10,
            exec_timeout_ms: 10,
            deadline_ms: 1_000_000,
            nonce: 0,
            batch: None,
            tolerance: None,
        }
        .sign(&id);
        let key = fleetmesh_protocol::ids::task_record_key(&fleetmesh_protocol::task_id_of(&spec));
        let value = fleetmesh_protocol::encode(&spec);
        assert_eq!(spec_expiry(&key, &value, 400_000), Some(Duration::from_millis(600_000)));
        assert_eq!(spec_expiry(&key, &value, 999_999), Some(Duration::from_secs(60)));
        assert_eq!(spec_expiry(b"other", &value, 0), None);
    }

    #[test]
    fn peers_cannot_fill_the_room_kept_for_our_own_records() {
        let local = PeerId::random();
        let config = MemoryStoreConfig { max_records: 4, ..MemoryStoreConfig::default() };
        let mut store = Store::new(local, config, 2);
        let record = |i: u8, publisher: PeerId| {
            let mut r = Record::new(vec![i], vec![i]);
            r.publisher = Some(publisher);
            r
        };
        for i in 0..4 {
            store.put(record(i, PeerId::random())).unwrap();
        }
        assert!(store.put(record(9, PeerId::random())).is_err(), "foreign records are capped");
        // Replacing a foreign record is no new one.
        store.put(record(0, PeerId::random())).unwrap();
        store.put(record(10, local)).unwrap();
        store.put(record(11, local)).unwrap();
        assert!(store.put(record(12, local)).is_err(), "the store as a whole is bounded");
        // A removed foreign record frees a foreign place.
        store.remove(&RecordKey::new(&vec![1u8]));
        store.put(record(13, PeerId::random())).unwrap();
    }

    #[test]
    fn peers_cannot_take_every_provider_key() {
        let local = PeerId::random();
        let config = MemoryStoreConfig { max_provided_keys: 3, ..MemoryStoreConfig::default() };
        let mut store = Store::new(local, config, 0);
        let provider =
            |key: u8, who: PeerId| ProviderRecord::new(RecordKey::new(&vec![key]), who, Vec::new());
        for k in 0..3 {
            store.add_provider(provider(k, PeerId::random())).unwrap();
        }
        assert!(store.add_provider(provider(9, PeerId::random())).is_err(), "peers' keys are capped");
        store.add_provider(provider(0, PeerId::random())).unwrap();
        store.add_provider(provider(10, local)).unwrap();
        // When a key's last provider goes, its place is free again.
        let only = store.providers(&RecordKey::new(&vec![1u8]));
        store.remove_provider(&RecordKey::new(&vec![1u8]), &only[0].provider);
        store.add_provider(provider(11, PeerId::random())).unwrap();
    }
}
