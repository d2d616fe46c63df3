"""The layering rules: the simulator never imports the executor, the executor imports only ``spdsim.contract``,
and the simulator's modules import each other without a circle."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import spdsim.contract as contract
from spdsim.contract import vocabulary
from spdsim.contract.chrome_trace import metadata_event, span_event, thread_events, trace_document
from spdsim.contract.profile_schema import PHASE_COORDINATES
from spdsim.contract.shape import uneven_counts

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules ``path`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph(package: str, top_level_only: bool) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    return {name: {m for m in _imports(p, top_level_only) if m in modules} for name, p in modules.items()}


def test_the_simulator_never_imports_the_executor():
    offenders = {
        _module_name(p)
        for p in (ROOT / "spdsim").rglob("*.py")
        if any(m == "executor" or m.startswith("executor.") for m in _imports(p, top_level_only=False))
    }
    assert offenders == set()


def test_the_executor_imports_only_the_contract():
    offenders = {
        f"{_module_name(p)}: {m}"
        for p in (ROOT / "executor").rglob("*.py")
        for m in _imports(p, top_level_only=False)
        if (m == "spdsim" or m.startswith("spdsim.")) and not m.startswith("spdsim.contract")
    }
    assert offenders == set()


def test_no_import_circle_inside_spdsim():
    """Module-level imports form no cycle (imports deferred into functions are allowed to look back)."""
    graph = _graph("spdsim", top_level_only=True)
    # a package's __init__ runs before its submodules: an edge to the parent package is implied, not a cycle
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycle.extend([*stack, node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*stack, node]):
                return True
        state[node] = 2
        return False

    for name in sorted(graph):
        if state.get(name) is None and visit(name, []):
            break
    assert cycle == []


def test_one_vocabulary():
    """Phase names, method names and states are spelled once, in spdsim.contract.vocabulary."""
    assert tuple(PHASE_COORDINATES) == vocabulary.PHASES
    assert set(vocabulary.TRACE_STATES) <= set(vocabulary.CYCLE_STATES)
    assert set(vocabulary.PIPELINE_METHODS) <= set(vocabulary.METHODS)
    assert set(vocabulary.DRAFTER_FROM_EXECUTOR) == set(vocabulary.EXECUTOR_DRAFTER_PLACEMENTS)
    assert set(vocabulary.DRAFTER_FROM_EXECUTOR.values()) == set(vocabulary.DRAFTER_PLACEMENTS)
    assert contract.placement_from_executor("own") == "own-gpu"
    assert contract.placement_from_executor("colocated") == "stage0"


def test_the_contract_names_everything_it_exports():
    assert sorted(contract.__all__) == sorted(set(contract.__all__))
    for name in contract.__all__:
        assert hasattr(contract, name), name


@given(st.integers(1, 120), st.integers(1, 32))
def test_uneven_counts_is_the_most_even_split_earlier_stages_first(num_layers: int, num_stages: int) -> None:
    counts = uneven_counts(num_layers, num_stages)
    assert len(counts) == num_stages and sum(counts) == num_layers
    assert max(counts) - min(counts) <= 1 and list(counts) == sorted(counts, reverse=True)
    if num_layers % num_stages == 0:
        assert set(counts) == {num_layers // num_stages}


def test_chrome_trace_events_make_one_json_document_with_process_wide_metadata_without_a_tid():
    import json

    events = [
        metadata_event("process_name", 1, 0, {"name": "run"}),
        metadata_event("process_sort_index", 1, None, {"sort_index": 1}),
        *thread_events(1, 2, "stage0"),
        span_event(json.dumps('a "quoted" name'), "phase", 1.23456, 2.0, 1, 2, '"cycle":3'),
    ]
    document = json.loads(trace_document(events))
    assert document["displayTimeUnit"] == "ms"
    meta = [(e["name"], e.get("tid"), e["args"]) for e in document["traceEvents"] if e["ph"] == "M"]
    assert meta == [
        ("process_name", 0, {"name": "run"}),
        ("process_sort_index", None, {"sort_index": 1}),
        ("thread_name", 2, {"name": "stage0"}),
        ("thread_sort_index", 2, {"sort_index": 2}),
    ]
    (span,) = [e for e in document["traceEvents"] if e["ph"] == "X"]
    assert span == {
        "name": 'a "quoted" name',
        "cat": "phase",
        "ph": "X",
        "ts": 1.235,
        "dur": 2.0,
        "pid": 1,
        "tid": 2,
        "args": {"cycle": 3},
    }
    assert json.loads(trace_document([])) == {"displayTimeUnit": "ms", "traceEvents": []}
