//! The service embedded in a Rust program that executes its own graph (a [`FlowBuilder`]
//! flow on an in-memory engine), called through the generated client over a real
//! connection on 127.0.0.1.

use ferroflow::{Cx, Engine, EngineConfig, Flow, FlowBuilder};
use ferroflow_server::proto::ferroflow_client::FerroflowClient;
use ferroflow_server::proto::{
    GetRunRequest, ListGraphsRequest, ListRunsRequest, ResumeRunRequest, RunStatus, StartRunRequest, WatchRunRequest,
};
use ferroflow_server::{FerroflowService, Server, ServerConfig};
use tokio::runtime::Handle;
use tonic::Code;
use tonic::transport::Channel;

fn approval() -> Flow {
    let mut g = FlowBuilder::new("approval");
    g.task("quote", |cx: Cx| async move { Ok(cx.input::<u32>()? * 2) });
    g.human("approve", |cx: Cx| async move { Ok(format!("pay {}?", cx.dep::<u32>("quote")?)) }).after("quote");
    g.task("pay", |cx: Cx| async move {
        let approved: bool = cx.dep("approve")?;
        Ok(if approved { format!("paid {}", cx.dep::<u32>("quote")?) } else { "refused".into() })
    })
    .after_all(["quote", "approve"]);
    g.build().unwrap()
}

async fn serve(token: Option<&str>) -> (Server, FerroflowClient<Channel>) {
    let engine = Engine::new(Handle::current(), EngineConfig::default());
    let service = FerroflowService::new(engine, vec![approval().workflow().clone()], None);
    let config = ServerConfig { token: token.map(str::to_owned), ..ServerConfig::new("127.0.0.1:0".parse().unwrap()) };
    let server = Server::start(service, config).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.local_addr())).unwrap().connect().await.unwrap();
    (server, FerroflowClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_graph_is_started_watched_and_resumed_over_grpc() {
    let (server, mut client) = serve(None).await;
    let graphs = client.list_graphs(ListGraphsRequest {}).await.unwrap().into_inner().graphs;
    assert_eq!(graphs.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["approval"]);

    let start = StartRunRequest {
        graph: "approval".into(),
        input_json: "21".into(),
        run_id: "p-1".into(),
        ..Default::default()
    };
    let started = client.start_run(start.clone()).await.unwrap().into_inner();
    assert!(started.created);
    let again = client.start_run(start).await.unwrap().into_inner();
    assert!(!again.created, "the same run id starts no second run");

    let watch = |from_offset, follow_waiting| WatchRunRequest {
        run_id: "p-1".into(),
        from_offset,
        follow_waiting,
        progress: false,
    };
    let mut stream = client.watch_run(watch(0, false)).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        events.push(event);
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["run_started", "node_completed", "node_waiting"]);
    assert_eq!(events.iter().map(|e| e.offset).collect::<Vec<_>>(), [0, 1, 2]);

    let run = client.get_run(GetRunRequest { run_id: "p-1".into() }).await.unwrap().into_inner();
    assert_eq!(run.status(), RunStatus::Waiting);
    assert_eq!(run.waiting[0].request_json, r#""pay 42?""#);

    let resume = ResumeRunRequest { run_id: "p-1".into(), node: "approve".into(), value_json: "true".into() };
    client.resume_run(resume).await.unwrap();
    let mut stream = client.watch_run(watch(3, true)).await.unwrap().into_inner();
    let mut rest = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        rest.push(event.kind);
    }
    assert_eq!(rest, ["node_resumed", "node_completed", "run_completed"]);
    let run = client.get_run(GetRunRequest { run_id: "p-1".into() }).await.unwrap().into_inner();
    assert_eq!((run.status(), run.output_json.as_str()), (RunStatus::Completed, r#""paid 42""#));
    let listed = client.list_runs(ListRunsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.runs.len(), 1);

    // Mistakes get the documented codes.
    let bad_json = StartRunRequest { graph: "approval".into(), input_json: "{".into(), ..Default::default() };
    assert_eq!(client.start_run(bad_json).await.unwrap_err().code(), Code::InvalidArgument);
    let unknown = GetRunRequest { run_id: "nope".into() };
    assert_eq!(client.get_run(unknown).await.unwrap_err().code(), Code::NotFound);
    let not_waiting = ResumeRunRequest { run_id: "p-1".into(), value_json: "true".into(), ..Default::default() };
    assert_eq!(client.resume_run(not_waiting).await.unwrap_err().code(), Code::FailedPrecondition);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_token_refuses_calls_without_it() {
    let (server, mut client) = serve(Some("s3cret")).await;
    let refused = client.list_graphs(ListGraphsRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(ListGraphsRequest {});
    request.metadata_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
    assert_eq!(client.list_graphs(request).await.unwrap().into_inner().graphs.len(), 1);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_asks_gets_what_running_nodes_report_as_it_happens() {
    let mut g = FlowBuilder::new("talk");
    g.llm("speak", |cx: Cx| async move {
        // Like a model's first-token latency: the watcher, which connects once the start
        // returns, is attached by then (transient events reach the watchers present).
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        for token in ["Hel", "lo", "!"] {
            cx.emit(serde_json::json!({ "token": token }));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok("Hello!")
    });
    let engine = Engine::new(Handle::current(), EngineConfig::default());
    let service = FerroflowService::new(engine, vec![g.build().unwrap().workflow().clone()], None);
    let config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    let server = Server::start(service, config).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.local_addr())).unwrap().connect().await.unwrap();
    let mut client = FerroflowClient::new(channel);

    let start = |run_id: &str| StartRunRequest { graph: "talk".into(), run_id: run_id.into(), ..Default::default() };
    let mut received = Vec::new();
    for (run_id, progress) in [("quiet", false), ("chatty", true)] {
        client.start_run(start(run_id)).await.unwrap();
        let request = WatchRunRequest { run_id: run_id.into(), progress, ..Default::default() };
        let mut stream = client.watch_run(request).await.unwrap().into_inner();
        let mut events = Vec::new();
        while let Some(event) = stream.message().await.unwrap() {
            events.push(event);
        }
        received.push(events);
    }
    let kinds =
        |events: &[ferroflow_server::proto::RunEvent]| events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>();
    // The watch started as the run did, so it saw the node run (a later watch replays the
    // journal only).
    assert_eq!(kinds(&received[0]), ["run_started", "node_completed", "run_completed"]);
    let chatty = &received[1];
    let transient: Vec<&ferroflow_server::proto::RunEvent> = chatty.iter().filter(|e| e.transient).collect();
    let tokens: Vec<String> = transient
        .iter()
        .filter(|e| e.kind == "node_progress")
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.event_json).unwrap()["data"]["token"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(tokens, ["Hel", "lo", "!"]);
    // Transient events carry the offset of the journal event after them, and never count
    // as journal events.
    let completed = chatty.iter().find(|e| e.kind == "node_completed").unwrap();
    assert!(transient.iter().all(|e| e.offset == completed.offset && e.node == "speak"), "{chatty:?}");
    let journal: Vec<u64> = chatty.iter().filter(|e| !e.transient).map(|e| e.offset).collect();
    assert_eq!(journal, [0, 1, 2]);
    server.stop().await.unwrap();
}
