//! The request-response codec for [`fleetmesh_protocol::ids::TASK_PROTOCOL`].
//!
//! One CBOR value per stream, bounded by the protocol's size limits. A request that does not
//! decode is not a stream error: it reaches the node as [`Frame::Malformed`], so the node can
//! answer with a clear refusal and keep the connection, and the sender learns what was wrong.

use fleetmesh_protocol::limits;
use fleetmesh_protocol::wire::{TaskRequest, TaskResponse};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

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
}

/// The codec; stateless.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskCodec;

async fn read_bounded<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    let over = buf.len() > limit;
    Ok((buf, over))
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
            let mut rest = (&mut *io).take(limits::MAX_REQUEST_BYTES as u64);
            let _ = futures::io::copy(&mut rest, &mut futures::io::sink()).await?;
            return Ok(Frame::Obsolete(protocol.as_ref().to_owned()));
        }
        // The first bytes name the kind of request; only awards and results, which carry an
        // input or an output, may be large. Everything else is read under the control limit,
        // so a peer cannot make the node buffer a megabyte per stream for a bid.
        let (head, _) = read_bounded(&mut *io, 32).await?;
        let limit = limits::request_limit(&head);
        let (rest, _) = read_bounded(&mut *io, limit.saturating_sub(head.len())).await?;
        let mut buf = head;
        buf.extend_from_slice(&rest);
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
            Frame::Malformed(_) | Frame::Obsolete(_) => {
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
