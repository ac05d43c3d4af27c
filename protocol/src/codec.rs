//! CBOR encoding (ciborium) with a size limit on every decode.
//!
//! `decode` refuses input over the caller's limit before parsing, refuses trailing bytes after
//! the value, and turns every parse failure into [`DecodeError`]. ciborium reads strings and
//! byte strings in bounded segments, so a length prefix that lies cannot make it allocate more
//! than the input holds.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message is bigger than this kind of message may be.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit for this kind of message.
        limit: usize,
    },
    /// Not valid CBOR for the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes left after a complete value.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// A version this node does not speak.
    #[error("unsupported message version {got} (this node speaks up to {max})")]
    UnsupportedVersion {
        /// The version in the message.
        got: u16,
        /// The newest version this node speaks.
        max: u16,
    },
}

/// Encodes a value as CBOR.
///
/// Encoding our own well-formed types into a `Vec` cannot fail (ciborium only fails on I/O
/// errors and on maps with non-string keys, neither of which our types have); should it ever,
/// the result is an empty vector, which every decoder refuses.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    match ciborium::into_writer(value, &mut buf) {
        Ok(()) => buf,
        Err(_) => Vec::new(),
    }
}

/// Decodes one CBOR value of type `T` from `bytes`, which must be at most `limit` bytes long
/// and hold nothing after the value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge { len: bytes.len(), limit });
    }
    let mut reader = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut reader, 64)
        .map_err(|e| DecodeError::Malformed(short(&e)))?;
    if !reader.is_empty() {
        return Err(DecodeError::TrailingBytes(reader.len()));
    }
    Ok(value)
}

/// The error's text, cut to at most 200 characters. Cut on a character boundary: the text
/// can quote the peer's invalid bytes, and `String::truncate` inside a character panics
/// (found by the `decode_request` fuzz target).
fn short<E: std::fmt::Display>(e: &E) -> String {
    let mut s = e.to_string();
    if let Some((cut, _)) = s.char_indices().nth(200) {
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Bid;

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let err = decode::<Bid>(&[0u8; 100], 10).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { len: 100, limit: 10 });
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&7u32);
        bytes.push(0);
        assert_eq!(decode::<u32>(&bytes, 100), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn lying_length_prefix_does_not_allocate_or_panic() {
        // A byte string that claims 2^62 bytes, followed by 4 bytes.
        let bytes = [0x5b, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert!(matches!(decode::<serde_bytes::ByteBuf>(&bytes, 1024), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn an_error_quoting_multibyte_text_is_cut_on_a_character_boundary() {
        // Inputs the fuzzer found: the error text quoted the peer's bytes and was cut in the
        // middle of a character, which panicked.
        for bytes in [
            &include_bytes!("../tests/fuzz/request-utf8-truncate.bin")[..],
            &include_bytes!("../tests/fuzz/response-utf8-truncate.bin")[..],
        ] {
            assert!(crate::wire::TaskRequest::from_bytes(bytes).is_err());
            assert!(crate::wire::TaskResponse::from_bytes(bytes).is_err());
        }
        let long = "é".repeat(300);
        assert_eq!(short(&long).chars().count(), 200);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let bytes = vec![0x81u8; 500]; // 500 nested one-element arrays
        assert!(matches!(decode::<ciborium::Value>(&bytes, 1024), Err(DecodeError::Malformed(_))));
    }
}
