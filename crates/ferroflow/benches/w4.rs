//! W4 (benches/README.md) on the pure-Rust path: W1a's chain with every node durably checkpointed
//! on SQLite (`SqliteStore` on a temp file, `Durability::Commit`), runs one after another,
//! next to the raw SQLite baseline of benches/run.py's W4 done with rusqlite (the same
//! bundled SQLite as the store): WAL, `synchronous=NORMAL` (as `SqliteStore::open` sets),
//! and per node: call it, INSERT one row `(run, node, output JSON)`, COMMIT.
//!
//! Two parts, in this order:
//! - a timing loop defined as run.py's W4: 9 repetitions, each on fresh files, of 1,000
//!   runs timed alone, the engine and the baseline interleaved; the figure is the median
//!   over repetitions of the per-run median / 10. Bytes stored per run as run.py counts
//!   them: database + WAL after `PRAGMA wal_checkpoint(TRUNCATE)`, after the runs minus
//!   before them, / runs. Also, as run.py's extra rows: the engine with group commit
//!   (`Durability::Batch`, 5 ms) and the baseline committing once per run. It prints the
//!   `W4 rust:` lines at the end.
//! - criterion, per run of 10 nodes (its throughput line counts nodes), the engine and the
//!   per-node-commit baseline, each on one file that grows over the iterations.
//!
//! Runs are started with `start_and_drive` from a plain thread and then waited for: what
//! the Python binding's `graph.run` does; the store is written from this thread.
//!
//! `cargo bench -p ferroflow --all-features --bench w4` (see benches/README.md).

#[allow(dead_code)] // W1a's parts of it
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::Throughput;
use ferroflow::{Durability, Engine, EngineConfig, SqliteStore, Value};
use rusqlite::Connection;
use tokio::runtime::Runtime;

use common::{CHAIN_LEN, RUNS, Timing, WARM_UP, chain, check, input, per_node, run_driven};

const REPS: usize = 9;
/// run.py's `BATCH_WINDOW`, the default of `ff.Sqlite(..., durability="batch")`.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

fn engine(rt: &Runtime, path: &Path, durability: Durability) -> Engine {
    let store = SqliteStore::open(path).expect("the store opens");
    Engine::new(rt.handle().clone(), EngineConfig { store: Some(Arc::new(store)), durability, ..Default::default() })
}

/// run.py's `_raw_sqlite`: its own file, WAL, synchronous=NORMAL; statements prepared once
/// (cached), as a Rust user would write it.
struct Raw {
    conn: Connection,
    names: Vec<String>,
}

const INSERT: &str = "INSERT INTO outputs (run, node, output) VALUES (?1, ?2, ?3)";

impl Raw {
    fn open(path: &Path) -> Raw {
        let conn = Connection::open(path).expect("open");
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).expect("WAL");
        assert_eq!(mode.to_lowercase(), "wal", "SQLite refused WAL mode");
        conn.pragma_update(None, "synchronous", "NORMAL").expect("synchronous");
        conn.execute_batch("CREATE TABLE outputs (run INTEGER NOT NULL, node TEXT NOT NULL, output TEXT NOT NULL)")
            .expect("create");
        Raw { conn, names: (0..CHAIN_LEN).map(|k| format!("n{k}")).collect() }
    }

    /// One run: per node, call it, INSERT its output as JSON, and COMMIT (or, with
    /// `per_run`, one COMMIT after the last INSERT). Checks the last output.
    fn run(&self, i: u64, per_run: bool) {
        let mut begin = self.conn.prepare_cached("BEGIN").expect("prepare");
        let mut insert = self.conn.prepare_cached(INSERT).expect("prepare");
        let mut commit = self.conn.prepare_cached("COMMIT").expect("prepare");
        let mut x = input(i);
        if per_run {
            begin.execute([]).expect("begin");
        }
        for name in &self.names {
            x = noop(x);
            let json = serde_json::to_string(&x).expect("JSON");
            if !per_run {
                begin.execute([]).expect("begin");
            }
            insert.execute((i as i64, name.as_str(), json)).expect("insert");
            if !per_run {
                commit.execute([]).expect("commit");
            }
        }
        if per_run {
            commit.execute([]).expect("commit");
        }
        check(ferroflow::RunStatus::Completed, Some(&x), i);
    }
}

