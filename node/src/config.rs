//! Node configuration: defaults that work on a laptop, a TOML file, env and flag overrides.
//!
//! Every field has a default (`#[serde(default)]`), so a config file names only what it
//! changes. Durations are milliseconds so a TOML file needs no special syntax.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use fleetmesh_engine::reputation::TrustConfig;
pub use fleetmesh_engine::vehicle::{OwnerPolicy, ProfileStep};
pub use fleetmesh_engine::TaskDefaults;

/// `api_addr` in TOML: an `ip:port`, or `"off"`.
fn api_addr_or_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("api_addr {s:?}: {e} (expected ip:port or \"off\")")))
}

fn api_addr_to_str<S: serde::Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.collect_str(a),
        None => s.serialize_str("off"),
    }
}

/// Everything a node needs to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the key, the store and the model cache live.
    pub data_dir: PathBuf,
    /// Multiaddrs to listen on (TCP and QUIC by default, all interfaces, random ports).
    pub listen: Vec<String>,
    /// Multiaddrs of bootstrap peers, ending in `/p2p/<peer id>`; `/dns4/...` works.
    pub bootstrap: Vec<String>,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// Where the local HTTP API listens (`"127.0.0.1:7070"`); `"off"` (or `None`) turns it
    /// off. Loopback by default.
    #[serde(deserialize_with = "api_addr_or_off", serialize_with = "api_addr_to_str")]
    pub api_addr: Option<SocketAddr>,
    /// Tasks this node runs at once (each runs single-threaded).
    pub slots: u32,
    /// Tasks this node queues beyond its running ones before it stops bidding.
    pub max_queue: u32,
    /// Unfinished jobs this node accepts from any one requester, so one requester cannot
    /// take every slot and queue place.
    pub max_jobs_per_requester: u32,
    /// The most inputs of one batch task this node runs (a batch takes one slot and runs its
    /// inputs one after another, stopping at the result deadline); 0 takes no batches. At
    /// most 256.
    pub max_batch: u16,
    /// The lowest price this node bids (per input of a batch).
    pub price_floor: u64,
    /// A file holding this node's operator certificate (`fleetmesh certify` writes it),
    /// shown in its adverts so requesters know which fleet it belongs to. Checked at start:
    /// it must name this node's key and be valid. Read once: restart to renew it.
    pub operator_cert: Option<PathBuf>,
    /// Whether this node bids on other nodes' tasks at all.
    pub serve: bool,
    /// Where the vehicle's state comes from (`[vehicle]`; by default none: a desktop or
    /// depot server, always available on mains).
    pub vehicle: VehicleConfig,
    /// What the vehicle's owner allows (`[owner]`): serve only while parked, a battery
    /// floor unless charging, a thermal limit, a power budget, hours (docs/VEHICLES.md).
    pub owner: OwnerPolicy,
    /// Defaults for tasks this node submits.
    pub tasks: TaskDefaults,
    /// Reputation: whom this node trusts with its tasks (docs/MARKET.md).
    pub trust: TrustConfig,
    /// How often the presence advert is gossiped, ms.
    pub presence_interval_ms: u64,
    /// How often the node looks in the DHT for open tasks it missed, ms.
    pub dht_scan_interval_ms: u64,
    /// How long an idle connection is kept, ms.
    pub idle_connection_timeout_ms: u64,
    /// Below this much free space on the data disk the node takes no new work (submits,
    /// bids, awards) until space is freed; bytes.
    pub min_free_disk_bytes: u64,
    /// Finished tasks and jobs are deleted from the store this many days after they
    /// finished; 0 keeps them forever.
    pub retention_days: u32,
    /// New connections are refused while the node's process uses more memory than this.
    pub max_memory_bytes: usize,
    /// Established connections accepted from one IP address (loopback is exempt). Vehicles
    /// behind one carrier NAT share an address, so this is not 1.
    pub max_connections_per_ip: usize,
    /// Finished tasks (requested and served) kept in memory; older ones are read from the
    /// store on demand, so memory stays bounded however long the node runs.
    pub max_finished_in_memory: usize,
    /// Write a gossip trace (go-libp2p-pubsub JSON tracer format) here, and the signed task
    /// timeline beside it (see `docs/TRACES.md`). Off when absent.
    pub trace: Option<PathBuf>,
    /// Misbehaviour for integration tests; absent from release builds.
    #[cfg(feature = "test-hooks")]
    #[serde(skip)]
    pub misbehave: Option<fleetmesh_engine::hooks::Misbehave>,
    /// (tests) Ignore task announcements, so only the DHT scan can find tasks.
    #[cfg(feature = "test-hooks")]
    #[serde(skip)]
    pub ignore_task_gossip: bool,
    /// (tests) Sleep this long before each inference.
    #[cfg(feature = "test-hooks")]
    #[serde(skip)]
    pub exec_delay_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("fleetmesh-data"),
            listen: vec!["/ip4/0.0.0.0/tcp/0".into(), "/ip4/0.0.0.0/udp/0/quic-v1".into()],
            bootstrap: Vec::new(),
            mdns: true,
            api_addr: Some(SocketAddr::from(([127, 0, 0, 1], 7070))),
            slots: 2,
            max_queue: 64,
            max_jobs_per_requester: 32,
            max_batch: fleetmesh_protocol::batch::MAX_BATCH,
            price_floor: 1,
            operator_cert: None,
            serve: true,
            vehicle: VehicleConfig::default(),
            owner: OwnerPolicy::default(),
            tasks: TaskDefaults::default(),
            trust: TrustConfig::default(),
            presence_interval_ms: 5_000,
            dht_scan_interval_ms: 5_000,
            idle_connection_timeout_ms: 120_000,
            max_finished_in_memory: 1024,
            max_memory_bytes: 1 << 30,
            min_free_disk_bytes: 512 << 20,
            retention_days: 7,
            max_connections_per_ip: 16,
            trace: None,
            #[cfg(feature = "test-hooks")]
            misbehave: None,
            #[cfg(feature = "test-hooks")]
            ignore_task_gossip: false,
            #[cfg(feature = "test-hooks")]
            exec_delay_ms: 0,
        }
    }
}

