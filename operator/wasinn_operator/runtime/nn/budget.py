"""Host memory a run's graphs may take: wasi-nn limits, charged before anything is compiled.

A guest's linear memory is capped by the store, but what `load()` makes the host allocate is
not: the model bytes, OpenVINO's model and its compiled model (weights repacked, kernels) live
outside linear memory. So each run has a `Budget`: `load` is refused with `too_large` when its
builders exceed `max_graph_bytes` (before they are even read), and every graph the run holds is
charged an estimate of its host memory against `max_graph_memory` before it is compiled.

The estimate is `GRAPH_MEMORY_FACTOR` times the model's size (its builder or file bytes, or
its constants or largest static tensor if OpenVINO's reading shows more): OpenVINO's CPU
plugin reports no memory figure of its own, and on this project's CPUs each further
EfficientNet-lite0 graph loaded from bytes (17.8 MiB of IR: the model, kept for variants, plus
its compiled form) grows RSS by 1.8x its size at bf16 and 2.2x at f32 (the first one of a
process 4.8x, plugin start-up included; `hack/measure_graph_memory.py --calibrate`). A compiled
variant (another batch size or element type) is charged `VARIANT_MEMORY_FACTOR` times the
model's size, and an infer request (its intermediate tensors: 0.9 MiB per EfficientNet image,
1.5x the input) `REQUEST_MEMORY_FACTOR` times its inputs' size. What a model computes from
input values at inference time (a shape made from a tensor's contents) cannot be known before
it runs and is not estimated: the process's own memory limits remain the backstop.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from .abi import NNErrno, NNError

MiB = 1 << 20
GRAPH_MEMORY_FACTOR = 3
VARIANT_MEMORY_FACTOR = 2
REQUEST_MEMORY_FACTOR = 4
DEFAULT_MAX_GRAPH_BYTES = 256 * MiB
DEFAULT_MAX_GRAPH_MEMORY = 1024 * MiB
DEFAULT_MAX_GRAPHS = 16
DEFAULT_MAX_CONTEXTS = 64


def mib(size: int) -> str:
    """`12.3 MiB`."""
    return f"{size / MiB:.1f} MiB"


@dataclass(frozen=True)
class GraphLimits:
    """What one run's wasi-nn calls may make the host hold."""

    max_graph_bytes: int = DEFAULT_MAX_GRAPH_BYTES
    max_graph_memory: int = DEFAULT_MAX_GRAPH_MEMORY
    max_graphs: int = DEFAULT_MAX_GRAPHS
    max_contexts: int = DEFAULT_MAX_CONTEXTS

    def __post_init__(self) -> None:
        for name in ("max_graph_bytes", "max_graph_memory", "max_graphs", "max_contexts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")


class Budget:
    """One run's graph memory: each graph or variant it holds, charged once."""

    def __init__(self, limits: GraphLimits) -> None:
        self.limits = limits
        self.used = 0
        self.refused = False  # a load or variant was refused: the run's failure is memory's
        self._held: dict[Hashable, int] = {}

    def check_builders(self, total: int) -> None:
        """Refuse a `load` whose builders total more than `max_graph_bytes`."""
        if total > self.limits.max_graph_bytes:
            self.refused = True
            raise NNError(
                NNErrno.TOO_LARGE,
                f"the graph builders total {total} bytes ({mib(total)}); a load may pass at most "
                f"{mib(self.limits.max_graph_bytes)} (max_graph_bytes)",
            )

    def charge(self, key: Hashable, cost: int, what: str) -> None:
        """Hold `key` at `cost` bytes (charging only what it did not already cost this run), or
        refuse with `too_large` if the run's graphs would pass `max_graph_memory`."""
        extra = cost - self._held.get(key, 0)
        if extra <= 0:
            return
        limit = self.limits.max_graph_memory
        if self.used + extra > limit:
            self.refused = True
            raise NNError(
                NNErrno.TOO_LARGE,
                f"{what} needs an estimated {mib(cost)} of host memory; this run's graphs "
                f"already hold {mib(self.used)} of the {mib(limit)} limit (max_graph_memory)",
            )
        self._held[key] = cost
        self.used += extra

    def release(self, key: Hashable) -> None:
        """Give back what `key` was charged (its load failed)."""
        self.used -= self._held.pop(key, 0)
