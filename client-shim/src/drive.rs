//! Who drives the connection's I/O: the thread that waits for a reply, or the I/O thread.
//!
//! Why: a synchronous call that hands its frame to an I/O thread and sleeps until that thread
//! hands the reply back pays two thread wake-ups per call on top of the network round trip; on
//! the 2-core development VM that was about 29 µs of a 106 µs cuCtxSynchronize (see the README's
//! performance section). So the connection's tasks (quinn's drivers, the lane's reader and
//! writer) live on one single-threaded tokio runtime that any thread may drive: a caller waiting
//! for its reply runs the runtime itself (`Runtime::block_on`), sends its frame, sleeps in the
//! socket's poll and is woken by the reply packet, as a raw quinn client is.
//!
//! The I/O thread drives only while something is under way that nobody waits for in a call:
//! fire-and-forget frames not yet written, asynchronous device-to-host copies still landing,
//! memory lent to quinn or staged until the server acknowledges it, a caller that cannot drive
//! (one inside a tokio runtime of its own). Otherwise it sleeps, and drives briefly every
//! [`TICK`] for quinn's timers (delayed acknowledgements, keep-alives, loss recovery), so an
//! idle connection's next call finds the runtime free and costs no hand-off. While the I/O thread
//! drives, a caller's block_on waits for the runtime and its reply is handed over as before.
//!
//! `CUWIRE_IO_THREAD=1` makes every caller wait on the I/O thread instead (the former way, for
//! comparison; `cuwire-bench` measures both).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// A connection's drive and runtime, for a ticket to wait on.
#[derive(Clone)]
pub struct Waiter {
    pub drive: Arc<Drive>,
    pub rt: Weak<tokio::runtime::Runtime>,
}

impl Waiter {
    pub fn wait<F: Future>(&self, reply: F) -> F::Output {
        self.drive.wait(&self.rt, reply)
    }

    /// Runs `f` inside the connection's runtime when this thread may drive it, directly
    /// otherwise. Why: a task woken from outside the runtime (the lane's writer, when a caller
    /// hands it a frame) is queued remotely, and the runtime's driver is woken with a write to
    /// its eventfd: one more system call per call (the raw quinn client makes none). Woken
    /// inside, it waits in the runtime's own queue for the caller's next drive, which is when it
    /// would have run anyway. When another thread drives, `block_on` polls `f` at once without
    /// waiting for the runtime.
    pub fn run_here<R>(&self, f: impl FnOnce() -> R) -> R {
        match self.drive.drivable(&self.rt) {
            Some(rt) => rt.block_on(async move { f() }),
            None => f(),
        }
    }
}

/// How often an otherwise idle I/O thread lets quinn's timers run.
const TICK: Duration = Duration::from_millis(20);
/// How often a busy I/O thread rechecks whether it is still needed, if nothing tells it.
const RECHECK: Duration = Duration::from_millis(1);

/// What the callers and the I/O thread share about who drives.
pub struct Drive {
    /// Frames handed to the lane's writer and not yet written to quinn.
    queued: AtomicUsize,
    /// Callers waiting for a reply without driving.
    undriven: AtomicUsize,
    /// The lane's tasks have ended (connection lost or closed).
    over: AtomicBool,
    /// The process is exiting and the lane is being closed.
    closing: AtomicBool,
    /// Whether callers may drive (not `CUWIRE_IO_THREAD=1`).
    callers_drive: bool,
    /// The I/O thread sleeps here while nothing needs it.
    sleeping: AtomicBool,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    /// Tells a busy I/O thread to recheck (from tasks on the runtime: a local wake-up).
    activity: tokio::sync::Notify,
}

impl Drive {
    pub fn new() -> Arc<Self> {
        let callers_drive = std::env::var("CUWIRE_IO_THREAD").map(|v| v != "1").unwrap_or(true);
        let drive = Arc::new(Drive {
            queued: AtomicUsize::new(0),
            undriven: AtomicUsize::new(0),
            over: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            callers_drive,
            sleeping: AtomicBool::new(false),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            activity: tokio::sync::Notify::new(),
        });
        *current().lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(&drive);
        drive
    }

