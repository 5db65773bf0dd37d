//! The `ferroflow.v1.Ferroflow` service over an [`Engine`].
//!
//! The engine's calls block on its store, so every call runs on tokio's blocking threads;
//! the service itself keeps no state beyond a cache of graphs built from their registered
//! structure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferroflow::{
    Attachment, Body, Engine, Error, Event, EventKind, GraphRecord, GraphSpec, NodeError, RunHandle, RunQuery,
    RunRecord, StartOptions, Value, WatchUntil, Workflow,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::convert::{
    event_message, page_cursor, page_token, parse_json, run_message, status_filter, status_of, transient_message,
};
use crate::proto::ferroflow_server::Ferroflow;
use crate::{proto, status};

/// How long the graph records read from the store are used for starts that name no version.
const GRAPHS_FRESH_FOR: Duration = Duration::from_secs(1);
/// Runs per ListRuns page when the request leaves it at 0, and the most a page holds.
const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;

/// The gRPC service. Cheap to clone.
///
/// Which graphs it can start, and who executes them:
/// - With an engine that does not execute (`EngineConfig::execute == false`, on a durable
///   store), every graph some worker registered in the store: runs are queued for the
///   workers, and the service follows them from the store.
/// - With an engine that executes, the `workflows` it was given, executed by that engine
///   (their runs get `attachment`). Runs of other graphs in the same store can be read,
///   watched and cancelled, but neither started nor resumed here.
#[derive(Clone)]
pub struct FerroflowService {
    shared: Arc<Shared>,
    /// Longest run input or resume value accepted, in bytes of JSON.
    max_input_bytes: usize,
}

struct Shared {
    engine: Engine,
    served: Vec<Workflow>,
    /// When the service was made: the registration time of `served` in memory.
    served_ms: u64,
    attachment: Option<Attachment>,
    /// Graphs built from their registered structure, by name and version.
    registered: Mutex<HashMap<(String, String), Workflow>>,
    /// The store's graph records as last read, and when: a start that names no version
    /// takes the newest from here for up to [`GRAPHS_FRESH_FOR`] (a graph not found here
    /// is looked for in the store at once).
    graphs: Mutex<Option<(Instant, Vec<GraphRecord>)>>,
    /// Cancelled when the server stops: open watch streams end with UNAVAILABLE.
    pub(crate) stopping: CancellationToken,
}

impl FerroflowService {
    /// The default of [`FerroflowService::with_max_input_bytes`]: 1 MiB.
    pub const DEFAULT_MAX_INPUT_BYTES: usize = 1 << 20;

    /// A service over `engine`, serving `workflows` (see the type's documentation); runs
    /// it starts or resumes get `attachment`.
    pub fn new(engine: Engine, workflows: Vec<Workflow>, attachment: Option<Attachment>) -> Self {
        FerroflowService {
            shared: Arc::new(Shared {
                engine,
                served: workflows,
                served_ms: ferroflow::journal::now_ms(),
                attachment,
                registered: Mutex::new(HashMap::new()),
                graphs: Mutex::new(None),
                stopping: CancellationToken::new(),
            }),
            max_input_bytes: Self::DEFAULT_MAX_INPUT_BYTES,
        }
    }

    /// Refuses run inputs and resume values whose JSON text is longer than `bytes`.
    pub fn with_max_input_bytes(self, bytes: usize) -> Self {
        FerroflowService { max_input_bytes: bytes, ..self }
    }

    /// The longest run input or resume value accepted, in bytes of JSON.
    pub fn max_input_bytes(&self) -> usize {
        self.max_input_bytes
    }

    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.shared.stopping
    }

    /// Runs `call` on a blocking thread (the engine blocks on its store).
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Shared) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || call(&shared))
            .await
            .unwrap_or_else(|join| Err(status::internal(format!("the call failed: {join}"))))
    }
}

impl Shared {
    fn durable(&self) -> bool {
        self.engine.config().store.is_some()
    }

