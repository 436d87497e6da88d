//! The per-thread context stack, kept in the shim as the driver keeps it: pushing, popping and
//! making a context current never cross the wire; every forwarded call carries the current one.

use std::cell::RefCell;

use cuwire_protocol::Ctx;

thread_local! {
    static STACK: RefCell<Vec<Ctx>> = const { RefCell::new(Vec::new()) };
}

/// The calling thread's current context (null when none).
pub fn current() -> Ctx {
    STACK.with(|s| s.borrow().last().copied().unwrap_or(Ctx::NULL))
}

pub fn push(ctx: Ctx) {
    STACK.with(|s| s.borrow_mut().push(ctx));
}

pub fn pop() -> Option<Ctx> {
    STACK.with(|s| s.borrow_mut().pop())
}

/// `cuCtxSetCurrent`: replaces the top of the stack; null pops it.
pub fn set_current(ctx: Ctx) {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        if ctx.is_null() {
            s.pop();
        } else if let Some(top) = s.last_mut() {
            *top = ctx;
        } else {
            s.push(ctx);
        }
    })
}

/// Removes a destroyed context from this thread's stack.
pub fn forget(ctx: Ctx) {
    STACK.with(|s| s.borrow_mut().retain(|c| *c != ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_semantics() {
        assert!(current().is_null());
        push(Ctx(1));
        push(Ctx(2));
        assert_eq!(current(), Ctx(2));
        set_current(Ctx(3));
        assert_eq!(current(), Ctx(3));
        assert_eq!(pop(), Some(Ctx(3)));
        assert_eq!(current(), Ctx(1));
        set_current(Ctx::NULL);
        assert!(current().is_null());
        set_current(Ctx(4));
        assert_eq!(current(), Ctx(4));
        forget(Ctx(4));
        assert!(current().is_null());
    }
}
