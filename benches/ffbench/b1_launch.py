"""Starts `ferroflow worker` (B1) so that it dies with the process that started it (SIGTERM,
the worker's graceful stop, when its parent exits, even by SIGKILL): nothing outlives the
benchmark.

    python -m ffbench.b1_launch PARENT_PID worker ARGS...
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys


def main() -> int:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - without it the parent's _Worker.stop() still ends the worker
        pass
    if os.getppid() != int(sys.argv[1]):
        return 0
    from ferroflow.cli import main as cli

    return cli(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