    fn executes(&self) -> bool {
        self.engine.config().execute
    }

    /// The workflow of graph `name` (`version`, or the newest), and whether this process
    /// can execute it. With `to_start`, only graphs some worker registered count (a run
    /// queued for a graph no worker runs would wait for ever); otherwise, to follow a run
    /// that exists, a graph whose structure alone the store records does.
    fn resolve(&self, name: &str, version: Option<&str>, to_start: bool) -> Result<(Workflow, bool), Status> {
        let matches =
            |graph_name: &str, graph_version: &str| graph_name == name && version.is_none_or(|v| v == graph_version);
        let usable = |g: &GraphRecord| matches(&g.name, &g.version) && (g.worker || !to_start);
        if let Some(served) = self.served.iter().find(|w| matches(w.graph().name(), w.graph().version())) {
            return Ok((served.clone(), true));
        }
        if let Some(version) = version
            && !to_start
            && let Some(known) =
                self.registered.lock().expect("graph cache lock").get(&(name.to_owned(), version.into()))
        {
            return Ok((known.clone(), false));
        }
        let record = if self.durable() {
            // Newest first within a name: the first match is the version registered last.
            let cached = self.graphs.lock().expect("graphs lock").as_ref().and_then(|(read, graphs)| {
                (read.elapsed() < GRAPHS_FRESH_FOR).then(|| graphs.iter().find(|g| usable(g)).cloned())
            });
            match cached.flatten() {
                Some(record) => Some(record),
                None => {
                    let graphs = self.engine.graphs().map_err(status_of)?;
                    let found = graphs.iter().find(|g| usable(g)).cloned();
                    *self.graphs.lock().expect("graphs lock") = Some((Instant::now(), graphs));
                    found
                }
            }
        } else {
            None
        };
        let Some(record) = record else {
            let which = version.map_or_else(|| format!("'{name}'"), |v| format!("'{name}' version {v}"));
            return Err(status::invalid_argument(if self.durable() {
                format!(
                    "no worker registered graph {which} in this context; workers register the graphs they run \
                     (`ferroflow worker MODULE:GRAPH --context …`)"
                )
            } else {
                format!("no graph {which} is served here")
            }));
        };
        let workflow = registered_workflow(&record)?;
        let key = (record.name, record.version);
        let mut cache = self.registered.lock().expect("graph cache lock");
        Ok((cache.entry(key).or_insert(workflow).clone(), false))
    }

    fn run(&self, run_id: &str) -> Result<proto::Run, Status> {
        let (record, journal) = self.engine.load(run_id).map_err(status_of)?;
        run_message(&record, &journal)
    }

    /// The run wherever it lives ([`Engine::open_run_of`]: held here, or followed from the
    /// store with the workflow of its graph version), and whether this process executes
    /// that graph.
    fn open(&self, run_id: &str) -> Result<(RunHandle, bool), Status> {
        let mut refused = None;
        let opened =
            self.engine.open_run_of(run_id, |record| match self.resolve(&record.graph, Some(&record.version), false) {
                Ok((workflow, _)) => Some(workflow),
                Err(_) => {
                    refused = Some(status::failed_precondition(format!(
                        "run '{run_id}' is of graph '{}' version {}, which no worker registered in this context",
                        record.graph, record.version
                    )));
                    None
                }
            });
        let run = opened.map_err(|error| refused.unwrap_or_else(|| status_of(error)))?;
        let graph = run.workflow().graph();
        let served =
            self.served.iter().any(|w| w.graph().name() == graph.name() && w.graph().version() == graph.version());
        Ok((run, served))
    }