    /// A frame is about to be handed to the writer (counted first, so the writer never counts
    /// below zero).
    pub fn will_queue(&self) {
        self.queued.fetch_add(1, Ordering::SeqCst);
    }

    /// A frame was handed to the writer. `waited`: its sender will wait for the reply (and
    /// drive); otherwise the I/O thread must see that it goes out.
    pub fn queued(&self, waited: bool) {
        if !waited || !self.callers_drive {
            self.poke();
        }
    }

    /// The process is exiting: the I/O thread drives the end of the lane.
    pub fn set_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.poke();
    }

    /// The writer has handed `n` frames to quinn.
    pub fn written(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::SeqCst);
        self.activity.notify_one();
    }

    /// The lane's tasks have ended.
    pub fn set_over(&self) {
        self.over.store(true, Ordering::SeqCst);
        self.activity.notify_one();
        self.poke();
    }

    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::SeqCst)
    }

    /// Whether the I/O thread must drive: something is under way that no caller drives.
    fn needed(&self) -> bool {
        !self.callers_drive
            || self.closing.load(Ordering::SeqCst)
            || self.queued.load(Ordering::SeqCst) > 0
            || self.undriven.load(Ordering::SeqCst) > 0
            || self.held()
    }

    /// Whether quinn or the lane still holds something a caller waits to get back: memory lent
    /// or staged until acknowledged, host destinations of device-to-host copies.
    fn held(&self) -> bool {
        crate::transport::landing_count() > 0 || crate::loan::outstanding() > 0 || crate::staging::STAGING.counts().1 > 0
    }

    /// Wakes the I/O thread if it sleeps. Whatever made it needed is visible before this call
    /// (SeqCst on both sides: either the sleeper sees the need, or this sees the sleeper).
    pub fn poke(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            let _guard = self.sleep_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_one();
        }
    }

    fn sleep(&self, timeout: Duration) {
        let guard = self.sleep_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.sleeping.store(true, Ordering::SeqCst);
        if !self.needed() && !self.is_over() {
            let _ = self.wake.wait_timeout(guard, timeout);
        }
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Drives the runtime while the I/O thread is needed, then lets what is ready run.
    async fn busy(&self) {
        while self.needed() && !self.is_over() {
            if !self.callers_drive {
                // The I/O thread drives all the time, as it did before callers could.
                self.activity.notified().await;
                continue;
            }
            tokio::select! {
                _ = self.activity.notified() => {}
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
        settle().await;
    }

    /// The runtime, if this thread may drive it: callers drive (not `CUWIRE_IO_THREAD=1`), this
    /// thread is not inside a runtime of its own (block_on would panic), and the I/O thread has
    /// not dropped it.
    fn drivable(&self, rt: &Weak<tokio::runtime::Runtime>) -> Option<Arc<tokio::runtime::Runtime>> {
        if self.callers_drive && tokio::runtime::Handle::try_current().is_err() {
            rt.upgrade()
        } else {
            None
        }
    }

    /// Waits for `reply`, driving the runtime on this thread where it can.
    pub fn wait<F: Future>(&self, rt: &Weak<tokio::runtime::Runtime>, reply: F) -> F::Output {
        if let Some(rt) = self.drivable(rt) {
            return rt.block_on(reply);
        }
        // Inside a runtime of the caller's own (block_on would panic), or the I/O thread's
        // runtime is gone: the I/O thread (or nobody, and then the reply fails) answers.
        self.undriven.fetch_add(1, Ordering::SeqCst);
        self.poke();
        let out = park_on(reply, spin_budget());
        self.undriven.fetch_sub(1, Ordering::SeqCst);
        out
    }

    /// The I/O thread's loop, until the lane's tasks have ended and what they left is settled.
    pub fn run_io_thread(&self, rt: &tokio::runtime::Runtime, exit_grace: Duration) {
        loop {
            if self.is_over() {
                // Let lent memory come back and the close reach the server; dropping the
                // runtime after this drops whatever quinn still holds.
                rt.block_on(async {
                    let _ = tokio::time::timeout(exit_grace, async {
                        while self.held() {
                            tokio::time::sleep(RECHECK).await;
                        }
                    })
                    .await;
                });
                return;
            }
            if self.needed() {
                rt.block_on(self.busy());
            } else {
                self.sleep(TICK);
                rt.block_on(settle());
            }
        }
    }
}

/// Lets the runtime poll its sockets and run every task that is ready (a task woken by I/O runs
/// after the next yield).
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

/// The process's connection's drive, for code that must wake its I/O thread without holding the
/// transport (a copy waiting for its lent memory to come back).
fn current() -> &'static Mutex<Weak<Drive>> {
    static CURRENT: OnceLock<Mutex<Weak<Drive>>> = OnceLock::new();
    CURRENT.get_or_init(|| Mutex::new(Weak::new()))
}

/// Wakes the I/O thread of the process's connection, if there is one.
pub fn poke_io() {
    let drive = current().lock().unwrap_or_else(|p| p.into_inner()).upgrade();
    if let Some(drive) = drive {
        drive.poke();
    }
}

/// How long a caller that waits on the I/O thread spins on its reply before it sleeps
/// (`CUWIRE_SPIN_US`, microseconds, default 0). Spinning saves the wake-up of a sleeping thread
/// when the reply comes within the spin, at the price of a busy core meanwhile: worth it where
/// the client host has cores to spare (not on a small machine shared with the server).
fn spin_budget() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var("CUWIRE_SPIN_US").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Duration::from_micros(us.min(10_000))
    })
}

