//! Frames: `[u32 header length][header: postcard][u64 body length][body]`,
//! little-endian. The header is a typed message; the body is raw bytes
//! (file data) that is never re-encoded. Both lengths are checked against
//! named limits before anything is allocated. [`write`] sends a frame on
//! an iroh `SendStream`; [`read`] takes one from any `AsyncRead`, and
//! [`read_end`] checks that nothing follows it.

use bytes::Bytes;
use iroh::endpoint::SendStream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest encoded header.
pub const MAX_HEADER_LEN: usize = 1 << 20;
/// The largest body (one object write, with room to spare).
pub const MAX_BODY_LEN: u64 = 128 << 20;

/// A frame that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{what} of {len} bytes is over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("the frame ended early")]
    Truncated,
    #[error("malformed header: {0}")]
    Malformed(String),
    #[error("{0} bytes after the frame")]
    Trailing(usize),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

fn check_body_len(len: u64) -> Result<(), FrameError> {
    if len > MAX_BODY_LEN {
        return Err(FrameError::TooLarge {
            what: "body",
            len,
            limit: MAX_BODY_LEN,
        });
    }
    Ok(())
}

fn encode_header(header: &impl Serialize) -> Result<Vec<u8>, FrameError> {
    let bytes = postcard::to_stdvec(header).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_HEADER_LEN {
        return Err(FrameError::TooLarge {
            what: "header",
            len: bytes.len() as u64,
            limit: MAX_HEADER_LEN as u64,
        });
    }
    Ok(bytes)
}

fn decode_header<H: DeserializeOwned>(bytes: &[u8]) -> Result<H, FrameError> {
    let (header, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} bytes after the header",
            rest.len()
        )));
    }
    Ok(header)
}

/// Everything of a frame before its body (of `body_len` bytes), in a
/// buffer with room for `room` more bytes.
fn prefix(header: &impl Serialize, body_len: usize, room: usize) -> Result<Vec<u8>, FrameError> {
    check_body_len(body_len as u64)?;
    let header = encode_header(header)?;
    let mut prefix = Vec::with_capacity(12 + header.len() + room);
    prefix.extend_from_slice(&(header.len() as u32).to_le_bytes());
    prefix.extend_from_slice(&header);
    prefix.extend_from_slice(&(body_len as u64).to_le_bytes());
    Ok(prefix)
}

/// Encodes a whole frame into one buffer.
pub fn encode(header: &impl Serialize, body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut frame = prefix(header, body.len(), body.len())?;
    frame.extend_from_slice(body);
    Ok(frame)
}

/// Decodes a frame that must fill `bytes` exactly.
pub fn decode<H: DeserializeOwned>(bytes: &[u8]) -> Result<(H, &[u8]), FrameError> {
    let take = |at: usize, len: usize| {
        let end = at.checked_add(len).ok_or(FrameError::Truncated)?;
        bytes.get(at..end).ok_or(FrameError::Truncated)
    };
    let header_len = u32::from_le_bytes(take(0, 4)?.try_into().expect("4 bytes")) as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(FrameError::TooLarge {
            what: "header",
            len: header_len as u64,
            limit: MAX_HEADER_LEN as u64,
        });
    }
    let header = decode_header(take(4, header_len)?)?;
    let body_at = 4 + header_len;
    let body_len = u64::from_le_bytes(take(body_at, 8)?.try_into().expect("8 bytes"));
    check_body_len(body_len)?;
    let body = take(body_at + 8, body_len as usize)?;
    let end = body_at + 8 + body.len();
    if end != bytes.len() {
        return Err(FrameError::Trailing(bytes.len() - end));
    }
    Ok((header, body))
}

fn truncated(error: std::io::Error) -> FrameError {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(error)
    }
}

/// Writes one frame, the same bytes as [`encode`], in one
/// `write_all_chunks` call (several writes only when flow control makes it
/// wait): the prefix and the body (not copied) enter the stream's send
/// buffer together, so a small frame's prefix does not leave in a packet
/// of its own.
pub async fn write(
    stream: &mut SendStream,
    header: &impl Serialize,
    body: Bytes,
) -> Result<(), FrameError> {
    let prefix = prefix(header, body.len(), 0)?;
    stream
        .write_all_chunks(&mut [Bytes::from(prefix), body])
        .await
        .map_err(|error| FrameError::Io(error.into()))
}

