//! The one table of forwarded driver calls.
//!
//! Every call that crosses the wire is declared once, in [`with_api_table!`]. From that one list
//! come the request and reply messages ([`Request`], [`Reply`], one struct pair per call in
//! [`calls`]), the server's dispatch ([`Handler`], [`dispatch`]) and, in the shim, the exported C
//! symbols of the `Auto` entries. An entry reads:
//!
//! ```text
//! name  Mode  Export  (param: In<T> | Out<T>, …);
//! ```
//!
//! - `Mode` is how the shim sends it by default: `Async` (fire-and-forget on the ordered lane,
//!   errors latched), `Sync` (waits for its own reply) or `Barrier` (waits, and its reply carries
//!   any error latched by earlier fire-and-forget calls).
//! - `Export` is `Auto` when the shim's C export is generated from the entry (parameters listed in
//!   C order, `Out` ones are C pointers the reply is written to), `Manual` when the shim writes the
//!   export by hand because it carries buffers, mints handles or answers partly from a cache; the
//!   entry then only fixes the wire shape.
//! - `In<T>` travels in the request, `Out<T>` in the reply.
//!
//! Calls answered entirely in the shim (versions, error strings, the context stack, device
//! attributes from the welcome) are not here: they never cross the wire.

use bincode::{Decode, Encode};
use bytes::Bytes;
use std::fmt::Debug;
use std::marker::PhantomData;

#[allow(unused_imports)]
use crate::types::*;

/// How the shim sends a call by default (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Mode {
    Async,
    Sync,
    Barrier,
}

/// Whether the shim's C export of an entry is generated (`Auto`) or hand-written (`Manual`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Export {
    Auto,
    Manual,
}

/// A value that can travel as a call argument.
pub trait WireValue: Encode + Decode<()> + Debug + Clone + PartialEq + Default {}
impl<T: Encode + Decode<()> + Debug + Clone + PartialEq + Default> WireValue for T {}

/// An argument the client sends.
pub struct In<T>(PhantomData<T>);
/// An argument the server returns.
pub struct Out<T>(PhantomData<T>);

/// Splits an argument into its request part and its reply part (`()` where it has none).
pub trait Arg {
    type Req: WireValue;
    type Rep: WireValue;
}
impl<T: WireValue> Arg for In<T> {
    type Req = T;
    type Rep = ();
}
impl<T: WireValue> Arg for Out<T> {
    type Req = ();
    type Rep = T;
}

/// Bulk bytes that travel beside a message, outside its encoding, so they are never copied
/// into or out of it (host data of a copy, a module image, a packed parameter buffer).
#[derive(Debug, Default, Clone)]
pub struct Payload {
    /// What the request carried.
    pub input: Bytes,
    /// What the reply will carry.
    pub output: Bytes,
}

