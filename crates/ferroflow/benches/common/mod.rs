//! What the W1a and W4 benches share: the workloads' chain, the runtime, timing and the
//! summary lines. See benches/README.md at the repository root.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use ferroflow::{
    Body, Dependency, Engine, GraphSpec, NodeCall, NodeKind, NodeSpec, RunStatus, StartOptions, Value, Workflow,
};
use tokio::runtime::Runtime;

/// Nodes in the chain (W1a).
pub const CHAIN_LEN: usize = 10;
/// Runs one after another in each repetition of the timing loop, each timed alone.
pub const RUNS: usize = 1_000;
/// Runs before the first timed repetition: threads, allocator pools, SQLite's code paths.
pub const WARM_UP: usize = 200;

/// A multi-thread runtime with 2 workers (the machine the figures in benches/RESULTS.md come from has 2
/// cores), as an application would build one.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("the runtime starts")
}

/// W1a's chain: `n0 -> n1 -> ... -> n9`, each a no-op blocking body returning its input
/// (`n0` the run's input, the others their dependency's output), as benches/run.py's
/// `n{k}(x): return x`.
pub fn chain() -> Workflow {
    let mut spec = GraphSpec::new("w1_chain");
    let mut bodies = HashMap::new();
    for k in 0..CHAIN_LEN {
        let name = format!("n{k}");
        let mut node = NodeSpec::new(name.clone(), NodeKind::Task);
        let body = if k == 0 {
            Body::blocking(|call: NodeCall| Ok(call.input))
        } else {
            node = node.dep(Dependency::on(format!("n{}", k - 1)));
            Body::blocking(|mut call: NodeCall| Ok(call.deps.swap_remove(0)))
        };
        spec.nodes.push(node);
        bodies.insert(name, body);
    }
    Workflow::new(spec.build().expect("the chain builds"), bodies).expect("every node has a body")
}

/// The baseline of W1a: the same ten no-ops called directly, one after another.
#[inline(never)]
pub fn direct(x: Value) -> Value {
    let mut x = x;
    for _ in 0..CHAIN_LEN {
        x = black_box(noop(black_box(x)));
    }
    x
}

#[inline(never)]
fn noop(x: Value) -> Value {
    x
}

/// A run's input: its number, as JSON.
pub fn input(i: u64) -> Value {
    Value::from(serde_json::Value::from(i))
}

/// Panics unless the run completed with its input as output.
pub fn check(status: RunStatus, output: Option<&Value>, i: u64) {
    let ok = matches!(output, Some(Value::Json(v)) if v.as_u64() == Some(i));
    assert!(status == RunStatus::Completed && ok, "run {i}: {status:?}, output {output:?}");
}

/// One run the way a synchronous caller does it (and the Python binding's `graph.run`):
/// `start_and_drive` executes the chain on this thread, then the run is waited for (it is
/// settled by then, so the wait returns at once).
pub fn run_driven(rt: &Runtime, engine: &Engine, wf: &Workflow, i: u64) {
    let run = engine.start_and_drive(wf, input(i), StartOptions::default()).expect("start");
    let snap = rt.block_on(run.wait(None)).expect("wait");
    check(snap.status, snap.output.as_ref(), i);
}

/// One run from async code: `start`, then `wait().await`; the chain executes on one of
/// tokio's blocking threads.
pub async fn run_async(engine: &Engine, wf: &Workflow, i: u64) {
    let run = engine.start(wf, input(i), StartOptions::default()).expect("start");
    let snap = run.wait(None).await.expect("wait");
    check(snap.status, snap.output.as_ref(), i);
}

/// What one repetition of [`RUNS`] runs measured.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Median wall time of one run, seconds.
    pub median: f64,
    /// Mean wall time of one run (includes the rare slow runs), seconds.
    pub mean: f64,
    /// CPU time of the whole process (every thread) per run, seconds.
    pub cpu: f64,
}

/// Times `n` calls of `call(i)`, each alone.
pub fn time_each(n: usize, mut call: impl FnMut(u64)) -> Timing {
    let mut times = Vec::with_capacity(n);
    let cpu0 = cpu_s();
    let all = Instant::now();
    for i in 0..n as u64 {
        let t0 = Instant::now();
        call(i);
        times.push(t0.elapsed().as_secs_f64());
    }
    let total = all.elapsed().as_secs_f64();
    Timing { median: median(&mut times), mean: total / n as f64, cpu: (cpu_s() - cpu0) / n as f64 }
}

/// The same, for an async loop (times taken inside the future).
pub async fn time_each_async<F: Future<Output = ()>>(n: usize, mut call: impl FnMut(u64) -> F) -> Timing {
    let mut times = Vec::with_capacity(n);
    let cpu0 = cpu_s();
    let all = Instant::now();
    for i in 0..n as u64 {
        let t0 = Instant::now();
        call(i).await;
        times.push(t0.elapsed().as_secs_f64());
    }
    let total = all.elapsed().as_secs_f64();
    Timing { median: median(&mut times), mean: total / n as f64, cpu: (cpu_s() - cpu0) / n as f64 }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

/// Median and range over repetitions of one field of [`Timing`], in µs per node.
pub fn per_node(reps: &[Timing], field: impl Fn(&Timing) -> f64) -> (f64, f64, f64) {
    let mut v: Vec<f64> = reps.iter().map(|t| field(t) * 1e6 / CHAIN_LEN as f64).collect();
    let m = median(&mut v);
    (m, v[0], v[v.len() - 1])
}

/// CPU time of this process so far, every thread alive, seconds: the sum of the threads'
/// time on CPU from `/proc/self/task/*/schedstat` (nanoseconds; a thread that exited no
/// longer counts, so read it around loops whose threads stay up). 0 where there is no /proc.
pub fn cpu_s() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let mut ns: u64 = 0;
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += text.split_whitespace().next().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// Criterion with short runs (each benchmark ~6 s: 1 s warm-up, 5 s of samples), then
/// whatever the command line says.
pub fn criterion(samples: usize) -> Criterion {
    Criterion::default()
        .sample_size(samples)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .without_plots()
        .configure_from_args()
}

/// The machine, for the summary.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("?").trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} CPUs ({cpu}), load average {load}")
}
