//! `ferroflow serve`: the gRPC service of `ferroflow-server`, embedded in a Python process
//! whose engine also executes the served graphs' nodes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use ferroflow::{Engine, Workflow};
use ferroflow_server::{FerroflowService, Server, ServerConfig, ServerError, Tls};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::runtime;

/// A gRPC server running on the engine's runtime; `stop()` stops it.
#[pyclass(name = "Server", module = "ferroflow._native", frozen)]
pub struct PyServer {
    address: String,
    server: Mutex<Option<Server>>,
}

#[pymethods]
impl PyServer {
    /// Where it listens, as `host:port`.
    #[getter]
    fn address(&self) -> String {
        self.address.clone()
    }

    /// Stops serving: open watch streams end with UNAVAILABLE (naming the offset to watch
    /// again from), calls in progress get up to `timeout` seconds to finish. Stopping a
    /// stopped server does nothing.
    #[pyo3(signature = (timeout = 10.0))]
    fn stop(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let Some(server) = self.server.lock().expect("server lock").take() else { return Ok(()) };
        let limit = crate::options::seconds("timeout", timeout)?;
        // The timer is made inside the runtime: it needs its time driver.
        let stopped =
            py.detach(|| runtime::handle().block_on(async { tokio::time::timeout(limit, server.stop()).await }));
        match stopped {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(PyRuntimeError::new_err(error.to_string())),
            Err(_) => Err(PyRuntimeError::new_err(format!("calls in progress did not finish within {timeout} s"))),
        }
    }

    fn __repr__(&self) -> String {
        let state = if self.server.lock().expect("server lock").is_some() { "serving" } else { "stopped" };
        format!("<ferroflow Server {} {state}>", self.address)
    }
}

/// Starts serving `workflows` (executed by `engine`, their runs attached to
/// `attachment`) on `listen`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn serve(
    py: Python<'_>,
    engine: &Engine,
    workflows: Vec<Workflow>,
    attachment: Option<ferroflow::Attachment>,
    listen: &str,
    token: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_input_bytes: usize,
    allow_unauthenticated: bool,
) -> PyResult<PyServer> {
    let listen: SocketAddr = listen.parse().map_err(|_| {
        PyValueError::new_err(format!(
            "listen must be IP:PORT (an IP address and a port from 0 to 65535), not {}",
            ferroflow::limits::quote(listen)
        ))
    })?;
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|e| PyOSError::new_err(format!("cannot read {}: {e}", path.display())))
            };
            Some(Tls { cert_pem: read(&cert)?, key_pem: read(&key)? })
        }
        (None, None) => None,
        _ => return Err(PyValueError::new_err("TLS needs both tls_cert and tls_key")),
    };
    let service = FerroflowService::new(engine.clone(), workflows, attachment).with_max_input_bytes(max_input_bytes);
    let config = ServerConfig { listen, token, tls, allow_unauthenticated };
    let server = py.detach(|| runtime::handle().block_on(Server::start(service, config))).map_err(|e| match e {
        ServerError::Bind { .. } => PyOSError::new_err(e.to_string()),
        ServerError::Tls(_) | ServerError::Exposed { .. } | ServerError::EmptyToken => {
            PyValueError::new_err(e.to_string())
        }
        other => PyRuntimeError::new_err(other.to_string()),
    })?;
    Ok(PyServer { address: server.local_addr().to_string(), server: Mutex::new(Some(server)) })
}
