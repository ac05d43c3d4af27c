//! DUPLICATE_MESSAGE from gossipsub's own log events.
//!
//! rust-libp2p's gossipsub drops a message it has already seen without telling the
//! application; it only logs `"Message already received, ignoring"` (with `message_id`) at
//! debug level. This `tracing` layer catches that event, as libp2p's own gossipsub interop
//! tests read its log events. The peer the copy came from is not on that event, but the RPC
//! it arrived in was logged just before, on the same call stack (`"Received gossipsub
//! message"`, with `peer`), so the layer remembers that peer per node.
//!
//! Each node's event loop runs inside a `fleetmesh_trace` span whose `trace` field names the
//! node's tracer in a registry; events are routed by their span, so many nodes in one process
//! (tests, `fleetmesh demo`, the bench) each get their own duplicates. With no tracer
//! registered the layer's filter turns every event away after one atomic load, and only
//! gossipsub's behaviour module and the trace span are ever asked about.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use libp2p::PeerId;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::Shared;

/// Target of the per-node span.
pub(crate) const SPAN_TARGET: &str = "fleetmesh_trace";
/// The module that logs gossipsub's message handling.
const GOSSIPSUB_TARGET: &str = "libp2p_gossipsub::behaviour";
const RECEIVED_RPC: &str = "Received gossipsub message";
const DUPLICATE: &str = "Message already received";

static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn registry() -> &'static Mutex<HashMap<u64, Weak<Shared>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<u64, Weak<Shared>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

pub(super) fn register(shared: &Arc<Shared>) -> u64 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut r) = registry().lock() {
        r.insert(id, Arc::downgrade(shared));
        ACTIVE.store(r.len(), Ordering::Relaxed);
    }
    id
}

pub(super) fn unregister(id: u64) {
    if let Ok(mut r) = registry().lock() {
        r.remove(&id);
        ACTIVE.store(r.len(), Ordering::Relaxed);
    }
}

/// The layer to add to the process's `tracing` subscriber so traces include
/// DUPLICATE_MESSAGE events. It filters for itself, so add other layers with their own
/// (per-layer) filters: a global filter that hides gossipsub's debug events hides them from
/// this layer too.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    DuplicateLayer.with_filter(OnlyWhenTracing)
}

struct OnlyWhenTracing;

impl OnlyWhenTracing {
    fn wanted(meta: &Metadata<'_>) -> bool {
        meta.target() == SPAN_TARGET || (meta.target() == GOSSIPSUB_TARGET && *meta.level() <= Level::DEBUG)
    }
}

impl<S> Filter<S> for OnlyWhenTracing {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        ACTIVE.load(Ordering::Relaxed) > 0 && Self::wanted(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if Self::wanted(meta) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::DEBUG)
    }
}

/// The per-node state kept in the node's span.
struct NodeTrace {
    shared: Weak<Shared>,
    last_peer: Option<PeerId>,
}

struct DuplicateLayer;

#[derive(Default)]
struct Fields {
    trace: Option<u64>,
    text: String,
    peer: String,
    message_id: String,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "trace" {
            self.trace = Some(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // The format-string message is the first field; a later field that happens to be
        // called `message` (gossipsub logs the whole RPC under that name) is never formatted.
        match field.name() {
            "message" if field.index() == 0 => {
                let _ = write!(self.text, "{value:?}");
            }
            "peer" => {
                let _ = write!(self.peer, "{value:?}");
            }
            "message_id" => {
                let _ = write!(self.message_id, "{value:?}");
            }
            _ => {}
        }
    }
}

impl<S> Layer<S> for DuplicateLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        if attrs.metadata().target() != SPAN_TARGET {
            return;
        }
        let mut f = Fields::default();
        attrs.record(&mut f);
        let Some(n) = f.trace else { return };
        let Some(shared) = registry().lock().ok().and_then(|r| r.get(&n).cloned()) else { return };
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(NodeTrace { shared, last_peer: None });
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != GOSSIPSUB_TARGET {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else { return };
        for span in scope {
            let mut ext = span.extensions_mut();
            let Some(node) = ext.get_mut::<NodeTrace>() else { continue };
            let mut f = Fields::default();
            event.record(&mut f);
            if f.text.starts_with(RECEIVED_RPC) {
                node.last_peer = f.peer.parse().ok();
            } else if f.text.starts_with(DUPLICATE) {
                if let (Ok(id), Some(shared)) = (hex::decode(&f.message_id), node.shared.upgrade()) {
                    shared.duplicate(id, node.last_peer);
                }
            }
            return;
        }
    }
}
