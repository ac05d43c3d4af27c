//! The request-response codec for [`fleetmesh_protocol::ids::TASK_PROTOCOL`].
//!
//! One CBOR value per stream, bounded by the protocol's size limits. A request that does not
//! decode is not a stream error: it reaches the node as [`Frame::Malformed`], so the node can
//! answer with a clear refusal and keep the connection, and the sender learns what was wrong.
//!
//! Awards and results may be a megabyte each, and libp2p reads up to 32 streams per connection
//! at once: slow large requests on many connections would add up to gigabytes. So every large
//! request is read under one budget shared by all connections ([`LARGE_REQUEST_BUDGET_BYTES`]).
//! It counts the buffer the request is read into, which grows (by 4 KiB, then by a quarter,
//! up to the kind's limit) only once it is full, so a stream that stalls holds at most a
//! quarter (or 4 KiB) more than it sent; the budget is given back once the request is decoded
//! (the decoded request then waits for the event loop uncounted, as every other one does). When it is spent,
//! what was read is dropped, the rest of the request read and thrown away (so the sender sees
//! the answer, not a stalled write), and the request answered "no capacity": a worker that
//! bid and cannot take its award is replaced as any worker refusing it, and a result is sent
//! again with backoff until its delivery grace ends. The whole stream is bounded by the
//! request timeout.

use fleetmesh_protocol::limits;
use fleetmesh_protocol::wire::{TaskRequest, TaskResponse};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of buffer that large requests (awards and results) being read may hold, across all
/// connections: 64 requests of the largest size at once.
pub(crate) const LARGE_REQUEST_BUDGET_BYTES: usize = 64 * limits::MAX_REQUEST_BYTES;
/// A large request's buffer grows by this much at first, then by a quarter of what it holds,
/// up to its limit: a stream that stalls after its first bytes holds next to nothing, and one
/// that stalls later at most a quarter more than it sent.
const FIRST_BUFFER_BYTES: usize = 4 * 1024;

/// A request as it crosses the codec.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // built once per request and moved into the codec
pub enum Frame {
    /// A well-formed request.
    Request(TaskRequest),
    /// Inbound bytes that did not decode, with the reason.
    Malformed(String),
    /// An inbound request on a task protocol of an earlier wire version, named here: it is
    /// not decoded (its shape is not ours to guess), only refused with
    /// [`fleetmesh_protocol::ids::obsolete_refusal`].
    Obsolete(String),
    /// Raw bytes to send as they are (tests of hostile input use this).
    Raw(Vec<u8>),
    /// A large request that was not kept: the budget for large requests in flight was spent
    /// (it was read to its end and dropped).
    Busy,
}

/// The bytes of large requests being read, across every connection.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicUsize::new(0) })
    }

    /// Takes `bytes` from the budget, or nothing when they are not there.
    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|n| *n <= self.limit)
            })
            .is_ok()
    }

    /// Bytes in use now.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// What one request holds of the budget; given back when dropped.
struct Held<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let bytes = self.bytes;
        let _ = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(bytes)));
    }
}

/// The codec. Its clones (libp2p makes one per connection and one per stream) share the
/// budget for large requests.
#[derive(Debug, Clone)]
pub(crate) struct TaskCodec {
    large: Arc<Budget>,
}

impl TaskCodec {
    pub(crate) fn new(large: Arc<Budget>) -> Self {
        Self { large }
    }
}

impl Default for TaskCodec {
    fn default() -> Self {
        Self::new(Budget::new(LARGE_REQUEST_BUDGET_BYTES))
    }
}

/// Reads and drops up to `limit` bytes: the sender finishes its write and reads the answer.
async fn drain<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> std::io::Result<()> {
    let mut rest = io.take(limit as u64);
    futures::io::copy(&mut rest, &mut futures::io::sink()).await?;
    Ok(())
}

/// Reads up to `limit + 1` bytes, so a caller can tell "exactly at the limit" from "over it".
async fn read_bounded<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut buf = Vec::new();
    io.take((limit as u64).saturating_add(1)).read_to_end(&mut buf).await?;
    let over = buf.len() > limit;
    Ok((buf, over))
}

