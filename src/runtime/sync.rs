//! Two helpers every threaded part of the runtime needs, written once: taking a lock that a
//! panicking thread may have poisoned, and the text of a caught panic.

use std::any::Any;
use std::sync::{Mutex, MutexGuard};

/// Takes `m` even when poisoned. A stage that panics is reported as failed on its own; the data
/// behind rcaflow's locks (counters, queues, records updated in one step) stays consistent, so
/// the others carry on rather than panic in turn.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The message of a caught panic (`panic!` with a literal or a formatted string).
pub fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}
