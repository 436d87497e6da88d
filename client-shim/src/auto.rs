//! Exports generated from the protocol's table: every `Auto` entry becomes a C function that
//! checks its out-pointers, forwards the call in its table mode and writes the reply back.

#![allow(non_snake_case)]

use bytes::Bytes;
#[allow(unused_imports)]
use cuwire_protocol::api::{In, Out};
#[allow(unused_imports)]
use cuwire_protocol::types::*;
use cuwire_protocol::{calls, CallKind, Mode, Reply, Request};

use crate::client;
#[allow(unused_imports)]
use crate::ffi::{self, CArg, CUresult};

fn kind(mode: Mode) -> CallKind {
    match mode {
        Mode::Async => CallKind::Async,
        Mode::Sync => CallKind::Sync,
        Mode::Barrier => CallKind::Barrier,
    }
}

macro_rules! auto_exports {
    ($( $(#[doc = $doc:literal])* $name:ident $mode:ident $export:ident ( $($p:ident : $ty:ty),* $(,)? ) ;)*) => {
        $( auto_export_one!($export $mode $name ( $($p : $ty),* )); )*
    };
}

macro_rules! auto_export_one {
    (Manual $($rest:tt)*) => {};
    (Auto $mode:ident $name:ident ( $($p:ident : $ty:ty),* )) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name($($p: <$ty as CArg>::C),*) -> CUresult {
            ffi::guard(stringify!($name), move || {
                $( <$ty as CArg>::check($p)?; )*
                let client = client::get()?;
                #[allow(clippy::unit_arg)]
                let req = calls::$name::Req { $($p: <$ty as CArg>::to_wire($p),)* };
                let request = Request::$name(req);
                if Mode::$mode == Mode::Async {
                    return client.send(request, Bytes::new());
                }
                let (reply, _) = client.call(kind(Mode::$mode), request, Bytes::new())?;
                #[allow(unused_variables)]
                let Reply::$name(rep) = reply else { return Err(CuError::UNKNOWN) };
                // SAFETY: every Out pointer passed `check` above; the caller's contract makes it
                // writable.
                $( unsafe { <$ty as CArg>::write_back($p, rep.$p)? }; )*
                Ok(())
            })
        }
    };
}

cuwire_protocol::with_api_table!(auto_exports);
