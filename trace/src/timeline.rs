//! The task timeline: one JSON object per line, hash-chained and periodically signed.
//!
//! Every record carries `prev`, the blake3 hash (hex) of the previous line's exact bytes, and
//! a `seq` that counts up from 0. The first record (`start`) has `prev` = 64 zeros and names
//! the node. At least once a second while records arrive, and when the node shuts down, the
//! node appends a `head` record signed with its key (domain tag `trace-head`) over its
//! sequence number, `prev` and the gossip-trace counters. So:
//!
//! * changing, removing or inserting any line breaks the chain at the next line;
//! * rewriting the chain from there on needs the node's key to sign a new head;
//! * a trace cut short ends without a `final` head, which [`verify_file`] reports;
//! * events the node itself had to drop (its trace buffer was full) are written as a `gap`
//!   record with the count, so even a lossy trace says exactly what it lost.

use std::io::{BufRead, Write};
use std::path::Path;

use fleetmesh_crypto::{Identity, MessageKind, PublicKey, Signature, SignedEnvelope};
use serde::{Deserialize, Serialize};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Event names used in `event`.
pub mod event {
    /// The first record: who the node is.
    pub const START: &str = "start";
    /// A signed chain head.
    pub const HEAD: &str = "head";
    /// Records the node dropped because its trace buffer was full.
    pub const GAP: &str = "gap";
    /// Requester: announced a task (each round).
    pub const ANNOUNCED: &str = "announced";
    /// Requester: a bid arrived and was taken into the round.
    pub const BID_RECEIVED: &str = "bid_received";
    /// Worker: sent a bid.
    pub const BID_SENT: &str = "bid_sent";
    /// Requester: closed a round and awarded `winners`.
    pub const AWARDED: &str = "awarded";
    /// Worker: accepted an award.
    pub const AWARD_ACCEPTED: &str = "award_accepted";
    /// Requester: a bid lost the round, with the reason (recorded only: since wire version 2
    /// losers are sent nothing).
    pub const BID_DECLINED: &str = "bid_declined";
    /// Requester, in traces of wire version 1: told a losing bidder why. Read, not written.
    pub const DECLINE_SENT: &str = "decline_sent";
    /// Worker: the requester refused its bid in the answer, and why.
    pub const DECLINE_RECEIVED: &str = "decline_received";
    /// Worker: inference started.
    pub const STARTED: &str = "started";
    /// Worker: result signed and sent.
    pub const RESULT_SENT: &str = "result_sent";
    /// Requester: a result passed its checks.
    pub const RESULT_RECEIVED: &str = "result_received";
    /// Requester: a result was rejected, with the reason.
    pub const RESULT_REJECTED: &str = "result_rejected";
    /// Requester: the task is verified.
    pub const VERIFIED: &str = "verified";
    /// Requester: the task failed, with the reason.
    pub const FAILED: &str = "failed";
    /// Requester: signed a receipt for a worker.
    pub const RECEIPT_SENT: &str = "receipt_sent";
    /// Worker: holds the requester's receipt.
    pub const RECEIPT_RECEIVED: &str = "receipt_received";
    /// Worker: the requester rejected this worker's result.
    pub const REJECTED_BY_REQUESTER: &str = "rejected_by_requester";
    /// Worker: handed an awarded task back (a signed release: its vehicle left, or its
    /// owner's policy stopped it serving), `reason`.
    pub const RELEASED: &str = "released";
    /// Requester: a worker handed a task back; another is brought in at once.
    pub const RELEASE_RECEIVED: &str = "release_received";

    /// Every task event, in lifecycle order (for legends and docs).
    pub const ALL_TASK_EVENTS: [&str; 18] = [
        ANNOUNCED,
        BID_SENT,
        BID_RECEIVED,
        AWARDED,
        BID_DECLINED,
        DECLINE_RECEIVED,
        AWARD_ACCEPTED,
        STARTED,
        RELEASED,
        RELEASE_RECEIVED,
        RESULT_SENT,
        RESULT_RECEIVED,
        RESULT_REJECTED,
        REJECTED_BY_REQUESTER,
        VERIFIED,
        FAILED,
        RECEIPT_SENT,
        RECEIPT_RECEIVED,
    ];
}

