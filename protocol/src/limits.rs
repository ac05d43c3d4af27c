//! Size limits. Every decoder is given one of these; nothing is parsed past its limit.

/// Largest task input a requester may send (and a worker accepts).
pub const MAX_INPUT_BYTES: usize = 1 << 20;
/// Largest task output a worker may return.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// A signed task spec (DHT record value).
pub const MAX_SPEC_BYTES: usize = 4 * 1024;
/// A signed gossip message (announcement or presence advert).
pub const MAX_GOSSIP_BYTES: usize = 8 * 1024;
/// Any DHT record value fleetmesh stores.
pub const MAX_RECORD_BYTES: usize = 8 * 1024;
/// Task ids in one open-tasks record.
pub const MAX_OPEN_TASKS_PER_RECORD: usize = 64;
/// Models listed in one presence advert.
pub const MAX_MODELS_PER_ADVERT: usize = 64;
/// Winners one task may ask for.
pub const MAX_REDUNDANCY: u8 = 7;
/// Envelope, header and framing allowance on top of an input or output.
const FRAMING_BYTES: usize = 16 * 1024;
/// A request on the task protocol (the largest is an award carrying the input).
pub const MAX_REQUEST_BYTES: usize = MAX_INPUT_BYTES + MAX_SPEC_BYTES + FRAMING_BYTES;
/// A response on the task protocol.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;
/// A worker's result message (header plus output).
pub const MAX_RESULT_BYTES: usize = MAX_OUTPUT_BYTES + FRAMING_BYTES;
