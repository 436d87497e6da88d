//! The caller's memory lent to quinn for the length of one synchronous host-to-device copy,
//! instead of a staging copy of it.
//!
//! Why: a 256 MiB copy otherwise passes over the caller's bytes twice on the client (staging
//! copy, then quinn's packet encryption), on a machine where memory traffic is what large copies
//! spend. quinn keeps each chunk until the server has acknowledged it (for retransmission) and
//! drops it then; the server's reply to the copy's last chunk carries those acknowledgements, so
//! the copy seldom waits for them after the reply.
//!
//! The rule that makes it sound: [`scope`] does not return (not even by unwinding) until quinn has
//! let go of every chunk lent in it, and the lent memory is borrowed for the whole call. quinn lets go on acknowledgement, on a reset stream, or when the
//! connection's state is dropped, which the I/O thread's end does (its runtime and every handle
//! of the connection go with it), so the wait ends even when the connection is lost.

use bytes::Bytes;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Chunks lent and not yet given back.
#[derive(Default)]
struct Count {
    out: Mutex<usize>,
    back: Condvar,
}

impl Count {
    fn lock(&self) -> MutexGuard<'_, usize> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs `f`, which may lend memory borrowed for the whole call, and returns once every loan is
/// back. A closure, as `std::thread::scope`, so that no caller can forget the scope and end the
/// borrow while a loan is out.
pub fn scope<'a, R>(f: impl FnOnce(&Scope<'a>) -> R) -> R {
    let scope = Scope { count: Arc::default(), _memory: std::marker::PhantomData };
    // The scope's drop waits, on return and on unwinding alike.
    f(&scope)
}

/// Lends slices of memory that outlives the scope.
pub struct Scope<'a> {
    count: Arc<Count>,
    _memory: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> Scope<'a> {
    /// `data` as a payload without copying it: the memory stays borrowed, so alive and
    /// unchanged, until [`scope`] returns, which is after every loan is dropped.
    pub fn lend(&self, data: &'a [u8]) -> Bytes {
        *self.count.lock() += 1;
        Bytes::from_owner(Loan { ptr: data.as_ptr(), len: data.len(), count: self.count.clone() })
    }

    /// Chunks still lent.
    pub fn outstanding(&self) -> usize {
        *self.count.lock()
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        let mut out = self.count.lock();
        while *out > 0 {
            out = self.count.back.wait(out).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One lent slice.
struct Loan {
    ptr: *const u8,
    len: usize,
    count: Arc<Count>,
}

// SAFETY: a Loan only reads memory that its scope keeps borrowed (shared, so unchanged) until
// the Loan is dropped; reading shared bytes from another thread (quinn's I/O thread) is sound.
unsafe impl Send for Loan {}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is a `&'a [u8]` given to `Scope::lend`; `scope` does not return
        // while this Loan exists, so that borrow is live and the bytes are unchanged.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        let mut out = self.count.lock();
        *out -= 1;
        if *out == 0 {
            self.count.back.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn lends_without_copying_and_counts_every_slice() {
        let data: Vec<u8> = (0..1000).map(|i| i as u8).collect();
        scope(|scope| {
            let a = scope.lend(&data[..500]);
            let b = scope.lend(&data[500..]);
            assert_eq!(a.as_ptr(), data.as_ptr(), "a loan is the caller's memory, not a copy");
            assert_eq!(&b[..], &data[500..]);
            assert_eq!(scope.outstanding(), 2);
            let part = a.slice(10..20);
            drop(a);
            assert_eq!(scope.outstanding(), 2, "a slice of a loan still holds it");
            drop(part);
            drop(b);
            assert_eq!(scope.outstanding(), 0);
        });
    }

    #[test]
    fn the_scope_ends_only_after_every_loan_is_back() {
        let data = vec![7u8; 4096];
        let started = Instant::now();
        let reader = scope(|scope| {
            let loan = scope.lend(&data);
            // Another thread (as quinn's I/O thread would) reads the loan, then lets it go.
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let sum: u64 = loan.iter().map(|&b| b as u64).sum();
                drop(loan);
                sum
            })
        });
        // `scope` returned: the loan must be gone, the reader done with it.
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(reader.join().unwrap(), 7 * 4096);
        drop(data);
    }
}
