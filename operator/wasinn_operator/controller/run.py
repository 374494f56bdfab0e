"""`wasinn operator`: run the controller (namespaced or cluster-wide) with its endpoints."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import logging

import kopf

from .settings import OperatorSettings, add_arguments

__all__ = ["add_arguments", "main", "release_freed_memory", "tune_gc"]

log = logging.getLogger("wasinn.operator")
# glibc's mallopt parameter for the number of malloc arenas.
M_ARENA_MAX = -8
# Measured (hack/bench/controller.py): over 1,000 tasks the operator's Python objects grow by a
# few MiB, its RSS by 100+ MiB: the API threads decode JSON each in an arena of its own, and
# glibc keeps what they freed. Two arenas and a periodic trim return it.
MALLOC_ARENAS = 2
_libc: ctypes.CDLL | None = None
# Measured (hack/bench/controller.py, 2,050 tasks at 20/s, gc.callbacks timing each pass): with
# Python's default thresholds the cyclic collector took 12.4 s of the operator's ~55 CPU
# seconds, its full passes up to 0.44 s each, a pause every task waiting meanwhile shares. With
# the start-up objects frozen out of it and a pass per 20,000 new objects: 4.3 s, pauses under
# 0.12 s (50,000: 3.1 s, but 0.2 s pauses).
GC_THRESHOLDS = (20_000, 10, 10)


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt and malloc_trim are glibc's), else None."""
    global _libc  # noqa: PLW0603  (loaded once, on first use)
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            libc.mallopt, libc.malloc_trim  # noqa: B018  (both present: glibc)
        except (OSError, AttributeError):
            return None
        _libc = libc
    return _libc


def limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas before the API threads start (no-op elsewhere)."""
    libc = _glibc()
    if libc is not None and not libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS):
        log.warning("mallopt(M_ARENA_MAX, %d) failed", MALLOC_ARENAS)


def release_freed_memory() -> None:
    """Hand memory the allocator keeps after frees back to the system (glibc only)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def tune_gc() -> None:
    """Freeze what start-up made (modules, classes: never garbage) out of the cyclic
    collector's passes, and make the passes rarer."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(args: argparse.Namespace) -> int:
    """Parse the settings once and run kopf until stopped; the handlers get them in the memo."""
    try:
        settings = OperatorSettings.from_args(args)
    except ValueError as exc:  # a bad setting stops the start, named
        raise SystemExit(f"wasinn operator: {exc}") from None
    limit_malloc_arenas()
    from . import handlers, state  # noqa: F401, PLC0415  (importing handlers registers them)

    tune_gc()
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        memo=state.memo(settings),
    )
    return 0
