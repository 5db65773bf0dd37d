"""The nodes a graph declares: what a decorator recorded of each, its policies as the core's
node spec holds them, and the plan by which its body receives its arguments (the codes of
``ArgSource`` in ``crates/ferroflow-py/src/body.rs``)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Container, Dict, List, Optional, Sequence, Tuple, Union

from .errors import GraphError
from .types import Retry, _wire_number

_INPUT, _CONTEXT, _ITEM = -1, -2, -3


@dataclass
class _Node:
    name: str
    kind: str
    func: Callable[..., Any]
    deps: Dict[str, Union[str, Sequence[str]]]
    after: Tuple[str, ...]
    when: Dict[str, List[str]]
    over: Optional[str]
    labels: Optional[List[str]]
    retry: Optional[Retry]
    timeout: Optional[float]


def _retry_problem(retry: Retry) -> Optional[str]:
    """What the core cannot check of a retry policy: that it is one, and its exception types
    (which never leave Python). Its numbers are the core's to check."""
    if not isinstance(retry, Retry):
        return f"retry must be a ferroflow.Retry, not {type(retry).__name__}"
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry.on):
        return "retry.on must be a tuple of exception types"
    return None


def _policies_spec(name: str, kind: str, retry: Optional[Retry], timeout: Any) -> Dict[str, Any]:
    """A node's name, kind and policies as the core's node spec holds them."""
    spec: Dict[str, Any] = {"name": name, "kind": kind}
    if retry is not None:
        spec["retry"] = retry._spec()
    if timeout is not None:
        spec["timeout"] = _wire_number(timeout, 1000)
    return spec


def _resolve(graph: str, node: _Node, nodes: Container[str]) -> Tuple[List[dict], List[Union[int, List[int]]]]:
    """Maps the body's parameters to argument sources and lists the node's edges; ``nodes``
    are the names of the graph's nodes, ``graph`` its name."""
    deps: List[dict] = []
    index: Dict[str, int] = {}

    def edge(source: str, param: Optional[str] = None) -> int:
        if source in index:
            return index[source]
        dep: Dict[str, Any] = {"node": source}
        if param is not None:
            dep["param"] = param
        if source in node.when:
            dep["when"] = node.when[source]
        index[source] = len(deps)
        deps.append(dep)
        return index[source]

    plan: List[Union[int, List[int]]] = []
    try:
        params = list(inspect.signature(node.func).parameters.values())
    except (TypeError, ValueError) as e:
        raise GraphError(
            f"graph '{graph}': node '{node.name}': cannot read its signature: {e}",
            graph=graph,
            node=node.name,
        ) from None
    unresolved_default: Optional[str] = None
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            star = "*" if p.kind is p.VAR_POSITIONAL else "**"
            raise GraphError(
                f"graph '{graph}': node '{node.name}': parameter '{star}{p.name}' cannot be filled by name; "
                f"to take several nodes' outputs as one list, use a plain parameter with "
                f"deps={{'{p.name}': ['node_a', 'node_b']}}",
                graph=graph,
                node=node.name,
            )
        if p.kind is p.KEYWORD_ONLY:
            if p.default is p.empty:
                raise GraphError(
                    f"graph '{graph}': node '{node.name}': keyword-only parameter '{p.name}' has no default; "
                    "make it a positional parameter",
                    graph=graph,
                    node=node.name,
                )
            continue
        source = node.deps.get(p.name, p.name)
        code: Union[int, List[int]]
        if not isinstance(source, str):
            code = [edge(s) for s in source]
        elif source == "input":
            code = _INPUT
        elif source == "ctx":
            code = _CONTEXT
        elif source == "item" and node.kind == "map":
            code = _ITEM
        elif source in nodes or p.default is p.empty:
            # An inferred dependency that matches no node is an unresolved parameter; an
            # explicit one (deps=) names the node it wants.
            code = edge(source, p.name if p.name not in node.deps else None)
        else:
            unresolved_default = p.name
            continue
        if unresolved_default is not None:
            raise GraphError(
                f"graph '{graph}': node '{node.name}': parameter '{unresolved_default}' keeps its default, "
                f"so the parameters after it ('{p.name}') cannot be passed; move it last",
                graph=graph,
                node=node.name,
            )
        plan.append(code)
    for source in (*node.after, *node.when, *((node.over,) if node.over else ())):
        edge(source)
    return deps, plan
