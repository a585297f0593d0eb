//! iceprod-queue: the queue module (SPEC §6). Owns the queue cycle of every grid: reconcile
//! the database with what the grid reports, reset stuck tasks, buffer jobs, queue tasks
//! within `tasks_on_queue`, write submit folders, submit, and record grid ids. Grid commands
//! run as child processes on command workers; nothing here blocks the queue's loop.

pub mod error;
pub mod grids;

pub use error::QueueError;