/// Reads up to `limit + 1` bytes after `head` into a buffer that grows (by a quarter) only
/// when it is full, each growth taken from the budget first. `None` when the budget ran out (what
/// was read is then dropped and the rest drained).
async fn read_budgeted<'b, T: AsyncRead + Unpin + Send>(
    io: &mut T,
    head: Vec<u8>,
    limit: usize,
    budget: &'b Budget,
) -> std::io::Result<Option<(Vec<u8>, Held<'b>)>> {
    let end = limit.saturating_add(1);
    let mut held = Held { budget, bytes: 0 };
    let mut filled = head.len();
    let mut buf = head;
    while filled < end {
        if filled >= buf.len() {
            let step = buf.len().checked_div(4).unwrap_or(0).max(FIRST_BUFFER_BYTES);
            let size = buf.len().saturating_add(step).min(end);
            let grow = size.saturating_sub(buf.len());
            if !budget.take(grow) {
                drop((buf, held));
                drain(io, end.saturating_sub(filled)).await?;
                return Ok(None);
            }
            held.bytes = held.bytes.saturating_add(grow);
            buf.reserve_exact(grow);
            buf.resize(size, 0);
        }
        let n = match buf.get_mut(filled..) {
            Some(room) => io.read(room).await?,
            None => 0,
        };
        if n == 0 {
            break; // the end of the stream
        }
        filled = filled.saturating_add(n);
    }
    buf.truncate(filled);
    Ok(Some((buf, held)))
}

