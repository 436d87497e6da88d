//! Length-prefixed framing, sans I/O.
//!
//! A frame is `[u32 LE body_len] [u32 LE msg_len] [msg: bincode] [payload: raw bytes]`, with
//! `body_len = 4 + msg_len + payload_len`. Bulk bytes ride after the message, outside its
//! encoding, so neither side copies them into or out of bincode. Lengths are checked against
//! [`limits`](crate::limits) before anything is allocated.

use bincode::{Decode, Encode};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::limits::{MAX_FRAME, MAX_MESSAGE, MAX_PAYLOAD};

/// The bincode configuration of every message: little endian, variable-length integers, and a
/// decode limit so that a length inside a message cannot make the decoder allocate more.
pub fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE>()
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(u64),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("message does not decode: {0}")]
    Decode(String),
    #[error("message does not encode: {0}")]
    Encode(String),
}

/// Encodes a message and returns the frame head (length words and message); the payload, if
/// any, is sent right after it as is.
pub fn encode<M: Encode>(msg: &M, payload_len: usize) -> Result<Bytes, FrameError> {
    if payload_len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload_len as u64));
    }
    let mut head = BytesMut::with_capacity(64);
    head.put_u32_le(0);
    head.put_u32_le(0);
    let mut writer = (&mut head).writer();
    bincode::encode_into_std_write(msg, &mut writer, config()).map_err(|e| FrameError::Encode(e.to_string()))?;
    let msg_len = head.len() - 8;
    if msg_len > MAX_MESSAGE {
        return Err(FrameError::TooLarge(msg_len as u64));
    }
    let body_len = 4 + msg_len + payload_len;
    head[0..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    head[4..8].copy_from_slice(&(msg_len as u32).to_le_bytes());
    Ok(head.freeze())
}

/// Encodes a message and its payload into one contiguous buffer (tests, small frames).
pub fn encode_to_vec<M: Encode>(msg: &M, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let head = encode(msg, payload.len())?;
    let mut out = Vec::with_capacity(head.len() + payload.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    Ok(out)
}

/// A decoded frame: the message bytes and the payload, both views into the received buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub message: Bytes,
    pub payload: Bytes,
}

impl RawFrame {
    pub fn decode<M: Decode<()>>(&self) -> Result<M, FrameError> {
        let (msg, used) = bincode::decode_from_slice(&self.message, config()).map_err(|e| FrameError::Decode(e.to_string()))?;
        if used != self.message.len() {
            return Err(FrameError::Decode(format!("{} trailing bytes after the message", self.message.len() - used)));
        }
        Ok(msg)
    }
}

/// Reads the body length from a frame's first four bytes and checks it against `limit`.
pub fn body_len(prefix: [u8; 4], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > limit {
        return Err(FrameError::TooLarge(len as u64));
    }
    if len < 4 {
        return Err(FrameError::Malformed(format!("body of {len} bytes has no room for its message length")));
    }
    Ok(len)
}

/// Reads a frame's first eight bytes (body length, message length) and returns the lengths of
/// its message and payload, checked against `limit` and each other: a reader that knows where
/// a payload belongs can then read it straight there instead of through a buffer.
pub fn head_lens(head: [u8; 8], limit: usize) -> Result<(usize, usize), FrameError> {
    let body = body_len([head[0], head[1], head[2], head[3]], limit)?;
    let msg_len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if msg_len > MAX_MESSAGE || msg_len > body - 4 {
        return Err(FrameError::Malformed(format!("message length {msg_len} does not fit a body of {} bytes", body - 4)));
    }
    Ok((msg_len, body - 4 - msg_len))
}

/// Splits a frame body (everything after the body length) into message and payload.
pub fn split_body(mut body: Bytes) -> Result<RawFrame, FrameError> {
    if body.len() < 4 {
        return Err(FrameError::Malformed("truncated body".into()));
    }
    let msg_len = body.get_u32_le() as usize;
    if msg_len > MAX_MESSAGE || msg_len > body.len() {
        return Err(FrameError::Malformed(format!("message length {msg_len} does not fit a body of {} bytes", body.len())));
    }
    let message = body.split_to(msg_len);
    Ok(RawFrame { message, payload: body })
}

