"""The child process of test_store_errors.py: applies the restriction named by argv[1]
(dropped capabilities, a file-size limit) before ferroflow is imported, declares two small
graphs, and runs the action named by argv[2] on the SQLite file argv[3], reporting every
outcome as one JSON line on stdout.

    python tests/store_errors_child.py MODE ACTION DB [ARGS...]
"""

import ctypes
import json
import os
import resource
import signal
import sys

mode, action, db = sys.argv[1], sys.argv[2], sys.argv[3]
args = sys.argv[4:]


def report(**fields):
    print(json.dumps(fields), flush=True)


if mode == "unprivileged" and os.geteuid() == 0:
    # Capabilities are per thread: drop them before anything starts a thread.
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    mask = ~((1 << 1) | (1 << 2) | (1 << 3)) & 0xFFFFFFFF  # DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER
    for d in data[:1]:
        d.effective &= mask
        d.permitted &= mask
        d.inheritable &= mask
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
if mode == "unprivileged":
    # The test means nothing if this process could still write a read-only file.
    probe = os.environ["FERROFLOW_TEST_LOG"] + ".probe"  # beside the log: always writable
    with open(probe, "w"):
        pass
    os.chmod(probe, 0o444)
    try:
        with open(probe, "r+"):
            pass
    except PermissionError:
        report(what="privileges", ok=True)
    else:
        report(what="privileges", ok=False)
        sys.exit(3)
    finally:
        os.unlink(probe)
