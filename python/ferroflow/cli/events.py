"""``ferroflow runs events``: a run's journal as readable lines (or JSON lines), then per node
its times, attempts, model and tokens, and the run's totals; with ``--follow``, the entries
written after, until the run finishes.

The journal records when an entry was written, not when an attempt began (``NodeStarted``
events exist only live, for watchers): a node's start here is when it became ready, the
time of the entry that resolved the last of its dependencies (``RunStarted`` for a node
without any), read from the graph's structure the store records; for a run whose structure
the store lacks, the time of the last entry before the node's first that resolved a node.

Model calls are the ``StepRecorded`` entries of LLM nodes keyed ``llm/<n>`` (``llm:<n>`` as
earlier Rust nodes wrote them), whose value is the reply with its ``model`` and ``usage``;
tool calls are those keyed ``tool/<n>/<i>``, the ``i``-th tool call that model call ``n`` of
the same attempt asked for, whose value is the tool's result."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..context import Context
from ..errors import UnknownGraphError
from ..events import (
    Event,
    Interrupted,
    NodeCompleted,
    NodeFailed,
    NodeSkipped,
    Resumed,
    RunFinished,
    RunRetried,
    RunStarted,
    StepRecorded,
)
from ..types import NodeInfo
from .common import _one_line, _short, _table, _when
from .load import open_context
from .progress import format_duration

#: How often ``--follow`` reads the journal again.
FOLLOW_EVERY = 0.2

_MODEL_CALL = re.compile(r"llm[/:]([0-9]+)")
_TOOL_CALL = re.compile(r"tool/([0-9]+)/([0-9]+)")

# Entries of one node (``RunFinished`` names the failing node too, but is the run's).
_NODE_ENTRIES = (NodeCompleted, NodeFailed, NodeSkipped, StepRecorded, Interrupted, Resumed)
# Entries after which a node that waited on their node may run.
_RESOLVING = (NodeCompleted, NodeSkipped, Resumed)


# -- model and tool calls -----------------------------------------------------------------------


@dataclasses.dataclass
class Tokens:
    """The usage of some model calls, summed."""

    prompt: int = 0
    completion: int = 0
    total: int = 0
    calls: int = 0

    def add(self, usage: Mapping[str, Any]) -> None:
        prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        total = usage.get("total_tokens")
        self.prompt += prompt
        self.completion += completion
        self.total += _count(total) if total is not None else prompt + completion
        self.calls += 1

    def merge(self, other: Tokens) -> None:
        self.prompt += other.prompt
        self.completion += other.completion
        self.total += other.total
        self.calls += other.calls

    def json(self) -> Dict[str, int]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.total,
            "calls": self.calls,
        }

    def text(self) -> str:
        """``13 (9 prompt, 4 completion) in 2 model calls``."""
        calls = f"{self.calls:,} model call{'' if self.calls == 1 else 's'}"
        return f"{self.total:,} ({self.prompt:,} prompt, {self.completion:,} completion) in {calls}"


class Usage:
    """The tokens of model calls, in all and per model."""

    def __init__(self) -> None:
        self.all = Tokens()
        self.models: Dict[str, Tokens] = {}

    def add(self, model: str, usage: Mapping[str, Any]) -> None:
        self.all.add(usage)
        self.models.setdefault(model, Tokens()).add(usage)

    def merge(self, other: Usage) -> None:
        self.all.merge(other.all)
        for model, tokens in other.models.items():
            self.models.setdefault(model, Tokens()).merge(tokens)

    def json(self) -> Dict[str, Any]:
        return dict(self.all.json(), models={m: t.json() for m, t in sorted(self.models.items())})

    def lines(self, label: str) -> List[str]:
        """``tokens  13 (...) in 2 model calls``, then one line per model (if there are any)."""
        if not self.all.calls:
            return [f"{label:<12}none recorded (no model call)"]
        width = max(len(m) for m in self.models) + 2
        shown = [f"{label:<12}{self.all.text()}"]
        shown += [f"{'':<12}{m:<{width}}{t.text()}" for m, t in sorted(self.models.items())]
        return shown


def _count(value: Any) -> int:
    """A token count as recorded: a whole number, else 0 (a provider that left it out)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def model_call(event: Event) -> Optional[Tuple[str, Mapping[str, Any]]]:
    """``(model, usage)`` if ``event`` records a model call, else ``None``."""
    if not isinstance(event, StepRecorded) or not _MODEL_CALL.fullmatch(event.key):
        return None
    value = event.value if isinstance(event.value, dict) else {}
    usage = value.get("usage")
    return str(value.get("model") or "?"), usage if isinstance(usage, dict) else {}


