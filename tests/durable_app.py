"""A graph for the durable-context tests, importable by the test and by child processes.

Every body appends its name to the file in FERROFLOW_TEST_LOG, so that a test can count how
often each body ran across processes. `explode` kills its own process with SIGKILL the
first time it runs, as a crash would.
"""

import os
import signal

import ferroflow as ff


def log(name: str) -> None:
    with open(os.environ["FERROFLOW_TEST_LOG"], "a") as f:
        f.write(name + "\n")


chain = ff.Graph("durable_chain")


@chain.task
def first(input):
    log("first")
    return {"n": input}


@chain.task
def explode(first, ctx):
    log(f"explode:{ctx.attempt}:{ctx.idempotency_key}")
    marker = os.environ["FERROFLOW_TEST_LOG"] + ".exploded"
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return first["n"] * 10


@chain.task
def last(explode):
    log("last")
    return explode + 1


approval = ff.Graph("durable_approval")


@approval.task
def draft(input):
    log("draft")
    return f"refund {input}"


@approval.human
def approve(draft):
    log("approve")
    return {"question": f"{draft}?"}


@approval.task
def send(draft, approve):
    log("send")
    return {"sent": draft, "approved": approve}
