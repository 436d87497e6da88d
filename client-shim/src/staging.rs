//! Staging buffers for the chunks of asynchronous host-to-device copies (a synchronous copy lends
//! the caller's memory instead, see `loan`): the caller's bytes are copied into one of a few
//! reused buffers, which quinn holds until the server has acknowledged them.
//!
//! Why: a fresh 4 MiB allocation per chunk is fresh memory, so the kernel faults in and zeroes
//! each of its pages while the copy writes it (perf, 256 MiB copies: 8% of the client's time in
//! `clear_page_erms` and `exc_page_fault` under the staging copy). It also bounds what a large
//! copy holds: at most [`LIMIT`] chunks are staged at once, and a copy waits for the network to
//! take earlier ones, as the driver's staged pageable copies wait for their pinned buffers.

use bytes::Bytes;
use cuwire_protocol::limits::COPY_CHUNK;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Staging buffers are this large (one copy chunk).
const SIZE: usize = COPY_CHUNK;
/// Smaller chunks are plain copies: small allocations come from the allocator's arenas without
/// faults, and a small copy should not hold a whole chunk's buffer. (Synchronous copies lend
/// their memory from this size up.)
pub const SMALLEST: usize = SIZE / 4;
/// Chunks staged at once (64 MiB): as much as the server's stream window lets be in flight.
pub const LIMIT: usize = 16;
/// Idle buffers kept (32 MiB): enough for a steady stream of copies to allocate nothing.
const KEEP: usize = 8;

pub struct Staging {
    state: Mutex<State>,
    returned: Condvar,
}

struct State {
    idle: Vec<Vec<u8>>,
    lent: usize,
}

/// The process's staging buffers.
pub static STAGING: Staging = Staging::new();

impl Staging {
    pub const fn new() -> Self {
        Staging { state: Mutex::new(State { idle: Vec::new(), lent: 0 }), returned: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `data` as a payload. A chunk-sized one waits while [`LIMIT`] chunks are staged, unless
    /// `dead()` says the connection is gone (its buffers may never come back): it is then copied
    /// plainly, and sending it fails as any call on a lost connection does.
    pub fn stage(&'static self, data: &[u8], dead: impl Fn() -> bool) -> Bytes {
        if !(SMALLEST..=SIZE).contains(&data.len()) {
            return Bytes::copy_from_slice(data);
        }
        let mut state = self.lock();
        let reused = loop {
            if let Some(buf) = state.idle.pop() {
                break Some(buf);
            }
            if state.lent < LIMIT {
                break None;
            }
            if dead() {
                return Bytes::copy_from_slice(data);
            }
            state = self.returned.wait_timeout(state, Duration::from_millis(20)).unwrap_or_else(|p| p.into_inner()).0;
        };
        state.lent += 1;
        drop(state);
        let mut buf = reused.unwrap_or_else(|| vec![0u8; SIZE]);
        buf[..data.len()].copy_from_slice(data);
        Bytes::from_owner(Lent { buf, len: data.len(), from: self })
    }

    /// Buffers (idle, lent) now.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.idle.len(), state.lent)
    }
}

impl Default for Staging {
    fn default() -> Self {
        Self::new()
    }
}

/// A staging buffer lent to one chunk; its first `len` bytes are the chunk.
struct Lent {
    buf: Vec<u8>,
    len: usize,
    from: &'static Staging,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut state = self.from.lock();
        state.lent -= 1;
        if state.idle.len() < KEEP {
            state.idle.push(std::mem::take(&mut self.buf));
        }
        drop(state);
        self.from.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn pool() -> &'static Staging {
        Box::leak(Box::new(Staging::new()))
    }

    #[test]
    fn chunks_are_copied_and_buffers_reused() {
        let s = pool();
        let data: Vec<u8> = (0..SIZE).map(|i| i as u8).collect();
        let a = s.stage(&data, || false);
        assert_eq!(&a[..], &data[..]);
        assert_eq!(s.counts(), (0, 1));
        let part = a.slice(1..3);
        drop(a);
        // A slice of the chunk still holds the buffer.
        assert_eq!(s.counts(), (0, 1));
        drop(part);
        assert_eq!(s.counts(), (1, 0));
        // The next chunk, shorter, reuses it and shows only its own bytes.
        let b = s.stage(&data[..SIZE / 2], || false);
        assert_eq!(&b[..], &data[..SIZE / 2]);
        assert_eq!(s.counts(), (0, 1));
        // Small copies stay plain.
        let c = s.stage(&data[..100], || false);
        assert_eq!(&c[..], &data[..100]);
        assert_eq!(s.counts(), (0, 1));
    }

    #[test]
    fn a_full_pool_waits_for_a_buffer_and_gives_up_on_a_dead_connection() {
        let s = pool();
        let data = vec![5u8; SIZE];
        let mut held: Vec<Bytes> = (0..LIMIT).map(|_| s.stage(&data, || false)).collect();
        assert_eq!(s.counts(), (0, LIMIT));
        // Full: the next chunk waits until one comes back.
        let waiter = std::thread::spawn(move || s.stage(&data, || false));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "a full pool must make the copy wait");
        held.pop();
        let got = waiter.join().unwrap();
        assert_eq!(got.len(), SIZE);
        assert_eq!(s.counts(), (0, LIMIT));
        // With the connection gone, a waiting copy does not hang.
        let dead = Arc::new(AtomicBool::new(false));
        let flag = dead.clone();
        let waiter = std::thread::spawn(move || s.stage(&[1u8; SIZE], move || flag.load(Ordering::SeqCst)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!waiter.is_finished());
        dead.store(true, Ordering::SeqCst);
        assert_eq!(waiter.join().unwrap().len(), SIZE);
        assert_eq!(s.counts(), (0, LIMIT), "a plain copy takes no buffer");
        drop(held);
        drop(got);
        assert_eq!(s.counts(), (KEEP, 0));
    }
}