#[inline(never)]
fn noop(x: Value) -> Value {
    std::hint::black_box(x)
}

/// What a file holds, read with a connection of its own (in this process: the same
/// SQLite as the store's, so its locks are shared correctly) after
/// `PRAGMA wal_checkpoint(TRUNCATE)`, as run.py's `_INSPECT`.
struct Inspect {
    /// Database + WAL, bytes.
    bytes: u64,
    /// For a ferroflow store: runs completed, runs in all, and the journal's `entry` bytes.
    runs: Option<(i64, i64, i64)>,
}

fn inspect(path: &Path) -> Inspect {
    let conn = Connection::open(path).expect("open");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).expect("checkpoint");
    assert_eq!(busy, 0, "{}: the WAL checkpoint could not complete", path.display());
    let runs = conn
        .query_row(
            "SELECT (SELECT count(*) FROM runs WHERE status = 'completed'), (SELECT count(*) FROM runs),
                    (SELECT coalesce(sum(length(CAST(entry AS BLOB))), 0) FROM journal)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok();
    drop(conn);
    let bytes = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
        .map(|m| m.len())
        .sum();
    Inspect { bytes, runs }
}

/// The type of the file system `path` is on, from /proc/mounts.
fn fs_type(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: (usize, String) = (0, "?".into());
    for line in mounts.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() >= 3 && path.starts_with(parts[1]) && parts[1].len() >= best.0 {
            best = (parts[1].len(), parts[2].to_owned());
        }
    }
    best.1
}