/// Reads one frame, checking each length before reading what it announces.
pub async fn read<R: AsyncRead + Unpin, H: DeserializeOwned>(
    reader: &mut R,
) -> Result<(H, Vec<u8>), FrameError> {
    let header_len = reader.read_u32_le().await.map_err(truncated)? as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(FrameError::TooLarge {
            what: "header",
            len: header_len as u64,
            limit: MAX_HEADER_LEN as u64,
        });
    }
    let mut header = vec![0; header_len];
    reader.read_exact(&mut header).await.map_err(truncated)?;
    let header = decode_header(&header)?;
    let body_len = reader.read_u64_le().await.map_err(truncated)?;
    check_body_len(body_len)?;
    // Read into spare capacity: a zeroed buffer of up to MAX_BODY_LEN
    // would be written twice.
    let mut body = Vec::with_capacity(body_len as usize);
    reader
        .take(body_len)
        .read_to_end(&mut body)
        .await
        .map_err(truncated)?;
    if body.len() as u64 != body_len {
        return Err(FrameError::Truncated);
    }
    Ok((header, body))
}

/// Reads the end of a stream that holds one frame, already read: anything
/// more is an error.
pub async fn read_end<R: AsyncRead + Unpin>(reader: &mut R) -> Result<(), FrameError> {
    match reader.read(&mut [0u8; 1]).await? {
        0 => Ok(()),
        _ => Err(FrameError::Trailing(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Message {
        Ping { id: u64, name: String },
        Write { offset: u64, flags: Vec<u32> },
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u64>(), ".{0,40}").prop_map(|(id, name)| Message::Ping { id, name }),
            (any::<u64>(), prop::collection::vec(any::<u32>(), 0..8))
                .prop_map(|(offset, flags)| Message::Write { offset, flags }),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(message in arb_message(), body in prop::collection::vec(any::<u8>(), 0..512)) {
            let frame = encode(&message, &body).unwrap();
            let (decoded, decoded_body) = decode::<Message>(&frame).unwrap();
            prop_assert_eq!(decoded, message);
            prop_assert_eq!(decoded_body, &body[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Message>(&bytes);
        }

        #[test]
        fn every_truncation_is_an_error(message in arb_message(), body in prop::collection::vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>()) {
            let frame = encode(&message, &body).unwrap();
            let cut = cut.index(frame.len());
            prop_assert!(decode::<Message>(&frame[..cut]).is_err());
        }

        #[test]
        fn corrupted_frames_are_errors_or_other_valid_frames(message in arb_message(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut frame = encode(&message, b"data").unwrap();
            let at = flip.index(frame.len());
            frame[at] ^= 1 << bit;
            let _ = decode::<Message>(&frame);
        }

        #[test]
        fn async_reads_match_decode(message in arb_message(), body in prop::collection::vec(any::<u8>(), 0..256), cut in any::<prop::sample::Index>()) {
            let frame = encode(&message, &body).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let whole: (Message, Vec<u8>) = runtime.block_on(read(&mut &frame[..])).unwrap();
            prop_assert_eq!(whole, (message, body));
            let cut = cut.index(frame.len());
            let partial = runtime.block_on(read::<_, Message>(&mut &frame[..cut]));
            prop_assert!(matches!(partial, Err(FrameError::Truncated)));
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut frame = (u32::MAX).to_le_bytes().to_vec();
        frame.extend_from_slice(&[0; 16]);
        assert!(matches!(
            decode::<Message>(&frame),
            Err(FrameError::TooLarge { what: "header", .. })
        ));
        let mut frame = encode(
            &Message::Ping {
                id: 1,
                name: "x".into(),
            },
            b"",
        )
        .unwrap();
        let body_at = frame.len() - 8;
        frame[body_at..].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode::<Message>(&frame),
            Err(FrameError::TooLarge { what: "body", .. })
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(matches!(
            runtime.block_on(read::<_, Message>(&mut &frame[..])),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            encode(
                &Message::Ping {
                    id: 1,
                    name: "x".into()
                },
                &vec![0; MAX_BODY_LEN as usize + 1]
            ),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut frame = encode(
            &Message::Ping {
                id: 1,
                name: "x".into(),
            },
            b"ab",
        )
        .unwrap();
        frame.push(0);
        assert!(matches!(
            decode::<Message>(&frame),
            Err(FrameError::Trailing(1))
        ));
    }

    #[tokio::test]
    async fn a_stream_ends_after_its_frame_or_is_refused() {
        assert!(read_end(&mut &b""[..]).await.is_ok());
        assert!(matches!(
            read_end(&mut &b"x"[..]).await,
            Err(FrameError::Trailing(1))
        ));
    }
}
