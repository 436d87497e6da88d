//! The envelopes that carry forwarded calls on a connection's ordered lane.

use bincode::{Decode, Encode};

use crate::api::{Reply, Request};
use crate::types::{Ctx, CuError};

/// How the client wants one call handled (its table [`Mode`](crate::api::Mode) by default; the
/// shim may ask for more, e.g. a reply to the last chunk of a synchronous copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum CallKind {
    /// No reply. An error is latched and reported by the next `Barrier` call.
    Async,
    /// A reply with this call's own result.
    Sync,
    /// A reply with this call's result, or the first error latched since the last barrier.
    Barrier,
}

/// Client to server: one call, in lane order.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Call {
    /// Counts every call of the connection, so replies and latched errors can name their call.
    pub seq: u64,
    /// The calling thread's current context (null when it has none), as the driver would see it.
    pub ctx: Ctx,
    pub kind: CallKind,
    pub request: Request,
}

/// A latched error: a fire-and-forget call failed; reported at the next barrier.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Latched {
    pub error: CuError,
    /// The sequence number and function name of the call that failed.
    pub seq: u64,
    pub function: String,
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum ServerMsg {
    /// The answer to a `Sync` or `Barrier` call.
    Reply { seq: u64, result: Result<Reply, CuError>, latched: Option<Latched> },
    /// Text that kernels printed (device printf), to be written on the client's stdout.
    Stdout(Vec<u8>),
    /// The server is closing the session (shutdown, quota revoked …).
    Goodbye { reason: String },
}
