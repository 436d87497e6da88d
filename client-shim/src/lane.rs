//! The ordered lane: how calls are numbered, sent and answered.
//!
//! Every call gets the next sequence number and goes out in that order. `Async` calls are sent
//! and forgotten (the server latches their errors); `Sync` and `Barrier` calls return a
//! [`Ticket`] to wait on, so several can be in flight at once (pipelined copies).

use std::sync::Mutex;

use bytes::Bytes;
use cuwire_protocol::frame;
use cuwire_protocol::{Call, CallKind, Ctx, CuError, Reply, Request, ServerMsg};

use crate::drive::Waiter;
use crate::stats;
use crate::transport::{HostDst, HostWrites, Outgoing, ReplyTo, Transport};

/// The error every call returns once the connection is gone.
pub const CONNECTION_LOST: CuError = CuError::DEVICE_UNAVAILABLE;

pub struct Lane {
    transport: Transport,
    seq: Mutex<u64>,
}

/// A call in flight whose reply someone will wait for.
pub struct Ticket {
    rx: tokio::sync::oneshot::Receiver<Result<(ServerMsg, Bytes), String>>,
    waiter: Waiter,
    function: &'static str,
    /// For a `Barrier`: where an asynchronous device-to-host copy's error waits to be reported.
    host_writes: Option<std::sync::Arc<HostWrites>>,
    /// For a `Barrier`: the page-locked memory lent before it is given back before it returns,
    /// so the application may change those bytes once it has synchronised (see `loan`).
    pinned_mark: Option<u64>,
}

impl Lane {
    pub fn new(transport: Transport) -> Self {
        Lane { transport, seq: Mutex::new(0) }
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Sends a call; returns a ticket unless it is `Async`.
    pub fn submit(&self, ctx: Ctx, kind: CallKind, request: Request, payload: Bytes) -> Result<Option<Ticket>, CuError> {
        let function = request.function().name();
        let (slot, ticket) = if kind == CallKind::Async {
            (None, None)
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let host_writes = (kind == CallKind::Barrier).then(|| self.transport.host_writes().clone());
            let pinned_mark = (kind == CallKind::Barrier).then(|| crate::loan::PINNED.mark());
            let waiter = self.transport.waiter();
            (Some(ReplyTo::Waiter(tx)), Some(Ticket { rx, waiter, function, host_writes, pinned_mark }))
        };
        stats::record(function, kind, payload.len());
        let waited = slot.is_some();
        self.send(ctx, kind, request, payload, slot, waited)?;
        Ok(ticket)
    }

    /// Sends a device-to-host copy whose reply the connection's reader writes straight into
    /// `dst`; the caller learns of it through `dst`'s [`HostWrites`]. `waited` says whether the
    /// caller waits for it (counted as a round trip, and the caller drives the connection
    /// meanwhile) or not (an asynchronous copy: fire-and-forget).
    pub fn submit_to_host(&self, ctx: Ctx, kind: CallKind, waited: bool, request: Request, dst: HostDst) -> Result<(), CuError> {
        stats::record(request.function().name(), if waited { kind } else { CallKind::Async }, 0);
        self.send(ctx, kind, request, Bytes::new(), Some(ReplyTo::Host(dst)), waited)
    }

    /// Numbers the call and hands it over; the lock keeps the lane in number order.
    fn send(
        &self,
        ctx: Ctx,
        kind: CallKind,
        request: Request,
        payload: Bytes,
        reply: Option<ReplyTo>,
        waited: bool,
    ) -> Result<(), CuError> {
        let mut seq = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        *seq += 1;
        let call = Call { seq: *seq, ctx, kind, request };
        let head = frame::encode(&call, payload.len()).map_err(|_| CuError::INVALID_VALUE)?;
        self.transport.send(Outgoing { head, payload, reply }, waited).map_err(|_| CONNECTION_LOST)
    }

    /// Waits until every asynchronous device-to-host copy under way has landed.
    pub fn wait_host_writes(&self) {
        self.transport.host_writes().wait_all();
    }

    /// Waits until every copy of `group` has landed, driving the connection meanwhile.
    pub fn wait_landed(&self, group: &HostWrites) {
        self.transport.wait(group.all_landed());
    }

    /// Sends a call and waits for its reply.
    pub fn call(&self, ctx: Ctx, kind: CallKind, request: Request, payload: Bytes) -> Result<(Reply, Bytes), CuError> {
        match self.submit(ctx, kind, request, payload)? {
            Some(ticket) => ticket.wait(),
            None => Err(CuError::INVALID_VALUE),
        }
    }
}

impl Ticket {
    /// Waits for the reply. A latched error of an earlier fire-and-forget call comes first.
    pub fn wait(self) -> Result<(Reply, Bytes), CuError> {
        let (msg, payload) = match self.waiter.wait(self.rx) {
            Ok(Ok(m)) => m,
            Ok(Err(_)) | Err(_) => return Err(CONNECTION_LOST),
        };
        stats::record_reply(self.function, payload.len());
        if let Some(mark) = self.pinned_mark {
            // The reply carries the acknowledgements of what came before it: seldom a wait.
            crate::loan::PINNED.wait_before(mark);
        }
        // The reply proves every earlier copy has landed; one that failed reports here, and an
        // earlier error the server reported with this reply waits for the next barrier.
        if let Some(writes) = &self.host_writes {
            if let Some(e) = writes.take_error() {
                if let ServerMsg::Reply { latched: Some(l), .. } = msg {
                    writes.latch(l.error);
                }
                return Err(e);
            }
        }
        match msg {
            ServerMsg::Reply { latched: Some(l), .. } => {
                if crate::debug() {
                    eprintln!("cuwire: {} reports the error of an earlier call #{} {}: {}", self.function, l.seq, l.function, l.error);
                }
                Err(l.error)
            }
            ServerMsg::Reply { result, .. } => result.map(|r| (r, payload)),
            _ => Err(CuError::UNKNOWN),
        }
    }
}
