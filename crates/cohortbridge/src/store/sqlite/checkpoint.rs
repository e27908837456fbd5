//! Checkpoints of the write-ahead log on a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, so the
//! writer copies up to the whole log into the database file while every queued write waits.
//! Here SQLite's WAL hook only signals a second connection, which runs a PASSIVE checkpoint on
//! its own thread. A PASSIVE checkpoint copies the frames that no reader still needs and does
//! not wait for readers or the writer to finish (SQLite's `sqlite3_wal_checkpoint_v2` docs). When the log grows to four times the threshold anyway, for example
//! because the checkpoint thread is starved, the writer checkpoints inline as SQLite would.

use std::ffi::{c_char, c_int, c_void};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rusqlite::{ffi, Connection};

use crate::store::{StoreError, StoreResult};

/// The thread that checkpoints, and the flag the WAL hook raises for it.
pub(super) struct WalCheckpoints {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Signal {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    requested: bool,
    stopping: bool,
}

impl Signal {
    fn set(&self, change: impl FnOnce(&mut State)) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut state);
        self.wake.notify_one();
    }
}

impl WalCheckpoints {
    /// Starts the checkpoint thread on its own connection `conn` to the database.
    pub(super) fn start(conn: Connection) -> StoreResult<Self> {
        let signal = Arc::new(Signal::default());
        let thread_signal = signal.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run_requested_checkpoints(&conn, &thread_signal))
            .map_err(|e| {
                StoreError::Task(format!("could not start the WAL checkpoint thread: {e}"))
            })?;
        Ok(Self {
            signal,
            thread: Some(thread),
        })
    }
}

impl Drop for WalCheckpoints {
    fn drop(&mut self) {
        self.signal.set(|state| state.stopping = true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_requested_checkpoints(conn: &Connection, signal: &Signal) {
    loop {
        {
            let mut state = signal
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            while !state.requested && !state.stopping {
                state = signal
                    .wake
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if state.stopping {
                return;
            }
            state.requested = false;
        }
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        match result {
            Ok((log_frames, copied_frames)) => {
                tracing::debug!(log_frames, copied_frames, "WAL checkpoint finished")
            }
            Err(error) => {
                tracing::warn!(%error, "WAL checkpoint failed; the next commit retries it")
            }
        }
    }
}

/// The WAL hook's context: the signal to raise, and the log sizes in frames that trigger a
/// checkpoint on the thread and inline.
struct HookContext {
    signal: Arc<Signal>,
    signal_frames: c_int,
    inline_frames: c_int,
}

/// The write connection, with a WAL hook that requests a checkpoint from a [`WalCheckpoints`]
/// thread once the log reaches `threshold_bytes`. It dereferences to the connection.
pub(super) struct Writer {
    conn: Connection,
    /// Boxed so that its address, which SQLite keeps, does not change when the writer moves.
    hook: Option<Box<HookContext>>,
}

impl Writer {
    /// Wraps `conn`, which keeps SQLite's automatic checkpoint until [`Writer::checkpoint_on`]
    /// is called.
    pub(super) fn new(conn: Connection) -> Self {
        Self { conn, hook: None }
    }

    /// Turns off SQLite's automatic checkpoint and signals `checkpoints` instead once the log
    /// reaches `threshold_bytes`.
    pub(super) fn checkpoint_on(
        &mut self,
        checkpoints: &WalCheckpoints,
        threshold_bytes: i64,
    ) -> StoreResult<()> {
        let page_size: i64 = self
            .conn
            .pragma_query_value(None, "page_size", |row| row.get(0))?;
        // Setting the pragma replaces any WAL hook, so it comes before ours.
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let signal_frames =
            (threshold_bytes / page_size.max(512)).clamp(1, i64::from(c_int::MAX / 4));
        let signal_frames = signal_frames as c_int;
        let context = Box::new(HookContext {
            signal: checkpoints.signal.clone(),
            signal_frames,
            inline_frames: signal_frames * 4,
        });
        let pointer = &*context as *const HookContext as *mut c_void;
        // SAFETY: the handle is this open connection's. The context outlives the hook, because
        // `Drop` removes the hook before the box is freed, and `on_commit` only reads it.
        unsafe {
            ffi::sqlite3_wal_hook(self.conn.handle(), Some(on_commit), pointer);
        }
        self.hook = Some(context);
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.hook.is_some() {
            // SAFETY: the handle is still open; removing the hook ends SQLite's use of the
            // context pointer before the box is freed.
            unsafe {
                ffi::sqlite3_wal_hook(self.conn.handle(), None, std::ptr::null_mut());
            }
        }
    }
}

impl Deref for Writer {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl DerefMut for Writer {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// SQLite's WAL hook, called after each commit with the number of frames in the log.
extern "C" fn on_commit(
    context: *mut c_void,
    db: *mut ffi::sqlite3,
    name: *const c_char,
    frames: c_int,
) -> c_int {
    // SAFETY: the pointer is the `HookContext` that `Writer::checkpoint_on` registered, alive
    // until `Writer::drop` removes the hook.
    let context = unsafe { &*(context as *const HookContext) };
    if frames >= context.inline_frames {
        // SAFETY: SQLite passes its own open handle and database name to the hook.
        unsafe {
            ffi::sqlite3_wal_checkpoint_v2(
                db,
                name,
                ffi::SQLITE_CHECKPOINT_PASSIVE,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    } else if frames >= context.signal_frames {
        context.signal.set(|state| state.requested = true);
    }
    ffi::SQLITE_OK
}
