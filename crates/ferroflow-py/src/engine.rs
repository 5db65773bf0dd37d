//! `ferroflow._native.Engine` and `Workflow`: the engine and compiled graphs as Python
//! objects. Every engine call is made with the GIL released, since the engine's threads
//! need it to run bodies.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferroflow::store::ContextUrl;
use ferroflow::{Engine, Event, EventKind, RunQuery, RunStatus, StartOptions, Value, Workflow};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::asyncio::PyEventLoop;
use crate::batch::Batch;
use crate::delivery::{forward_events, watch_until};
use crate::error::to_py_err;
use crate::options::{self, EngineOptions};
use crate::records::{error_to_py, event_to_py, record_to_py, snapshot_to_py};
use crate::run::PyRun;
use crate::runtime;
use crate::value::{to_py, wrap};
use crate::workflow::PyWorkflow;

/// The in-memory engine.
#[pyclass(module = "ferroflow._native", name = "Engine", frozen)]
pub struct PyEngine {
    /// `None` once closed ([`PyEngine::close`]): dropping it lets the store go.
    engine: RwLock<Option<Engine>>,
    /// A networked store's URL and namespace, for [`PyEngine::delete_namespace`].
    admin: Option<ContextUrl>,
}

impl PyEngine {
    /// The engine, or `ContextClosedError` once it was closed.
    fn engine(&self) -> PyResult<Engine> {
        self.engine.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| to_py_err(ferroflow::Error::Closed))
    }
}

pub(crate) fn attachment(py: Python<'_>, event_loop: Option<Py<PyAny>>) -> PyResult<Option<ferroflow::Attachment>> {
    event_loop
        .map(|l| {
            let scheduler = l.bind(py).cast::<PyEventLoop>()?.get().scheduler.clone();
            Ok(scheduler as ferroflow::Attachment)
        })
        .transpose()
}

pub(crate) fn seconds(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    timeout.map(|t| options::seconds("timeout", t)).transpose()
}

/// What every way of starting a run needs: the workflow, the input as an engine value, and
/// the start options.
fn starting(
    py: Python<'_>,
    workflow: &PyWorkflow,
    input: Py<PyAny>,
    run_id: Option<String>,
    event_loop: Option<Py<PyAny>>,
) -> PyResult<(Workflow, Value, StartOptions)> {
    Ok((workflow.get()?.clone(), wrap(input), StartOptions { run_id, attachment: attachment(py, event_loop)? }))
}

/// A run status by its name (`"failed"`).
fn parse_status(name: &str) -> PyResult<RunStatus> {
    serde_json::from_value::<RunStatus>(serde_json::Value::String(name.to_owned()))
        .map_err(|_| PyValueError::new_err(format!("unknown run status '{name}'")))
}

/// One line of `export_run`, read.
fn exported_run(text: &str) -> PyResult<ferroflow::ExportedRun> {
    serde_json::from_str(text).map_err(|e| {
        to_py_err(ferroflow::Error::InvalidInput {
            run_id: String::new(),
            reason: format!("this is not a run exported by ferroflow ({}): {e}", ferroflow::EXPORT_FORMAT),
        })
    })
}

#[pymethods]
impl PyEngine {
    /// An engine as `options` (`ferroflow._options.EngineOptions`) say: keeping its runs in
    /// memory, or in the durable store they name, which the core's context reader opens.
    #[new]
    fn new(py: Python<'_>, options: EngineOptions) -> PyResult<Self> {
        let (config, admin) = options.open(py)?;
        Ok(PyEngine { engine: RwLock::new(Some(Engine::new(runtime::handle(), config))), admin })
    }

    /// Deletes everything of a networked store's namespace (Redis keys, or NATS buckets).
    fn delete_namespace(&self, py: Python<'_>) -> PyResult<()> {
        self.engine()?;
        match &self.admin {
            Some(url) => py.detach(|| runtime::handle().block_on(url.delete_namespace())).map_err(to_py_err),
            None => Err(PyValueError::new_err("only a Redis or NATS context has a namespace to delete")),
        }
    }

