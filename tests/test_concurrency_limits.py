"""Many runs at once: nothing may starve the engine's threads, and the process exits cleanly."""

import asyncio
import subprocess
import sys
import textwrap

import ferroflow as ff


async def test_more_concurrent_streams_than_blocking_threads(context):
    # Each stream is watched while its run needs blocking threads for its sync nodes; the
    # engine has 64 blocking threads, so 300 streams would deadlock if watching held one.
    g = ff.Graph("many_streams")

    @g.task
    def prepare(input):
        return input * 2

    @g.task
    async def think(prepare):
        await asyncio.sleep(0)
        return prepare + 1

    @g.task
    def finish(think):
        return think

    async def one(i):
        events = [event async for event in g.stream(i, context=context)]
        assert isinstance(events[-1], ff.events.RunFinished)
        return events[-1].output

    outputs = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(300))), timeout=30)
    assert outputs == [i * 2 + 1 for i in range(300)]


EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio
    import ferroflow as ff

    g = ff.Graph("exit")

    @g.task
    async def a(input):
        await asyncio.sleep(0)
        return input

    @g.human
    def ask(a):
        return {"q": a}

    async def one(i):
        async for event in g.stream(i):
            pass
        # Leave some runs resumed and still in flight when the interpreter exits.
        await g.aresume(event.run_id, "ok") if i % 2 else g.start(i)

    async def main():
        await asyncio.gather(*(one(i) for i in range(300)))

    asyncio.run(main())
    print("done")
    """
)


def test_the_interpreter_exits_cleanly_with_engine_threads_busy():
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "done" in proc.stdout
        assert "Fatal Python error" not in proc.stderr
