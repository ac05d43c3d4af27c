//! The node's own counters, registered beside libp2p's in one Prometheus registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters owned by the event loop; each field's doc is its help text.
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) tasks_submitted: Counter,
    pub(crate) tasks_verified: Counter,
    pub(crate) tasks_failed: Counter,
    pub(crate) bids_received: Counter,
    pub(crate) bids_sent: Counter,
    pub(crate) bids_declined: Counter,
    pub(crate) results_received: Counter,
    pub(crate) results_rejected: Counter,
    pub(crate) disagreements: Counter,
    pub(crate) reawards: Counter,
    pub(crate) jobs_executed: Counter,
    pub(crate) malformed_requests: Counter,
    pub(crate) large_requests_refused: Counter,
    pub(crate) records_refused: Counter,
    pub(crate) gossip_rejected: Counter,
    pub(crate) peers_graylisted: Counter,
    pub(crate) peers_other_version: Counter,
    pub(crate) gossip_received: Counter,
    pub(crate) requests_received: Counter,
    pub(crate) responses_received: Counter,
    pub(crate) store_writes: Counter,
    pub(crate) store_commits: Counter,
    pub(crate) own_checks: Counter,
    pub(crate) spot_checks: Counter,
    pub(crate) workers_distrusted: Counter,
    pub(crate) tasks_awarded_on_offers: Counter,
    pub(crate) jobs_released: Counter,
    pub(crate) tasks_released: Counter,
    /// The vehicle: 1 while it takes work.
    pub(crate) vehicle_serving: Gauge,
    /// The vehicle: running slots its owner's power budget allows.
    pub(crate) vehicle_slots: Gauge,
    /// The vehicle: 1 for each reason it takes no new work now, by reason.
    pub(crate) vehicle_refusing: Family<Vec<(String, String)>, Gauge>,
    /// The owner's ledger, all days: tasks served and receipted.
    pub(crate) ledger_tasks: Gauge,
    /// The owner's ledger, all days: credits earned.
    pub(crate) ledger_credits: Gauge,
    /// The owner's ledger, all days: energy spent, millijoules.
    pub(crate) ledger_energy_mj: Gauge,
}

