//! Hard limits, checked before anything is allocated.

/// The largest encoded message (the part of a frame that bincode decodes).
pub const MAX_MESSAGE: usize = 1 << 20;
/// The largest payload one frame carries. Larger copies are chunked; larger module images are
/// refused with CUDA_ERROR_INVALID_VALUE before anything is sent.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// The largest frame body (message length word + message + payload).
pub const MAX_FRAME: usize = 4 + MAX_MESSAGE + MAX_PAYLOAD;
/// Host-to-device and device-to-host copies travel in chunks of this size, pipelined.
pub const COPY_CHUNK: usize = 4 << 20;
/// The largest handshake frame.
pub const MAX_HANDSHAKE: usize = 64 << 10;
/// The longest name (function, kernel, global, host) accepted in a message.
pub const MAX_NAME: usize = 4096;
/// The most rows one 2-D or 3-D copy message names (larger copies are several messages).
pub const MAX_COPY_ROWS: u64 = 1 << 20;
/// The most memory pools a session may create.
pub const MAX_MEM_POOLS: usize = 1024;
/// The longest module-load log a session keeps for its client.
pub const MAX_LOAD_LOG: usize = 16 << 10;
/// The largest UDP payload QUIC's path-MTU discovery probes for (quinn's default stops at
/// 1452, an Ethernet frame). Loopback and jumbo-frame links then carry larger packets, and
/// quinn's work per packet (header protection, one AEAD call, acknowledgements, pacing) is
/// spent once per 16 KiB instead of once per 1.4 KiB: 256 MiB copies over loopback went from
/// 0.44–0.66 to 0.69–0.76 GB/s. A path with a smaller MTU is found by the probes getting lost.
pub const MAX_UDP_PAYLOAD: u16 = 16 << 10;