def usage_of(journal: Sequence[Event]) -> Usage:
    """The tokens of the model calls a journal records."""
    usage = Usage()
    for event in journal:
        call = model_call(event)
        if call is not None:
            usage.add(*call)
    return usage


class _Calls:
    """The model calls seen so far in a journal read in order, so that a tool
    call (``tool/<n>/<i>``) is named after what model call ``n`` asked for."""

    def __init__(self) -> None:
        # By node, map element and call number: the last recorded, which an attempt that
        # reuses an earlier attempt's model call (recorded then, not again) asked from.
        self._asked: Dict[Tuple[str, Optional[int], int], Any] = {}

    def see(self, event: Event) -> None:
        if isinstance(event, StepRecorded):
            match = _MODEL_CALL.fullmatch(event.key)
            if match and isinstance(event.value, dict):
                self._asked[(event.node, event.item, int(match.group(1)))] = event.value.get("tool_calls")

    def tool_call(self, event: Event) -> Optional[Dict[str, Any]]:
        """``{"name", "arguments", "result"}`` if ``event`` records a tool call."""
        if not isinstance(event, StepRecorded):
            return None
        match = _TOOL_CALL.fullmatch(event.key)
        if not match:
            return None
        n, i = int(match.group(1)), int(match.group(2))
        asked = self._asked.get((event.node, event.item, n))
        call = asked[i] if isinstance(asked, list) and i < len(asked) and isinstance(asked[i], dict) else {}
        return {"name": call.get("name"), "arguments": call.get("arguments"), "result": event.value}


# -- one line per entry -------------------------------------------------------------------------


def _took(seconds: float) -> str:
    """``0.004s`` below a minute, else ``4m05s``."""
    return f"{seconds:.3f}s" if seconds < 60 else format_duration(seconds)


def _where(event: Event) -> str:
    """``node``, ``node[item]`` and ``#attempt``: which attempt an entry is of."""
    node = getattr(event, "node", None)
    if node is None or isinstance(event, RunFinished):
        return ""
    item = getattr(event, "item", None)
    attempt = getattr(event, "attempt", None)
    return node + (f"[{item}]" if item is not None else "") + (f" #{attempt}" if attempt is not None else "")


def _detail(event: Event, calls: _Calls) -> str:
    if isinstance(event, RunStarted):
        return f"graph {event.graph} (version {event.version}), input {_short(event.input)}"
    if isinstance(event, NodeCompleted):
        reply = event.output
        if isinstance(reply, dict) and "text" in reply and isinstance(reply.get("usage"), dict):
            # An LLM node's reply: its text (the usage is that of the model calls above).
            return f"-> text {_short(reply['text'])}"
        return f"-> {_short(event.output)}"
    if isinstance(event, NodeFailed):
        then = "final" if event.retry_in is None else f"retry in {_took(event.retry_in)}"
        return f"{event.error.type}: {_one_line(event.error.message)[:200]} ({then})"
    if isinstance(event, NodeSkipped):
        return "skipped"
    if isinstance(event, StepRecorded):
        call = model_call(event)
        if call is not None:
            model, usage = call
            tokens = Tokens()
            tokens.add(usage)
            asked = event.value.get("tool_calls") if isinstance(event.value, dict) else None
            tools = [c.get("name") for c in asked if isinstance(c, dict)] if isinstance(asked, list) else []
            wants = f", asks for {', '.join(map(str, tools))}" if tools else ""
            return (
                f"model call {event.key}: model {model}, "
                f"{tokens.total:,} tokens ({tokens.prompt:,} prompt, {tokens.completion:,} completion){wants}"
            )
        tool = calls.tool_call(event)
        if tool is not None:
            name = tool["name"] or "(a tool the journal does not name)"
            return f"tool call {event.key}: {name}({_short(tool['arguments'], 40)}) -> {_short(event.value)}"
        return f"step {event.key}: {_short(event.value)}"
    if isinstance(event, Interrupted):
        return f"waits for a person: {_short(event.payload)}"
    if isinstance(event, Resumed):
        return f"answered: {_short(event.value)}"
    if isinstance(event, RunFinished):
        status = event.status.value
        if event.error is not None:
            return f"{status} at {event.node}: {event.error.type}: {_one_line(event.error.message)[:200]}"
        return f"{status} -> {_short(event.output)}" if event.output is not None else status
    if isinstance(event, RunRetried):
        return f"retried by {event.by or '(nobody named)'}"
    return ""


