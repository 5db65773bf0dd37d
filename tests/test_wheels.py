"""The two wheels on their own: in a fresh virtualenv with only `ferroflow` and
`ferroflow-server` installed from the wheels `make wheels` builds (no repository on the path),
the README's gRPC steps work: the server starts, a worker runs the graph, and a client generated
from the packaged proto (`ferroflow proto-path`) drives a run to its end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

APP = """\
import ferroflow as ff

flow = ff.Graph("wheel_flow")


@flow.task
def double(input):
    return input["n"] * 2


@flow.task
def finish(double):
    return {"doubled": double}
"""

CLIENT = """\
import json, sys, time
import grpc
sys.path.insert(0, sys.argv[2])
import ferroflow_pb2 as pb, ferroflow_pb2_grpc as rpc

client = rpc.FerroflowStub(grpc.insecure_channel(sys.argv[1]))
deadline = time.monotonic() + 60  # until the worker has registered the graph
while not any(g.name == "wheel_flow" for g in client.ListGraphs(pb.ListGraphsRequest(), timeout=10).graphs):
    assert time.monotonic() < deadline, "no worker registered wheel_flow"
    time.sleep(0.05)
run = client.StartRun(pb.StartRunRequest(graph="wheel_flow", input_json='{"n": 21}', run_id="w-1"), timeout=30).run
kinds = [event.kind for event in client.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=60)]
done = client.GetRun(pb.GetRunRequest(run_id="w-1"), timeout=10)
print(json.dumps({"kinds": kinds, "output": json.loads(done.output_json)}))
"""


# Building the server's wheel compiles it in release mode: minutes on a fresh machine.
@pytest.mark.timeout(1500)
def test_the_wheels_alone_serve_and_run_a_graph_over_grpc(tmp_path):
    dist = tmp_path / "dist"
    maturin = Path(sys.executable).parent / "maturin"
    for manifest in ([], ["-m", "crates/ferroflow-server/Cargo.toml"]):
        built = subprocess.run(
            [str(maturin), "build", "--release", "--quiet", "--out", str(dist), *manifest],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert built.returncode == 0, built.stderr[-3000:]
    wheels = sorted(p.name for p in dist.glob("*.whl"))
    assert [w.split("-")[0] for w in wheels] == ["ferroflow", "ferroflow_server"], wheels

    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--no-index", "--quiet", *map(str, dist.glob("*.whl"))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "app"
    work.mkdir()
    (work / "app.py").write_text(APP)
    # Nothing of the repository: the fresh environment's own PATH, and the app's directory.
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(work)}
    proto = subprocess.run(
        [str(bin_dir / "ferroflow"), "proto-path"], capture_output=True, text=True, env=env, cwd=work
    )
    assert proto.returncode == 0, proto.stderr
    proto_dir = Path(proto.stdout.strip())
    assert proto_dir.is_relative_to(env_dir) and (proto_dir / "ferroflow.proto").is_file(), proto_dir

    stubs = tmp_path / "stubs"
    stubs.mkdir()
    grpc_out = [f"--grpc_python_out={stubs}", "ferroflow.proto"]
    generated = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={stubs}", *grpc_out],
        capture_output=True,
        text=True,
    )
    assert generated.returncode == 0, generated.stderr

    db = str(work / "runs.db")
    server = subprocess.Popen(
        [str(bin_dir / "ferroflow-server"), "--context", db, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=work,
    )
    worker = None
    try:
        line = server.stdout.readline()
        assert "listening on" in line, (line, server.stderr.read()[-2000:] if server.poll() is not None else "")
        address = line.split()[line.split().index("on") + 1]
        worker = subprocess.Popen(
            [str(bin_dir / "ferroflow"), "worker", "app:flow", "--context", db],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=work,
        )
        (tmp_path / "client.py").write_text(CLIENT)
        # The client is any grpcio program; this one runs where grpcio is installed.
        client = subprocess.run(
            [sys.executable, str(tmp_path / "client.py"), address, str(stubs)],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, PYTHONPATH=""),
        )
        assert client.returncode == 0, client.stderr[-3000:]
        seen = json.loads(client.stdout)
        assert seen["kinds"][0] == "run_started" and seen["kinds"][-1] == "run_completed", seen
        assert seen["output"] == {"doubled": 42}
    finally:
        for proc in (worker, server):
            if proc is not None:
                if proc.poll() is None:
                    proc.terminate()
                proc.communicate(timeout=30)
