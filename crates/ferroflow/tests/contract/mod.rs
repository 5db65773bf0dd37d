//! Contract tests that every implementation of the context traits passes unchanged.

#[macro_use]
pub mod journal_store;
#[macro_use]
pub mod task_queue;
