"""The standard workloads of benches/README.md, one module each, under the CLI benches/run.py.

benches/ is not an installed package: run.py puts its own directory on ``sys.path`` (running it as
``python benches/run.py`` does anyway), and every child process that runs or imports a module of
this package gets benches/ on ``PYTHONPATH`` (common._bench_env).

The cut, from the bottom up (each module imports only from the layers below it; no cycles):

- ``common``: paths, repetitions and time limits, timing and formatting (medians, spreads, table
  rows, ratios), RSS and CPU time, the W1 chain every durable workload reuses, and starting a part
  of a workload in a child process (``run.py --child NAME``).
- ``perf``, ``sqlite_tools``, ``servers``: what several workloads share around one tool: `perf`
  profiles (W4, W4c, B1), SQLite files and the raw `sqlite3` baseline (W3, W4, W4c), the Redis and
  NATS servers, their processes and plain-client baselines (W3, W4c, B1). ``mock_llm`` is W3's mock
  OpenAI server process and the handle W3 drives it with.
- one module per workload: ``w1a``, ``w1b``, ``w2``, ``w3``, ``w4`` (W4 and its profile), ``w4c``,
  ``w6``, ``b1``, each measuring its workload and building its table's rows and notes.
- the CLI, run.py: the arguments, the mapping of ``--child`` names to the functions here, the
  machine's description and the Markdown rendering of the tables (RESULTS.md).

What runs in a process of its own is a module run with ``python -m ffbench.NAME`` (never source
held in a string): ``sqlite_inspect`` (reads a store's file: see its docstring for why it must be
another process), ``mock_llm`` (W3's server) and ``b1_launch`` (starts a `ferroflow worker` that
dies with its parent), and ``b1_app`` is the module those workers import the chain from.

Names keep the leading underscore they had in run.py: they are the benchmark's internals, shared
between these modules, not an API.
"""