    fn start(
        &self,
        graph: &str,
        version: Option<&str>,
        input: Value,
        run_id: Option<String>,
    ) -> Result<proto::StartRunResponse, Status> {
        let (workflow, executable) = self.resolve(graph, version, true)?;
        if self.executes() && !executable {
            return Err(status::failed_precondition(format!(
                "graph '{graph}' is registered in this context but not served by this process, which executes \
                 the runs it starts; start it through a server of that graph"
            )));
        }
        let options = StartOptions { run_id: run_id.clone(), attachment: self.attachment.clone() };
        // The store decides whether the id is new (atomically, so that two callers racing
        // with one id start one run); an existing run of another graph is refused there.
        let run = match self.engine.start_or_get(&workflow, input, options) {
            // Just created, and held here: shown from memory, without reading it back.
            Ok((handle, true)) => {
                let journal = self.engine.journal(handle.id()).map_err(status_of)?;
                let (first, last) = (journal.first(), journal.last());
                let record = RunRecord {
                    run_id: handle.id().to_string(),
                    graph: workflow.graph().name().to_owned(),
                    version: workflow.graph().version().to_owned(),
                    status: handle.snapshot().status,
                    created_ms: first.map_or(0, |e| e.at_ms),
                    updated_ms: last.map_or(0, |e| e.at_ms),
                };
                return Ok(proto::StartRunResponse { run: Some(run_message(&record, &journal)?), created: true });
            }
            Ok((handle, false)) => handle.id().to_string(),
            // Started before with another version of the graph: that run is the answer.
            Err(Error::VersionMismatch { run_id, .. }) => run_id,
            Err(error) => return Err(status_of(error)),
        };
        Ok(proto::StartRunResponse { run: Some(self.run(&run)?), created: false })
    }

    fn resume(&self, run_id: &str, node: Option<&str>, value: Value) -> Result<proto::Run, Status> {
        let (run, executable) = self.open(run_id)?;
        if self.executes() && !executable {
            return Err(status::failed_precondition(format!(
                "run '{run_id}' is of a graph this process does not serve; it would execute what follows \
                 the answer, so resume it through a server of that graph"
            )));
        }
        run.resume(node, value, self.attachment.clone()).map_err(status_of)?;
        self.run(run_id)
    }

    fn retry(&self, run_id: &str, by: &str) -> Result<proto::Run, Status> {
        let (run, executable) = self.open(run_id)?;
        if self.executes() && !executable {
            return Err(status::failed_precondition(format!(
                "run '{run_id}' is of a graph this process does not serve; it would execute the retried \
                 nodes, so retry it through a server of that graph"
            )));
        }
        run.retry(by, self.attachment.clone()).map_err(status_of)?;
        self.run(run_id)
    }

    fn fork(&self, parent: &str, at: &str, options: ferroflow::ForkOptions) -> Result<proto::Run, Status> {
        let (run, executable) = self.open(parent)?;
        if self.executes() && !executable {
            return Err(status::failed_precondition(format!(
                "run '{parent}' is of a graph this process does not serve; it would execute the fork, so fork it \
                 through a server of that graph"
            )));
        }
        let options = ferroflow::ForkOptions { attachment: self.attachment.clone(), ..options };
        let fork = self.engine.fork(run.workflow(), parent, at, options).map_err(status_of)?;
        self.run(fork.id())
    }

    fn cancel(&self, run_id: &str) -> Result<proto::Run, Status> {
        self.engine.cancel(run_id).map_err(status_of)?;
        self.run(run_id)
    }

    fn watch(&self, run_id: &str, until: WatchUntil) -> Result<mpsc::UnboundedReceiver<Event>, Status> {
        let (run, _) = self.open(run_id)?;
        run.events(until).map_err(status_of)
    }

