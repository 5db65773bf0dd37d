"""``ferroflow map``'s progress on stderr: a line every 5 seconds when stderr is not a
terminal, a bar redrawn in place when it is, none with ``--quiet``; stdout stays empty.

The command runs as a subprocess on a SQLite file in ``tmp_path``, on a graph whose one node
sleeps 0.1 s, with ``--concurrency 2``: at most 20 runs a second, so a batch's length is
known from below. The rate and ETA (:class:`ferroflow.cli.progress.Throughput`) and the two
displays are tested on a clock of the test's own."""

import io
import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import pytest

from ferroflow.cli.args import parser
from ferroflow.cli.progress import (
    Bar,
    Lines,
    Throughput,
    format_duration,
    format_elapsed,
    format_eta,
    format_rate,
    reporter,
)

APP = """\
import time

import ferroflow as ff

g = ff.Graph("progress")


@g.task
def nap(input):
    time.sleep(0.1)
    return input + 1
"""

PROGRESS = re.compile(
    r"ferroflow map: (?P<done>[\d,]+)/(?P<total>[\d,]+) runs settled \((?P<percent>\d+\.\d)%\), "
    r"(?P<rate>[\d.,]+) runs/s, ETA (?P<eta>\S+)"
)
SUMMARY = re.compile(
    r"ferroflow map: (?P<total>[\d,]+) runs in batch (?P<batch>\S+) settled in (?P<elapsed>[\d.]+)s: "
    r"(?P<completed>[\d,]+) completed, (?P<waiting>[\d,]+) waiting, (?P<failed>[\d,]+) failed"
)


def number(text: str) -> int:
    return int(text.replace(",", ""))


def seconds(eta: str) -> int:
    """``28s``, ``4m05s`` as seconds."""
    match = re.fullmatch(r"(?:(\d+)m)?(\d+)s", eta)
    assert match, f"not a duration below an hour: {eta!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def map_command(app: Path, runs: int, *options: str) -> List[str]:
    (app / "in.jsonl").write_text("".join(f"{i}\n" for i in range(runs)))
    command = [sys.executable, "-m", "ferroflow.cli", "map", "app:g", "--input", "in.jsonl"]
    return [*command, "--output", "out.jsonl", "--context", "runs.db", "--concurrency", "2", *options]


def assert_all_completed(app: Path, runs: int) -> None:
    lines = (app / "out.jsonl").read_text().splitlines()
    assert len(lines) == runs
    assert [json.loads(line)["output"] for line in lines] == [i + 1 for i in range(runs)]
    assert {json.loads(line)["status"] for line in lines} == {"completed"}


# -- the command ------------------------------------------------------------------------------


