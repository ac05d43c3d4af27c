//! Trace files a researcher was handed, from arbitrary bytes: each line parsed as a gossip
//! event and as a timeline record, the timeline verified, and everything that parsed run
//! through the analyzer (its percentiles, ratios and histograms). A verdict and figures,
//! never a panic.
#![no_main]

use fleetmesh_trace::analyze::{analyze, Inputs};
use fleetmesh_trace::gossip::TraceEvent;
use fleetmesh_trace::timeline::{verify_lines, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = verify_lines(std::io::Cursor::new(data));
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut inputs = Inputs::default();
    let mut records = Vec::new();
    for line in text.lines() {
        if let Ok(e) = serde_json::from_str::<TraceEvent>(line) {
            inputs.gossip.push(e);
        }
        if let Ok(r) = serde_json::from_str::<Record>(line) {
            records.push(r);
        }
    }
    inputs.timelines.push(("fuzz.timeline.jsonl".into(), records));
    let a = analyze(&inputs, None);
    let _ = a.text();
});