/// Runs a future to completion on this thread without a runtime: it only waits (for a reply
/// some other thread's driving delivers), spinning on it for `spin` first.
fn park_on<F: Future>(future: F, spin: Duration) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let start = std::time::Instant::now();
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending if start.elapsed() < spin => std::hint::spin_loop(),
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> Arc<tokio::runtime::Runtime> {
        Arc::new(tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
    }

    fn start_io_thread(rt: &Arc<tokio::runtime::Runtime>, drive: &Arc<Drive>) -> std::thread::JoinHandle<()> {
        let (rt, drive) = (rt.clone(), drive.clone());
        std::thread::spawn(move || drive.run_io_thread(&rt, Duration::from_millis(100)))
    }

    /// A reply that a task of the connection's runtime delivers after a timer: it comes only if
    /// somebody drives that runtime.
    fn delayed_reply(rt: &tokio::runtime::Runtime, value: u32) -> tokio::sync::oneshot::Receiver<u32> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(value);
        });
        rx
    }

    #[test]
    fn a_waiting_caller_drives_the_runtime_itself() {
        let rt = runtime();
        let drive = Drive::new();
        // No I/O thread at all: only the caller's own driving can deliver the reply.
        let rx = delayed_reply(&rt, 7);
        assert_eq!(drive.wait(&Arc::downgrade(&rt), rx).unwrap(), 7);
    }

    #[test]
    fn a_caller_inside_a_runtime_of_its_own_is_answered_by_the_io_thread() {
        let rt = runtime();
        let drive = Drive::new();
        let io = start_io_thread(&rt, &drive);
        let rx = delayed_reply(&rt, 9);
        // block_on would panic in here; the wait must fall back to the I/O thread's driving.
        let callers_own = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got = callers_own.block_on(async { drive.wait(&Arc::downgrade(&rt), rx) });
        assert_eq!(got.unwrap(), 9);
        drive.set_over();
        io.join().unwrap();
    }

    #[test]
    fn fire_and_forget_work_is_driven_out_by_the_io_thread() {
        let rt = runtime();
        let drive = Drive::new();
        let io = start_io_thread(&rt, &drive);
        // A frame nobody waits for: the I/O thread must drive until it is written.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        drive.will_queue();
        {
            let drive = drive.clone();
            rt.spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                drive.written(1);
                let _ = done_tx.send(());
            });
        }
        drive.queued(false);
        done_rx.recv_timeout(Duration::from_secs(10)).expect("the I/O thread never drove the queued frame out");
        drive.set_over();
        io.join().unwrap();
    }
}
