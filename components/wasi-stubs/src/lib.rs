//! Replacements for the WASI preview 1 functions a guest's libc and std import.
//!
//! The guest SDK rewrites every `wasi_snapshot_preview1` import of a guest module into a call
//! of the export `kiln_wasi_<name>` defined here (imports without a stub here return
//! `ENOTCAPABLE` or trap). So a component never imports WASI: writes to stdout/stderr become
//! log lines, clocks read the call's frozen time, randomness comes from the call's seed, and
//! there are no files, arguments or environment. The guest installs [`Hooks`] per call to
//! connect these to its platform imports.

use std::cell::Cell;

const ESUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EINVAL: i32 = 28;
const ENOTCAPABLE: i32 = 76;

/// What the stubs call to reach the platform.
#[derive(Clone, Copy)]
pub struct Hooks {
    /// Receives bytes written to file descriptor 1 (stdout) or 2 (stderr).
    pub write: fn(fd: u32, bytes: &[u8]),
    /// The current time in nanoseconds since the Unix epoch.
    pub now_ns: fn() -> u64,
    /// Fills a buffer with random bytes.
    pub fill_random: fn(&mut [u8]),
}

fn ignore_write(_: u32, _: &[u8]) {}
fn zero_time() -> u64 {
    0
}
fn zero_fill(buf: &mut [u8]) {
    buf.fill(0);
}

thread_local! {
    static HOOKS: Cell<Hooks> = const {
        Cell::new(Hooks { write: ignore_write, now_ns: zero_time, fill_random: zero_fill })
    };
}

/// Installs the hooks used from now on (until replaced).
pub fn install(hooks: Hooks) {
    HOOKS.with(|h| h.set(hooks));
}

/// Restores the inert hooks: writes dropped, time zero, random bytes zero.
pub fn reset() {
    install(Hooks { write: ignore_write, now_ns: zero_time, fill_random: zero_fill });
}

fn hooks() -> Hooks {
    HOOKS.with(Cell::get)
}

/// Reads the `(ptr, len)` pairs of an iovec array.
///
/// # Safety
/// `iovs` must point at `len` valid iovecs in this module's memory.
unsafe fn iovecs<'a>(iovs: *const u32, len: usize) -> impl Iterator<Item = &'a [u8]> {
    (0..len).map(move |i| {
        // SAFETY: the caller guarantees `len` iovecs of two u32 each.
        let (ptr, n) = unsafe { (*iovs.add(2 * i), *iovs.add(2 * i + 1)) };
        // SAFETY: an iovec describes readable memory of the module.
        unsafe { std::slice::from_raw_parts(ptr as usize as *const u8, n as usize) }
    })
}

/// `fd_write`: stdout and stderr become log output; other descriptors do not exist.
///
/// # Safety
/// Called by libc with valid iovecs and an out-pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_wasi_fd_write(fd: i32, iovs: *const u32, iovs_len: i32, nwritten: *mut u32) -> i32 {
    if fd != 1 && fd != 2 {
        return EBADF;
    }
    let mut total = 0u32;
    // SAFETY: forwarded from the caller's contract.
    for chunk in unsafe { iovecs(iovs, iovs_len as usize) } {
        (hooks().write)(fd as u32, chunk);
        total += chunk.len() as u32;
    }
    // SAFETY: libc passes a valid out-pointer.
    unsafe { *nwritten = total };
    ESUCCESS
}

/// `fd_read`: stdin is empty; nothing else exists.
///
/// # Safety
/// Called by libc with a valid out-pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_wasi_fd_read(fd: i32, _iovs: i32, _len: i32, nread: *mut u32) -> i32 {
    if fd != 0 {
        return EBADF;
    }
    // SAFETY: libc passes a valid out-pointer.
    unsafe { *nread = 0 };
    ESUCCESS
}

/// `fd_fdstat_get`: descriptors 0–2 are character devices; nothing else exists.
///
/// # Safety
/// Called by libc with a valid 24-byte out buffer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_wasi_fd_fdstat_get(fd: i32, stat: *mut u8) -> i32 {
    if !(0..=2).contains(&fd) {
        return EBADF;
    }
    // SAFETY: fdstat is 24 bytes: filetype u8, flags u16, then two u64 rights.
    unsafe {
        std::ptr::write_bytes(stat, 0, 24);
        *stat = 2; // character device
        std::ptr::write_unaligned(stat.add(8) as *mut u64, u64::MAX);
        std::ptr::write_unaligned(stat.add(16) as *mut u64, u64::MAX);
    }
    ESUCCESS
}