/// Turns a byte stream into frames: feed it bytes as they arrive, take frames as they complete.
/// Never allocates more than the frame limit, whatever the peer announces.
///
/// A large frame is assembled in a buffer of exactly its size, and bytes past its end (the start
/// of the next frame, arriving in the same chunk) wait in `spill`: appending them would grow the
/// frame's buffer, and growing reallocates it, copying the whole payload once more into freshly
/// faulted pages (perf, 256 MiB host-to-device copies: the server's reader spent as long in
/// that realloc as in the copy out of quinn's packets).
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    /// Bytes after the frame `buf` completes; empty unless `buf` holds a whole frame.
    spill: BytesMut,
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(MAX_FRAME)
    }
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Decoder { buf: BytesMut::new(), spill: BytesMut::new(), limit }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.spill.is_empty() {
            self.spill.extend_from_slice(bytes);
            return;
        }
        let room = self.buf.capacity() - self.buf.len();
        if bytes.len() > room {
            if let Some(missing) = self.missing() {
                if missing <= room {
                    let (rest_of_frame, after) = bytes.split_at(missing);
                    self.buf.extend_from_slice(rest_of_frame);
                    self.spill.extend_from_slice(after);
                    return;
                }
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    /// How many bytes the frame begun in `buf` still lacks, when its head is here and valid.
    fn missing(&self) -> Option<usize> {
        let head = self.buf.get(0..4)?.try_into().expect("4 bytes");
        let len = body_len(head, self.limit).ok()?;
        (4 + len).checked_sub(self.buf.len()).filter(|&m| m > 0)
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or an error once the
    /// stream can no longer be trusted (the connection should then be closed).
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = body_len(self.buf[0..4].try_into().expect("4 bytes"), self.limit)?;
        if self.buf.len() < 4 + len {
            if self.buf.capacity() < 4 + len {
                // A fresh buffer of the frame's size, holding the few bytes already here. Growing
                // the old one would realloc its whole allocation, spent frames included.
                let mut fresh = BytesMut::with_capacity(4 + len);
                fresh.extend_from_slice(&self.buf);
                self.buf = fresh;
            }
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len).freeze();
        if !self.spill.is_empty() {
            // `buf` held exactly this frame: what followed it takes its place, uncopied.
            debug_assert!(self.buf.is_empty());
            self.buf = std::mem::take(&mut self.spill);
        }
        split_body(body).map(Some)
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len() + self.spill.len()
    }
}

/// The pieces of one stream write: frame heads and small payloads are copied together into
/// blocks of up to [`WriteBatch::BLOCK`] bytes, large payloads are passed on as they are (no
/// copy).
///
/// Why: quinn keeps a stream's unacknowledged data as the list of chunks it was given and looks
/// up the data for each packet by walking that list, so a burst of 100,000 fire-and-forget
/// launches handed over as 200,000 tiny chunks made the sender's packet building quadratic (the
/// shim's I/O thread spent 79% of its time in `StreamsState::write_stream_frames`).
#[derive(Default)]
pub struct WriteBatch {
    chunks: Vec<Bytes>,
    small: BytesMut,
    bytes: usize,
}

impl WriteBatch {
    /// Largest block small pieces are gathered into.
    pub const BLOCK: usize = 64 << 10;
    /// Pieces at least this large travel as their own chunk.
    pub const LARGE: usize = 16 << 10;

    pub fn push(&mut self, piece: Bytes) {
        self.bytes += piece.len();
        if piece.len() >= Self::LARGE {
            self.seal();
            self.chunks.push(piece);
            return;
        }
        if self.small.len() + piece.len() > Self::BLOCK {
            self.seal();
        }
        if self.small.capacity() - self.small.len() < piece.len() {
            self.small.reserve(Self::BLOCK);
        }
        self.small.extend_from_slice(&piece);
    }

    fn seal(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
    }

    /// Bytes pushed since the last [`WriteBatch::chunks`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The chunks to write, in order; the caller writes them all and then clears the vector.
    pub fn chunks(&mut self) -> &mut Vec<Bytes> {
        self.seal();
        self.bytes = 0;
        &mut self.chunks
    }
}

#[cfg(test)]
mod head_tests {
    use super::*;

    #[test]
    fn head_lens_agree_with_split_body_and_refuse_what_does_not_fit() {
        let frame = encode_to_vec(&(7u32, String::from("x")), &[1, 2, 3]).unwrap();
        let (msg_len, payload_len) = head_lens(frame[..8].try_into().unwrap(), MAX_FRAME).unwrap();
        let raw = split_body(Bytes::copy_from_slice(&frame[4..])).unwrap();
        assert_eq!((msg_len, payload_len), (raw.message.len(), raw.payload.len()));
        assert_eq!(payload_len, 3);
        // A message longer than its body, a body under four bytes, a body over the limit.
        let mut bad = frame.clone();
        bad[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(head_lens(bad[..8].try_into().unwrap(), MAX_FRAME), Err(FrameError::Malformed(_))));
        assert!(matches!(head_lens([3, 0, 0, 0, 0, 0, 0, 0], MAX_FRAME), Err(FrameError::Malformed(_))));
        assert!(matches!(head_lens([0xff; 8], MAX_FRAME), Err(FrameError::TooLarge(_))));
    }
}

#[cfg(test)]
mod decoder_tests {
    use super::*;

    /// A large frame is assembled where its buffer was first allocated, even when the chunk that
    /// completes it also brings the next frame (no reallocation, so no second copy).
    #[test]
    fn a_large_frame_stays_in_its_first_buffer_and_the_next_frame_follows() {
        let payload: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 7) as u8).collect();
        let big = encode_to_vec(&1u32, &payload).unwrap();
        let small = encode_to_vec(&2u32, &[9, 9]).unwrap();
        let mut stream = big.clone();
        stream.extend_from_slice(&small);
        stream.extend_from_slice(&small[..3]);
        let mut d = Decoder::default();
        d.feed(&stream[..100]);
        assert!(d.next_frame().unwrap().is_none());
        let home = d.buf.as_ptr() as usize;
        // The rest of the large frame, the small one and three bytes of another, in one chunk.
        d.feed(&stream[100..]);
        let first = d.next_frame().unwrap().expect("the large frame");
        assert_eq!(first.decode::<u32>().unwrap(), 1);
        assert_eq!(&first.payload[..], &payload[..]);
        let at = first.payload.as_ptr() as usize;
        assert!(at > home && at < home + 64, "the payload was moved from {home:#x} to {at:#x}");
        let second = d.next_frame().unwrap().expect("the small frame");
        assert_eq!(second.decode::<u32>().unwrap(), 2);
        assert_eq!(&second.payload[..], &[9, 9]);
        assert!(d.next_frame().unwrap().is_none());
        assert_eq!(d.pending(), 3);
        d.feed(&small[3..]);
        assert_eq!(d.next_frame().unwrap().expect("the third frame").decode::<u32>().unwrap(), 2);
        assert_eq!(d.pending(), 0);
    }
}

#[cfg(test)]
mod write_batch_tests {
    use super::*;

    #[test]
    fn small_pieces_are_gathered_large_ones_kept_and_order_preserved() {
        let mut b = WriteBatch::default();
        let mut expect = Vec::new();
        for i in 0..10_000u32 {
            let head = Bytes::from(i.to_le_bytes().to_vec());
            expect.extend_from_slice(&head);
            b.push(head);
            if i % 2500 == 0 {
                let big = Bytes::from(vec![i as u8; WriteBatch::LARGE]);
                expect.extend_from_slice(&big);
                b.push(big);
            }
        }
        assert_eq!(b.bytes(), expect.len());
        let chunks = b.chunks();
        // 40,000 bytes of small pieces between 4 large ones: a handful of chunks, not 10,004.
        assert!(chunks.len() <= 9, "{} chunks", chunks.len());
        assert_eq!(chunks.iter().filter(|c| c.len() == WriteBatch::LARGE).count(), 4);
        assert!(chunks.iter().all(|c| c.len() <= WriteBatch::BLOCK.max(WriteBatch::LARGE)));
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(joined, expect);
        chunks.clear();
        assert!(b.chunks().is_empty());
        assert_eq!(b.bytes(), 0);
    }
}
