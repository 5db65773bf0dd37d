"""The module B1's `ferroflow worker` processes import (``ffbench.b1_app:chain``): the W1 chain,
built by the same code as the submitter's (common._chain_graph), so that the graph's name and
version match the submitter's."""

from __future__ import annotations

import ferroflow as ff

from .common import _chain_functions, _chain_graph

chain = _chain_graph(ff, _chain_functions())
