//! Durable contexts named by URL, as on the command line of `ferroflow` and
//! `ferroflow-server`. The reader is the core's ([`ferroflow::store::ContextUrl`]), shared
//! with the Python package and Rust programs; this module keeps its names where the server's
//! users found them.

pub use ferroflow::store::{ContextError, ContextUrl, open};
