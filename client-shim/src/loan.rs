//! The caller's memory lent to quinn instead of a staging copy of it: for the length of a
//! synchronous host-to-device copy, or, from page-locked memory, until the next synchronisation.
//!
//! Why: a 256 MiB copy otherwise passes over the caller's bytes twice on the client (staging
//! copy, then quinn's packet encryption), on a machine where memory traffic is what large copies
//! spend. quinn keeps each chunk until the server has acknowledged it (for retransmission) and
//! drops it then; the server's reply to the copy's last chunk carries those acknowledgements, so
//! the copy seldom waits for them after the reply.
//!
//! The rule that makes it sound: [`scope`] does not return (not even by unwinding) until quinn
//! has let go of every chunk lent in it, and the lent memory is borrowed for the whole call.
//! quinn lets go on acknowledgement, on a reset stream, or when the connection's state is
//! dropped, which the I/O thread's end does (its runtime and every handle of the connection go
//! with it), so the wait ends even when the connection is lost.
//!
//! Asynchronous copies from page-locked memory lend it too ([`lend_pinned`]), as the driver's DMA
//! reads page-locked memory after the call has returned: that memory is this process's (the
//! shim's own cuMemAllocHost allocations, or ranges registered with cuMemHostRegister), and
//! cuMemFreeHost / cuMemHostUnregister wait for the loans made before them ([`PINNED`]), as does
//! every synchronising call, so the application may change the bytes once it has synchronised.

use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Loans out in the process, of every kind: while there are some, somebody must drive the
/// connection, so that the acknowledgements that end them are read (see `drive`).
static LENT: AtomicUsize = AtomicUsize::new(0);

/// How many loans are out.
pub fn outstanding() -> usize {
    LENT.load(Ordering::SeqCst)
}

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
        LENT.fetch_add(1, Ordering::SeqCst);
        Bytes::from_owner(Loan { ptr: data.as_ptr(), len: data.len(), back: Back::Scope(self.count.clone()) })
    }

    /// Chunks still lent.
    pub fn outstanding(&self) -> usize {
        *self.count.lock()
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        let mut out = self.count.lock();
        if *out > 0 {
            crate::drive::poke_io();
        }
        while *out > 0 {
            out = self.count.back.wait(out).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One lent slice.
struct Loan {
    ptr: *const u8,
    len: usize,
    back: Back,
}

/// Where a loan reports its return.
enum Back {
    Scope(Arc<Count>),
    Pinned(u64),
}

// SAFETY: a Loan only reads memory that stays valid and unchanged until the Loan is dropped (its
// scope keeps it borrowed; or, for page-locked memory, the contract of `lend_pinned`); reading
// such bytes from another thread (quinn's I/O thread) is sound.
unsafe impl Send for Loan {}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is a `&'a [u8]` given to `Scope::lend`, whose `scope` does not
        // return while this Loan exists, or page-locked memory given to `lend_pinned`, which is
        // not freed while this Loan exists; either way live and unchanged.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        LENT.fetch_sub(1, Ordering::SeqCst);
        match &self.back {
            Back::Scope(count) => {
                let mut out = count.lock();
                *out -= 1;
                if *out == 0 {
                    count.back.notify_all();
                }
            }
            Back::Pinned(id) => PINNED.returned(*id),
        }
    }
}

/// Loans of page-locked memory, numbered in the order they were made.
pub struct Pinned {
    state: Mutex<PinnedState>,
    back: Condvar,
}

struct PinnedState {
    next: u64,
    out: BTreeSet<u64>,
}

/// The process's loans of page-locked memory.
pub static PINNED: Pinned = Pinned { state: Mutex::new(PinnedState { next: 0, out: BTreeSet::new() }), back: Condvar::new() };

impl Pinned {
    fn lock(&self) -> MutexGuard<'_, PinnedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn returned(&self, id: u64) {
        let mut state = self.lock();
        let was_first = state.out.first() == Some(&id);
        state.out.remove(&id);
        if was_first {
            self.back.notify_all();
        }
    }

    /// A mark: [`Pinned::wait_before`] it waits for the loans made until now, not later ones
    /// (another thread streaming copies must not hold up this one's synchronisation).
    pub fn mark(&self) -> u64 {
        self.lock().next
    }

    /// Waits until every loan made before `mark` is back.
    pub fn wait_before(&self, mark: u64) {
        let mut state = self.lock();
        while state.out.first().is_some_and(|&first| first < mark) {
            state = self.back.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// `data` as a payload without copying it, for an asynchronous copy that returns at once.
///
/// # Safety
/// `data` must lie in page-locked memory of this process that is freed or unregistered only by
/// cuMemFreeHost / cuMemHostUnregister (which call [`Pinned::wait_before`] first), and that the
/// application does not change before it has synchronised (the driver's own rule for
/// asynchronous copies from page-locked memory; synchronising calls wait for these loans).
pub unsafe fn lend_pinned(data: &[u8]) -> Bytes {
    let id = {
        let mut state = PINNED.lock();
        let id = state.next;
        state.next += 1;
        state.out.insert(id);
        id
    };
    LENT.fetch_add(1, Ordering::SeqCst);
    Bytes::from_owner(Loan { ptr: data.as_ptr(), len: data.len(), back: Back::Pinned(id) })
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

    #[test]
    fn a_mark_waits_for_the_pinned_loans_before_it_and_not_for_later_ones() {
        let memory = vec![3u8; 8192];
        // SAFETY: `memory` outlives every loan (each is dropped below, before it).
        let early = unsafe { lend_pinned(&memory[..4096]) };
        let mark = PINNED.mark();
        let late = unsafe { lend_pinned(&memory[4096..]) };
        let started = Instant::now();
        let giver = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(early);
        });
        PINNED.wait_before(mark);
        assert!(started.elapsed() >= Duration::from_millis(100), "returned before the earlier loan was back");
        // The later loan is still out, and did not hold the wait up.
        assert_eq!(&late[..], &memory[4096..]);
        PINNED.wait_before(mark);
        drop(late);
        giver.join().unwrap();
        PINNED.wait_before(PINNED.mark());
    }
}
