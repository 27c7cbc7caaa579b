//! Checkpointing the WAL off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the threshold, so that
//! commit, and every commit queued behind it, waits while the WAL's pages are copied into the
//! database file and synced: ~25 ms at 16384 pages, a few times a second under load. Here a
//! checkpointer thread with a connection of its own copies the WAL while the writer goes on
//! committing (a PASSIVE checkpoint takes no lock a writer needs).
//!
//! SQLite starts the WAL over only when a transaction begins after every frame in it has been
//! copied, which a checkpoint running beside a busy writer rarely sees: the writer has always
//! appended another batch by the time the copy is synced. So once the checkpointer has caught up
//! to within a short tail, or stops gaining on the writer, the writer copies the rest itself
//! between two transactions, and its next transaction restarts the WAL. A WAL too short for
//! that to pay is checkpointed by the writer alone, as SQLite does.
//!
//! Only timing depends on this bookkeeping, never correctness: whichever connection
//! checkpoints, SQLite's own locks keep the file consistent and durable.

use std::cell::Cell;
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;
use rusqlite::hooks::Wal;

use crate::{Result, SqliteOptions, storage};

thread_local! {
    /// Frames in the WAL after the last commit of a connection on this thread (the WAL hook),
    /// taken by the next look: a thread can serve several connections in turn (the
    /// materializer's jobs run on shared blocking threads).
    static WAL_FRAMES: Cell<Option<u32>> = const { Cell::new(None) };
}

fn record_frames(_: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(Some(u32::try_from(frames).unwrap_or(0)));
    Ok(())
}

/// Frames the writer copies itself: a few group commits' worth.
const TAIL_FRAMES: u32 = 256;

/// Counts of checkpoints by who ran them (for tests and diagnostics).
#[derive(Default, Debug)]
pub struct CheckpointStats {
    /// Checkpoints run by the checkpointer thread.
    pub background: AtomicU64,
    /// Checkpoints the writer ran between two transactions.
    pub inline: AtomicU64,
}

struct State {
    /// The writer wants a checkpoint.
    wanted: bool,
    /// The checkpointer is copying.
    busy: bool,
    /// Frames of the current WAL known to be in the database file.
    backfilled: u32,
    /// Counts WAL restarts, so a checkpoint that finished before one does not count after it.
    generation: u64,
    /// Checkpoints the checkpointer has finished.
    rounds: u64,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    idle: Condvar,
}

/// The writer's side: decides after each transaction whether and where to checkpoint.
pub(crate) struct Checkpointing {
    path: PathBuf,
    options: SqliteOptions,
    /// WAL length at which copying starts.
    threshold: u32,
    /// WAL frames after the writer's previous transaction.
    seen: u32,
    /// The checkpointer's rounds the writer has looked at, and the tail left after the last.
    rounds_seen: u64,
    last_tail: Option<u32>,
    shared: Arc<Shared>,
    stats: Arc<CheckpointStats>,
    /// Started on first need, so an idle deployment has no extra thread or connection.
    thread: Option<JoinHandle<()>>,
    /// Set if the checkpointer could not be started: the writer then checkpoints itself.
    inline_only: bool,
}

