//! Host buffers for device-to-host copy chunks, reused across copies.
//!
//! Why: a reply buffer allocated fresh for every 4 MiB chunk is fresh memory, so the kernel
//! faults in and zeroes each of its pages while the copy writes it. In a 256 MiB copy from the
//! emulated GPU that was about a tenth of the server's time (perf: `clear_page_erms` and
//! `exc_page_fault` under `Allocation::read_bytes`). A buffer comes back here when the last
//! `Bytes` of its reply is dropped, which quinn does once the peer has acknowledged the data.

use bytes::Bytes;
use cuwire_protocol::limits::COPY_CHUNK;
use cuwire_protocol::{CuError, CuResult};
use parking_lot::Mutex;

/// Reused buffers are this large (one copy chunk).
const SIZE: usize = COPY_CHUNK;
/// Copies smaller than this get a plain allocation: small ones come from the allocator's
/// arenas without faults, and a small reply should not hold a whole chunk's buffer.
const SMALLEST: usize = SIZE / 4;
/// Idle buffers kept at most (64 MiB): as many chunks as one session may have unacknowledged
/// (the listener's reply budget), so a steady stream of copies allocates nothing.
pub const KEEP: usize = 16;

static IDLE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A reply of `len` bytes written by `fill`, which must write every byte of the slice it gets
/// (a reused buffer still holds an earlier reply, possibly another tenant's) or fail.
pub fn reply(len: usize, fill: impl FnOnce(&mut [u8]) -> CuResult<()>) -> CuResult<Bytes> {
    if !(SMALLEST..=SIZE).contains(&len) {
        let mut out = Vec::new();
        out.try_reserve_exact(len).map_err(|_| CuError::OUT_OF_MEMORY)?;
        out.resize(len, 0);
        fill(&mut out)?;
        return Ok(Bytes::from(out));
    }
    let mut buf = Reused { buf: take()?, len };
    fill(&mut buf.buf[..len])?;
    Ok(Bytes::from_owner(buf))
}

fn take() -> CuResult<Vec<u8>> {
    if let Some(buf) = IDLE.lock().pop() {
        return Ok(buf);
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(SIZE).map_err(|_| CuError::OUT_OF_MEMORY)?;
    buf.resize(SIZE, 0);
    Ok(buf)
}

/// Buffers idle now (for tests).
pub fn idle() -> usize {
    IDLE.lock().len()
}

/// A pool buffer lent to one reply; its first `len` bytes are the reply.
struct Reused {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Reused {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Reused {
    fn drop(&mut self) {
        let mut idle = IDLE.lock();
        if idle.len() < KEEP {
            idle.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the process-wide pool, so the counts below are not raced by another.
    #[test]
    fn chunk_buffers_come_back_and_small_or_failed_replies_do_not_take_them() {
        let before = idle();
        let a = reply(SIZE, |b| {
            b.fill(7);
            Ok(())
        })
        .unwrap();
        assert_eq!(a.len(), SIZE);
        assert!(a.iter().all(|&x| x == 7));
        let part = a.slice(10..20);
        drop(a);
        // A slice still holds the buffer: it must not be lent again while quinn may send it.
        assert_eq!(idle(), before.saturating_sub(1));
        drop(part);
        assert_eq!(idle(), before.max(1));

        // The reused buffer is overwritten by the next reply, shorter than a chunk.
        let b = reply(SIZE / 2, |b| {
            b.fill(9);
            Ok(())
        })
        .unwrap();
        assert_eq!(b.len(), SIZE / 2);
        assert!(b.iter().all(|&x| x == 9));
        drop(b);

        // A failed fill hands its buffer back and reports the error.
        let n = idle();
        assert_eq!(reply(SIZE, |_| Err(CuError::INVALID_VALUE)).unwrap_err(), CuError::INVALID_VALUE);
        assert_eq!(idle(), n);

        // Small replies are plain allocations.
        let s = reply(100, |b| {
            b.fill(1);
            Ok(())
        })
        .unwrap();
        assert_eq!(&s[..], &[1u8; 100][..]);
        assert_eq!(idle(), n);
    }
}
