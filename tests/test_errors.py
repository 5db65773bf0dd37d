"""The exception classes: declared once in ferroflow.errors, exported whole, and bound by
the native module to classes that exist."""

from __future__ import annotations

import re
from pathlib import Path

import ferroflow as ff
from ferroflow import errors

BINDINGS = Path(__file__).resolve().parent.parent / "crates" / "ferroflow-py" / "src" / "error.rs"


def test_every_error_class_is_exported():
    declared = {
        name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, Exception)
    }
    declared.discard("Any")
    assert set(errors.__all__) == declared, set(errors.__all__) ^ declared
    assert all(issubclass(getattr(errors, name), ff.FerroflowError) for name in errors.__all__)


def test_every_class_the_native_module_binds_exists():
    bound = re.findall(r"import_exception!\(ferroflow\.errors, (\w+)\)", BINDINGS.read_text())
    assert len(bound) > 20, "the bindings' exception table was not found"
    missing = [name for name in bound if name not in errors.__all__]
    assert missing == [], f"bound in {BINDINGS.name} but not declared in ferroflow/errors.py: {missing}"


def test_a_native_error_is_raised_as_its_class_with_its_attributes():
    g = ff.Graph("errors_check")

    @g.task
    def a(input):
        return input

    ctx = ff.InMemory()
    try:
        g.get_run("nope", context=ctx)
    except ff.RunNotFoundError as e:
        assert e.run_id == "nope"
    else:
        raise AssertionError("no RunNotFoundError")
    ctx.close()
    try:
        ctx.runs()
    except ff.ContextClosedError as e:
        assert "closed" in str(e)
    else:
        raise AssertionError("no ContextClosedError")


def test_a_model_call_failure_is_recorded_under_the_name_of_the_class_raised_for_it():
    # A Rust LLM node records the core's name for the kind; a Python one, the qualified name
    # of the exception it raised. The two must be the same for a journal to read the same.
    from ferroflow import _native

    kinds = _native.llm_error_kinds()
    assert len(kinds) == 9
    for recorded, cls in kinds:
        assert issubclass(cls, errors.LLMError), cls
        assert f"{cls.__module__}.{cls.__qualname__}" == recorded
    assert len({cls for _, cls in kinds}) == len(kinds), "two kinds map to one class"
