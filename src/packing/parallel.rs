//! The thread runner that packs several layers side by side.
//!
//! Layer producers (walking files, writing tar, feeding the compressor) run
//! on plain threads here, while rayon's pool stays free for what the
//! producers hand it: compressing gzip chunks. Results come back in the
//! order the items were given.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs `f` on every item, on `threads` plain threads, and returns the
/// results in order.
pub fn run_parallel<T: Send, R: Send>(items: Vec<T>, threads: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let n = items.len();
    let threads = threads.clamp(1, n.max(1));
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let results: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let item = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take().expect("each item is taken once");
                let r = f(item);
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
    });
    results.into_iter().map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every item ran")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_of_the_items() {
        for threads in [1, 3, 100] {
            let out = run_parallel((0..50).collect(), threads, |i: u32| i * 2);
            assert_eq!(out, (0..50).map(|i| i * 2).collect::<Vec<_>>());
        }
        assert!(run_parallel(Vec::<u8>::new(), 2, |x| x).is_empty());
    }
}