    fn graphs(&self) -> Result<Vec<proto::Graph>, Status> {
        let records = if self.durable() {
            self.engine.graphs().map_err(status_of)?
        } else {
            self.served
                .iter()
                .map(|w| {
                    let graph = w.graph();
                    let spec = serde_json::to_string(&graph.spec())
                        .map_err(|e| status::internal(format!("graph '{}': {e}", graph.name())))?;
                    Ok(GraphRecord {
                        name: graph.name().to_owned(),
                        version: graph.version().to_owned(),
                        spec,
                        registered_ms: self.served_ms,
                        worker: true,
                    })
                })
                .collect::<Result<_, Status>>()?
        };
        Ok(records
            .into_iter()
            .map(|g| proto::Graph {
                name: g.name,
                version: g.version,
                spec_json: g.spec,
                registered_ms: g.registered_ms as i64,
                worker: g.worker,
            })
            .collect())
    }
}

/// A graph known by its registered structure only. Its nodes have no code here: an engine
/// that does not execute never runs them, and one that does refuses to start it.
fn registered_workflow(record: &GraphRecord) -> Result<Workflow, Status> {
    let corrupt = |reason: String| {
        status::internal(format!(
            "graph '{}' version {} is registered with a structure that cannot be read: {reason}",
            record.name, record.version
        ))
    };
    let spec = GraphSpec::from_json(&record.spec).map_err(|e| corrupt(e.to_string()))?;
    let graph = spec.build().map_err(|e| corrupt(e.to_string()))?;
    let bodies = graph
        .nodes()
        .iter()
        .map(|node| {
            let body = Body::blocking(|call| {
                Err(NodeError::permanent(
                    "ferroflow.NotExecutableHere",
                    format!("node '{}' has no code in this process; workers execute it", call.node),
                ))
            });
            (node.name.clone(), body)
        })
        .collect();
    Workflow::new(graph, bodies).map_err(|e| corrupt(e.to_string()))
}

/// A name field (`run_id`, `graph`, `version`, `node`) that the request must give: checked
/// as the engine checks names ([`ferroflow::limits::check_name`]), before anything quotes it.
fn name_field<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(status::invalid_argument(format!("{field} is required")));
    }
    ferroflow::limits::check_name(field, value).map_err(status::invalid_argument)?;
    Ok(value)
}

fn run_id_field(value: &str) -> Result<&str, Status> {
    name_field("run_id", value)
}

/// An optional name field: empty is absent.
fn optional_name(field: &str, value: String) -> Result<Option<String>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    name_field(field, &value)?;
    Ok(Some(value))
}

/// Forwards a run's journal events from `from` on to a watch stream, until the run
/// settles (or finishes), the client goes away, or the server stops.
async fn forward(
    mut events: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::Sender<Result<proto::RunEvent, Status>>,
    mut next: u64,
    progress: bool,
    stopping: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = tx.closed() => return,
            () = stopping.cancelled() => {
                let reason = format!("the server is stopping; watch again with from_offset {next} to miss nothing");
                let _ = tx.send(Err(status::unavailable(reason))).await;
                return;
            }
            event = events.recv() => event,
        };
        let Some(event) = event else { return };
        if event.seq < next {
            continue;
        }
        let message = match &event.kind {
            EventKind::Journal(entry) => event_message(event.seq, event.at_ms, entry),
            // Not journaled: sent only to watchers that asked, and never counted as seen.
            transient if progress => match transient_message(event.seq, event.at_ms, transient) {
                Ok(Some(message)) => {
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) => continue,
                Err(status) => Err(status),
            },
            _ => continue,
        };
        let failed = message.is_err();
        if tx.send(message).await.is_err() || failed {
            return;
        }
        next = event.seq + 1;
    }
}

#[tonic::async_trait]
impl Ferroflow for FerroflowService {
    async fn start_run(
        &self,
        request: Request<proto::StartRunRequest>,
    ) -> Result<Response<proto::StartRunResponse>, Status> {
        let request = request.into_inner();
        name_field("graph", &request.graph)?;
        let run_id = optional_name("run_id", request.run_id)?;
        let version = optional_name("version", request.version)?;
        let input = parse_json("input_json", &request.input_json, self.max_input_bytes)?;
        let graph = request.graph;
        let response = self.blocking(move |s| s.start(&graph, version.as_deref(), input, run_id)).await?;
        Ok(Response::new(response))
    }