fn main() {
    let rt = common::runtime();
    let wf = chain();
    let machine = common::machine();
    let root = tempfile::tempdir().expect("temp dir");
    let fs = fs_type(root.path());

    // Warm-up: threads, SQLite's code paths, allocators.
    for (k, durability) in [Durability::Commit, Durability::Batch { window: BATCH_WINDOW }].into_iter().enumerate() {
        let e = engine(&rt, &root.path().join(format!("warm{k}.db")), durability);
        for i in 0..WARM_UP as u64 {
            run_driven(&rt, &e, &wf, i);
        }
    }
    let raw = Raw::open(&root.path().join("warm-raw.db"));
    for i in 0..WARM_UP as u64 {
        raw.run(i, false);
    }
    drop(raw);

    // The timing loop (run.py's W4): engine and baselines interleaved, fresh files each time.
    let (mut commit, mut batch, mut base, mut base_run): (Vec<Timing>, Vec<Timing>, Vec<Timing>, Vec<Timing>) =
        Default::default();
    let (mut bytes, mut raw_bytes, mut payload) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..REPS {
        let dir = root.path().join(format!("rep{rep}"));
        std::fs::create_dir(&dir).expect("mkdir");
        let path: PathBuf = dir.join("ferroflow.db");
        let e = engine(&rt, &path, Durability::Commit);
        let size0 = inspect(&path).bytes;
        commit.push(common::time_each(RUNS, |i| run_driven(&rt, &e, &wf, i)));
        let stats = inspect(&path);
        let (completed, runs, entries) = stats.runs.expect("a ferroflow store");
        assert_eq!((completed, runs), (RUNS as i64, RUNS as i64), "every run completed and stored");
        bytes.push((stats.bytes - size0) as f64 / RUNS as f64);
        payload.push(entries as f64 / RUNS as f64);
        drop(e);

        let path = dir.join("batch.db");
        let e = engine(&rt, &path, Durability::Batch { window: BATCH_WINDOW });
        batch.push(common::time_each(RUNS, |i| run_driven(&rt, &e, &wf, i)));
        // Read with the engine still open: a settled run is written.
        let (completed, _, _) = inspect(&path).runs.expect("a ferroflow store");
        assert_eq!(completed, RUNS as i64, "group commit: every run completed and stored");
        drop(e);

        let path = dir.join("raw.db");
        let raw = Raw::open(&path);
        let size0 = inspect(&path).bytes;
        base.push(common::time_each(RUNS, |i| raw.run(i, false)));
        raw_bytes.push((inspect(&path).bytes - size0) as f64 / RUNS as f64);
        drop(raw);

        let raw = Raw::open(&dir.join("raw-run.db"));
        base_run.push(common::time_each(RUNS, |i| raw.run(i, true)));
        drop(raw);
        std::fs::remove_dir_all(&dir).expect("rm");
    }

    // Criterion: per run of 10 nodes, each on one file.
    let mut c = common::criterion(30);
    let mut group = c.benchmark_group("W4");
    group.throughput(Throughput::Elements(CHAIN_LEN as u64));
    {
        let e = engine(&rt, &root.path().join("criterion.db"), Durability::Commit);
        let mut i = 0u64;
        group.bench_function("engine_commit", |b| {
            b.iter(|| {
                run_driven(&rt, &e, &wf, i);
                i += 1;
            })
        });
    }
    {
        let raw = Raw::open(&root.path().join("criterion-raw.db"));
        let mut i = 0u64;
        group.bench_function("raw_rusqlite_commit_per_node", |b| {
            b.iter(|| {
                raw.run(i, false);
                i += 1;
            })
        });
    }
    group.finish();
    c.final_summary();

    let json: f64 =
        (0..RUNS as u64).map(|i| (CHAIN_LEN * serde_json::to_string(&i).unwrap().len()) as f64).sum::<f64>()
            / RUNS as f64;
    let med = |v: &mut Vec<f64>| common::median(v);
    let (e_node, e_lo, e_hi) = per_node(&commit, |t| t.median);
    let (b_node, b_lo, b_hi) = per_node(&base, |t| t.median);
    let (g_node, g_lo, g_hi) = per_node(&batch, |t| t.median);
    let (r_node, r_lo, r_hi) = per_node(&base_run, |t| t.median);
    let (e_mean, _, _) = per_node(&commit, |t| t.mean);
    let (b_mean, _, _) = per_node(&base, |t| t.mean);
    let (e_cpu, _, _) = per_node(&commit, |t| t.cpu);
    let (b_cpu, _, _) = per_node(&base, |t| t.cpu);
    let (g_cpu, _, _) = per_node(&batch, |t| t.cpu);
    let (e_bytes, b_bytes, e_payload) = (med(&mut bytes), med(&mut raw_bytes), med(&mut payload));
    println!();
    println!(
        "== W4, pure Rust: {REPS} repetitions of {RUNS} runs one after another, each timed alone, fresh files \
         (temp dir on {fs}); {machine}"
    );
    println!(
        "W4 rust: {e_node:.2} µs/node (median) [Durability::Commit; repetitions ranged {e_lo:.2}-{e_hi:.2}]; \
         raw rusqlite {b_node:.2} µs/node [ranged {b_lo:.2}-{b_hi:.2}]; ratio {:.2}x",
        e_node / b_node
    );
    println!(
        "W4 rust, mean µs/node (includes the runs that checkpoint): {e_mean:.2}; raw {b_mean:.2}; ratio {:.2}x",
        e_mean / b_mean
    );
    println!(
        "W4 rust, CPU time per node (every thread): {e_cpu:.2} µs; raw {b_cpu:.2} µs; ratio {:.2}x",
        e_cpu / b_cpu
    );
    println!(
        "W4 rust: bytes stored per run {e_bytes:.0} (outputs' JSON {json:.1}: {:.1}x; raw baseline's file growth \
         {b_bytes:.0}: {:.2}x); journal payload per run {e_payload:.0} B",
        e_bytes / json,
        e_bytes / b_bytes
    );
    println!(
        "W4 rust, Durability::Batch (5 ms): {g_node:.2} µs/node (median) [ranged {g_lo:.2}-{g_hi:.2}; CPU \
         {g_cpu:.2} µs]; raw rusqlite with one COMMIT per run {r_node:.2} µs/node [ranged {r_lo:.2}-{r_hi:.2}]; \
         ratio {:.2}x",
        g_node / r_node
    );
}