def test_map_writes_a_progress_line_every_5_seconds_to_a_stderr_that_is_no_terminal(app: Path) -> None:
    runs = 240  # 12 s at least: lines at about 5 s and 10 s, then the summary
    arrived: List[Tuple[float, str]] = []  # each stderr line, with when it came
    command = map_command(app, runs)
    with subprocess.Popen(command, cwd=app, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        started = time.monotonic()
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            arrived.append((time.monotonic() - started, line.rstrip("\n")))
        stdout = proc.stdout.read()
        assert proc.wait(timeout=50) == 0, "\n".join(line for _, line in arrived)
    assert stdout == "", "progress (or anything else) on stdout"
    assert_all_completed(app, runs)

    text = "\n".join(line for _, line in arrived)
    *progress, (ended, last) = arrived
    summary = SUMMARY.fullmatch(last)
    assert summary, f"the last line is not the summary:\n{text}"
    assert number(summary["total"]) == runs and number(summary["completed"]) == runs, text
    assert summary["waiting"] == "0" and summary["failed"] == "0", text
    assert 12.0 <= float(summary["elapsed"]) <= ended + 1, text

    assert len(progress) >= 2, f"fewer than two progress lines in a batch of {ended:.1f} s:\n{text}"
    shown = [PROGRESS.fullmatch(line) for _, line in progress]
    assert all(shown), f"a line that is not a progress line:\n{text}"
    done = [number(m["done"]) for m in shown if m]
    assert done == sorted(set(done)) and 0 < done[0] and done[-1] < runs, f"counts not increasing:\n{text}"
    for m in shown:
        assert m is not None and number(m["total"]) == runs
        assert m["percent"] == f"{100 * number(m['done']) / runs:.1f}"
        # Two runs of 0.1 s at a time: at most 20 a second, and the batch does go on.
        rate = float(m["rate"].replace(",", ""))
        assert 0 < rate <= 21, text
        expected = (runs - number(m["done"])) / rate
        assert abs(seconds(m["eta"]) - expected) <= max(2, 0.15 * expected), text
    # One line every 5 s, not one per 100 ms callback.
    times = [at for at, _ in progress]
    assert times[0] >= 4.5, text
    assert all(later - earlier >= 4.5 for earlier, later in zip(times, times[1:])), (times, text)


def test_quiet_map_shows_no_progress_only_the_summary(app: Path) -> None:
    runs = 120  # 6 s at least: without --quiet a progress line would come at 5 s
    done = subprocess.run(map_command(app, runs, "--quiet"), cwd=app, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    summary = SUMMARY.fullmatch(lines[0])
    assert summary and number(summary["completed"]) == runs, done.stderr
    assert float(summary["elapsed"]) > 5.0, "the batch was over before a progress line was due: proves nothing"
    assert_all_completed(app, runs)


def test_q_is_quiet_and_progress_is_on_by_default() -> None:
    batch = ["map", "app:g", "--input", "in.jsonl", "--output", "out.jsonl", "--context", "runs.db"]
    assert parser().parse_args([*batch, "-q"]).quiet is True
    assert parser().parse_args([*batch, "--quiet"]).quiet is True
    assert parser().parse_args(batch).quiet is False


def test_map_draws_a_bar_in_place_on_a_terminal(app: Path) -> None:
    runs = 30  # 1.5 s at least: several redraws, 100 ms apart
    main, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(map_command(app, runs), cwd=app, stdout=subprocess.PIPE, stderr=terminal)
    finally:
        os.close(terminal)
    chunks: List[bytes] = []
    with proc:
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the command closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(main)
        assert proc.stdout is not None
        assert proc.stdout.read() == b""
        assert proc.wait(timeout=50) == 0
    shown = b"".join(chunks).decode().replace("\r\n", "\n")  # the terminal turns \n into \r\n

    bar, newline, rest = shown.partition("\n")
    assert newline and SUMMARY.fullmatch(rest.strip()), repr(shown)
    assert bar.startswith("\r"), repr(shown)
    frames = [frame.rstrip(" ") for frame in bar.split("\r")[1:]]
    assert len(frames) >= 3, repr(shown)
    counts = []
    for frame in frames:
        assert len(frame) < 80, frame  # the terminal's 80 columns (a new pty's size is unset)
        match = re.fullmatch(r"\[([#.]{10,30})\] (.*)", frame)
        progress = match and PROGRESS.fullmatch("ferroflow map: " + match[2])
        assert match and progress and number(progress["total"]) == runs, frame
        counts.append(number(progress["done"]))
    assert counts == sorted(counts) and counts[-1] == runs, frames
    assert frames[-1].endswith("ETA 0s") and "(100.0%)" in frames[-1], frames[-1]
    assert "." not in frames[-1].split("]")[0], frames[-1]


# -- the rate and ETA ---------------------------------------------------------------------------


def test_the_rate_is_runs_settled_per_second_and_the_eta_what_is_left_at_that_rate() -> None:
    t = Throughput(1000, start=0.0)
    assert t.rate == 0 and t.eta is None  # nothing yet
    t.update(100, 4.0)
    assert t.rate == 25.0 and t.eta == 36.0 and t.elapsed == 4.0
    assert t.summary() == "100/1,000 runs settled (10.0%), 25 runs/s, ETA 36s"
    t.update(1000, 40.0)
    assert t.eta == 0.0 and t.summary().endswith("(100.0%), 25 runs/s, ETA 0s")


def test_the_eta_is_unknown_while_nothing_settles() -> None:
    t = Throughput(10, start=0.0)
    t.update(0, 30.0)
    assert t.rate == 0 and t.eta is None
    assert t.summary() == "0/10 runs settled (0.0%), 0.0 runs/s, ETA unknown"
    # A batch that stalls: once the window holds no settled run, the rate is 0 again.
    t.update(5, 31.0)
    assert t.eta is not None
    t.update(5, 45.0)
    assert t.rate == 0 and t.eta is None


def test_the_rate_is_over_the_last_ten_seconds() -> None:
    # A resumed batch: 9,000 runs found settled at once, then 10 a second.
    t = Throughput(10_000, start=0.0)
    t.update(9_000, 0.1)
    for second in range(1, 31):
        t.update(9_000 + 10 * second, 0.1 + second)
    assert t.rate == pytest.approx(10.0)
    assert t.eta == pytest.approx(70.0)
    # Before the window is full, the rate is since the start.
    early = Throughput(100, start=0.0)
    early.update(10, 2.0)
    early.update(30, 6.0)
    assert early.rate == 5.0


def test_an_empty_batch_is_done() -> None:
    t = Throughput(0, start=0.0)
    t.update(0, 0.1)
    assert t.eta == 0.0 and t.percent() == 100.0


@pytest.mark.parametrize(
    ("rate", "text"), [(0, "0.0"), (0.05, "0.05"), (0.5, "0.5"), (3.456, "3.5"), (12.4, "12"), (1234.5, "1,234")]
)
def test_rates_are_shown_with_sensible_digits(rate: float, text: str) -> None:
    assert format_rate(rate) == text


@pytest.mark.parametrize(
    ("secs", "text"), [(0, "0s"), (0.2, "1s"), (28, "28s"), (59.5, "1m00s"), (245, "4m05s"), (7380, "2h03m")]
)
def test_durations_are_rounded_up_to_the_second(secs: float, text: str) -> None:
    assert format_duration(secs) == text


def test_eta_and_elapsed_texts() -> None:
    assert format_eta(None) == "unknown" and format_eta(3.2) == "4s"
    assert format_elapsed(2.44) == "2.4s" and format_elapsed(125) == "2m05s"


# -- the two displays, on the test's clock ------------------------------------------------------


def test_lines_come_every_5_seconds_and_none_once_every_run_settled() -> None:
    clock, out = Clock(), io.StringIO()
    lines = Lines(out, 100, clock=clock)
    for step in range(1, 40):  # 125 ms apart (exact in binary), 2 runs a second
        clock.now += 0.125
        lines.update(step // 4, 100)
    assert out.getvalue() == "", "a line before 5 s"
    clock.now += 0.125  # 5 s
    lines.update(10, 100)
    assert out.getvalue() == "ferroflow map: 10/100 runs settled (10.0%), 2.0 runs/s, ETA 45s\n"
    clock.now += 4.875
    lines.update(19, 100)
    assert out.getvalue().count("\n") == 1, "a line before 5 s more"
    clock.now += 0.125
    lines.update(20, 100)
    assert out.getvalue().splitlines()[1] == "ferroflow map: 20/100 runs settled (20.0%), 2.0 runs/s, ETA 40s"
    clock.now += 60
    lines.update(100, 100)
    lines.close()
    assert out.getvalue().count("\n") == 2, "a progress line for a batch that is over"


def test_the_bar_is_redrawn_in_place_within_the_terminal() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Bar(out, 1000, columns=100, clock=clock)
    clock.now += 4
    bar.update(100, 1000)
    first = "[" + "#" * 3 + "." * 27 + "] 100/1,000 runs settled (10.0%), 25 runs/s, ETA 36s"
    assert out.getvalue() == "\r" + first
    bar.update(100, 1000)
    assert out.getvalue() == "\r" + first, "redrawn with nothing changed"
    clock.now += 36
    bar.update(1000, 1000)
    bar.close()
    last = "[" + "#" * 30 + "] 1,000/1,000 runs settled (100.0%), 25 runs/s, ETA 0s"
    assert out.getvalue() == "\r" + first + "\r" + last + "\n"

    # A narrow terminal: a shorter bar, then none, then the text cut; never as wide as the terminal.
    text = "0/1,000 runs settled (0.0%), 0.0 runs/s, ETA unknown"
    for columns, shown in (
        (len(text) + 14, "[" + "." * 10 + "] " + text),
        (len(text) + 13, text),
        (20, text[:19]),
    ):
        narrow = Bar(io.StringIO(), 1000, columns=columns, clock=clock)
        narrow.update(0, 1000)
        assert narrow.shown == shown and len(shown) < columns


def test_a_shorter_redraw_blanks_what_is_left_of_the_longer_line() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Bar(out, 10, columns=120, clock=clock)
    clock.now += 1
    bar.update(0, 10)
    longer = bar.shown
    assert longer.endswith("0/10 runs settled (0.0%), 0.0 runs/s, ETA unknown")
    clock.now += 1
    bar.update(4, 10)
    shorter = bar.shown
    assert shorter.endswith("4/10 runs settled (40.0%), 2.0 runs/s, ETA 3s")
    assert out.getvalue() == "\r" + longer + "\r" + shorter + " " * (len(longer) - len(shorter))


def test_a_stream_that_cannot_be_written_ends_the_progress_not_the_batch() -> None:
    class Closed(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            Closed.writes += 1
            raise BrokenPipeError(32, "Broken pipe")

    clock = Clock()
    lines = Lines(Closed(), 10, clock=clock)
    for done in range(1, 4):
        clock.now += 5
        lines.update(done, 10)  # raises nothing
    assert Closed.writes == 1, "wrote again to a broken stream"


def test_a_terminal_gets_the_bar_anything_else_lines() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(reporter(Terminal(), 5), Bar)
    assert isinstance(reporter(io.StringIO(), 5), Lines)
    assert reporter(io.StringIO(), 5).every == 5.0
