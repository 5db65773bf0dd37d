"""Tools: Python callables offered to a model, their JSON schema derived from the signature."""

from __future__ import annotations

import asyncio
import inspect
import typing
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Union,
)

_JSON_TYPES: Dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


def _schema_of(annotation: Any) -> Dict[str, Any]:
    """The JSON schema of a parameter's type annotation (an empty schema for ``Any``)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is Union and len(args) == 1:
        return _schema_of(args[0])
    if origin in (list, List, Sequence, tuple):
        return {"type": "array", "items": _schema_of(args[0])} if args else {"type": "array"}
    if origin in (dict, Dict, Mapping):
        return {"type": "object"}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(annotation))}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    return {}


@dataclass(frozen=True)
class Tool:
    """A Python callable a model can call: ``name``, ``description`` and the JSON schema of
    its ``parameters`` are what the model sees. Build one with :func:`tool`."""

    name: str
    description: str
    parameters: Dict[str, Any]
    fn: Callable[..., Any] = field(repr=False, compare=False)

    @classmethod
    def from_function(
        cls, fn: Callable[..., Any], *, name: Optional[str] = None, description: Optional[str] = None
    ) -> Tool:
        """The tool of ``fn``: parameters from its signature and type hints (a parameter
        without a default is required), the description from its docstring's first
        paragraph."""
        hints = typing.get_type_hints(fn)
        properties: Dict[str, Any] = {}
        required: List[str] = []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"tool {fn.__name__!r}: parameter {p.name!r} cannot be described to a model")
            properties[p.name] = _schema_of(hints.get(p.name, Any))
            if p.default is p.empty:
                required.append(p.name)
        doc = inspect.getdoc(fn) or ""
        summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
        return cls(
            name=name or fn.__name__,
            description=description if description is not None else summary,
            parameters={"type": "object", "properties": properties, "required": required},
            fn=fn,
        )

    def spec(self) -> Dict[str, Any]:
        """The tool as OpenAI's ``tools`` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    async def acall(self, arguments: Mapping[str, Any]) -> Any:
        """Calls the tool with the model's arguments: awaited if async, on a worker thread
        if not (so that a slow tool does not hold up the event loop)."""
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(**arguments)
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.fn(**arguments))


def tool(
    fn: Optional[Callable[..., Any]] = None, /, *, name: Optional[str] = None, description: Optional[str] = None
) -> Any:
    """Makes a :class:`Tool` of a function: ``@ff.tool`` or ``@ff.tool(name=...)``."""
    if fn is None:
        return lambda f: Tool.from_function(f, name=name, description=description)
    return Tool.from_function(fn, name=name, description=description)


# -- providers --------------------------------------------------------------------------