/// The table. Expands `$callback! { entries }`, so each side generates what it needs from the
/// same list: messages here, exports in the shim.
#[macro_export]
macro_rules! with_api_table {
    ($callback:ident) => {
        $callback! {
            // ---- devices (most device queries are answered from the welcome; this is the fallback)
            /// Attributes missing from the welcome's cache (newer attribute numbers).
            cuDeviceGetAttribute Sync Manual (pi: Out<i32>, attrib: In<i32>, dev: In<i32>);

            // ---- contexts (handles minted by the shim; the current context travels in every call)
            CtxCreate Async Manual (ctx: In<Ctx>, flags: In<u32>, dev: In<i32>);
            CtxDestroy Async Manual (ctx: In<Ctx>);
            PrimaryCtxRetain Async Manual (ctx: In<Ctx>, dev: In<i32>);
            PrimaryCtxRelease Async Manual (dev: In<i32>);
            PrimaryCtxReset Async Manual (dev: In<i32>);
            PrimaryCtxSetFlags Async Manual (dev: In<i32>, flags: In<u32>);
            cuCtxSynchronize Barrier Auto ();

            // ---- memory
            cuMemGetInfo_v2 Sync Auto (free: Out<u64>, total: Out<u64>);
            cuMemAlloc_v2 Sync Auto (dptr: Out<DevPtr>, bytesize: In<u64>);
            cuMemFree_v2 Async Auto (dptr: In<DevPtr>);
            cuMemGetAddressRange_v2 Sync Auto (pbase: Out<DevPtr>, psize: Out<u64>, dptr: In<DevPtr>);
            /// Host to device; the host bytes are the payload. Large copies are sent in chunks.
            MemcpyHtoD Async Manual (dst: In<DevPtr>, stream: In<Stream>);
            /// Device to host; the reply's payload holds the bytes.
            MemcpyDtoH Sync Manual (src: In<DevPtr>, bytes: In<u64>, stream: In<Stream>);
            MemcpyDtoD Async Manual (dst: In<DevPtr>, src: In<DevPtr>, bytes: In<u64>, stream: In<Stream>);
            /// cuMemsetD8/D16/D32 and their Async forms: `elem_size` is 1, 2 or 4.
            Memset Async Manual (dst: In<DevPtr>, value: In<u32>, elem_size: In<u8>, count: In<u64>, stream: In<Stream>);
            /// 2-D and 3-D copies (cuMemcpy2D, cuMemcpy3D and their Async forms), host to device:
            /// the payload holds the rows packed, one after another.
            MemcpyRowsHtoD Async Manual (dst: In<Rows>, stream: In<Stream>);
            /// Device to host: the reply's payload holds the rows packed.
            MemcpyRowsDtoH Sync Manual (src: In<Rows>, stream: In<Stream>);
            /// Device to device: `dst` and `src` have the same width and count.
            MemcpyRowsDtoD Async Manual (dst: In<Rows>, src: In<Rows>, stream: In<Stream>);

            // ---- stream-ordered allocation: pools minted by the shim (each device's default
            // pool has a handle both sides know); allocations are ordinary allocations, taken
            // from the tenant's quota like cuMemAlloc, and ordered on the lane
            MemPoolCreate Async Manual (pool: In<MemPool>, dev: In<i32>, max_size: In<u64>);
            MemPoolDestroy Async Manual (pool: In<MemPool>);
            /// cuDeviceSetMemPool: the pool cuMemAllocAsync takes from on that device.
            DeviceSetMemPool Async Manual (dev: In<i32>, pool: In<MemPool>);
            /// cuMemAllocAsync (null pool: the current pool of the stream's device) and
            /// cuMemAllocFromPoolAsync. Waits: the program sees the address at once.
            MemAllocAsync Sync Manual (dptr: Out<DevPtr>, bytes: In<u64>, pool: In<MemPool>, stream: In<Stream>);
            MemFreeAsync Async Manual (dptr: In<DevPtr>, stream: In<Stream>);
            MemPoolGetAttribute Sync Manual (value: Out<u64>, pool: In<MemPool>, attr: In<i32>);
            MemPoolSetAttribute Async Manual (pool: In<MemPool>, attr: In<i32>, value: In<u64>);

            // ---- streams and events (handles minted by the shim)
            StreamCreate Async Manual (stream: In<Stream>, flags: In<u32>, priority: In<i32>);
            cuStreamDestroy_v2 Async Auto (stream: In<Stream>);
            cuStreamSynchronize Barrier Auto (stream: In<Stream>);
            cuStreamQuery Barrier Auto (stream: In<Stream>);
            cuStreamWaitEvent Async Auto (stream: In<Stream>, event: In<Event>, flags: In<u32>);
            EventCreate Async Manual (event: In<Event>, flags: In<u32>);
            cuEventRecord Async Auto (event: In<Event>, stream: In<Stream>);
            cuEventSynchronize Barrier Auto (event: In<Event>);
            cuEventQuery Barrier Auto (event: In<Event>);
            cuEventElapsedTime Sync Auto (ms: Out<f32>, start: In<Event>, end: In<Event>);
            cuEventDestroy_v2 Async Auto (event: In<Event>);

            // ---- modules, libraries, functions (the image is the payload; the reply describes
            // every entry point so that lookups, attributes and parameter packing stay local)
            ModuleLoad Sync Manual (module: In<Module>, info: Out<ModuleInfo>);
            /// Manual: the shim forgets the module's metadata, and keeps a library's module.
            cuModuleUnload Async Manual (module: In<Module>);
            /// Why a ModuleLoad or LibraryLoad of this handle failed, in the backend's words (its
            /// JIT error log), for the client's CU_JIT_ERROR_LOG_BUFFER; asked after the failure.
            LoadLog Sync Manual (handle: In<u64>, log: Out<String>);
            ModuleGetFunction Async Manual (func: In<Func>, module: In<Module>, name: In<String>);
            /// Module variables the load reply did not list (drivers cannot enumerate them).
            ModuleGetGlobal Sync Manual (module: In<Module>, name: In<String>, dptr: Out<DevPtr>, bytes: Out<u64>);
            LibraryLoad Sync Manual (library: In<Library>, info: Out<ModuleInfo>);
            cuLibraryUnload Async Auto (library: In<Library>);
            LibraryGetKernel Async Manual (kernel: In<Kernel>, library: In<Library>, name: In<String>);
            KernelGetFunction Async Manual (func: In<Func>, kernel: In<Kernel>);
            /// The module a library became in the current context (nvcc-built programs reach
            /// their kernels through it).
            LibraryGetModule Async Manual (module: In<Module>, library: In<Library>);
            LibraryGetGlobal Sync Manual (library: In<Library>, name: In<String>, dptr: Out<DevPtr>, bytes: Out<u64>);
            /// cuFuncSetAttribute: only attributes that change how the function launches travel.
            FuncSetAttribute Async Manual (func: In<Func>, attrib: In<i32>, value: In<i32>);
            /// The packed parameter buffer is the payload.
            LaunchKernel Async Manual (func: In<Func>, dims: In<LaunchDims>, stream: In<Stream>);
        }
    };
}

