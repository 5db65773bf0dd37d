"""The ``ferroflow`` command on bad input: one line on stderr that says what is wrong (the
option, file or module concerned), exit status 2, and never a Python traceback.

Each case runs the command as a subprocess in ``tmp_path``, with small application modules
written there and SQLite files there as contexts (no servers)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest

import ferroflow as ff
from ferroflow.cli import _listen_address

APP = """\
import ferroflow as ff

g = ff.Graph("cli_errors")


@g.task
def double(input):
    with open("ran.log", "a") as f:  # in the command's directory: which runs started
        f.write(f"{input}\\n")
    return input * 2


not_a_graph = 42
"""

# Application modules that fail to import, and what the line must name.
BROKEN = {
    "raises": ('raise RuntimeError("the config is missing")\n', ["'raises'", "RuntimeError", "the config is missing"]),
    "syntax": ("def broken(:\n    pass\n", ["'syntax'", "SyntaxError", "syntax.py", "line 1"]),
    "exits": ("import sys\n\nsys.exit(3)\n", ["'exits'", "SystemExit", "sys.exit(3)"]),
    "exits_text": ('import sys\n\nsys.exit("no config")\n', ["'exits_text'", "SystemExit", "no config"]),
    "needs_dep": ("import no_such_dependency_of_ferroflow\n", ["'needs_dep'", "ModuleNotFoundError", "no_such_dep"]),
}

PEM = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FERROFLOW_SERVER_TOKEN"}
    command = [sys.executable, "-m", "ferroflow.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, cwd=cwd)


def assert_refused(done: subprocess.CompletedProcess, *words: str, status: int = 2) -> str:
    """The command exited with ``status`` after one line on stderr (argparse's may be
    followed by ``(see ... --help)``) that names every one of ``words``; returns the line."""
    assert done.returncode == status, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert lines, "nothing on stderr"
    if len(lines) == 2:
        assert re.fullmatch(r"\(see ferroflow( [a-z]+)* --help\)", lines[1]), done.stderr
        assert re.match(r"ferroflow( [a-z]+)*: argument ", lines[0]), done.stderr
    else:
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("ferroflow: "), done.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """``tmp_path`` with ``app.py`` (graph ``g``), the broken modules, an input file and a
    SQLite context in it."""
    (tmp_path / "app.py").write_text(APP)
    for name, (code, _) in BROKEN.items():
        (tmp_path / f"{name}.py").write_text(code)
    (tmp_path / "in.jsonl").write_text("1\n2\n3\n")
    return tmp_path


# -- the graph's module -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_module_that_fails_to_import_is_named_with_its_error(app: Path, name: str) -> None:
    assert_refused(cli(app, "graph", f"{name}:g"), *BROKEN[name][1])


def test_every_command_that_loads_a_graph_reports_its_import_failure(app: Path) -> None:
    assert_refused(cli(app, "worker", "raises:g", "--context", "runs.db"), "'raises'", "RuntimeError")
    assert_refused(
        cli(app, "map", "exits:g", "--input", "in.jsonl", "--output", "out.jsonl", "--context", "runs.db"),
        "'exits'",
        "SystemExit",
    )
    assert_refused(cli(app, "runs", "resume", "r", "--context", "runs.db", "--graph", "syntax:g"), "SyntaxError")
    assert_refused(cli(app, "serve", "raises:g", "--context", "memory", "--listen", "127.0.0.1:0"), "RuntimeError")


@pytest.mark.parametrize(
    "spec, words",
    [
        ("no_such_module:g", ["'no_such_module'", "ModuleNotFoundError"]),
        ("app:missing", ["'app:missing'", "missing"]),
        ("app:not_a_graph", ["'app:not_a_graph'", "not a ferroflow.Graph", "int"]),
        ("app", ["MODULE:GRAPH", "'app'"]),
        ("./missing.py:g", ["'./missing.py'", "no such file"]),
        ("sub/missing.py:g", ["'sub/missing.py'", "no such file"]),
        ("./raises.py:g", ["raises.py", "RuntimeError", "the config is missing"]),
        ("./syntax.py:g", ["syntax.py", "SyntaxError", "line 1"]),
        ("./exits.py:g", ["exits.py", "SystemExit"]),
    ],
)
def test_a_graph_that_cannot_be_found_is_named(app: Path, spec: str, words: List[str]) -> None:
    assert_refused(cli(app, "graph", spec), *words)


def test_a_graph_is_loaded_from_a_file_path(app: Path) -> None:
    drawn = cli(app, "graph", "./app.py:g")
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout.startswith("flowchart TD") and "double" in drawn.stdout

    # In another directory, importing a module beside it (as `python sub/flow.py` would).
    sub = app / "sub"
    sub.mkdir()
    (sub / "helpers.py").write_text("PREFIX = 'sub'\n")
    (sub / "flow.py").write_text(
        "import ferroflow as ff\nfrom helpers import PREFIX\n\nflow = ff.Graph(PREFIX + '_flow')\n\n\n"
        "@flow.task\ndef first(input):\n    return input\n"
    )
    drawn = cli(app, "graph", "sub/flow.py:flow")
    assert drawn.returncode == 0, drawn.stderr
    assert "first" in drawn.stdout

    mapped = cli(app, "map", "./app.py:g", "--input", "in.jsonl", "--output", "out.jsonl", "--context", "runs.db")
    assert mapped.returncode == 0, mapped.stderr
    records = [json.loads(line) for line in (app / "out.jsonl").read_text().splitlines()]
    assert [(r["status"], r["output"]) for r in records] == [("completed", 2), ("completed", 4), ("completed", 6)]


# -- map --input and --output ---------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "directory", "latin-1", "deeply nested", "not JSON"])
def test_an_unusable_input_file_is_named_with_the_line(app: Path, case: str) -> None:
    words = ["--input", "'bad.jsonl'"]
    if case == "directory":
        (app / "bad.jsonl").mkdir()
        words.append("directory")
    elif case == "latin-1":
        (app / "bad.jsonl").write_bytes('1\n"café"\n'.encode("latin-1"))
        words += ["line 2", "UTF-8"]
    elif case == "deeply nested":
        (app / "bad.jsonl").write_text("1\n2\n" + "[" * 200_000 + "]" * 200_000 + "\n")
        words += ["line 3", "nested"]
    elif case == "not JSON":
        (app / "bad.jsonl").write_text("1\n\n{oops\n")
        words += ["line 3", "not JSON"]
    else:
        words.append("no such file")
    done = cli(app, "map", "app:g", "--input", "bad.jsonl", "--output", "out.jsonl", "--context", "runs.db")
    assert_refused(done, *words)
    assert not (app / "ran.log").exists(), "no run started"


def unwritable(app: Path, case: str) -> str:
    """An output path that cannot be written, of the kind ``case`` names."""
    if case == "no such directory":
        return "nowhere/out.jsonl"
    if case == "a directory":
        (app / "out").mkdir()
        return "out"
    if case == "below a file":
        (app / "file").write_text("")
        return "file/out.jsonl"
    # Permission denied: a directory without write permission; root ignores those, but
    # cannot create files in /sys either.
    if os.geteuid() != 0:
        locked = app / "locked"
        locked.mkdir(mode=0o500)
        return str(locked / "out.jsonl")
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no directory that root cannot write to")
    return "/sys/kernel/ferroflow-test-out.jsonl"


@pytest.mark.parametrize("case", ["no such directory", "a directory", "below a file", "no permission"])
def test_an_unwritable_output_fails_before_any_run_starts(app: Path, case: str) -> None:
    output = unwritable(app, case)
    done = cli(app, "map", "app:g", "--input", "in.jsonl", "--output", output, "--context", "runs.db")
    assert_refused(done, "--output", repr(output))
    assert not (app / "ran.log").exists(), "a run started before the output was opened"
    assert ff.Sqlite(app / "runs.db").runs() == []


# -- option values ----------------------------------------------------------------------------


def test_a_resume_value_that_is_not_json_names_the_option(app: Path) -> None:
    done = cli(app, "runs", "resume", "r1", "--context", "runs.db", "--graph", "app:g", "--value", "not json")
    assert_refused(done, "--value", "not JSON")


def test_a_usage_error_is_one_line(app: Path) -> None:
    line = assert_refused(cli(app, "runs", "list", "--context", "runs.db", "--limit", "-1"))
    assert line == "ferroflow runs list: argument --limit: must be a whole number >= 1, not -1"


NUMERIC = [
    (["runs", "list", "--context", "runs.db", "--limit", "0"], "--limit"),
    (["runs", "list", "--context", "runs.db", "--limit", "ten"], "--limit"),
    (["map", "app:g", "--input", "in.jsonl", "--output", "o.jsonl", "--context", "runs.db", "--concurrency", "0"],
     "--concurrency"),
    (["worker", "app:g", "--context", "runs.db", "--concurrency", "0"], "--concurrency"),
    (["serve", "app:g", "--context", "runs.db", "--concurrency", "0"], "--concurrency"),
    (["worker", "app:g", "--context", "runs.db", "--lease", "-1"], "--lease"),
    (["worker", "app:g", "--context", "runs.db", "--lease", "nan"], "--lease"),
    (["worker", "app:g", "--context", "runs.db", "--lease", "inf"], "--lease"),
    (["serve", "app:g", "--context", "runs.db", "--lease", "0"], "--lease"),
    (["worker", "app:g", "--context", "runs.db", "--grace", "-1"], "--grace"),
    (["worker", "app:g", "--context", "runs.db", "--grace", "nan"], "--grace"),
    (["serve", "app:g", "--context", "runs.db", "--grace", "-1"], "--grace"),
    (["runs", "resume", "r1", "--context", "runs.db", "--graph", "app:g", "--timeout", "-1"], "--timeout"),
    (["runs", "resume", "r1", "--context", "runs.db", "--graph", "app:g", "--timeout", "nan"], "--timeout"),
    (["serve", "app:g", "--context", "memory", "--max-input-bytes", "-5"], "--max-input-bytes"),
    (["serve", "app:g", "--context", "memory", "--max-input-bytes", "0"], "--max-input-bytes"),
]  # fmt: skip


@pytest.mark.parametrize("args, option", NUMERIC, ids=[" ".join(a[-2:]) + f" ({a[0]})" for a, _ in NUMERIC])
def test_a_number_out_of_range_is_refused_when_the_arguments_are_read(
    app: Path, args: Sequence[str], option: str
) -> None:
    assert_refused(cli(app, *args), f"argument {option}: must be", args[-1])
    assert not (app / "runs.db").exists(), "refused before anything was opened"


def test_a_lease_the_engine_refuses_is_one_line(app: Path) -> None:
    assert_refused(cli(app, "worker", "app:g", "--context", "runs.db", "--lease", "0.001"), "--lease", "0.001")


def test_a_worker_needs_a_durable_context(app: Path) -> None:
    assert_refused(cli(app, "worker", "app:g", "--context", "memory"), "durable", "--context memory")


def test_no_password_of_a_context_url_is_printed(app: Path) -> None:
    # Nothing listens on port 1: the context cannot open, which is an error of the work (1).
    done = cli(app, "worker", "app:g", "--context", "redis://user:hunter2@127.0.0.1:1?namespace=x", "--lease", "1")
    assert done.returncode == 1, done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


# -- serve ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1", "127.0.0.1:", "localhost:50051", "example.com:1", "::1:50051"],
)
def test_serve_listens_on_ip_and_port_only(app: Path, listen: str) -> None:
    assert_refused(cli(app, "serve", "app:g", "--context", "memory", "--listen", listen), "argument --listen")


def test_listen_addresses_that_are_accepted() -> None:
    for address in ["127.0.0.1:0", "0.0.0.0:65535", "[::1]:50051", "[::]:0", "10.1.2.3:443"]:
        assert _listen_address(address) == address


def test_beyond_loopback_without_a_token_the_server_refuses_in_one_line(app: Path) -> None:
    done = cli(app, "serve", "app:g", "--context", "memory", "--listen", "0.0.0.0:0")
    assert_refused(done, "0.0.0.0:0", "--allow-unauthenticated")


@pytest.mark.parametrize("case", ["cert missing", "key missing", "cert not PEM", "key not PEM", "key alone"])
def test_tls_files_that_are_missing_or_not_pem_are_named(app: Path, case: str) -> None:
    (app / "cert.pem").write_text(PEM)
    (app / "key.pem").write_text(PEM.replace("CERTIFICATE", "PRIVATE KEY"))
    (app / "der.bin").write_bytes(b"\x30\x82\x01\x0a\x02\x82\x01\x01\x00")
    cert, key, words = "cert.pem", "key.pem", ["--tls-cert", "'cert.pem'"]
    if case == "cert missing":
        cert, words = "nope.pem", ["--tls-cert", "'nope.pem'", "no such file"]
    elif case == "key missing":
        key, words = "nope.pem", ["--tls-key", "'nope.pem'", "no such file"]
    elif case == "cert not PEM":
        cert, words = "der.bin", ["--tls-cert", "'der.bin'", "PEM"]
    elif case == "key not PEM":
        key, words = "der.bin", ["--tls-key", "'der.bin'", "PEM"]
    tls = ["--tls-key", key] if case == "key alone" else ["--tls-cert", cert, "--tls-key", key]
    if case == "key alone":
        words = ["--tls-cert", "--tls-key"]
    done = cli(app, "serve", "app:g", "--context", "memory", "--listen", "127.0.0.1:0", *tls)
    assert_refused(done, *words)


def test_pem_files_the_server_cannot_use_are_one_line(app: Path) -> None:
    (app / "cert.pem").write_text(PEM)
    (app / "key.pem").write_text(PEM.replace("CERTIFICATE", "PRIVATE KEY"))
    done = cli(
        app, "serve", "app:g", "--context", "memory", "--listen", "127.0.0.1:0",
        "--tls-cert", "cert.pem", "--tls-key", "key.pem",
    )  # fmt: skip
    assert_refused(done, "cannot serve on 127.0.0.1:0")


@pytest.mark.parametrize("case", ["missing", "empty", "a directory", "unreadable"])
def test_an_unusable_token_file_is_named(app: Path, case: str) -> None:
    path = app / "token"
    words = ["--token-file", "'token'"]
    if case == "empty":
        path.write_text("  \n")
        words.append("empty")
    elif case == "a directory":
        path.mkdir()
        words.append("directory")
    elif case == "unreadable":
        if os.geteuid() == 0:
            path.write_bytes(b"\xff\xfe not text")  # root reads anything: a token that is not text
            words.append("UTF-8")
        else:
            path.write_text("secret")
            path.chmod(0)
            words.append("permission denied")
    else:
        words.append("no such file")
    done = cli(app, "serve", "app:g", "--context", "memory", "--listen", "127.0.0.1:0", "--token-file", "token")
    assert_refused(done, *words)