impl Checkpointing {
    /// Turns SQLite's automatic checkpoint off on the writer's connection `conn` and watches
    /// its WAL instead.
    pub(crate) fn install(
        conn: &Connection,
        path: &Path,
        options: &SqliteOptions,
        stats: Arc<CheckpointStats>,
    ) -> Result<Checkpointing> {
        // The pragma installs SQLite's own WAL hook; ours replaces it.
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(storage)?;
        conn.wal_hook(Some(record_frames));
        WAL_FRAMES.set(None);
        Ok(Checkpointing {
            path: path.to_owned(),
            options: options.clone(),
            threshold: options.checkpoint_pages.max(1),
            seen: 0,
            rounds_seen: 0,
            last_tail: None,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    wanted: false,
                    busy: false,
                    backfilled: 0,
                    generation: 0,
                    rounds: 0,
                    closed: false,
                }),
                wake: Condvar::new(),
                idle: Condvar::new(),
            }),
            stats,
            thread: None,
            inline_only: !options.background_checkpoint || options.checkpoint_pages < 4 * TAIL_FRAMES,
        })
    }

    /// Called by the writer after each transaction on `conn`.
    pub(crate) fn after_transaction(&mut self, conn: &Connection) {
        // No commit since the last look: nothing changed.
        let Some(frames) = WAL_FRAMES.take() else { return };
        let mut state = self.shared.state.lock();
        if frames < self.seen {
            // The WAL was started over: what was copied belongs to the old one.
            state.generation += 1;
            state.backfilled = 0;
            self.last_tail = None;
        }
        self.seen = frames;
        if frames < self.threshold {
            return;
        }
        let overgrown = frames >= self.threshold.saturating_mul(4);
        if overgrown {
            // A checkpointer that cannot keep up must not let the WAL grow without bound.
            while state.busy {
                self.shared.idle.wait(&mut state);
            }
        }
        if state.busy {
            return;
        }
        let tail = frames.saturating_sub(state.backfilled);
        // A round that left no less behind than the one before it will not converge either.
        let mut stalled = false;
        if state.rounds != self.rounds_seen {
            self.rounds_seen = state.rounds;
            stalled = self.last_tail.is_some_and(|last| tail >= last);
            self.last_tail = Some(tail);
        }
        if self.inline_only || overgrown || stalled || tail <= TAIL_FRAMES {
            drop(state);
            self.stats.inline.fetch_add(1, Ordering::Relaxed);
            if let Some(done) = passive_checkpoint(conn) {
                let mut state = self.shared.state.lock();
                state.backfilled = state.backfilled.max(done);
            }
            return;
        }
        if !state.wanted {
            state.wanted = true;
            drop(state);
            self.start_thread();
            self.shared.wake.notify_one();
        }
    }

    fn start_thread(&mut self) {
        if self.thread.is_some() {
            return;
        }
        let started = open_checkpointer(&self.path, &self.options).and_then(|conn| {
            let (shared, stats) = (self.shared.clone(), self.stats.clone());
            std::thread::Builder::new()
                .name("kiln-sqlite-ckpt".into())
                .spawn(move || checkpointer_loop(conn, &shared, &stats))
                .map_err(storage)
        });
        match started {
            Ok(handle) => self.thread = Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "no background checkpointer; the writer checkpoints itself");
                self.inline_only = true;
                self.shared.state.lock().wanted = false;
            }
        }
    }
}

impl Drop for Checkpointing {
    fn drop(&mut self) {
        self.shared.state.lock().closed = true;
        self.shared.wake.notify_all();
        if let Some(handle) = self.thread.take() {
            let _ = handle.join();
        }
    }
}

fn open_checkpointer(path: &Path, options: &SqliteOptions) -> Result<Connection> {
    let conn = Connection::open(path).map_err(storage)?;
    let sync = if options.durable { "FULL" } else { "OFF" };
    conn.pragma_update(None, "synchronous", sync).map_err(storage)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(storage)?;
    conn.pragma_update(None, "mmap_size", 0).map_err(storage)?;
    Ok(conn)
}

/// Copies what it can of the WAL into the database file without waiting for any lock;
/// returns how many frames of the WAL are now in the file.
fn passive_checkpoint(conn: &Connection) -> Option<u32> {
    let row = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)));
    match row {
        // -1: another connection was checkpointing, or the file is not in WAL mode.
        Ok((_, done)) => u32::try_from(done).ok(),
        Err(e) => {
            tracing::warn!(error = %e, "WAL checkpoint failed");
            None
        }
    }
}

fn checkpointer_loop(conn: Connection, shared: &Shared, stats: &CheckpointStats) {
    loop {
        let generation = {
            let mut state = shared.state.lock();
            while !state.wanted && !state.closed {
                shared.wake.wait(&mut state);
            }
            if state.closed {
                return;
            }
            state.wanted = false;
            state.busy = true;
            state.generation
        };
        let span = tracing::debug_span!("sqlite_checkpoint");
        let done = span.in_scope(|| passive_checkpoint(&conn));
        stats.background.fetch_add(1, Ordering::Relaxed);
        let mut state = shared.state.lock();
        state.busy = false;
        state.rounds += 1;
        if let Some(done) = done
            && state.generation == generation
        {
            state.backfilled = state.backfilled.max(done);
        }
        drop(state);
        shared.idle.notify_all();
    }
}