/// One line of a task timeline. Fields that an event does not use are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// blake3 (hex) of the previous line's bytes; [`GENESIS`] for the first.
    pub prev: String,
    /// When, Unix nanoseconds.
    pub ts: u64,
    /// What happened (see [`event`]); unknown names are kept, not refused.
    pub event: String,
    /// `start`: the node's peer id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The task id (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The bid round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    /// The other side: bidder, worker or requester (peer id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// A bid's or award's price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<u64>,
    /// Why (declines, rejections, failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// An output digest (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `awarded`: the winners (peer ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winners: Option<Vec<String>>,
    /// `awarded`: bids the round was decided on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bids: Option<u32>,
    /// `result_sent`: inference time, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_time_us: Option<u64>,
    /// `gap`: records dropped just before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// `head`: gossip trace events written so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip_written: Option<u64>,
    /// `head`: gossip trace events dropped so far (buffer full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip_dropped: Option<u64>,
    /// `head`: the last head, written at a clean shutdown.
    #[serde(rename = "final", default, skip_serializing_if = "Option::is_none")]
    pub is_final: Option<bool>,
    /// `head`: ed25519 signature (hex) over [`head_payload`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl Record {
    /// A record of `event`; the chain fills in `seq`, `prev` and `ts`.
    pub fn new(event: &str) -> Self {
        Self { event: event.to_owned(), ..Self::default() }
    }

    /// A record of `event` about `task`.
    pub fn about(event: &str, task: &impl std::fmt::Display) -> Self {
        Self { event: event.to_owned(), task: Some(task.to_string()), ..Self::default() }
    }
}

/// The bytes a head signature covers.
pub fn head_payload(node: &str, r: &Record) -> Vec<u8> {
    format!(
        "fleetmesh-trace-head\nnode={node}\nseq={}\nprev={}\ngossip_written={}\ngossip_dropped={}\nfinal={}",
        r.seq,
        r.prev,
        r.gossip_written.unwrap_or(0),
        r.gossip_dropped.unwrap_or(0),
        r.is_final.unwrap_or(false)
    )
    .into_bytes()
}

/// Appends records to a timeline file, keeping the chain.
pub struct ChainWriter<W: Write> {
    out: W,
    node: String,
    seq: u64,
    prev: String,
    unsigned: u64,
}

impl<W: Write> ChainWriter<W> {
    /// Starts a chain with its `start` record.
    pub fn start(out: W, node: String, ts: u64) -> std::io::Result<Self> {
        let mut w = Self { out, node: node.clone(), seq: 0, prev: GENESIS.to_owned(), unsigned: 0 };
        w.append(Record { node: Some(node), ..Record::new(event::START) }, ts)?;
        Ok(w)
    }

    /// Appends one record.
    pub fn append(&mut self, mut r: Record, ts: u64) -> std::io::Result<()> {
        r.seq = self.seq;
        r.prev = std::mem::take(&mut self.prev);
        r.ts = ts;
        let line = serde_json::to_vec(&r).map_err(std::io::Error::other)?;
        self.out.write_all(&line)?;
        self.out.write_all(b"\n")?;
        self.prev = blake3::hash(&line).to_hex().to_string();
        self.seq += 1;
        self.unsigned += 1;
        Ok(())
    }

    /// Records appended since the last head.
    pub fn unsigned(&self) -> u64 {
        self.unsigned
    }

