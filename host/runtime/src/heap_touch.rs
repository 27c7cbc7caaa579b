//! Whether a version's calls ask the guest to write its heap's data pages when they start.
//!
//! wasmtime resets a pooled memory slot by copying the image back over the pages written since
//! the slot was mapped, at most 32 runs of them, and unmapping everything after the 32nd run;
//! an unmapped page faults again in the next call that writes it. A guest that writes its
//! heap's data pages at call start (the JS runtime's `heap_pages::touch`) turns them into one
//! run, so nothing is unmapped — but then every one of those pages is copied back after every
//! call, ~10 % of the CPU of a small mutation whose own writes would have fitted in 32 runs.
//! So the host asks for the touch only while it pays: calls are counted in windows, and a
//! window in which a quarter of the calls took many minor faults turns the touch on for the
//! next few windows. Once touched, a slot keeps its pages resident (written pages stay
//! private), so the faults usually stop for good after the touch is turned off again.
//! A slot's first call always faults (the image is mapped, not copied); those are a few calls
//! per window at most and do not turn the touch on.

use std::sync::atomic::{AtomicU32, Ordering};

/// Calls per decision.
const WINDOW: u32 = 64;
/// Windows the touch stays on once a window asked for it.
const HOLD: u32 = 4;

/// Per-version state of the decision.
#[derive(Debug)]
pub(crate) struct HeapTouch {
    /// Minor faults that make a call a faulting one; 0 asks every call to touch.
    threshold: u64,
    /// Calls recorded (wrapping; a multiple of [`WINDOW`] ends a window).
    calls: AtomicU32,
    /// Faulting calls of the current window.
    faulting: AtomicU32,
    /// Windows left with the touch on.
    hold: AtomicU32,
}

impl HeapTouch {
    /// A decision that starts with the touch off.
    pub(crate) fn new(threshold: u64) -> HeapTouch {
        HeapTouch { threshold, calls: AtomicU32::new(0), faulting: AtomicU32::new(0), hold: AtomicU32::new(0) }
    }

    /// Whether the next call should touch its heap.
    pub(crate) fn active(&self) -> bool {
        self.threshold == 0 || self.hold.load(Ordering::Relaxed) > 0
    }

    /// Records the minor faults a call took; may end a window and decide the next ones.
    pub(crate) fn record(&self, faults: u64) {
        if faults >= self.threshold {
            self.faulting.fetch_add(1, Ordering::Relaxed);
        }
        // Races between workers can shift a call into the neighbouring window: a heuristic,
        // and the counts stay bounded either way.
        if !self.calls.fetch_add(1, Ordering::Relaxed).wrapping_add(1).is_multiple_of(WINDOW) {
            return;
        }
        let faulting = self.faulting.swap(0, Ordering::Relaxed);
        if faulting * 4 >= WINDOW {
            self.hold.store(HOLD, Ordering::Relaxed);
        } else {
            let _ = self.hold.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| h.checked_sub(1));
        }
    }
}

/// Minor page faults of the calling thread so far (0 where the platform does not tell).
pub(crate) fn thread_minor_faults() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `usage` is a valid, writable rusage; RUSAGE_THREAD reads the calling thread.
        if unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) } == 0 {
            // SAFETY: getrusage succeeded, so it filled the struct (and it was zeroed before).
            return unsafe { usage.assume_init() }.ru_minflt as u64;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(touch: &HeapTouch, faults: &[u64], windows: u32) {
        for i in 0..WINDOW * windows {
            touch.record(faults[i as usize % faults.len()]);
        }
    }

    #[test]
    fn calls_without_faults_never_touch() {
        let touch = HeapTouch::new(8);
        windows(&touch, &[0, 1, 7], 10);
        assert!(!touch.active());
    }

    #[test]
    fn a_slots_first_calls_do_not_turn_the_touch_on() {
        let touch = HeapTouch::new(8);
        for i in 0..WINDOW {
            touch.record(if i < 6 { 120 } else { 0 });
        }
        assert!(!touch.active());
    }

    #[test]
    fn a_faulting_window_turns_the_touch_on_for_a_few_windows() {
        let touch = HeapTouch::new(8);
        windows(&touch, &[18, 0, 0, 0], 1);
        assert!(touch.active(), "a quarter of the calls faulted");
        // The touch stops the faults; it stays on for HOLD windows, then goes off.
        for _ in 0..HOLD - 1 {
            windows(&touch, &[0], 1);
            assert!(touch.active());
        }
        windows(&touch, &[0], 1);
        assert!(!touch.active());
        // Faults coming back turn it on again.
        windows(&touch, &[20], 1);
        assert!(touch.active());
    }

    #[test]
    fn threshold_zero_always_touches() {
        let touch = HeapTouch::new(0);
        assert!(touch.active());
        windows(&touch, &[0], 3);
        assert!(touch.active());
    }

    #[test]
    fn the_thread_fault_counter_counts_this_threads_faults() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let before = thread_minor_faults();
        // Fresh anonymous memory faults when first written (once per page, or per huge page).
        let mut block = vec![0u8; 64 << 20];
        for i in (0..block.len()).step_by(4096) {
            block[i] = 1;
        }
        std::hint::black_box(&block);
        assert!(thread_minor_faults() - before >= 16, "{} faults", thread_minor_faults() - before);
    }
}