macro_rules! define_messages {
    ($( $(#[doc = $doc:literal])* $name:ident $mode:ident $export:ident ( $($p:ident : $ty:ty),* $(,)? ) ;)*) => {
        /// One request and one reply struct per forwarded call.
        #[allow(non_snake_case)]
        pub mod calls {
            $(
                $(#[doc = $doc])*
                pub mod $name {
                    #[allow(unused_imports)]
                    use crate::api::{Arg, In, Out};
                    #[allow(unused_imports)]
                    use crate::types::*;
                    /// The request: the `In` arguments.
                    #[derive(Debug, Clone, PartialEq, Default, bincode::Encode, bincode::Decode)]
                    pub struct Req { $(pub $p: <$ty as Arg>::Req,)* }
                    /// The reply: the `Out` arguments.
                    #[derive(Debug, Clone, PartialEq, Default, bincode::Encode, bincode::Decode)]
                    pub struct Rep { $(pub $p: <$ty as Arg>::Rep,)* }
                }
            )*
        }

        /// Names every forwarded call (for dispatch, statistics and metrics).
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Function { $($name,)* }

        impl Function {
            /// Every forwarded call, in table order.
            pub const ALL: &'static [Function] = &[$(Function::$name,)*];
            pub fn name(self) -> &'static str {
                match self { $(Function::$name => stringify!($name),)* }
            }
            pub fn mode(self) -> Mode {
                match self { $(Function::$name => Mode::$mode,)* }
            }
            pub fn export(self) -> Export {
                match self { $(Function::$name => Export::$export,)* }
            }
        }

        /// A forwarded call.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
        pub enum Request { $($name(calls::$name::Req),)* }

        /// The successful answer to a forwarded call.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
        pub enum Reply { $($name(calls::$name::Rep),)* }

        impl Request {
            pub fn function(&self) -> Function {
                match self { $(Request::$name(_) => Function::$name,)* }
            }
        }

        impl Reply {
            pub fn function(&self) -> Function {
                match self { $(Reply::$name(_) => Function::$name,)* }
            }
        }

        /// The server-side meaning of each forwarded call. The server's session implements it;
        /// [`dispatch`] routes a request to it.
        #[allow(non_snake_case)]
        pub trait Handler {
            $(
                fn $name(&mut self, req: calls::$name::Req, payload: &mut Payload) -> CuResult<calls::$name::Rep>;
            )*
        }

        /// Runs one request on a handler.
        pub fn dispatch<H: Handler + ?Sized>(handler: &mut H, request: Request, payload: &mut Payload) -> CuResult<Reply> {
            match request {
                $(Request::$name(req) => handler.$name(req, payload).map(Reply::$name),)*
            }
        }

        #[cfg(test)]
        pub(crate) mod samples {
            //! One default-valued request of every kind, for round-trip tests.
            use super::*;
            pub fn all_requests() -> Vec<Request> {
                vec![$(Request::$name(calls::$name::Req::default()),)*]
            }
            pub fn all_replies() -> Vec<Reply> {
                vec![$(Reply::$name(calls::$name::Rep::default()),)*]
            }
        }
    };
}

with_api_table!(define_messages);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_modes_are_declared() {
        let mut names: Vec<_> = Function::ALL.iter().map(|f| f.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Function::ALL.len());
        assert_eq!(Function::cuCtxSynchronize.mode(), Mode::Barrier);
        assert_eq!(Function::LaunchKernel.mode(), Mode::Async);
        assert_eq!(Function::cuMemAlloc_v2.export(), Export::Auto);
    }

    #[test]
    fn every_request_names_its_function() {
        for (req, f) in samples::all_requests().iter().zip(Function::ALL) {
            assert_eq!(req.function(), *f);
        }
        for (rep, f) in samples::all_replies().iter().zip(Function::ALL) {
            assert_eq!(rep.function(), *f);
        }
    }
}