    /// Appends a signed head.
    pub fn head(
        &mut self,
        identity: &Identity,
        gossip_written: u64,
        gossip_dropped: u64,
        is_final: bool,
        ts: u64,
    ) -> std::io::Result<()> {
        let mut r = Record {
            seq: self.seq,
            prev: self.prev.clone(),
            gossip_written: Some(gossip_written),
            gossip_dropped: Some(gossip_dropped),
            is_final: Some(is_final),
            ..Record::new(event::HEAD)
        };
        let env = SignedEnvelope::sign(identity, MessageKind::TraceHead, head_payload(&self.node, &r));
        r.sig = Some(hex::encode(env.signature.to_bytes()));
        self.append(r, ts)?;
        self.unsigned = 0;
        Ok(())
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// What [`verify_file`] found in one timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The node (peer id) from the `start` record.
    pub node: Option<String>,
    /// Records read.
    pub records: u64,
    /// Heads whose signature verified.
    pub signed_heads: u64,
    /// Whether the file ends with a valid `final` head.
    pub complete: bool,
    /// Records after the last valid head (not covered by a signature).
    pub unsigned_tail: u64,
    /// Records the node said it dropped (`gap` records).
    pub dropped_by_node: u64,
    /// The last valid head's gossip counters: (written, dropped).
    pub gossip_counts: Option<(u64, u64)>,
    /// Tampering and damage: each is a reason to distrust the file.
    pub problems: Vec<String>,
}

impl Verdict {
    /// No tampering, no damage, and a final head: the trace is complete and untouched.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.complete
    }
}