impl NodeConfig {
    /// Reads a TOML file; missing fields keep their defaults, unknown fields are an error.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
    }

    /// Checks values that would make the node misbehave, with a message saying what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.slots == 0 && self.serve {
            return bad("slots must be at least 1 when serve = true");
        }
        let t = &self.tasks;
        if t.redundancy == 0 || t.redundancy > fleetmesh_protocol::limits::MAX_REDUNDANCY {
            return bad("tasks.redundancy must be between 1 and 7");
        }
        if t.bid_window_ms < 10 || t.exec_timeout_ms < 10 {
            return bad("tasks.bid_window_ms and tasks.exec_timeout_ms must be at least 10");
        }
        if t.deadline_ms < u64::from(t.bid_window_ms) + u64::from(t.exec_timeout_ms) {
            return bad("tasks.deadline_ms must leave room for one bid window plus one execution");
        }
        if t.max_rounds == 0 {
            return bad("tasks.max_rounds must be at least 1");
        }
        if self.trust.trust_after == 0 {
            return bad("trust.trust_after must be at least 1 (a worker needs some corroborated work)");
        }
        if self.trust.spot_check_ppm > 1_000_000 {
            return bad("trust.spot_check_ppm must be at most 1000000 (every task)");
        }
        self.owner.check().map_err(ConfigError::Invalid)?;
        self.vehicle.check().map_err(ConfigError::Invalid)?;
        let operators = self.trust.operator_keys().map_err(ConfigError::Invalid)?;
        if self.trust.closed && operators.is_empty() {
            return bad(
                "trust.closed needs trust.operators: the operators whose vehicles may work for this node",
            );
        }
        Ok(())
    }
}

/// Where a vehicle's state comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VehicleSource {
    /// None: a desktop or a depot server, parked on mains for good.
    #[default]
    None,
    /// A JSON file a vehicle integration writes (`state_file`), read every `poll_ms`.
    File,
    /// The local API: the integration sends `PUT /v1/vehicle`. Until it first does, the
    /// state is unknown and the node takes no work.
    Api,
    /// A simulated day (`profile`), repeating from the node's start: tests and the testnet.
    Profile,
}

