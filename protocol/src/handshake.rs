//! The versioned handshake: the first frame each way on a new connection.

use bincode::{Decode, Encode};

/// Bumped whenever the wire format changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 1;

/// The build of this crate, so a log can tell which builds talked.
pub const BUILD_ID: &str = concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION"));

/// ALPN of cuwire connections.
pub const ALPN: &[u8] = b"cuwire/1";

/// Client to server, first frame.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    pub protocol_version: u32,
    pub build_id: String,
    pub pid: u32,
    pub host: String,
}

impl Hello {
    pub fn new(pid: u32, host: String) -> Self {
        Hello { protocol_version: PROTOCOL_VERSION, build_id: BUILD_ID.into(), pid, host }
    }
}

/// What a device looks like to the tenant: everything the shim answers locally.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct DeviceInfo {
    pub name: String,
    pub uuid: [u8; 16],
    /// The tenant's view of the device's memory.
    pub total_mem: u64,
    /// `(CUdevice_attribute, value)` for every attribute the server knows.
    pub attributes: Vec<(i32, i32)>,
    pub pci_bus_id: String,
}

/// Server to client, first frame.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Welcome {
    Accepted { protocol_version: u32, server_build: String, session: u64, tenant: String, driver_version: i32, devices: Vec<DeviceInfo> },
    Refused { reason: String },
}

/// Checks a peer's protocol version; the error names both versions.
pub fn check_version(ours: u32, theirs: u32, peer: &str) -> Result<(), String> {
    if ours == theirs {
        Ok(())
    } else {
        Err(format!("protocol version mismatch: this side speaks cuwire protocol {ours}, the {peer} speaks {theirs}"))
    }
}