elif mode.startswith("fsize="):
    # The soft limit only: the process may lift it again ("room again") without privileges.
    limit = int(mode.split("=", 1)[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

import ferroflow as ff  # noqa: E402 - only once the restriction is in place

PAD = "x" * 2000  # makes each journal entry a few pages, so a small limit is reached soon


def log(ctx):
    with open(os.environ["FERROFLOW_TEST_LOG"], "a") as f:
        f.write(f"{ctx.run_id} {ctx.node} {ctx.attempt}\n")


chain = ff.Graph("store_errors_chain")


@chain.task
def first(input, ctx):
    log(ctx)
    return {"n": input, "pad": PAD}


@chain.task
def second(first, ctx):
    log(ctx)
    return {"n": first["n"] * 10, "pad": PAD}


@chain.task
def third(second, ctx):
    log(ctx)
    return second["n"] + 1


approval = ff.Graph("store_errors_approval")


@approval.task
def draft(input, ctx):
    log(ctx)
    return f"refund {input}"


@approval.human
def approve(draft):
    return {"question": f"{draft}?"}


@approval.task
def send(draft, approve, ctx):
    log(ctx)
    return {"sent": draft, "approved": approve}


# The step-exact full disk: in mode "limit", the body of the node named by the input's
# "limit_at" (once per process) caps this process's file size at the store's current size:
# SQLite appends commits to the -wal file, so the very next commit, the one recording that
# node's completion, cannot be written, whatever the schema or the page layout.
limited = ff.Graph("store_errors_limited")
limit_set = []


def limit_here(input, ctx):
    if mode == "limit" and input["limit_at"] == ctx.node and not limit_set:
        size = max(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        limit_set.append(size)
        report(what="limit set", ok=True, value={"node": ctx.node, "size": size})


@limited.task
def begin(input, ctx):
    log(ctx)
    limit_here(input, ctx)
    return input["n"]


@limited.task
def middle(begin, input, ctx):
    log(ctx)
    limit_here(input, ctx)
    return begin * 10


@limited.task
def end(middle, input, ctx):
    log(ctx)
    limit_here(input, ctx)
    return middle + 1


def attempt(what, fn):
    """Runs fn, reporting its value or its error; returns whether it succeeded."""
    try:
        value = fn()
    except BaseException as e:  # noqa: BLE001 - a pyo3 PanicException is a BaseException: report it too
        report(
            what=what,
            ok=False,
            type=type(e).__name__,
            classes=[c.__name__ for c in type(e).__mro__],
            message=str(e),
            node=getattr(e, "node", None),
            error_type=getattr(e, "error_type", None),
            error_message=getattr(e, "error_message", None),
        )
        return False
    report(what=what, ok=True, value=value)
    return True


def result(r):
    return {"status": r.status.value, "output": r.output}


def runs(ctx):
    return {r.run_id: r.status.value for r in ctx.runs(limit=10_000)}


def journal(ctx, run_id):
    out = []
    for e in ctx.journal(run_id):
        entry = {"kind": type(e).__name__, "node": getattr(e, "node", None)}
        if isinstance(e, ff.events.RunFinished):
            entry["status"] = e.status.value
            entry["output"] = e.output
        out.append(entry)
    return out


ctx = None


def open_context():
    global ctx
    ctx = ff.Sqlite(db)
    return str(ctx)


if action == "setup":
    # A completed run and a run waiting for a person.
    attempt("open", open_context)
    attempt("done", lambda: result(chain.run(4, context=ctx, run_id="done", timeout=20)))
    attempt("waiting", lambda: result(approval.run(7, context=ctx, run_id="waiting", timeout=20)))

elif action == "read-only":
    # Read what is there, then try to write: a new run, and an answer to the waiting run.
    if attempt("open", open_context):
        attempt("runs", lambda: runs(ctx))
        attempt("journal", lambda: journal(ctx, "done"))
        attempt("new run", lambda: result(chain.run(5, context=ctx, run_id="new", timeout=20)))
        attempt("answer", lambda: result(approval.resume("waiting", "yes", context=ctx, timeout=20)))
        attempt("runs after", lambda: runs(ctx))

elif action == "check":
    # Writable again: everything recorded is there, and the waiting run takes its answer.
    attempt("open", open_context)
    attempt("runs", lambda: runs(ctx))
    attempt("journal", lambda: journal(ctx, "done"))
    attempt("answer", lambda: result(approval.resume("waiting", "yes", context=ctx, timeout=20)))
    attempt("runs after", lambda: runs(ctx))

elif action == "fill":
    # Run after run until a write fails, then check the process still answers: a read, a
    # new run and continuing the failed run each end (with an error) instead of hanging.
    attempt("open", open_context)
    for i in range(int(args[0])):
        if not attempt(f"fill-{i}", lambda i=i: result(chain.run(i, context=ctx, run_id=f"fill-{i}", timeout=20))):
            break
    attempt("runs", lambda: runs(ctx))
    attempt("another run", lambda: result(chain.run(999, context=ctx, run_id="another", timeout=20)))
    attempt("continue", lambda: result(chain.resume(f"fill-{i}", context=ctx, timeout=20)))

elif action == "limit-at":
    # A complete run, then a run whose node args[0] hits the limit (see limit_here), then
    # room again in this very process: continue the run from the same context, start a new
    # one, and continue from a new context.
    if mode == "limit":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    big = "x" * 40_000  # the -wal file outgrows the 32 KiB -shm file before the limit is set
    attempt("open", open_context)
    plain = {"n": 1, "limit_at": None, "pad": big}
    attempt("before", lambda: result(limited.run(plain, context=ctx, run_id="before", timeout=20)))
    hit = {"n": 2, "limit_at": args[0], "pad": big}
    attempt("limited", lambda: result(limited.run(hit, context=ctx, run_id="limited", timeout=20)))
    attempt("runs", lambda: runs(ctx))
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    attempt("continue, same context", lambda: result(limited.resume("limited", context=ctx, timeout=20)))
    attempt(
        "new run, same context",
        lambda: result(limited.run({"n": 3, "limit_at": None, "pad": ""}, context=ctx, run_id="after", timeout=20)),
    )
    fresh = ff.Sqlite(db)
    attempt("continue, new context", lambda: result(limited.resume("limited", context=fresh, timeout=20)))
    attempt("runs after", lambda: runs(fresh))
    attempt("journal", lambda: journal(fresh, "limited"))

elif action == "restart":
    # A new process while the disk is still full: it may read; writing fails clearly.
    if attempt("open", open_context):
        attempt("runs", lambda: runs(ctx))
        attempt("another run", lambda: result(chain.run(999, context=ctx, run_id="another", timeout=20)))

elif action == "recover":
    # Room again: report what the file holds, then continue every unfinished run.
    attempt("open", open_context)
    stored = runs(ctx)
    report(what="runs", ok=True, value=stored)
    report(what="journals", ok=True, value={run_id: journal(ctx, run_id) for run_id in stored})
    for run_id, status in sorted(stored.items()):
        if status != "completed":
            attempt(f"resume {run_id}", lambda run_id=run_id: result(chain.resume(run_id, context=ctx, timeout=20)))
    attempt("runs after", lambda: runs(ctx))

else:
    raise SystemExit(f"unknown action {action}")