/// `fd_close`, `fd_seek`, `fd_fdstat_set_flags`: only the standard streams exist.
#[unsafe(no_mangle)]
pub extern "C" fn kiln_wasi_fd_close(fd: i32) -> i32 {
    if (0..=2).contains(&fd) { ESUCCESS } else { EBADF }
}

/// `fd_seek`: the standard streams cannot seek.
#[unsafe(no_mangle)]
pub extern "C" fn kiln_wasi_fd_seek(fd: i32, _offset: i64, _whence: i32, _new: i32) -> i32 {
    if (0..=2).contains(&fd) { EINVAL } else { EBADF }
}

/// `fd_prestat_get`: there are no preopened directories, so no file can be opened.
#[unsafe(no_mangle)]
pub extern "C" fn kiln_wasi_fd_prestat_get(_fd: i32, _buf: i32) -> i32 {
    EBADF
}

/// `environ_sizes_get` and `args_sizes_get`: empty.
///
/// # Safety
/// Called by libc with valid out-pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_wasi_environ_sizes_get(count: *mut u32, size: *mut u32) -> i32 {
    // SAFETY: libc passes valid out-pointers.
    unsafe {
        *count = 0;
        *size = 0;
    }
    ESUCCESS
}

/// `environ_get`: nothing to copy.
#[unsafe(no_mangle)]
pub extern "C" fn kiln_wasi_environ_get(_environ: i32, _buf: i32) -> i32 {
    ESUCCESS
}

/// `args_sizes_get`: no arguments.
///
/// # Safety
/// Called by libc with valid out-pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_wasi_args_sizes_get(count: *mut u32, size: *mut u32) -> i32 {
    // SAFETY: forwarded.
    unsafe { kiln_wasi_environ_sizes_get(count, size) }
}

/// `args_get`: nothing to copy.
#[unsafe(no_mangle)]
pub extern "C" fn kiln_wasi_args_get(_argv: i32, _buf: i32) -> i32 {
    ESUCCESS
}

/// `clock_time_get`: every clock reads the call's time from the platform.
///
/// # Safety
/// Called by libc with a valid out-pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_wasi_clock_time_get(id: i32, _precision: i64, time: *mut u64) -> i32 {
    if !(0..=3).contains(&id) {
        return EINVAL;
    }
    // SAFETY: libc passes a valid, aligned out-pointer.
    unsafe { *time = (hooks().now_ns)() };
    ESUCCESS
}

/// `clock_res_get`: a nominal resolution of 1 ms (the platform's time is in milliseconds).
///
/// # Safety
/// Called by libc with a valid out-pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_wasi_clock_res_get(_id: i32, res: *mut u64) -> i32 {
    // SAFETY: libc passes a valid, aligned out-pointer.
    unsafe { *res = 1_000_000 };
    ESUCCESS
}

/// `random_get`: bytes from the call's seeded generator.
///
/// # Safety
/// Called by libc with a writable buffer of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kiln_wasi_random_get(buf: *mut u8, len: i32) -> i32 {
    // SAFETY: the caller provides `len` writable bytes.
    let slice = unsafe { std::slice::from_raw_parts_mut(buf, len as usize) };
    (hooks().fill_random)(slice);
    ESUCCESS
}

/// `sched_yield`: nothing to yield to.
#[unsafe(no_mangle)]
pub extern "C" fn kiln_wasi_sched_yield() -> i32 {
    ESUCCESS
}

/// `poll_oneoff`: a guest cannot sleep or wait.
#[unsafe(no_mangle)]
pub extern "C" fn kiln_wasi_poll_oneoff(_in: i32, _out: i32, _n: i32, _nevents: i32) -> i32 {
    ENOTCAPABLE
}

/// `proc_exit`: a guest cannot exit the host; it traps instead.
#[unsafe(no_mangle)]
pub extern "C" fn kiln_wasi_proc_exit(_code: i32) {
    core::arch::wasm32::unreachable()
}
