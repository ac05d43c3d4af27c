//! Misbehaving-worker hooks for integration tests (feature `test-hooks`, never in release
//! builds): each makes a worker break one rule so tests can show the requester catches it.

/// How a worker cheats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehave {
    /// Sends output bytes that do not match the digest it signed.
    CorruptOutput,
    /// Computes a different output and signs it honestly (only k > 1 can catch this).
    WrongAnswer,
    /// Signs the result header with a key that was not awarded.
    WrongKey,
    /// Sends back the first result it ever produced, for every later task.
    Replay,
    /// Accepts awards and never answers (a vehicle that drove off mid-task).
    Vanish,
}