impl Metrics {
    /// Sets the ledger gauges from the owner's ledger's totals.
    pub(crate) fn set_ledger(&self, t: &fleetmesh_engine::ledger::DayTotals) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.ledger_tasks.set(g(t.tasks));
        self.ledger_credits.set(g(t.credits));
        self.ledger_energy_mj.set(g(t.energy_mj));
    }

    /// Sets the vehicle gauges from the engine's availability.
    pub(crate) fn set_vehicle(&self, a: &fleetmesh_engine::vehicle::Availability) {
        self.vehicle_serving.set(i64::from(a.serving()));
        self.vehicle_slots.set(i64::from(a.slots));
        for label in fleetmesh_engine::vehicle::Refusal::LABELS {
            let on = a.refusals.iter().any(|r| r.label() == label);
            self.vehicle_refusing
                .get_or_create(&vec![("reason".to_owned(), label.to_owned())])
                .set(i64::from(on));
        }
    }

    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let entries: [(&str, &str, &Counter); 28] = [
            ("tasks_submitted", "Tasks submitted to this node", &m.tasks_submitted),
            ("tasks_verified", "Tasks this node requested that were verified", &m.tasks_verified),
            ("tasks_failed", "Tasks this node requested that failed", &m.tasks_failed),
            ("bids_received", "Bids received for this node's tasks", &m.bids_received),
            ("bids_sent", "Bids this node sent", &m.bids_sent),
            ("bids_declined", "Declines this node received for its bids", &m.bids_declined),
            ("results_received", "Results received for this node's tasks", &m.results_received),
            ("results_rejected", "Results rejected by this node", &m.results_rejected),
            ("disagreements", "Times workers' outputs disagreed without a quorum", &m.disagreements),
            ("reawards", "Workers replaced after failing, vanishing or being rejected", &m.reawards),
            ("jobs_executed", "Inferences this node ran for others", &m.jobs_executed),
            ("malformed_requests", "Task-protocol requests that did not decode", &m.malformed_requests),
            (
                "large_requests_refused",
                "Awards and results refused unread: the budget for large requests in flight was spent",
                &m.large_requests_refused,
            ),
            ("records_refused", "DHT records refused by validation", &m.records_refused),
            ("gossip_rejected", "Gossip messages rejected by validation", &m.gossip_rejected),
            (
                "peers_graylisted",
                "Peers disconnected for invalid gossip (score below the graylist)",
                &m.peers_graylisted,
            ),
            (
                "peers_other_version",
                "Refusals of peers of another fleetmesh wire version (each identify exchange or request)",
                &m.peers_other_version,
            ),
            (
                "gossip_received",
                "Gossip messages handed to this node for validation (each message once; gossipsub drops copies)",
                &m.gossip_received,
            ),
            ("requests_received", "Task-protocol requests received (bids, awards, results, ...)", &m.requests_received),
            ("responses_received", "Answers received to this node's task-protocol requests", &m.responses_received),
            ("store_writes", "Durable writes the engine asked for", &m.store_writes),
            (
                "store_commits",
                "Store transactions committed (one fsync each; writes queued together share one)",
                &m.store_commits,
            ),
            (
                "own_checks",
                "Own tasks this node ran itself to check its workers (while it trusts none of them)",
                &m.own_checks,
            ),
            (
                "spot_checks",
                "Tasks given to an unknown worker as well, to check or to replicate",
                &m.spot_checks,
            ),
            (
                "workers_distrusted",
                "Workers no longer used: they returned an output against checked evidence",
                &m.workers_distrusted,
            ),
            (
                "tasks_awarded_on_offers",
                "Tasks this node awarded at once on its neighbours' standing offers (no announcement, no bid)",
                &m.tasks_awarded_on_offers,
            ),
            (
                "jobs_released",
                "Awarded jobs this node handed back with a signed release (its vehicle left, or its owner's policy stopped it)",
                &m.jobs_released,
            ),
            (
                "tasks_released",
                "This node's tasks a worker handed back (each awarded again at once)",
                &m.tasks_released,
            ),
        ];
        for (name, help, c) in entries {
            registry.register(name, help, c.clone());
        }
        let gauges: [(&str, &str, &Gauge); 5] = [
            (
                "ledger_tasks",
                "Tasks this node served and got a receipt for (the owner's ledger, all days)",
                &m.ledger_tasks,
            ),
            ("ledger_credits", "Credits this node earned (the owner's ledger, all days)", &m.ledger_credits),
            (
                "ledger_energy_millijoules",
                "Energy serving drew, millijoules (run time times device_power_w; the owner's ledger, all days)",
                &m.ledger_energy_mj,
            ),
            (
                "vehicle_serving",
                "1 while this node takes new work (its vehicle state and owner policy allow it)",
                &m.vehicle_serving,
            ),
            ("vehicle_slots", "Running slots the owner's power budget allows now", &m.vehicle_slots),
        ];
        for (name, help, g) in gauges {
            registry.register(name, help, g.clone());
        }
        registry.register(
            "vehicle_refusing",
            "1 for each reason this node takes no new work now (driving, battery_low, too_hot, outside_hours, power_budget, departure_due, state_unknown)",
            m.vehicle_refusing.clone(),
        );
        registry.register_collector(Box::new(SignatureOps));
        m
    }
}

/// The process's ed25519 operations ([`fleetmesh_crypto::ops`]), read at each scrape. A
/// process normally runs one node; in-process test meshes share the count.
#[derive(Debug)]
struct SignatureOps;

impl prometheus_client::collector::Collector for SignatureOps {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let ops = fleetmesh_crypto::ops::signature_ops();
        for (name, help, value) in [
            ("signatures_made", "ed25519 signatures this process made (its messages)", ops.signed),
            ("signatures_checked", "ed25519 signatures this process checked (peers' messages)", ops.verified),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        Ok(())
    }
}
