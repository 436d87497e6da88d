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
/// The largest UDP payload QUIC's path-MTU discovery probes for, and the largest either side
/// accepts (the `max_udp_payload_size` transport parameter, which caps what the peer's discovery
/// may reach: quinn advertises 1472 by default, so a higher probe bound alone does nothing).
/// Loopback and jumbo-frame links then carry larger packets, and quinn's work per packet
/// (header protection, one AEAD call, acknowledgements, pacing) is spent once per 6.5 KB instead
/// of once per 1.4 KB. Not larger: quinn hands the kernel up to 10 packets in one UDP GSO send,
/// whose datagrams together must fit in one 64 KiB IP packet; beyond 6,550 bytes those sends fail,
/// the lost probes read as a black hole and quinn falls back to 1,200 bytes. Raw quinn bulk
/// transfers of 256 MiB over loopback on the 2-core machine (`cuwire-bench raw-bulk`, alternating):
/// 683–911 MB/s up and 659–837 down at 1472, 1.3–2.0 GB/s and 1.2–1.6 GB/s at 6500, and at
/// 8952 the fall-back to 1200 (222–470 MB/s). A path with a smaller MTU is found by the probes
/// getting lost.
pub const MAX_UDP_PAYLOAD: u16 = 6500;
// The bound of the GSO sends above: quinn's 10 datagrams per send in one IPv4 packet, and
// QUIC's smallest allowed datagram.
const _: () = assert!(MAX_UDP_PAYLOAD >= 1200 && MAX_UDP_PAYLOAD as u32 * 10 <= 65_507);
