//! Links the runtime with a large shadow stack (QuickJS's C stack, in linear memory), so that
//! deep JavaScript recursion exhausts the engine's native stack first and ends in a clean
//! stack-overflow trap. Untouched stack pages cost nothing: instances map memory copy-on-write.
//!
//! The stack is 8 MiB and 256 KiB: the data (and the heap after it) then start 256 KiB past a
//! 2 MiB boundary, so a call's usual stack pages (the top ones) and a small app's heap share
//! one 2 MiB region. Resetting a memory slot scans the page table of every region the memory
//! spans that holds pages (`PAGEMAP_SCAN`), all 512 entries each: with the stack ending on the
//! boundary its top was a region of its own (trivial query: the scan's kernel time −28 %).

fn main() {
    println!("cargo:rustc-link-arg=-zstack-size=8650752");
}