def event_line(event: Event, calls: _Calls) -> str:
    """``2026-11-24 10:00:00.123     4  StepRecorded   ask #1  model call llm/0: ...``."""
    calls.see(event)
    parts = [_when(event.at), f"{event.seq:>4}", f"{type(event).__name__:<13}", _where(event), _detail(event, calls)]
    return "  ".join(p for p in parts if p)


def event_json(event: Event, calls: _Calls) -> Dict[str, Any]:
    """The entry's fields, with ``kind`` (its class), and for a tool call its ``tool_call``
    (the tool's name and arguments, from the model call that asked for it)."""
    calls.see(event)
    record: Dict[str, Any] = {"kind": type(event).__name__, **dataclasses.asdict(event)}
    if "status" in record:
        record["status"] = event.status.value  # type: ignore[attr-defined]
    tool = calls.tool_call(event)
    if tool is not None:
        record["tool_call"] = {"name": tool["name"], "arguments": tool["arguments"]}
    return record


# -- per node -----------------------------------------------------------------------------------


def _dependencies(context: Context, graph: str, version: str) -> Optional[Dict[str, List[str]]]:
    """Each node's dependencies in the run's graph version, if the store has its structure."""
    for known in context.graphs():
        if known.name == graph and known.version == version:
            nodes = known.spec.get("nodes") or []
            return {
                n["name"]: [d["node"] if isinstance(d, dict) else str(d) for d in n.get("deps") or []]
                for n in nodes
                if isinstance(n, dict) and "name" in n
            }
    return None


def _ready_at(
    name: str, first: Event, journal: Sequence[Event], deps: Optional[Dict[str, List[str]]]
) -> Optional[float]:
    """When node ``name`` became ready, from the journal (see the module's docstring)."""
    before = [e for e in journal if e.seq < first.seq]
    if deps is not None and name in deps:
        if not deps[name]:
            return journal[0].at if journal and isinstance(journal[0], RunStarted) else None
        resolved = []
        for dep in deps[name]:
            times = [e.at for e in before if isinstance(e, _RESOLVING) and getattr(e, "node", None) == dep]
            if not times:
                break
            resolved.append(times[-1])
        else:
            return max(resolved)
    for event in reversed(before):
        if isinstance(event, (RunStarted, RunRetried, *_RESOLVING)):
            return event.at
    return None


def _inferred_status(entries: Sequence[Event]) -> str:
    """A node's status from its entries alone (for a run whose structure the store lacks)."""
    last = entries[-1]
    if isinstance(last, NodeFailed) and last.retry_in is None:
        return "failed"
    if isinstance(last, (NodeCompleted, Resumed)):
        return "completed"
    return {NodeSkipped: "skipped", Interrupted: "waiting"}.get(type(last), "running")


def node_summaries(
    journal: Sequence[Event], nodes: Optional[Sequence[NodeInfo]], deps: Optional[Dict[str, List[str]]]
) -> List[Dict[str, Any]]:
    """Per node: kind, status, attempts, when it started (became ready) and finished, how long
    it took, and its model calls' models and tokens."""
    entries: Dict[str, List[Event]] = {}
    for event in journal:
        if isinstance(event, _NODE_ENTRIES):
            entries.setdefault(event.node, []).append(event)
    known = {n.name: n for n in nodes or ()}
    names = [n.name for n in nodes] if nodes is not None else list(entries)
    summaries = []
    for name in names:
        own = entries.get(name, [])
        info = known.get(name)
        status = info.status if info is not None else _inferred_status(own)
        attempts = info.attempts if info is not None else max((getattr(e, "attempt", 0) for e in own), default=0)
        started = None if not own or isinstance(own[0], NodeSkipped) else _ready_at(name, own[0], journal, deps)
        finished = own[-1].at if own and status in ("completed", "failed", "skipped") else None
        usage = usage_of(own)
        calls = _Calls()
        tools = 0
        for event in own:
            calls.see(event)
            tools += calls.tool_call(event) is not None
        summaries.append(
            {
                "name": name,
                "kind": info.kind if info is not None else None,
                "status": status,
                "attempts": attempts,
                "started_at": started,
                "finished_at": finished,
                "duration": None if started is None or finished is None else round(max(finished - started, 0.0), 3),
                "models": sorted(usage.models),
                "tokens": usage.all.json() if usage.all.calls else None,
                "tool_calls": tools,
            }
        )
    return summaries


