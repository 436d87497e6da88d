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
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(MAX_FRAME)
    }
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Decoder { buf: BytesMut::new(), limit }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or an error once the
    /// stream can no longer be trusted (the connection should then be closed).
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = body_len(self.buf[0..4].try_into().expect("4 bytes"), self.limit)?;
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len).freeze();
        split_body(body).map(Some)
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}
