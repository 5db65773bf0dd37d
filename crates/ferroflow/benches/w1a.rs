//! W1a (benches/README.md) on the pure-Rust path: a chain of 10 no-op blocking bodies, runs one
//! after another, in memory (`EngineConfig::default()`, a 2-worker multi-thread runtime).
//!
//! Two parts, in this order:
//! - a timing loop defined as benches/run.py's W1a: 9 repetitions of 1,000 runs, each run
//!   timed alone; the figure is the median over repetitions of the per-run median / 10. A
//!   fresh engine per way of running (200 warm-up runs + 9,000), as run.py's one context,
//!   so that no run is evicted (`retain_finished` = 10,000). It prints the `W1a rust:` lines
//!   at the end.
//! - criterion, per run of 10 nodes (its throughput line counts nodes): these iterations go
//!   past 10,000 runs per engine, so they include evicting a retained run per run.
//!
//! Ways of running: `start_and_drive` from a plain thread then waiting for the run (what
//! the Python binding's `graph.run` does, and the fastest way from synchronous code), and
//! `start` + `wait().await` from async code (the chain then runs on a blocking thread).
//! Baseline: the same ten no-ops called directly.
//!
//! `cargo bench -p ferroflow --all-features --bench w1a` (see benches/README.md).

mod common;

use std::time::Instant;

use criterion::Throughput;
use ferroflow::{Engine, EngineConfig};

use common::{CHAIN_LEN, RUNS, Timing, WARM_UP, chain, check, direct, input, per_node, run_async, run_driven};

const REPS: usize = 9;

fn main() {
    let rt = common::runtime();
    let wf = chain();
    let machine = common::machine();

    // The timing loop (the definition in benches/README.md), before criterion fills the heap.
    let driven = Engine::new(rt.handle().clone(), EngineConfig::default());
    let awaited = Engine::new(rt.handle().clone(), EngineConfig::default());
    let (e, w) = (&awaited, &wf);
    for i in 0..WARM_UP as u64 {
        run_driven(&rt, &driven, &wf, i);
        check(ferroflow::RunStatus::Completed, Some(&direct(input(i))), i);
    }
    rt.block_on(async {
        for i in 0..WARM_UP as u64 {
            run_async(e, w, i).await;
        }
    });
    let (mut drive, mut wait, mut base): (Vec<Timing>, Vec<Timing>, Vec<Timing>) = Default::default();
    for _ in 0..REPS {
        drive.push(common::time_each(RUNS, |i| run_driven(&rt, &driven, &wf, i)));
        wait.push(rt.block_on(common::time_each_async(RUNS, |i| run_async(e, w, i))));
        base.push(common::time_each(RUNS, |i| check(ferroflow::RunStatus::Completed, Some(&direct(input(i))), i)));
    }
    drop((driven, awaited));

    // Criterion: per run of 10 nodes, a fresh engine per benchmark.
    let mut c = common::criterion(50);
    let mut group = c.benchmark_group("W1a");
    group.throughput(Throughput::Elements(CHAIN_LEN as u64));
    {
        let engine = Engine::new(rt.handle().clone(), EngineConfig::default());
        let mut i = 0u64;
        group.bench_function("start_and_drive+wait", |b| {
            b.iter(|| {
                run_driven(&rt, &engine, &wf, i);
                i += 1;
            })
        });
    }
    {
        let engine = Engine::new(rt.handle().clone(), EngineConfig::default());
        let mut i = 0u64;
        group.bench_function("start+wait.await", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        run_async(&engine, &wf, i).await;
                        i += 1;
                    }
                    t0.elapsed()
                })
            })
        });
    }
    {
        let mut i = 0u64;
        group.bench_function("direct_calls", |b| {
            b.iter(|| {
                let out = direct(input(i));
                i += 1;
                out
            })
        });
    }
    group.finish();
    c.final_summary();

    let us = |t: &Timing| t.median;
    let (d, d_lo, d_hi) = per_node(&drive, us);
    let (a, a_lo, a_hi) = per_node(&wait, us);
    let (b, _, _) = per_node(&base, us);
    let overhead = |runs: &[Timing]| {
        let mut v: Vec<f64> =
            runs.iter().zip(&base).map(|(r, b)| (r.median - b.median) * 1e6 / CHAIN_LEN as f64).collect();
        common::median(&mut v)
    };
    let (d_cpu, _, _) = per_node(&drive, |t| t.cpu);
    let (a_cpu, _, _) = per_node(&wait, |t| t.cpu);
    let (d_mean, _, _) = per_node(&drive, |t| t.mean);
    let (a_mean, _, _) = per_node(&wait, |t| t.mean);
    println!();
    println!("== W1a, pure Rust: {REPS} repetitions of {RUNS} runs one after another, each timed alone; {machine}");
    println!("W1a rust: {d:.2} µs/node (median) [start_and_drive + wait; repetitions ranged {d_lo:.2}-{d_hi:.2}]");
    println!("W1a rust, async: {a:.2} µs/node (median) [start + wait().await; repetitions ranged {a_lo:.2}-{a_hi:.2}]");
    println!(
        "W1a rust, engine time per node (run - direct calls) / 10: {:.2} µs (start_and_drive), {:.2} µs (async)",
        overhead(&drive),
        overhead(&wait)
    );
    println!("W1a rust, direct calls (baseline): {b:.4} µs/node");
    println!("W1a rust, mean wall time per node: {d_mean:.2} µs (start_and_drive), {a_mean:.2} µs (async)");
    println!("W1a rust, CPU time per node (every thread): {d_cpu:.2} µs (start_and_drive), {a_cpu:.2} µs (async)");
}