    async fn get_run(&self, request: Request<proto::GetRunRequest>) -> Result<Response<proto::Run>, Status> {
        let run_id = run_id_field(&request.get_ref().run_id)?.to_owned();
        Ok(Response::new(self.blocking(move |s| s.run(&run_id)).await?))
    }

    type WatchRunStream = ReceiverStream<Result<proto::RunEvent, Status>>;

    async fn watch_run(
        &self,
        request: Request<proto::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let request = request.into_inner();
        let run_id = run_id_field(&request.run_id)?.to_owned();
        let until = if request.follow_waiting { WatchUntil::Finished } else { WatchUntil::Settled };
        let events = self.blocking(move |s| s.watch(&run_id, until)).await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(forward(events, tx, request.from_offset, request.progress, self.shared.stopping.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resume_run(&self, request: Request<proto::ResumeRunRequest>) -> Result<Response<proto::Run>, Status> {
        let request = request.into_inner();
        let run_id = run_id_field(&request.run_id)?.to_owned();
        let value = parse_json("value_json", &request.value_json, self.max_input_bytes)?;
        let node = optional_name("node", request.node)?;
        Ok(Response::new(self.blocking(move |s| s.resume(&run_id, node.as_deref(), value)).await?))
    }

    async fn retry_run(&self, request: Request<proto::RetryRunRequest>) -> Result<Response<proto::Run>, Status> {
        let request = request.into_inner();
        let run_id = run_id_field(&request.run_id)?.to_owned();
        let by = optional_name("by", request.by)?.unwrap_or_default();
        Ok(Response::new(self.blocking(move |s| s.retry(&run_id, &by)).await?))
    }

    async fn fork_run(&self, request: Request<proto::ForkRunRequest>) -> Result<Response<proto::Run>, Status> {
        let request = request.into_inner();
        let parent = run_id_field(&request.run_id)?.to_owned();
        let at = name_field("at", &request.at)?.to_owned();
        let given = |field: &str, text: &str| -> Result<Option<Value>, Status> {
            if text.is_empty() { Ok(None) } else { parse_json(field, text, self.max_input_bytes).map(Some) }
        };
        let options = ferroflow::ForkOptions {
            run_id: optional_name("new_run_id", request.new_run_id)?,
            output: given("output_json", &request.output_json)?,
            input: given("input_json", &request.input_json)?,
            by: optional_name("by", request.by)?.unwrap_or_default(),
            attachment: None,
        };
        Ok(Response::new(self.blocking(move |s| s.fork(&parent, &at, options)).await?))
    }

    async fn cancel_run(&self, request: Request<proto::CancelRunRequest>) -> Result<Response<proto::Run>, Status> {
        let run_id = run_id_field(&request.get_ref().run_id)?.to_owned();
        Ok(Response::new(self.blocking(move |s| s.cancel(&run_id)).await?))
    }

    async fn list_runs(
        &self,
        request: Request<proto::ListRunsRequest>,
    ) -> Result<Response<proto::ListRunsResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let query = RunQuery {
            graph: optional_name("graph", request.graph)?,
            status: status_filter(request.status)?,
            limit: limit as usize,
            after: page_cursor(&request.page_token)?,
        };
        let page = self.blocking(move |s| s.engine.list_runs(&query).map_err(status_of)).await?;
        let runs = page.runs.iter().map(|record| run_message(record, &[])).collect::<Result<_, Status>>()?;
        let next_page_token = page.next.map(page_token).unwrap_or_default();
        Ok(Response::new(proto::ListRunsResponse { runs, next_page_token }))
    }

    async fn list_graphs(
        &self,
        _request: Request<proto::ListGraphsRequest>,
    ) -> Result<Response<proto::ListGraphsResponse>, Status> {
        let graphs = self.blocking(Shared::graphs).await?;
        Ok(Response::new(proto::ListGraphsResponse { graphs }))
    }
}
