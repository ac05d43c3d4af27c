//! The gossip trace line format: go-libp2p-pubsub's JSON tracer, field for field.
//!
//! go-libp2p-pubsub's `JSONTracer` writes each `pb.TraceEvent` with Go's `encoding/json`, so
//! the keys are the `json:` tags of the generated struct (`pb/trace.pb.go`): `type` as an
//! integer, `peerID` and every other `bytes` field as standard base64 with padding,
//! `timestamp` in Unix nanoseconds, and the body under its own key. Empty fields are left
//! out (`omitempty`). Fields appear in the order Go writes them. Reading is lenient: unknown
//! keys (a Go trace's `recvRPC`, say) are skipped, so the analyzer reads Go traces too.

use serde::{Deserialize, Serialize};

/// `TraceEvent.Type` values from go-libp2p-pubsub's `pb/trace.proto`.
pub mod kind {
    /// The node published a message.
    pub const PUBLISH_MESSAGE: i32 = 0;
    /// The node's validation rejected a message.
    pub const REJECT_MESSAGE: i32 = 1;
    /// The node received a message it already had.
    pub const DUPLICATE_MESSAGE: i32 = 2;
    /// The node's validation accepted a message and delivered it to the application.
    pub const DELIVER_MESSAGE: i32 = 3;
    /// A stream to a peer opened (`ADD_PEER` in older releases); not emitted by fleetmesh.
    pub const ADD_PEER: i32 = 4;
    /// A stream to a peer closed (`REMOVE_PEER` in older releases); not emitted by fleetmesh.
    pub const REMOVE_PEER: i32 = 5;
    /// The node subscribed to a topic.
    pub const JOIN: i32 = 9;
    /// The node unsubscribed from a topic.
    pub const LEAVE: i32 = 10;
    /// A peer entered the node's mesh for a topic.
    pub const GRAFT: i32 = 11;
    /// A peer left the node's mesh for a topic.
    pub const PRUNE: i32 = 12;
}

/// Standard base64 with padding, as Go's `encoding/json` writes `[]byte`.
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

fn is_empty(b: &[u8]) -> bool {
    b.is_empty()
}

/// One line of a gossip trace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// The event type (see [`kind`]).
    #[serde(rename = "type")]
    pub kind: i32,
    /// The tracing node's peer id bytes.
    #[serde(rename = "peerID", with = "b64", default, skip_serializing_if = "is_empty")]
    pub peer_id: Vec<u8>,
    /// When, in Unix nanoseconds.
    #[serde(default)]
    pub timestamp: i64,
    /// Body of PUBLISH_MESSAGE.
    #[serde(rename = "publishMessage", default, skip_serializing_if = "Option::is_none")]
    pub publish_message: Option<PublishMessage>,
    /// Body of REJECT_MESSAGE.
    #[serde(rename = "rejectMessage", default, skip_serializing_if = "Option::is_none")]
    pub reject_message: Option<RejectMessage>,
    /// Body of DUPLICATE_MESSAGE.
    #[serde(rename = "duplicateMessage", default, skip_serializing_if = "Option::is_none")]
    pub duplicate_message: Option<DuplicateMessage>,
    /// Body of DELIVER_MESSAGE.
    #[serde(rename = "deliverMessage", default, skip_serializing_if = "Option::is_none")]
    pub deliver_message: Option<DeliverMessage>,
    /// Body of JOIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<TopicBody>,
    /// Body of LEAVE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave: Option<TopicBody>,
    /// Body of GRAFT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graft: Option<PeerTopic>,
    /// Body of PRUNE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<PeerTopic>,
}

