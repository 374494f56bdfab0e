"""Host memory per run is bounded: what a guest's wasi-nn calls may make the host hold.

Driven by a real C guest (guests/nn_hog.c) on the real host: oversized and repeated loads, many
handles, many contexts and batch sizes, each refused with the errno and message the guest and
the task's stderr get.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from wasinn_operator.runtime import NNErrno, RunResult, RunSpec, Runtime, RuntimeConfig

pytestmark = pytest.mark.runtime

MiB = 1 << 20
IR_BYTES = 131234 + 18524032  # efficientnet-lite0: model.xml + model.bin


def calls(result: RunResult) -> list[tuple[str, int]]:
    """`(call, errno)` per line the guest printed."""
    rows = [line.split() for line in result.stdout.decode().splitlines()]
    return [(row[0], int(row[2])) for row in rows if len(row) == 3]


def hog(runtime: Runtime, wasm: bytes, models_dir: Path, *args: str, **limits: int) -> RunResult:
    spec = RunSpec(wasm=wasm, args=list(args), models_dir=models_dir, max_memory=160 * MiB)
    for name, value in limits.items():
        setattr(spec, name, value)
    result = runtime.run(spec)
    assert result.ok, (result.error, result.stderr[-2000:])
    assert result.stdout.endswith(b"done\n")
    return result


@pytest.fixture(scope="module")
def nn_hog(c_guest: Callable[[str], bytes]) -> bytes:
    return c_guest("nn_hog")


def test_oversized_builders_are_refused_before_reading(
    runtime: Runtime, nn_hog: bytes, models_dir: Path
) -> None:
    result = hog(runtime, nn_hog, models_dir, "garbage", "100", max_graph_bytes=64 * MiB)
    assert calls(result) == [("load", NNErrno.TOO_LARGE)]
    assert (
        b"wasi-nn: load: the graph builders total 104857600 bytes (100.0 MiB); a load may pass "
        b"at most 64.0 MiB (max_graph_bytes) (too_large)"
    ) in result.stderr


def test_padded_weights_count_against_the_graph_memory(
    runtime: Runtime, nn_hog: bytes, models_dir: Path
) -> None:
    result = hog(runtime, nn_hog, models_dir, "padded", "100", max_graph_memory=256 * MiB)
    assert calls(result) == [("load", NNErrno.TOO_LARGE)]
    assert b"a graph of 100.1 MiB needs an estimated 300.4 MiB of host memory" in result.stderr
    assert b"(max_graph_memory) (too_large)" in result.stderr


def test_distinct_loads_stop_at_the_graph_memory_limit(
    runtime: Runtime, nn_hog: bytes, models_dir: Path
) -> None:
    # Each load has other bytes (a comment appended to the xml): nothing is shared, each costs.
    result = hog(runtime, nn_hog, models_dir, "distinct", "6", max_graph_memory=200 * MiB)
    errnos = [errno for _, errno in calls(result)]
    fits = 200 * MiB // (3 * IR_BYTES)  # the estimate: 3x the model's bytes
    assert errnos == [0] * fits + [NNErrno.TOO_LARGE] * (6 - fits)
    assert b"this run's graphs already hold" in result.stderr
    assert b"of the 200.0 MiB limit (max_graph_memory) (too_large)" in result.stderr


def test_the_same_graph_is_charged_once(runtime: Runtime, nn_hog: bytes, models_dir: Path) -> None:
    limits = {"max_graph_memory": 100 * MiB, "max_graphs": 1000}
    result = hog(runtime, nn_hog, models_dir, "same", "20", **limits)
    assert calls(result) == [("load", 0)] * 20
    result = hog(runtime, nn_hog, models_dir, "named", "1000", **limits)
    assert calls(result) == [("load_by_name", 0)] * 1000


def test_graph_and_context_counts_are_capped(
    runtime: Runtime, nn_hog: bytes, models_dir: Path
) -> None:
    result = hog(runtime, nn_hog, models_dir, "named", "20", max_graphs=5)
    assert [errno for _, errno in calls(result)] == [0] * 5 + [NNErrno.BUSY] * 15
    assert b"a run may load at most 5 graphs (max_graphs) (busy)" in result.stderr
    result = hog(runtime, nn_hog, models_dir, "contexts", "10", max_contexts=4)
    assert [errno for _, errno in calls(result)] == [0] * 4 + [NNErrno.BUSY] * 6
    assert b"at most 4 execution contexts (max_contexts) (busy)" in result.stderr


def test_batch_variants_are_charged(runtime: Runtime, nn_hog: bytes, models_dir: Path) -> None:
    # The graph costs 3x the model, a variant (batch 2, 3, ...) 2x, a request 4x its inputs.
    limit = 3 * IR_BYTES + 2 * 2 * IR_BYTES + 20 * MiB  # the graph, two variants, requests
    result = hog(runtime, nn_hog, models_dir, "batches", "5", max_graph_memory=limit)
    assert [errno for _, errno in calls(result)] == [0, 0, 0, 7, 7]
    assert b"a compiled variant for inputs [4, 3, 224, 224] f32 needs an estimated" in (
        result.stderr
    )


def test_defaults_let_the_shared_models_run(
    runtime: Runtime, nn_hog: bytes, models_dir: Path
) -> None:
    result = hog(runtime, nn_hog, models_dir, "distinct", "3")
    assert calls(result) == [("load", 0)] * 3
    result = hog(runtime, nn_hog, models_dir, "batches", "3")
    assert calls(result) == [("compute", 0)] * 3


def test_the_process_graph_cache_is_bounded(
    nn_hog: bytes, models_dir: Path, tmp_path: Path
) -> None:
    """A warm worker's later runs cannot grow the shared cache with ever new bytes."""
    engine = Runtime(RuntimeConfig(cache_dir=None, graph_cache_bytes=150 * MiB))
    for _ in range(3):  # each run loads 2 graphs of new bytes... the same bytes every run
        hog(engine, nn_hog, models_dir, "distinct", "2")
    graphs = engine.backend.cached_graphs()
    assert len(graphs) == 2  # 2 x 3 x 18.6 MB = 111 MiB fits 150 MiB
    hog(engine, nn_hog, models_dir, "distinct", "4")
    graphs = engine.backend.cached_graphs()
    assert sum(g.cost for g in graphs) <= 150 * MiB
    assert len(graphs) == 2
