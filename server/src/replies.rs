//! A lane's replies, in the order they are made, on their way to the lane's writer.
//!
//! Why not a channel: the connection's reader answers some calls itself
//! (`listener::answers_inline`), and it runs in the same task as the writer. A channel's send
//! wakes the receiving task even then, and on tokio's multi-thread runtime that wake of the
//! task already running, followed by the wake of quinn's connection driver when the writer
//! hands the reply over, pushed one of them to the shared run queue and unparked the other
//! worker thread, which found nothing to do and parked again. Measured with a single client
//! calling cuCtxSynchronize back to back: four context switches per call in cuwired against one
//! in a raw quinn ping-pong server on the same runtime. So the reader queues its replies without
//! waking anyone ([`Replies::push_here`]): the lane polls the writer right after the reader
//! (`biased` select), and the writer looks at the queue each time it is polled. Only the session's
//! worker thread, which runs elsewhere, wakes the writer ([`Replies::push`]).
//!
//! One queue for both keeps the order: the worker queues its replies before it says it is idle,
//! and the reader answers only when it is.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

pub struct Replies<T> {
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    queue: VecDeque<T>,
    waker: Option<Waker>,
    closed: bool,
}

impl<T> Default for Replies<T> {
    fn default() -> Self {
        Replies { inner: Mutex::new(Inner { queue: VecDeque::new(), waker: None, closed: false }) }
    }
}

impl<T> Replies<T> {
    /// Queues a reply from the writer's own task, which polls the writer next: no wake-up.
    pub fn push_here(&self, reply: T) {
        self.inner.lock().queue.push_back(reply);
    }

    /// Queues a reply from another thread and wakes the writer. False once the lane has ended
    /// (the reply is dropped).
    pub fn push(&self, reply: T) -> bool {
        let waker = {
            let mut inner = self.inner.lock();
            if inner.closed {
                return false;
            }
            inner.queue.push_back(reply);
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// The lane has ended: later pushes are refused, and what is queued is dropped.
    pub fn close(&self) {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.queue.clear();
        inner.waker = None;
    }

    /// Ready when a reply is queued; otherwise the writer is woken by the next [`Self::push`].
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.lock();
        if !inner.queue.is_empty() {
            return Poll::Ready(());
        }
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The oldest reply queued.
    pub fn pop(&self) -> Option<T> {
        self.inner.lock().queue.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn replies_keep_their_order_and_only_pushes_from_elsewhere_wake() {
        let q = Replies::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(q.poll_ready(&mut cx).is_pending());
        // From the writer's task: no wake-up, but the next poll sees it.
        q.push_here(1);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert!(q.poll_ready(&mut cx).is_ready());
        // From elsewhere: queued behind, and the registered writer is woken once.
        assert!(q.push(2));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        q.push_here(3);
        assert_eq!((q.pop(), q.pop(), q.pop(), q.pop()), (Some(1), Some(2), Some(3), None));
        // Nothing queued: pending again, and a push wakes it.
        assert!(q.poll_ready(&mut cx).is_pending());
        assert!(q.push(4));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_closed_queue_refuses_and_drops() {
        let q = Replies::default();
        q.push_here(1);
        q.close();
        assert!(!q.push(2));
        assert_eq!(q.pop(), None);
    }
}