def run_totals(run_id: str, status: str, journal: Sequence[Event]) -> Dict[str, Any]:
    """The run's status, duration (``RunStarted`` to ``RunFinished``, or to the last entry
    while it has not finished) and tokens."""
    started = journal[0].at if journal else None
    finished = journal[-1].at if journal and isinstance(journal[-1], RunFinished) else None
    last = journal[-1].at if journal else None
    calls = _Calls()
    tools = 0
    for event in journal:
        calls.see(event)
        tools += calls.tool_call(event) is not None
    return {
        "run_id": run_id,
        "status": status,
        "started_at": started,
        "finished_at": finished,
        "duration": None if started is None or last is None else round((finished or last) - started, 3),
        "tokens": usage_of(journal).json(),
        "tool_calls": tools,
    }


def _summary_text(
    summaries: List[Dict[str, Any]], totals: Dict[str, Any], journal: Sequence[Event], structure: bool
) -> List[str]:
    rows = [
        [
            s["name"],
            s["kind"] or "-",
            s["status"],
            str(s["attempts"]),
            _when(s["started_at"]),
            _when(s["finished_at"]),
            "-" if s["duration"] is None else _took(s["duration"]),
            ",".join(s["models"]),
            "" if s["tokens"] is None else f"{s['tokens']['total_tokens']:,}",
        ]
        for s in summaries
    ]
    lines = [""]
    if rows:
        lines.append(
            _table(rows, ["NODE", "KIND", "STATUS", "ATTEMPTS", "STARTED", "FINISHED", "DURATION", "MODEL", "TOKENS"])
        )
        how = (
            "the entry that resolved its last dependency (RunStarted for a node without any)"
            if structure
            else "the last entry before its first that resolved a node (the store lacks the graph's structure)"
        )
        lines.append(f"(STARTED is when the node became ready: {how}; the journal records no start of an attempt)")
        lines.append("")
    duration = totals["duration"]
    if duration is None:
        took = "-"
    elif totals["finished_at"] is not None:
        took = f"{_took(duration)} (RunStarted to RunFinished)"
    else:
        took = f"{_took(duration)} so far (RunStarted to the last entry, seq {journal[-1].seq})"
    lines += [f"{'run':<12}{totals['run_id']}", f"{'status':<12}{totals['status']}", f"{'duration':<12}{took}"]
    lines += usage_of(journal).lines("tokens")
    lines.append(f"{'tool calls':<12}{totals['tool_calls']:,}")
    return lines


# -- the command --------------------------------------------------------------------------------


def _finished(journal: Sequence[Event]) -> bool:
    """Whether the run has finished: its last entry is ``RunFinished`` (one followed by
    ``RunRetried`` runs again)."""
    return bool(journal) and isinstance(journal[-1], RunFinished)


def runs_events(args: argparse.Namespace) -> int:
    context = open_context(args.context)
    journal = list(context.journal(args.run))
    calls = _Calls()

    def emit(event: Event) -> None:
        if args.json:
            print(json.dumps(event_json(event, calls), default=repr), flush=True)
        else:
            print(event_line(event, calls), flush=True)

    for event in journal:
        emit(event)
    if args.follow:
        try:
            while not _finished(journal):
                time.sleep(FOLLOW_EVERY)
                later = context.journal(args.run)
                for event in later:
                    if event.seq > (journal[-1].seq if journal else -1):
                        emit(event)
                        journal.append(event)
        except KeyboardInterrupt:
            # Ctrl-C ends following, which is how it is meant to end for a run that does not.
            return 130
    info = context.run_info(args.run)
    try:
        nodes: Optional[List[NodeInfo]] = context.nodes(args.run)
    except UnknownGraphError:
        nodes = None
    deps = _dependencies(context, info.graph, info.version)
    summaries = node_summaries(journal, nodes, deps)
    totals = run_totals(args.run, info.status.value, journal)
    if args.json:
        print(json.dumps({"kind": "summary", **totals, "nodes": summaries}, default=repr))
    else:
        print("\n".join(_summary_text(summaries, totals, journal, deps is not None)))
    sys.stdout.flush()
    return 0