/// Why a timeline could not be read at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimelineError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Checks a timeline file: the hash chain, the sequence numbers and every head signature.
pub fn verify_file(path: &Path) -> Result<Verdict, TimelineError> {
    let err = |source| TimelineError::Read { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(err)?;
    verify_lines(std::io::BufReader::new(file)).map_err(err)
}

/// As [`verify_file`] over any reader.
pub fn verify_lines(reader: impl BufRead) -> std::io::Result<Verdict> {
    let mut v = Verdict::default();
    let mut expected_prev = GENESIS.to_owned();
    let mut expected_seq = 0u64;
    let mut key: Option<PublicKey> = None;
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let lineno = i + 1;
        v.records += 1;
        v.unsigned_tail += 1;
        let hash = blake3::hash(&line).to_hex().to_string();
        let r: Record = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                v.problems.push(format!("line {lineno}: not a timeline record ({e})"));
                expected_prev = hash;
                expected_seq += 1;
                continue;
            }
        };
        if r.prev != expected_prev {
            v.problems.push(format!(
                "line {lineno} (seq {}): hash chain broken: a record before it was altered, removed or inserted",
                r.seq
            ));
        }
        if r.seq != expected_seq {
            v.problems.push(format!("line {lineno}: seq {} where {expected_seq} was expected", r.seq));
        }
        match r.event.as_str() {
            event::START if lineno == 1 || v.node.is_none() => {
                v.node = r.node.clone();
                key = r.node.as_deref().and_then(PublicKey::from_peer_id);
                if key.is_none() {
                    v.problems.push(format!("line {lineno}: start record names no valid ed25519 peer id"));
                }
            }
            event::GAP => v.dropped_by_node += r.dropped.unwrap_or(0),
            event::HEAD => {
                let good = match (&key, &v.node, r.sig.as_deref().map(hex::decode)) {
                    (Some(k), Some(node), Some(Ok(sig))) => match <[u8; 64]>::try_from(sig.as_slice()) {
                        Ok(sig) => SignedEnvelope {
                            payload: head_payload(node, &r),
                            signer: *k,
                            signature: Signature::from_bytes(sig),
                        }
                        .verify(MessageKind::TraceHead)
                        .is_ok(),
                        Err(_) => false,
                    },
                    _ => false,
                };
                if good && r.prev == expected_prev {
                    v.signed_heads += 1;
                    v.unsigned_tail = 0;
                    v.complete = r.is_final == Some(true);
                    v.gossip_counts = Some((r.gossip_written.unwrap_or(0), r.gossip_dropped.unwrap_or(0)));
                } else if !good {
                    v.problems.push(format!("line {lineno} (seq {}): head signature does not verify", r.seq));
                }
            }
            _ => {}
        }
        if r.event != event::HEAD {
            v.complete = false;
        }
        expected_prev = hash;
        expected_seq = r.seq.max(expected_seq) + 1;
    }
    if v.records == 0 {
        v.problems.push("empty timeline".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(records: usize, final_head: bool) -> (Identity, Vec<u8>) {
        let id = Identity::from_secret_bytes(&[7; 32]);
        let node = id.public().peer_id();
        let mut buf = Vec::new();
        let mut w = ChainWriter::start(&mut buf, node, 1).unwrap();
        for i in 0..records {
            let r =
                Record { task: Some(format!("{i:064x}")), round: Some(0), ..Record::new(event::ANNOUNCED) };
            w.append(r, 10 + i as u64).unwrap();
            if i == records / 2 {
                w.head(&id, 3, 0, false, 11).unwrap();
            }
        }
        if final_head {
            w.head(&id, 5, 1, true, 99).unwrap();
        }
        (id, buf)
    }

    fn lines(buf: &[u8]) -> Vec<String> {
        String::from_utf8(buf.to_vec()).unwrap().lines().map(str::to_owned).collect()
    }

    #[test]
    fn an_untouched_chain_verifies_complete() {
        let (_, buf) = chain(6, true);
        let v = verify_lines(&buf[..]).unwrap();
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.signed_heads, 2);
        assert_eq!(v.records, 1 + 6 + 2);
        assert_eq!(v.gossip_counts, Some((5, 1)));
    }

    #[test]
    fn an_altered_record_is_found() {
        let (_, buf) = chain(6, true);
        let mut l = lines(&buf);
        l[3] = l[3].replace("\"round\":0", "\"round\":1");
        let v = verify_lines(l.join("\n").as_bytes()).unwrap();
        assert!(!v.ok());
        assert!(v.problems.iter().any(|p| p.contains("line 5") && p.contains("hash chain broken")), "{v:?}");
    }

    #[test]
    fn a_removed_record_is_found() {
        let (_, buf) = chain(6, true);
        let mut l = lines(&buf);
        l.remove(2);
        let v = verify_lines(l.join("\n").as_bytes()).unwrap();
        assert!(v.problems.iter().any(|p| p.contains("hash chain broken")), "{v:?}");
        assert!(v.problems.iter().any(|p| p.contains("seq 3 where 2 was expected")), "{v:?}");
    }

    #[test]
    fn a_rewritten_chain_needs_the_key() {
        // Re-hash everything after an edit, but sign with another key: the heads fail.
        let (_, buf) = chain(4, true);
        let l = lines(&buf);
        let start: Record = serde_json::from_str(&l[0]).unwrap();
        let forger = Identity::from_secret_bytes(&[8; 32]);
        let mut out = Vec::new();
        let mut w = ChainWriter::start(&mut out, start.node.unwrap(), 1).unwrap();
        w.append(Record::new(event::VERIFIED), 2).unwrap();
        w.head(&forger, 0, 0, true, 3).unwrap();
        let v = verify_lines(&out[..]).unwrap();
        assert!(v.problems.iter().any(|p| p.contains("head signature does not verify")), "{v:?}");
        assert!(!v.ok());
    }

    #[test]
    fn a_truncated_chain_is_incomplete_but_not_tampered() {
        let (_, buf) = chain(6, false);
        let v = verify_lines(&buf[..]).unwrap();
        assert!(v.problems.is_empty(), "{v:?}");
        assert!(!v.complete);
        assert_eq!(v.unsigned_tail, 2);
    }

    #[test]
    fn garbage_lines_are_problems_not_panics() {
        let v = verify_lines(&b"{not json\n\xff\xfe\n{\"seq\":0}\n"[..]).unwrap();
        assert!(!v.ok());
        assert!(v.problems.len() >= 2, "{v:?}");
        let v = verify_lines(&b""[..]).unwrap();
        assert!(v.problems.iter().any(|p| p.contains("empty")));
    }
}