    /// Writes the steps waiting for their group commit now (durability "batch").
    /// Does nothing once the engine is closed (closing flushed it).
    fn flush(&self, py: Python<'_>) {
        let engine = self.engine.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(engine) = engine {
            py.detach(|| engine.flush());
        }
    }

    /// Closes the engine (see `Engine::close`) and lets it go: its store's files and
    /// connections are released once the bodies still running finish. Every later call
    /// raises `ContextClosedError`. Closing again does nothing.
    fn close(&self, py: Python<'_>) {
        let engine = self.engine.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(engine) = engine {
            py.detach(|| {
                engine.close();
                drop(engine);
            });
        }
    }

    /// Whether the engine was closed.
    #[getter]
    fn closed(&self) -> bool {
        self.engine.read().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// Works on the engine's store as a worker for `workflows` (see `Engine::work`) until
    /// a signal handler raises: then claims nothing more, lets the tasks executing here
    /// finish for up to `grace_seconds`, releases the rest, and re-raises.
    #[pyo3(signature = (workflows, concurrency, grace_seconds, event_loop = None))]
    fn work(
        &self,
        py: Python<'_>,
        workflows: Vec<PyRef<'_, PyWorkflow>>,
        concurrency: usize,
        grace_seconds: f64,
        event_loop: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let engine = self.engine()?;
        let workflows: Vec<Workflow> = workflows.iter().map(|w| w.get().cloned()).collect::<PyResult<_>>()?;
        let grace = options::seconds("grace", grace_seconds)?;
        let attachment = attachment(py, event_loop)?;
        let stop = tokio_util::sync::CancellationToken::new();
        let engine = engine.clone();
        let mut worker = runtime::handle().spawn({
            let stop = stop.clone();
            async move { engine.work(&workflows, concurrency, attachment, stop, grace).await }
        });
        let outcome = |joined: Result<ferroflow::Result<()>, tokio::task::JoinError>| match joined {
            Ok(worked) => worked.map_err(to_py_err),
            Err(join) => Err(pyo3::exceptions::PyRuntimeError::new_err(format!("the worker stopped: {join}"))),
        };
        loop {
            // Back to Python every so often, so that signal handlers run.
            let finished = py.detach(|| {
                runtime::handle()
                    .block_on(async { tokio::time::timeout(Duration::from_millis(200), &mut worker).await })
            });
            if let Ok(joined) = finished {
                return outcome(joined);
            }
            if let Err(signal) = py.check_signals() {
                stop.cancel();
                let joined = py.detach(|| runtime::handle().block_on(&mut worker));
                outcome(joined)?;
                return Err(signal);
            }
        }
    }

    /// Serves the gRPC service on `listen`, starting and resuming runs of `workflows`
    /// on this engine; returns the running server.
    #[pyo3(signature = (
        workflows, listen, token = None, tls_cert = None, tls_key = None, max_input_bytes = 1_048_576, event_loop = None,
        allow_unauthenticated = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn serve(
        &self,
        py: Python<'_>,
        workflows: Vec<PyRef<'_, PyWorkflow>>,
        listen: &str,
        token: Option<String>,
        tls_cert: Option<std::path::PathBuf>,
        tls_key: Option<std::path::PathBuf>,
        max_input_bytes: usize,
        event_loop: Option<Py<PyAny>>,
        allow_unauthenticated: bool,
    ) -> PyResult<crate::server::PyServer> {
        let engine = self.engine()?;
        let workflows: Vec<Workflow> = workflows.iter().map(|w| w.get().cloned()).collect::<PyResult<_>>()?;
        let attachment = attachment(py, event_loop)?;
        crate::server::serve(
            py,
            &engine,
            workflows,
            attachment,
            listen,
            token,
            tls_cert,
            tls_key,
            max_input_bytes,
            allow_unauthenticated,
        )
    }

    /// The run wherever it lives: held here, or (in a durable context) followed from the
    /// store without being taken over.
    fn open_run(&self, py: Python<'_>, workflow: PyRef<'_, PyWorkflow>, run_id: &str) -> PyResult<PyRun> {
        let engine = self.engine()?;
        let workflow = workflow.get()?.clone();
        py.detach(|| engine.open_run(&workflow, run_id)).map(PyRun::from).map_err(to_py_err)
    }

    /// Continues a run from the store (or returns it, if this engine holds it already).
    #[pyo3(signature = (workflow, run_id, event_loop = None))]
    fn recover(
        &self,
        py: Python<'_>,
        workflow: PyRef<'_, PyWorkflow>,
        run_id: &str,
        event_loop: Option<Py<PyAny>>,
    ) -> PyResult<PyRun> {
        let engine = self.engine()?;
        let workflow = workflow.get()?.clone();
        let attachment = attachment(py, event_loop)?;
        py.detach(|| engine.recover(&workflow, run_id, attachment)).map(PyRun::from).map_err(to_py_err)
    }

    /// Retries a failed run from the node that failed (wherever it failed, in a durable
    /// context); `by` is recorded in the journal as who retried it.
    #[pyo3(signature = (workflow, run_id, by, event_loop = None))]
    fn retry(
        &self,
        py: Python<'_>,
        workflow: PyRef<'_, PyWorkflow>,
        run_id: &str,
        by: &str,
        event_loop: Option<Py<PyAny>>,
    ) -> PyResult<PyRun> {
        let engine = self.engine()?;
        let workflow = workflow.get()?.clone();
        let attachment = attachment(py, event_loop)?;
        py.detach(|| engine.retry(&workflow, run_id, by, attachment)).map(PyRun::from).map_err(to_py_err)
    }

    /// Starts a run and returns it at once. With `events`, the run's events are forwarded
    /// to that callback (then `None`) from its first, live ones included, until the run
    /// settles (or finishes, with `until_finished`): the watch begins with the run, so that
    /// no event that is not journaled (a node starting) is missed.
    #[pyo3(signature = (workflow, input, run_id = None, event_loop = None, events = None, until_finished = false))]
    #[allow(clippy::too_many_arguments)] // the Python signature, keyword arguments with defaults
    fn start(
        &self,
        py: Python<'_>,
        workflow: PyRef<'_, PyWorkflow>,
        input: Py<PyAny>,
        run_id: Option<String>,
        event_loop: Option<Py<PyAny>>,
        events: Option<Py<PyAny>>,
        until_finished: bool,
    ) -> PyResult<PyRun> {
        let engine = self.engine()?;
        let (workflow, input, options) = starting(py, &workflow, input, run_id, event_loop)?;
        let Some(callback) = events else {
            return py.detach(|| engine.start(&workflow, input, options)).map(PyRun::from).map_err(to_py_err);
        };
        let until = watch_until(until_finished);
        let (run, rx) = py.detach(|| engine.start_watched(&workflow, input, options, until)).map_err(to_py_err)?;
        forward_events(rx, callback);
        Ok(PyRun::from(run))
    }

    /// Starts a run, executes its blocking bodies on this thread while they form a chain
    /// (unless a timeout is given), then blocks until the run settles: the synchronous
    /// `graph.run`.
    #[pyo3(signature = (workflow, input, run_id = None, event_loop = None, timeout = None))]
    fn run(
        &self,
        py: Python<'_>,
        workflow: PyRef<'_, PyWorkflow>,
        input: Py<PyAny>,
        run_id: Option<String>,
        event_loop: Option<Py<PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let engine = self.engine()?;
        let timeout = seconds(timeout)?;
        let (workflow, input, options) = starting(py, &workflow, input, run_id, event_loop)?;
        // A body running on this thread cannot be interrupted, so with a timeout the run
        // executes elsewhere and this thread only waits.
        let run = match timeout {
            None => py.detach(|| engine.start_and_drive(&workflow, input, options)),
            Some(_) => py.detach(|| engine.start(&workflow, input, options)),
        }
        .map_err(to_py_err)?;
        let snapshot = runtime::block_on(py, run.wait(timeout), |_| Ok(()))?.map_err(to_py_err)?;
        snapshot_to_py(py, &snapshot)
    }

    /// Runs one input per run, at most `concurrency` at a time, and returns the outputs in
    /// input order (`None` for a run that did not complete) and the snapshots of the runs
    /// that did not, by position. `progress(done, total)` is called about every 100 ms.
    /// `run_ids`, one per input, make the batch resumable: a run id that exists already
    /// is continued (or, finished, just reported), not started again.
    #[pyo3(signature = (
        workflow, inputs, concurrency, event_loop = None, progress = None, timeout = None, run_ids = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn run_many(
        &self,
        py: Python<'_>,
        workflow: PyRef<'_, PyWorkflow>,
        inputs: Vec<Py<PyAny>>,
        concurrency: usize,
        event_loop: Option<Py<PyAny>>,
        progress: Option<Py<PyAny>>,
        timeout: Option<f64>,
        run_ids: Option<Vec<String>>,
    ) -> PyResult<(Py<PyList>, Py<PyDict>)> {
        let engine = self.engine()?;
        let timeout = seconds(timeout)?;
        if concurrency == 0 {
            return Err(PyValueError::new_err("concurrency must be at least 1"));
        }
        if let Some(ids) = &run_ids
            && ids.len() != inputs.len()
        {
            return Err(PyValueError::new_err(format!("{} run ids for {} inputs", ids.len(), inputs.len())));
        }
        let total = inputs.len();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let batch = Batch {
            engine: engine.clone(),
            workflow: workflow.get()?.clone(),
            inputs: inputs.into_iter().map(wrap).collect(),
            run_ids,
            concurrency,
            attachment: attachment(py, event_loop)?,
        }
        .run(Arc::clone(&done));
        let batch = async move {
            match timeout {
                None => batch.await,
                Some(limit) => tokio::time::timeout(limit, batch).await.unwrap_or_else(|_| {
                    Err(ferroflow::Error::WaitTimeout {
                        run_id: format!("(batch of {total})"),
                        seconds: limit.as_secs_f64(),
                        detail: String::new(),
                    })
                }),
            }
        };
        let snapshots = runtime::block_on(py, batch, |py| match &progress {
            Some(cb) => cb.call1(py, (done.load(std::sync::atomic::Ordering::Relaxed), total)).map(drop),
            None => Ok(()),
        })?
        .map_err(to_py_err)?;
        if let Some(cb) = &progress {
            cb.call1(py, (total, total))?;
        }
        // A completed run gives only its output; the others (failed, cancelled, waiting for a
        // person) their snapshot, by position: a batch of many completed runs builds no
        // snapshot object per run.
        let outputs = PyList::empty(py);
        let others = PyDict::new(py);
        for (i, snapshot) in snapshots.iter().enumerate() {
            match (&snapshot.status, &snapshot.output) {
                (RunStatus::Completed, Some(output)) => outputs.append(to_py(py, output)?)?,
                _ => {
                    outputs.append(py.None())?;
                    others.set_item(i, snapshot_to_py(py, snapshot)?)?;
                }
            }
        }
        Ok((outputs.unbind(), others.unbind()))
    }

    fn cancel(&self, py: Python<'_>, run_id: &str) -> PyResult<()> {
        let engine = self.engine()?;
        py.detach(|| engine.cancel(run_id)).map_err(to_py_err)
    }

    /// Per-node state of a run, as dicts.
    fn nodes(&self, py: Python<'_>, run_id: &str) -> PyResult<Py<PyList>> {
        let engine = self.engine()?;
        let reports = py.detach(|| engine.nodes(run_id)).map_err(to_py_err)?;
        let items = reports
            .iter()
            .map(|r| {
                let d = PyDict::new(py);
                d.set_item("name", r.name.as_ref())?;
                d.set_item("kind", r.kind.as_str())?;
                d.set_item("status", r.status)?;
                d.set_item("attempts", r.attempts)?;
                d.set_item("output", r.output.as_ref().map(|v| to_py(py, v)).transpose()?)?;
                d.set_item("error", r.error.as_ref().map(|e| error_to_py(py, e)).transpose()?)?;
                d.set_item("last_ms", r.last_ms)?;
                Ok(d.into_any().unbind())
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, items)?.unbind())
    }

    /// The graphs workers registered in the store, as dicts (name, version, spec (JSON text),
    /// registered_ms), by name, newest first.
    fn graphs(&self, py: Python<'_>) -> PyResult<Py<PyList>> {
        let engine = self.engine()?;
        let graphs = py.detach(|| engine.graphs()).map_err(to_py_err)?;
        let items = graphs
            .iter()
            .map(|g| {
                let d = PyDict::new(py);
                d.set_item("name", &g.name)?;
                d.set_item("version", &g.version)?;
                d.set_item("spec", &g.spec)?;
                d.set_item("registered_ms", g.registered_ms)?;
                d.set_item("worker", g.worker)?;
                Ok(d.into_any().unbind())
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, items)?.unbind())
    }

    /// Runs as dicts (run_id, graph, version, status, created_ms, updated_ms), newest first:
    /// from the store of a durable engine, from memory otherwise.
    #[pyo3(signature = (graph = None, status = None, limit = 100))]
    fn list_runs(
        &self,
        py: Python<'_>,
        graph: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> PyResult<Py<PyList>> {
        let engine = self.engine()?;
        let status = status.map(parse_status).transpose()?;
        let query = RunQuery { graph: graph.map(str::to_owned), status, limit, after: None };
        let page = py.detach(|| engine.list_runs(&query)).map_err(to_py_err)?;
        let items = page.runs.iter().map(|r| record_to_py(py, r)).collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, items)?.unbind())
    }