/// The `[vehicle]` section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VehicleConfig {
    /// Where the state comes from.
    pub source: VehicleSource,
    /// With `source = "file"`: the JSON file (`{"parked": true, "charging": false,
    /// "soc_pct": 64, "thermal_headroom_c": 20, "departure_ms": 1764950400000}`; every field
    /// may be left out). A file that is missing, unreadable or invalid stops the node
    /// taking work until it is fixed, and `health` says why.
    pub state_file: Option<PathBuf>,
    /// How often the file (or the profile) is read, ms.
    pub poll_ms: u64,
    /// With `source = "file"` or `"api"`: a state older than this (the file's modification
    /// time, the last PUT) counts as unknown, so a dead integration does not leave a parked
    /// vehicle serving after it drove off; 0 never expires.
    pub stale_after_ms: u64,
    /// With `source = "profile"`: the steps of a simulated day, in order, repeating
    /// (`[[vehicle.profile]]` tables: `secs`, `parked`, `charging`, `soc_pct`,
    /// `thermal_headroom_c`).
    pub profile: Vec<ProfileStep>,
}

impl Default for VehicleConfig {
    fn default() -> Self {
        Self {
            source: VehicleSource::None,
            state_file: None,
            poll_ms: 1_000,
            stale_after_ms: 0,
            profile: Vec::new(),
        }
    }
}

impl VehicleConfig {
    /// Checks that the source has what it needs.
    pub fn check(&self) -> Result<(), String> {
        if self.poll_ms < 100 {
            return Err("vehicle.poll_ms must be at least 100".into());
        }
        match self.source {
            VehicleSource::File if self.state_file.is_none() => {
                Err("vehicle.source = \"file\" needs vehicle.state_file".into())
            }
            VehicleSource::Profile => {
                fleetmesh_engine::vehicle::Profile { steps: self.profile.clone() }.check()
            }
            _ if self.state_file.is_some() && self.source != VehicleSource::File => {
                Err("vehicle.state_file is set but vehicle.source is not \"file\"".into())
            }
            _ if !self.profile.is_empty() && self.source != VehicleSource::Profile => {
                Err("vehicle.profile is set but vehicle.source is not \"profile\"".into())
            }
            _ => Ok(()),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a node config.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_toml_keeps_defaults() {
        let c: NodeConfig = toml::from_str("slots = 4\n[tasks]\nredundancy = 2\n").unwrap();
        assert_eq!(c.slots, 4);
        assert_eq!(c.tasks.redundancy, 2);
        assert_eq!(c.tasks.bid_window_ms, TaskDefaults::default().bid_window_ms);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        assert!(toml::from_str::<NodeConfig>("slotz = 4").is_err());
        let mut c = NodeConfig::default();
        c.tasks.redundancy = 0;
        assert!(c.validate().unwrap_err().to_string().contains("redundancy"));
    }

    #[test]
    fn vehicle_and_owner_sections_parse_and_are_checked() {
        let c: NodeConfig = toml::from_str(
            "[vehicle]\nsource = \"profile\"\n[[vehicle.profile]]\nsecs = 60\ncharging = true\n\
             [[vehicle.profile]]\nsecs = 30\nparked = false\n[owner]\nmin_soc_pct = 20\n\
             hours = \"22:00-07:00\"\npower_budget_w = 150\n",
        )
        .unwrap();
        assert_eq!(c.vehicle.source, VehicleSource::Profile);
        assert_eq!(c.vehicle.profile.len(), 2);
        assert!(c.vehicle.profile[0].parked, "parked unless said");
        assert_eq!(c.owner.min_soc_pct, 20.0);
        assert!(c.validate().is_ok());
        let file: NodeConfig = toml::from_str("[vehicle]\nsource = \"file\"\n").unwrap();
        assert!(file.validate().unwrap_err().to_string().contains("state_file"));
        let bad: NodeConfig = toml::from_str("[owner]\nmin_soc_pct = 120\n").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("min_soc_pct"));
        assert!(toml::from_str::<NodeConfig>("[owner]\nhours = \"9-5\"\n").is_err());
        assert!(toml::from_str::<NodeConfig>("[vehicle]\nsource = \"car\"\n").is_err());
        assert_eq!(NodeConfig::default().vehicle.source, VehicleSource::None);
    }

    #[test]
    fn api_is_loopback_by_default() {
        assert!(NodeConfig::default().api_addr.unwrap().ip().is_loopback());
        let off: NodeConfig = toml::from_str("api_addr = \"off\"").unwrap();
        assert_eq!(off.api_addr, None);
        let on: NodeConfig = toml::from_str("api_addr = \"127.0.0.1:7071\"").unwrap();
        assert_eq!(on.api_addr.unwrap().port(), 7071);
        let bad = toml::from_str::<NodeConfig>("api_addr = \"nowhere\"").unwrap_err().to_string();
        assert!(bad.contains("expected ip:port or \"off\""), "{bad}");
    }
}
