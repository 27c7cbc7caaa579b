//! Keeps the pages of the snapshot's heap that a call writes in a few contiguous runs.
//!
//! Every call is a fresh instance of the snapshot. wasmtime resets a pooled memory slot by
//! scanning it for written pages (`PAGEMAP_SCAN`), copying the image back over at most 32 runs
//! of them and unmapping everything after the 32nd run. An unmapped page costs the next call
//! that writes it a copy-on-write fault, and with another thread of the process running on the
//! other core, a TLB-flush interrupt there. QuickJS writes reference counts and reuses free
//! chunks all over the heap it built while loading the app, in about as many runs as that
//! limit, so a third to two thirds of the slot was unmapped after each call. Writing once to
//! the heap's pages when a call starts makes the written pages a few runs: the slot keeps them
//! resident and resets them by copying, and calls no longer fault. Writing a byte back
//! unchanged leaves the memory as it was.
//!
//! The copy is paid by every call, so only pages holding data are touched: before the
//! snapshot, the allocator's free space is zeroed (the freed bundle, the compiler's scratch),
//! and the runs of non-zero pages, merged across their smallest gaps down to [`MAX_RUNS`],
//! are what a call touches. Free space a call allocates from adds a few runs of its own.
//!
//! A call touches only when the host asks (the call record's `touch-heap`): the host turns it
//! on while an app's calls take many faults and off again when they stop, since a slot keeps
//! the pages once written and a small call's own writes often fit in the 32 runs anyway.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The host's page size (the granularity of copy-on-write and of the reset scan).
const PAGE: usize = 4096;

/// The most heap a call touches: the reset copies every touched page back, so a very large
/// snapshot heap is touched only in its last (most recently built) part.
const MAX_TOUCHED_BYTES: usize = 2 << 20;

/// Runs touched per call, leaving room under wasmtime's 32 for the runs a call adds.
const MAX_RUNS: usize = 12;

/// Blocks held at once while zeroing free space.
const MAX_HELD: usize = 2048;

static RUNS: [[AtomicUsize; 2]; MAX_RUNS] = [const { [AtomicUsize::new(0), AtomicUsize::new(0)] }; MAX_RUNS];
static RUN_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Addresses of the blocks held while zeroing (static, so not themselves in the heap).
static HELD: [AtomicUsize; MAX_HELD] = [const { AtomicUsize::new(0) }; MAX_HELD];
static HELD_SIZES: [AtomicUsize; MAX_HELD] = [const { AtomicUsize::new(0) }; MAX_HELD];

unsafe extern "C" {
    /// The first byte after the module's static data, where the allocator's heap begins
    /// (defined by the linker).
    static __heap_base: u8;
}

fn memory_bytes() -> usize {
    core::arch::wasm32::memory_size(0) * 65536
}

/// Zeroes the allocator's free space below `end`: takes every free block it can get (largest
/// first), zeroes the part below `end` and gives them all back. A block reaching past `end`
/// comes from the allocator's top (memory beyond is fresh, already zero), so it ends a size.
fn zero_free_space(end: usize) {
    let mut held = 0;
    let mut size = 64 << 10;
    while size >= 16 && held < MAX_HELD {
        let Ok(layout) = Layout::from_size_align(size, 8) else { break };
        while held < MAX_HELD {
            // SAFETY: a non-zero size; the block is written only within its size and freed
            // below with the same layout.
            let block = unsafe { System.alloc(layout) };
            if block.is_null() {
                break;
            }
            let below_end = end.saturating_sub(block as usize).min(size);
            // SAFETY: the block is `size` bytes long and ours.
            unsafe { block.write_bytes(0, below_end) };
            HELD[held].store(block as usize, Ordering::Relaxed);
            HELD_SIZES[held].store(size, Ordering::Relaxed);
            held += 1;
            if below_end < size {
                break;
            }
        }
        size /= 2;
    }
    for i in 0..held {
        let (block, size) = (HELD[i].swap(0, Ordering::Relaxed), HELD_SIZES[i].swap(0, Ordering::Relaxed));
        if let Ok(layout) = Layout::from_size_align(size, 8) {
            // SAFETY: allocated above with this layout and not freed yet.
            unsafe { System.dealloc(block as *mut u8, layout) };
        }
    }
}

fn page_has_data(page: usize) -> bool {
    // SAFETY: the page lies inside linear memory and is aligned for u64 reads.
    let words = unsafe { core::slice::from_raw_parts(page as *const u64, PAGE / 8) };
    words.iter().any(|&w| w != 0)
}

/// Prepares the snapshot's heap for [`touch`]: zeroes its free space and records the runs of
/// pages holding data (called at the end of pre-initialization, so they are part of the
/// snapshot).
pub(crate) fn record_snapshot_heap() {
    let end = memory_bytes();
    zero_free_space(end);
    let base = (&raw const __heap_base) as usize & !(PAGE - 1);
    let start = base.max(end.saturating_sub(MAX_TOUCHED_BYTES));
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for page in (start..end).step_by(PAGE) {
        if !page_has_data(page) {
            continue;
        }
        match runs.last_mut() {
            Some(last) if last.1 == page => last.1 = page + PAGE,
            _ => runs.push((page, page + PAGE)),
        }
    }
    // Merge across the smallest gaps: a touched gap costs its copy, a run costs a region.
    while runs.len() > MAX_RUNS {
        let Some(i) = (0..runs.len() - 1).min_by_key(|&i| runs[i + 1].0 - runs[i].1) else { break };
        runs[i].1 = runs[i + 1].1;
        runs.remove(i + 1);
    }
    for (slot, (from, to)) in RUNS.iter().zip(&runs) {
        slot[0].store(*from, Ordering::Relaxed);
        slot[1].store(*to, Ordering::Relaxed);
    }
    RUN_COUNT.store(runs.len(), Ordering::Relaxed);
}

/// Writes one byte of every recorded page of the snapshot's heap back unchanged.
pub(crate) fn touch() {
    for run in RUNS.iter().take(RUN_COUNT.load(Ordering::Relaxed)) {
        let (start, end) = (run[0].load(Ordering::Relaxed), run[1].load(Ordering::Relaxed));
        for addr in (start..end).step_by(PAGE) {
            let byte = addr as *mut u8;
            // SAFETY: the range lies inside linear memory (below its size at the snapshot,
            // and memory never shrinks), and the instance is single-threaded: no other code
            // runs between the read and the write of the same value.
            unsafe { byte.write_volatile(byte.read_volatile()) };
        }
    }
}
