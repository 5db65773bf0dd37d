//! Options crossing from Python as typed structs: each `#[derive(FromPyObject)]` struct here
//! reads the attributes of the dataclass of the same name in `ferroflow/_options.py`, so a
//! field added on one side and not the other fails loudly, by name, instead of shifting
//! positional arguments.

use std::sync::Arc;
use std::time::Duration;

use ferroflow::store::ContextUrl;
use ferroflow::{Durability, DurableStore, EngineConfig};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::error::to_py_err;
use crate::runtime;

/// Where a durable context keeps its runs (`ferroflow._options.StoreOptions`).
#[derive(FromPyObject)]
pub struct StoreOptions {
    /// `sqlite`, `redis` or `nats`.
    kind: String,
    /// The SQLite file's path, or the server's URL.
    location: String,
    /// The namespace on a server (ignored for a SQLite file).
    namespace: String,
}

impl StoreOptions {
    /// The store as the core's context reader names it.
    fn url(self) -> PyResult<ContextUrl> {
        let StoreOptions { kind, location, namespace } = self;
        match kind.as_str() {
            "sqlite" => Ok(ContextUrl::Sqlite(location)),
            "redis" => Ok(ContextUrl::Redis { url: location, namespace }),
            "nats" => Ok(ContextUrl::Nats { url: location, namespace }),
            other => Err(PyValueError::new_err(format!("no store of kind {other:?}: sqlite, redis or nats"))),
        }
    }
}

/// An engine's options (`ferroflow._options.EngineOptions`).
#[derive(FromPyObject)]
pub struct EngineOptions {
    retain_finished: usize,
    store: Option<StoreOptions>,
    lease_seconds: f64,
    durability: String,
    batch_window_seconds: f64,
    execute: bool,
    outage_timeout_seconds: f64,
    retention_seconds: Option<f64>,
}

/// A number of seconds as a duration, or a `ValueError` naming `what`: the one reader of
/// seconds handed in from Python.
pub fn seconds(what: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyValueError::new_err(format!("{what} must be a number of seconds >= 0, not {value}")))
}

impl EngineOptions {
    /// The engine's configuration, its store opened (with the GIL released), and the store's
    /// URL when it is a server's, for deleting its namespace.
    pub fn open(self, py: Python<'_>) -> PyResult<(EngineConfig, Option<ContextUrl>)> {
        let outage_timeout = seconds("outage_timeout", self.outage_timeout_seconds)?;
        let lease = seconds("lease", self.lease_seconds)?;
        if lease < Duration::from_millis(30) {
            return Err(PyValueError::new_err(format!(
                "lease must be at least 0.03 seconds, not {}",
                self.lease_seconds
            )));
        }
        let window = seconds("batch_window", self.batch_window_seconds)?;
        let durability = match self.durability.as_str() {
            "commit" => Durability::Commit,
            "batch" if !window.is_zero() && window <= Duration::from_secs(1) => Durability::Batch { window },
            "batch" => {
                return Err(PyValueError::new_err(format!(
                    "batch_window must be more than 0 and at most 1 second, not {}",
                    self.batch_window_seconds
                )));
            }
            other => {
                return Err(PyValueError::new_err(format!("durability must be 'commit' or 'batch', not {other:?}")));
            }
        };
        let url = self.store.map(StoreOptions::url).transpose()?;
        let store: Option<Arc<dyn DurableStore>> = match &url {
            Some(url) => Some(py.detach(|| runtime::handle().block_on(url.open())).map_err(to_py_err)?),
            None => None,
        };
        if !self.execute && store.is_none() {
            return Err(PyValueError::new_err("execute=False needs a durable context: workers must find the runs"));
        }
        let networked = url.filter(|url| !matches!(url, ContextUrl::Sqlite(_)));
        let config = EngineConfig {
            retain_finished: self.retain_finished,
            store,
            lease,
            durability,
            execute: self.execute,
            outage_timeout,
            retention: self.retention_seconds.map(|s| seconds("retention", s)).transpose()?,
        };
        Ok((config, networked))
    }
}