    /// One run's record, as a dict like those of `list_runs`: from the store of a durable
    /// engine, from memory otherwise.
    fn record(&self, py: Python<'_>, run_id: &str) -> PyResult<Py<PyAny>> {
        let engine = self.engine()?;
        let (record, _) = py.detach(|| engine.load(run_id)).map_err(to_py_err)?;
        record_to_py(py, &record)
    }

    /// Forks run `parent` at node `at` (`ferroflow::Engine::fork`). `output` and `input`,
    /// when given, are 1-tuples holding the value (so that `None`, JSON's null, can be given).
    #[pyo3(signature = (workflow, parent, at, run_id = None, output = None, input = None, by = "", event_loop = None))]
    #[allow(clippy::too_many_arguments)] // the Python signature, keyword arguments with defaults
    fn fork(
        &self,
        py: Python<'_>,
        workflow: PyRef<'_, PyWorkflow>,
        parent: &str,
        at: &str,
        run_id: Option<String>,
        output: Option<(Py<PyAny>,)>,
        input: Option<(Py<PyAny>,)>,
        by: &str,
        event_loop: Option<Py<PyAny>>,
    ) -> PyResult<PyRun> {
        let engine = self.engine()?;
        let workflow = workflow.get()?.clone();
        let options = ferroflow::ForkOptions {
            run_id,
            output: output.map(|(value,)| wrap(value)),
            input: input.map(|(value,)| wrap(value)),
            by: by.to_owned(),
            attachment: attachment(py, event_loop)?,
        };
        py.detach(|| engine.fork(&workflow, parent, at, options)).map(PyRun::from).map_err(to_py_err)
    }

