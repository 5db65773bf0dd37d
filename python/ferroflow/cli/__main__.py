"""``python -m ferroflow.cli``: the ``ferroflow`` command, see :func:`ferroflow.cli.main`."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
