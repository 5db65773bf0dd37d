"""The ``ferroflow`` command: inspect, continue and cancel runs; draw graphs.

    ferroflow runs list --context runs.db [--graph NAME] [--status STATUS] [--limit N] [--json]
    ferroflow runs show RUN --context runs.db [--json]
    ferroflow runs resume RUN --context runs.db --graph MODULE:GRAPH [--value JSON] [--node NODE]
    ferroflow runs retry [RUN] --context runs.db --graph MODULE:GRAPH [--batch NAME] [--since 2h] [--dry-run]
    ferroflow runs fork RUN --at NODE --context runs.db --graph MODULE:GRAPH [--output JSON] [--input JSON]
    ferroflow runs replay RUN --context runs.db --graph MODULE:GRAPH [--json]
    ferroflow runs prune --older-than 30d --context runs.db [--status failed] [--graph NAME] [--dry-run]
    ferroflow runs export [RUN ...] --context runs.db [--graph NAME] [--status STATUS] > runs.jsonl
    ferroflow runs import [runs.jsonl] --context redis://... --graph MODULE:GRAPH [--execute]
    ferroflow runs cancel RUN --context runs.db
    ferroflow runs events RUN --context runs.db [--follow] [--json]
    ferroflow batches list --context runs.db [--graph NAME] [--json]
    ferroflow batches show NAME --context runs.db [--graph NAME] [--no-tokens] [--json]
    ferroflow worker MODULE:GRAPH [MODULE:GRAPH ...] --context runs.db [--concurrency N] [--grace SECONDS]
    ferroflow map MODULE:GRAPH --input IN.jsonl --output OUT.jsonl --context runs.db [--batch NAME]
                  [--concurrency N] [--no-execute] [--quiet]
    ferroflow graph MODULE:GRAPH
    ferroflow serve MODULE:GRAPH [MODULE:GRAPH ...] --context CONTEXT [--listen 127.0.0.1:50051]
                    [--token-file PATH] [--tls-cert PEM --tls-key PEM] [--max-input-bytes N]

``--context`` is a SQLite file (``runs.db`` or ``sqlite:///path/runs.db``) or a Redis server
(``redis://127.0.0.1:6379?namespace=NAME``). Inspecting and
cancelling need only the file; continuing a run executes its nodes, so it needs the graph,
named as ``module:attribute`` (the module is imported from the current directory first), or
as ``path/to/file.py:attribute`` (the module of that file).

Bad input (an option out of range, a file that is missing or unreadable, an application
module that fails to import) is one line on stderr, ``ferroflow: ...``, and exit status 2;
an error of ferroflow's while doing the work (a run not found, a store error) is one line
and exit status 1.

``runs events`` prints a run's journal, one line per entry, then per node its times, attempts
and tokens; ``--follow`` goes on printing entries (the journal read every 0.2 s) until the run
finishes. ``batches`` finds the batches of ``map`` among the runs (those named ``NAME-<i>``);
``batches show`` reads every run's journal to total its tokens (not with ``--no-tokens``).

``map`` shows its progress on stderr (a bar on a terminal, else a line every 5 seconds; not
with ``--quiet``) and ends with a summary line there; stdout stays empty.

The package's parts, none of them API (the command line is): :mod:`.common`, the usage error
and the text of lines and tables; :mod:`.load`, which opens the context and imports the graph
the command line names; :mod:`.runs` (``runs ...``, ``graphs``, ``graph``), :mod:`.events`
(``runs events``), :mod:`.batches` (``batches ...``), :mod:`.map` (``map``) and :mod:`.work`
(``worker``, ``serve``), the commands; :mod:`.progress`, the progress ``map`` shows and its
rate and ETA; :mod:`.args`, the parser and the types of its
options; this module, :func:`main`, run by ``__main__.py``. The dependencies go one way, from
this module through :mod:`.args` down to :mod:`.common` and :mod:`.progress`.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from ..errors import FerroflowError
from .args import CONTEXT_HELP as CONTEXT_HELP
from .args import _listen_address as _listen_address
from .args import parser
from .batches import batches_list as batches_list
from .batches import batches_show as batches_show
from .common import UsageError
from .events import runs_events as runs_events
from .load import load_graph as load_graph
from .load import open_context as open_context
from .map import map_batch as map_batch
from .runs import graph_draw as graph_draw
from .runs import graphs_list as graphs_list
from .runs import runs_cancel as runs_cancel
from .runs import runs_list as runs_list
from .runs import runs_resume as runs_resume
from .runs import runs_retry as runs_retry
from .runs import runs_show as runs_show
from .work import serve as serve
from .work import worker as worker

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except UsageError as e:
        print(f"ferroflow: {e}", file=sys.stderr)
        return 2
    except FerroflowError as e:
        print(f"ferroflow: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`ferroflow runs list | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