    /// Runs `workflow` again over a recorded run (one line of `export_run`, from any
    /// context), its recorded steps and answers served from the recording, as a run of this
    /// engine; returns the replay.
    #[pyo3(signature = (workflow, exported, run_id = None, event_loop = None))]
    fn replay(
        &self,
        py: Python<'_>,
        workflow: PyRef<'_, PyWorkflow>,
        exported: &str,
        run_id: Option<String>,
        event_loop: Option<Py<PyAny>>,
    ) -> PyResult<PyRun> {
        let engine = self.engine()?;
        let workflow = workflow.get()?.clone();
        let attachment = attachment(py, event_loop)?;
        let recorded = exported_run(exported)?;
        let journal: Vec<ferroflow::StoredEntry> = recorded
            .journal
            .into_iter()
            .map(|e| ferroflow::StoredEntry { seq: e.seq, at_ms: e.at_ms, entry: e.entry })
            .collect();
        py.detach(|| engine.replay(&workflow, &journal, run_id, attachment)).map(PyRun::from).map_err(to_py_err)
    }

    /// Deletes the finished runs that finished `older_than` seconds ago or earlier (of
    /// `status` and `graph`, if given); returns their ids (with `dry_run`, deletes nothing).
    #[pyo3(signature = (older_than, status = None, graph = None, dry_run = false))]
    fn prune(
        &self,
        py: Python<'_>,
        older_than: f64,
        status: Option<&str>,
        graph: Option<String>,
        dry_run: bool,
    ) -> PyResult<Vec<String>> {
        let engine = self.engine()?;
        let status = status.map(parse_status).transpose()?;
        let query =
            ferroflow::PruneQuery { older_than: options::seconds("older_than", older_than)?, status, graph, dry_run };
        py.detach(|| engine.prune(&query)).map(|pruned| pruned.runs).map_err(to_py_err)
    }