/// `publishMessage{messageID, topic}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishMessage {
    /// The message id bytes.
    #[serde(rename = "messageID", with = "b64", default, skip_serializing_if = "is_empty")]
    pub message_id: Vec<u8>,
    /// The topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// `rejectMessage{messageID, receivedFrom, reason, topic}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectMessage {
    /// The message id bytes.
    #[serde(rename = "messageID", with = "b64", default, skip_serializing_if = "is_empty")]
    pub message_id: Vec<u8>,
    /// The peer that forwarded it.
    #[serde(rename = "receivedFrom", with = "b64", default, skip_serializing_if = "is_empty")]
    pub received_from: Vec<u8>,
    /// Why (go-libp2p-pubsub's reason strings, e.g. "validation failed").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// `duplicateMessage{messageID, receivedFrom, topic}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateMessage {
    /// The message id bytes.
    #[serde(rename = "messageID", with = "b64", default, skip_serializing_if = "is_empty")]
    pub message_id: Vec<u8>,
    /// The peer that sent the copy.
    #[serde(rename = "receivedFrom", with = "b64", default, skip_serializing_if = "is_empty")]
    pub received_from: Vec<u8>,
    /// The topic, when the node has seen the message before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// `deliverMessage{messageID, topic, receivedFrom}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverMessage {
    /// The message id bytes.
    #[serde(rename = "messageID", with = "b64", default, skip_serializing_if = "is_empty")]
    pub message_id: Vec<u8>,
    /// The topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The peer it came from.
    #[serde(rename = "receivedFrom", with = "b64", default, skip_serializing_if = "is_empty")]
    pub received_from: Vec<u8>,
}

/// `join{topic}` and `leave{topic}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicBody {
    /// The topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// `graft{peerID, topic}` and `prune{peerID, topic}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTopic {
    /// The peer grafted or pruned.
    #[serde(rename = "peerID", with = "b64", default, skip_serializing_if = "is_empty")]
    pub peer_id: Vec<u8>,
    /// The topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl TraceEvent {
    /// The message id this event is about, if it is a message event.
    pub fn message_id(&self) -> Option<&[u8]> {
        match self.kind {
            kind::PUBLISH_MESSAGE => self.publish_message.as_ref().map(|b| &b.message_id[..]),
            kind::REJECT_MESSAGE => self.reject_message.as_ref().map(|b| &b.message_id[..]),
            kind::DUPLICATE_MESSAGE => self.duplicate_message.as_ref().map(|b| &b.message_id[..]),
            kind::DELIVER_MESSAGE => self.deliver_message.as_ref().map(|b| &b.message_id[..]),
            _ => None,
        }
    }

    /// The topic this event names, if any.
    pub fn topic(&self) -> Option<&str> {
        match self.kind {
            kind::PUBLISH_MESSAGE => self.publish_message.as_ref()?.topic.as_deref(),
            kind::REJECT_MESSAGE => self.reject_message.as_ref()?.topic.as_deref(),
            kind::DUPLICATE_MESSAGE => self.duplicate_message.as_ref()?.topic.as_deref(),
            kind::DELIVER_MESSAGE => self.deliver_message.as_ref()?.topic.as_deref(),
            kind::JOIN => self.join.as_ref()?.topic.as_deref(),
            kind::LEAVE => self.leave.as_ref()?.topic.as_deref(),
            kind::GRAFT => self.graft.as_ref()?.topic.as_deref(),
            kind::PRUNE => self.prune.as_ref()?.topic.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_go_writes() {
        let e = TraceEvent {
            kind: kind::DELIVER_MESSAGE,
            peer_id: vec![0, 1, 2],
            timestamp: 1_700_000_000_000_000_000,
            deliver_message: Some(DeliverMessage {
                message_id: vec![0xff; 4],
                topic: Some("t".into()),
                received_from: vec![9],
            }),
            ..TraceEvent::default()
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":3,"peerID":"AAEC","timestamp":1700000000000000000,"deliverMessage":{"messageID":"/////w==","topic":"t","receivedFrom":"CQ=="}}"#
        );
        // PUBLISH_MESSAGE is type 0 and is still written (Go's field is a pointer).
        let p = TraceEvent {
            kind: kind::PUBLISH_MESSAGE,
            publish_message: Some(PublishMessage { message_id: vec![1], topic: None }),
            ..TraceEvent::default()
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"type":0,"timestamp":0,"publishMessage":{"messageID":"AQ=="}}"#
        );
    }

    #[test]
    fn reads_a_go_line_with_fields_it_does_not_know() {
        let line = r#"{"type":2,"peerID":"ACQIARIg","timestamp":5,"duplicateMessage":{"messageID":"AQI=","receivedFrom":"Aw==","topic":"x"},"recvRPC":{"meta":{}}}"#;
        let e: TraceEvent = serde_json::from_str(line).unwrap();
        assert_eq!(e.kind, kind::DUPLICATE_MESSAGE);
        assert_eq!(e.message_id(), Some(&[1u8, 2][..]));
        assert_eq!(e.topic(), Some("x"));
        assert!(serde_json::from_str::<TraceEvent>(r#"{"type":3,"peerID":"not base64!"}"#).is_err());
    }
}
