//! Keeps the pages of the snapshot's heap that a call writes in one contiguous run.
//!
//! Every call is a fresh instance of the snapshot. wasmtime resets a pooled memory slot by
//! scanning it for written pages (`PAGEMAP_SCAN`), copying the image back over at most 32 runs
//! of them and unmapping everything after the 32nd run. An unmapped page costs the next call
//! that writes it a copy-on-write fault, and with another thread of the process running on the
//! other core, a TLB-flush interrupt there. QuickJS writes reference counts and reuses free
//! chunks all over the heap it built while loading the app, in about as many runs as that
//! limit, so a third to two thirds of the slot was unmapped after each call. Writing once to
//! every page of that heap when a call starts makes the written pages one run: the slot keeps
//! them resident and resets them by copying, and calls no longer fault. Writing a byte back
//! unchanged leaves the memory as it was.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The host's page size (the granularity of copy-on-write and of the reset scan).
const PAGE: usize = 4096;

/// The most heap a call touches: the reset copies every touched page back, so a very large
/// snapshot heap is touched only in its last (most recently built) part.
const MAX_TOUCHED_BYTES: usize = 2 << 20;

static START: AtomicUsize = AtomicUsize::new(0);
static END: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" {
    /// The first byte after the module's static data, where the allocator's heap begins
    /// (defined by the linker).
    static __heap_base: u8;
}

/// Records the snapshot's heap (called at the end of pre-initialization, so the range is
/// part of the snapshot).
pub(crate) fn record_snapshot_heap() {
    let end = core::arch::wasm32::memory_size(0) * 65536;
    let base = (&raw const __heap_base) as usize & !(PAGE - 1);
    START.store(base.max(end.saturating_sub(MAX_TOUCHED_BYTES)), Ordering::Relaxed);
    END.store(end, Ordering::Relaxed);
}

/// Writes one byte of every page of the snapshot's heap back unchanged.
pub(crate) fn touch() {
    let (start, end) = (START.load(Ordering::Relaxed), END.load(Ordering::Relaxed));
    for addr in (start..end).step_by(PAGE) {
        let byte = addr as *mut u8;
        // SAFETY: the range lies inside linear memory (below its size at the snapshot, and
        // memory never shrinks), and the instance is single-threaded: no other code runs
        // between the read and the write of the same value.
        unsafe { byte.write_volatile(byte.read_volatile()) };
    }
}
