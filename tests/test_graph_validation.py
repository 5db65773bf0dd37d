"""Bad graph definitions fail early (at declaration or build), with a typed error naming the node."""

from __future__ import annotations

import pytest

import ferroflow as ff


def test_cycle_is_reported_with_its_path(context):
    g = ff.Graph("cyclic")

    @g.task
    def start(input):
        return input

    @g.task
    def a(start, c):
        return 1

    @g.task
    def b(a):
        return 1

    @g.task
    def c(b):
        return 1

    with pytest.raises(ff.CycleError) as info:
        g.build()
    err = info.value
    assert isinstance(err, ff.GraphError)
    assert err.graph == "cyclic"
    assert err.node in {"a", "b", "c"}
    # The message shows the cycle as a path that returns to where it began.
    path = str(err).split("cycle:", 1)[1].strip().split(" -> ")
    assert len(path) == 4, str(err)
    assert path[0] == path[-1]
    assert set(path) == {"a", "b", "c"}
    assert "start" not in path


def test_self_dependency_is_a_cycle():
    g = ff.Graph("selfish")

    @g.task(after=["loop"])
    def loop():
        return 1

    with pytest.raises(ff.CycleError, match="loop -> loop"):
        g.build()


def test_unknown_dependency_via_after():
    g = ff.Graph("after_unknown")

    @g.task(after=["missing"])
    def late():
        return 1

    with pytest.raises(ff.UnknownDependencyError) as info:
        g.build()
    assert info.value.node == "late"
    assert info.value.graph == "after_unknown"
    assert "'missing'" in str(info.value)
    assert "'late'" in str(info.value)


def test_unknown_dependency_via_when():
    g = ff.Graph("when_unknown")

    @g.task(when={"router": "left"})
    def left():
        return 1

    with pytest.raises(ff.UnknownDependencyError) as info:
        g.build()
    assert info.value.node == "left"
    assert "'router'" in str(info.value)


def test_unknown_dependency_via_each_over():
    g = ff.Graph("over_unknown")

    @g.each(over="items")
    def per_item(item):
        return item

    with pytest.raises(ff.UnknownDependencyError) as info:
        g.build()
    assert info.value.node == "per_item"
    assert "'items'" in str(info.value)


def test_unknown_dependency_via_explicit_deps():
    g = ff.Graph("deps_unknown")

    @g.task(deps={"text": "loader"})
    def summarise(text):
        return text

    with pytest.raises(ff.UnknownDependencyError) as info:
        g.build()
    assert info.value.node == "summarise"
    assert "'loader'" in str(info.value)


def test_duplicate_name_is_rejected_at_declaration():
    g = ff.Graph("dups")

    @g.task
    def fetch():
        return 1

    with pytest.raises(ff.DuplicateNodeError) as info:

        @g.task(name="fetch")
        def fetch_again():
            return 2

    assert info.value.node == "fetch"
    assert info.value.graph == "dups"
    assert "defined twice" in str(info.value)
    assert g.nodes == ["fetch"]


def test_parameter_nothing_provides():
    g = ff.Graph("unresolved")

    @g.task
    def load(input):
        return input

    @g.task
    def summarise(load, temperature):
        return load

    with pytest.raises(ff.UnresolvedParameterError) as info:
        g.build()
    err = info.value
    assert err.node == "summarise"
    assert "'temperature'" in str(err)
    assert "'summarise'" in str(err)


def test_parameter_with_a_default_is_not_a_dependency(context):
    g = ff.Graph("defaults")

    @g.task
    def load(input):
        return input

    @g.task
    def summarise(load, temperature=0.5):
        return {"text": load, "temperature": temperature}

    result = g.run("hello", context=context, timeout=5)
    assert result.output == {"text": "hello", "temperature": 0.5}


def test_label_on_an_edge_from_a_non_branch():
    g = ff.Graph("plain_label")

    @g.task
    def classify():
        return "x"

    @g.task(when={"classify": "x"})
    def handle():
        return 1

    with pytest.raises(ff.GraphError) as info:
        g.build()
    assert info.value.node == "handle"
    assert "'classify'" in str(info.value)
    assert "not a branch" in str(info.value)


def test_edge_label_outside_the_declared_labels():
    g = ff.Graph("typo_label")

    @g.branch(labels=["yes", "no"])
    def decide():
        return "yes"

    @g.task(when={"decide": "yse"})
    def act():
        return 1

    with pytest.raises(ff.GraphError) as info:
        g.build()
    assert info.value.node == "act"
    assert "'yse'" in str(info.value)


def test_map_over_a_non_list_fails_the_run_naming_the_node(context):
    g = ff.Graph("map_scalar")

    @g.task
    def count():
        return 5

    @g.each(over="count")
    def double(item):
        return item * 2

    with pytest.raises(ff.RunFailedError) as info:
        g.run(None, context=context, timeout=5)
    err = info.value
    assert err.node == "double"
    assert err.error_type == "InvalidMapInput"
    assert "'count'" in err.error_message
    assert "int" in err.error_message
    assert "not a list" in err.error_message


