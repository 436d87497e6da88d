//! cuwire's wire protocol: the one table of forwarded CUDA driver calls ([`api`]), the messages
//! derived from it, length-prefixed framing with hard limits ([`frame`], [`limits`]) and the
//! versioned handshake ([`handshake`]). No I/O happens here: both the shim and the server drive
//! these types over their own connections, and tests drive them over byte slices.
#![forbid(unsafe_code)]

pub mod api;
pub mod cuda;
pub mod frame;
pub mod handshake;
pub mod limits;
pub mod messages;
pub mod types;

pub use api::{calls, dispatch, Function, Handler, Mode, Payload, Reply, Request};
pub use messages::{Call, CallKind, Latched, ServerMsg};
pub use types::*;

#[cfg(test)]
mod proptests;