    /// The run with its whole journal, as one line of JSON (`ferroflow.run/1`), for
    /// `import_run` in another context.
    fn export_run(&self, py: Python<'_>, run_id: &str) -> PyResult<String> {
        let engine = self.engine()?;
        let exported = py.detach(|| engine.export_run(run_id)).map_err(to_py_err)?;
        serde_json::to_string(&exported)
            .map_err(|e| PyValueError::new_err(format!("run '{run_id}' cannot be written as JSON: {e}")))
    }

    /// Stores a run exported from another context (one line of `export_run`) and continues
    /// it here, or on the workers; returns the run.
    #[pyo3(signature = (workflow, exported, event_loop = None))]
    fn import_run(
        &self,
        py: Python<'_>,
        workflow: PyRef<'_, PyWorkflow>,
        exported: &str,
        event_loop: Option<Py<PyAny>>,
    ) -> PyResult<PyRun> {
        let engine = self.engine()?;
        let workflow = workflow.get()?.clone();
        let attachment = attachment(py, event_loop)?;
        let run = exported_run(exported)?;
        py.detach(|| engine.import_run(&workflow, run, attachment)).map(PyRun::from).map_err(to_py_err)
    }

    /// The run's journal as event dicts, from memory or the store.
    fn journal(&self, py: Python<'_>, run_id: &str) -> PyResult<Py<PyList>> {
        let engine = self.engine()?;
        let journal = py.detach(|| engine.journal(run_id)).map_err(to_py_err)?;
        let run_id: Arc<str> = Arc::from(run_id);
        let items = journal
            .into_iter()
            .map(|stored| {
                let event = Event {
                    run_id: Arc::clone(&run_id),
                    seq: stored.seq,
                    at_ms: stored.at_ms,
                    kind: EventKind::Journal(stored.entry),
                };
                event_to_py(py, &event)
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, items)?.unbind())
    }

    /// Ids of the runs in memory, oldest first.
    fn run_ids(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let engine = self.engine()?;
        Ok(py.detach(|| engine.run_ids()).iter().map(|id| id.to_string()).collect())
    }
}