impl libp2p::request_response::Codec for TaskCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = TaskResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Frame> {
        if protocol.as_ref() != fleetmesh_protocol::ids::TASK_PROTOCOL {
            // An old peer: read what it sent (up to the largest request, without keeping it),
            // so it sees the refusal rather than a stream reset in the middle of its write.
            drain(io, limits::MAX_REQUEST_BYTES).await?;
            return Ok(Frame::Obsolete(protocol.as_ref().to_owned()));
        }
        // The first bytes name the kind of request; only awards and results, which carry an
        // input or an output, may be large. Everything else is read under the control limit,
        // so a peer cannot make the node buffer a megabyte per stream for a bid.
        let (head, _) = read_bounded(&mut *io, 32).await?;
        let limit = limits::request_limit(&head);
        let (buf, _held) = if limit > limits::MAX_CONTROL_REQUEST_BYTES {
            match read_budgeted(io, head, limit, &self.large).await? {
                Some(read) => read,
                None => return Ok(Frame::Busy),
            }
        } else {
            let (rest, _) = read_bounded(&mut *io, limit.saturating_sub(head.len())).await?;
            let mut buf = head;
            buf.extend_from_slice(&rest);
            (buf, Held { budget: &self.large, bytes: 0 })
        };
        if buf.len() > limit {
            return Ok(Frame::Malformed(format!("request exceeds {limit} bytes for its kind")));
        }
        Ok(match TaskRequest::from_bytes(&buf) {
            Ok(req) => Frame::Request(req),
            Err(e) => Frame::Malformed(e.to_string()),
        })
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<TaskResponse> {
        let (buf, over) = read_bounded(io, limits::MAX_RESPONSE_BYTES).await?;
        if over {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "response too large"));
        }
        TaskResponse::from_bytes(&buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Frame,
    ) -> std::io::Result<()> {
        let bytes = match req {
            Frame::Request(r) => r.to_bytes(),
            Frame::Raw(b) => b,
            Frame::Malformed(_) | Frame::Obsolete(_) | Frame::Busy => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "cannot send an inbound-only frame",
                ))
            }
        };
        io.write_all(&bytes).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: TaskResponse,
    ) -> std::io::Result<()> {
        io.write_all(&res.to_bytes()).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec as _;

    /// A request of the kind `kind` whose single value is a byte string of `len` bytes: what
    /// the codec must budget is decided by the first bytes, what follows need not decode.
    fn request(kind: &str, len: usize) -> Vec<u8> {
        let mut b = vec![0xa1, 0x60 + kind.len() as u8];
        b.extend_from_slice(kind.as_bytes());
        b.push(0x5a);
        b.extend_from_slice(&(len as u32).to_be_bytes());
        b.resize(b.len() + len, 7);
        b
    }

    async fn read(codec: &mut TaskCodec, bytes: &[u8]) -> (Frame, u64) {
        let mut io = futures::io::Cursor::new(bytes.to_vec());
        let proto = StreamProtocol::new(fleetmesh_protocol::ids::TASK_PROTOCOL);
        let frame = codec.read_request(&proto, &mut io).await.expect("a cursor does not fail");
        (frame, io.position())
    }

    #[tokio::test]
    async fn a_large_request_is_read_within_the_budget_and_gives_it_back() {
        let budget = Budget::new(2 * limits::MAX_REQUEST_BYTES);
        let mut codec = TaskCodec::new(budget.clone());
        let award = request("Award", 900_000);
        let (frame, read) = read(&mut codec, &award).await;
        assert!(matches!(frame, Frame::Malformed(ref m) if !m.contains("exceeds")), "{frame:?}");
        assert_eq!(read, award.len() as u64);
        assert_eq!(budget.used(), 0, "the budget is given back once the request is decoded");
    }

    #[tokio::test]
    async fn a_large_request_past_the_budget_is_drained_and_refused_and_control_requests_still_pass() {
        let budget = Budget::new(limits::MAX_REQUEST_BYTES);
        let mut codec = TaskCodec::new(budget.clone());
        // Other connections' large requests hold all but 100 KiB of the budget.
        assert!(budget.take(limits::MAX_REQUEST_BYTES - 100 * 1024));
        for kind in ["Award", "Result"] {
            let big = request(kind, 500_000);
            let (frame, read) = read(&mut codec, &big).await;
            assert!(matches!(frame, Frame::Busy), "{kind}: {frame:?}");
            assert_eq!(
                read,
                big.len() as u64,
                "{kind}: the rest is read and dropped, so the sender sees the answer"
            );
            assert_eq!(budget.used(), limits::MAX_REQUEST_BYTES - 100 * 1024, "{kind}: nothing kept");
        }
        // A small award fits in what is left.
        let (frame, _) = read(&mut codec, &request("Award", 20_000)).await;
        assert!(matches!(frame, Frame::Malformed(_)), "{frame:?}");
        // Bids, receipts and reports are not large requests: the budget does not apply.
        assert!(budget.take(100 * 1024));
        let (frame, _) = read(&mut codec, &request("Bid", 10_000)).await;
        assert!(matches!(frame, Frame::Malformed(ref m) if !m.contains("exceeds")), "{frame:?}");
        // Once the others are done, a large request is read again.
        let held = budget.used();
        let _ = budget.used.fetch_sub(held, Ordering::AcqRel);
        let (frame, _) = read(&mut codec, &request("Award", 500_000)).await;
        assert!(!matches!(frame, Frame::Busy), "{frame:?}");
    }

    /// A stream that sends part of a request and then nothing.
    struct Stalls(futures::io::Cursor<Vec<u8>>);

    impl AsyncRead for Stalls {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
                std::task::Poll::Ready(Ok(0)) => std::task::Poll::Pending,
                other => other,
            }
        }
    }

    #[tokio::test]
    async fn a_stalled_request_holds_about_what_it_sent_and_gives_it_back_when_dropped() {
        let budget = Budget::new(4 * limits::MAX_REQUEST_BYTES);
        let mut codec = TaskCodec::new(budget.clone());
        let proto = StreamProtocol::new(fleetmesh_protocol::ids::TASK_PROTOCOL);
        for sent in [8, 3_000, 100_000, 700_000] {
            let mut award = request("Award", 900_000);
            award.truncate(sent);
            let mut io = Stalls(futures::io::Cursor::new(award));
            let mut read = Box::pin(codec.read_request(&proto, &mut io));
            assert!(futures::poll!(&mut read).is_pending());
            let held = budget.used();
            // The first 33 bytes (which name the request's kind) are read before the budget is
            // consulted: a stream that stalls inside them holds those few bytes uncharged.
            let charged = sent <= 33 || held >= sent - 33;
            let bound = sent + (sent / 4).max(FIRST_BUFFER_BYTES);
            assert!(charged && held <= bound, "{sent} bytes sent, {held} held");
            // The request timeout (or the connection closing) drops the read.
            drop(read);
            assert_eq!(budget.used(), 0, "{sent} bytes sent");
        }
    }

    #[tokio::test]
    async fn an_oversized_large_request_is_refused_and_its_budget_given_back() {
        let budget = Budget::new(4 * limits::MAX_REQUEST_BYTES);
        let mut codec = TaskCodec::new(budget.clone());
        let (frame, _) = read(&mut codec, &request("Result", limits::MAX_REQUEST_BYTES + 10)).await;
        assert!(matches!(frame, Frame::Malformed(ref m) if m.contains("exceeds")), "{frame:?}");
        assert_eq!(budget.used(), 0);
        // Many sequential requests leave nothing behind (no leak of the budget).
        for _ in 0..20 {
            let _ = read(&mut codec, &request("Award", 300_000)).await;
        }
        assert_eq!(budget.used(), 0);
    }
}