@pytest.mark.parametrize("reserved", ["input", "ctx", "item"])
def test_reserved_node_names(reserved):
    g = ff.Graph("reserved")
    with pytest.raises(ff.GraphError) as info:
        g.task(name=reserved)(lambda: 1)
    assert info.value.node == reserved
    assert "reserved" in str(info.value)


def test_reserved_name_from_the_function_name():
    g = ff.Graph("reserved_fn")
    with pytest.raises(ff.GraphError, match="reserved"):

        @g.task
        def input():
            return 1


def test_lambda_needs_a_name():
    g = ff.Graph("lambdas")
    with pytest.raises(ff.GraphError, match="name="):
        g.task(lambda: 1)
    g.task(name="named")(lambda: 1)
    assert g.nodes == ["named"]


def test_non_callable_body():
    g = ff.Graph("not_callable")
    with pytest.raises(ff.GraphError, match="callable"):
        g.task(name="x")(42)


@pytest.mark.parametrize("timeout", [0, -1])
def test_timeout_must_be_positive(timeout):
    g = ff.Graph("bad_timeout")
    with pytest.raises(ff.GraphError) as info:
        g.task(name="x", timeout=timeout)(lambda: 1)
    assert info.value.node == "x"


def test_zero_retry_attempts_fail_early():
    g = ff.Graph("bad_retry")
    # Raised when the node is declared or, at the latest, when the graph is built.
    with pytest.raises(ff.GraphError) as info:

        @g.task(retry=ff.Retry(attempts=0))
        def flaky():
            return 1

        g.build()
    assert info.value.node == "flaky"
    assert "attempts" in str(info.value)


def test_keyword_only_parameter_without_default():
    g = ff.Graph("kwonly")

    @g.task
    def body(*, x):
        return x

    with pytest.raises(ff.GraphError) as info:
        g.build()
    assert info.value.node == "body"
    assert "'x'" in str(info.value)


def test_unknown_output_node():
    g = ff.Graph("bad_output", output="nowhere")

    @g.task
    def only():
        return 1

    with pytest.raises(ff.GraphError) as info:
        g.build()
    assert "'nowhere'" in str(info.value)


def test_errors_surface_at_the_first_run_and_no_run_is_created(context):
    g = ff.Graph("never_runs")

    @g.task
    def a(b):
        return 1

    @g.task
    def b(a):
        return 1

    with pytest.raises(ff.CycleError):
        g.run(None, context=context, timeout=5)
    assert context.run_ids() == []
    # The error is the same every time: the bad graph is never half-built.
    with pytest.raises(ff.CycleError):
        g.build()


def test_built_graph_is_frozen(context):
    g = ff.Graph("frozen")

    @g.task
    def one():
        return 1

    g.build()
    with pytest.raises(ff.GraphError, match="can no longer change"):

        @g.task
        def two():
            return 2

    assert g.nodes == ["one"]
    assert g.run(None, context=context, timeout=5).output == 1


def _linear(name: str, *, extra_edge: bool = False, timeout=None) -> ff.Graph:
    g = ff.Graph(name)

    @g.task
    def a():
        return 1

    @g.task(after=["a"] if extra_edge else [], timeout=timeout)
    def b():
        return 2

    return g


def test_version_is_a_hash_of_structure():
    v1 = _linear("versioned").version
    assert v1 == _linear("versioned").version
    assert v1 != _linear("versioned", extra_edge=True).version
    assert v1 != _linear("versioned", timeout=3).version
    assert v1 != _linear("renamed").version
    assert isinstance(v1, str) and len(v1) >= 8


def test_mermaid_shows_nodes_kinds_and_labelled_edges():
    g = ff.Graph("drawn")

    @g.task
    def fetch():
        return [1]

    @g.branch
    def route(fetch):
        return "many"

    @g.each(over="fetch", when={"route": "many"})
    def per(item):
        return item

    @g.human(when={"route": ["few", "none"]})
    def ask(fetch):
        return {"q": "?"}

    text = g.to_mermaid()
    assert text.startswith("flowchart TD")
    for name in ("fetch", "route", "per", "ask"):
        assert name in text
    assert '-- "many" -->' in text
    assert '-- "few | none" -->' in text
    assert "<i>branch</i>" in text and "<i>map</i>" in text and "<i>human</i>" in text


@pytest.mark.parametrize("retry", [ff.Retry(backoff=-1), ff.Retry(max_backoff=-1)])
def test_negative_backoff_is_a_graph_error_naming_the_node(retry):
    g = ff.Graph("negative_backoff")
    with pytest.raises(ff.GraphError) as info:
        g.task(name="flaky", retry=retry)(lambda: 1)
        g.build()
    assert info.value.node == "flaky"


@pytest.mark.parametrize("retry", [ff.Retry(jitter=1.5), ff.Retry(multiplier=0.5)])
def test_bad_retry_policy_is_a_graph_error(retry):
    g = ff.Graph("bad_policy")
    with pytest.raises(ff.GraphError) as info:
        g.task(name="flaky", retry=retry)(lambda: 1)
        g.build()
    assert info.value.node == "flaky"
