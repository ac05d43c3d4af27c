//! Gossip traces and task timelines: their formats, verification, analysis and plots.
//!
//! A fleetmesh node started with a trace path writes two files (the live writer is the
//! engine's `tracer` module; this crate only reads and checks them, so researchers' tools
//! need neither libp2p nor the engine):
//!
//! * the **gossip trace** (`<path>`), one JSON object per line in go-libp2p-pubsub's JSON
//!   tracer format ([`gossip`]), so tools and habits built around that tracer work here;
//! * the **task timeline** ([`timeline_path`]), the node's task events as a hash chain with
//!   signed heads ([`timeline`]), so a researcher can prove a trace is complete and untouched.
//!
//! [`analyze`] merges the traces of many nodes into tracestat's figures and the task phases;
//! [`plot`] (feature `plot`, on by default) draws them as SVG. See `docs/TRACES.md`.

pub mod analyze;
pub mod gossip;
#[cfg(feature = "plot")]
pub mod plot;
pub mod timeline;

use std::path::{Path, PathBuf};

pub use timeline::Record as TaskRecord;

/// The topic task announcements travel on.
pub const TASKS_TOPIC: &str = fleetmesh_protocol::ids::TOPIC_TASKS;

/// The task timeline that goes with a gossip trace at `path`: `x.jsonl` gives
/// `x.timeline.jsonl`, any other name gets `.timeline.jsonl` appended.
pub fn timeline_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    path.with_file_name(format!("{stem}.timeline.jsonl"))
}

/// The gossip trace a timeline at `timeline` goes with (the inverse of [`timeline_path`]).
pub fn gossip_path_of(timeline: &Path) -> Option<PathBuf> {
    let name = timeline.file_name()?.to_string_lossy().into_owned();
    let stem = name.strip_suffix(".timeline.jsonl")?;
    let with_ext = timeline.with_file_name(format!("{stem}.jsonl"));
    Some(if with_ext.exists() { with_ext } else { timeline.with_file_name(stem) })
}

/// `path`, or, when it or its timeline exists already (a restarted node), the first of
/// `x-1.jsonl`, `x-2.jsonl`, ... that does not: a trace is never overwritten.
pub fn unused_path(path: &Path) -> PathBuf {
    let free = |p: &Path| !p.exists() && !timeline_path(p).exists();
    if free(path) {
        return path.to_owned();
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (stem, ext) = match name.strip_suffix(".jsonl") {
        Some(stem) => (stem.to_owned(), ".jsonl"),
        None => (name.clone(), ""),
    };
    (1u32..)
        .map(|n| path.with_file_name(format!("{stem}-{n}{ext}")))
        .find(|p| free(p))
        .unwrap_or_else(|| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_sits_beside_the_gossip_trace() {
        assert_eq!(timeline_path(Path::new("/r/node-1.jsonl")), Path::new("/r/node-1.timeline.jsonl"));
        assert_eq!(timeline_path(Path::new("trace")), Path::new("trace.timeline.jsonl"));
        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("v1-1.jsonl");
        std::fs::write(&g, "").unwrap();
        assert_eq!(gossip_path_of(&timeline_path(&g)), Some(g));
        assert_eq!(gossip_path_of(Path::new("/r/trace.timeline.jsonl")), Some(PathBuf::from("/r/trace")));
        assert_eq!(gossip_path_of(Path::new("/r/other.jsonl")), None);
    }

    #[test]
    fn a_restarted_node_never_overwrites_its_trace() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v1.jsonl");
        assert_eq!(unused_path(&p), p);
        std::fs::write(&p, "x").unwrap();
        assert_eq!(unused_path(&p), dir.path().join("v1-1.jsonl"));
        std::fs::write(dir.path().join("v1-1.timeline.jsonl"), "x").unwrap();
        assert_eq!(unused_path(&p), dir.path().join("v1-2.jsonl"));
    }
}
