"""Keeping the model-source cache within its disk budget: least recently used entries go first.

A cache on a shared claim outlives every Pod and would only grow; each proplet that fetched
something trims it after its own fetches. Use is recorded as the mtime of a stamp file per entry
(`<cache>/models/used/<hex>`): entries are sealed read-only, and a stamp beside them can be
touched by any proplet sharing the claim's group. An entry is never removed while the task
that trims holds it (`keep`), nor within `grace` seconds of its last use, so that a task of
another Pod that has just found it is not robbed of it before it opens the files. Removal
first renames the entry out of `sha256/` (one atomic step), so that no reader ever sees half an
entry; several proplets trimming at once each remove what they renamed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Collection
from pathlib import Path

GRACE_SECONDS = 600.0


def touch(cache: Path, digest_hex: str) -> None:
    """Record that the entry `digest_hex` was used now."""
    stamps = cache / "models" / "used"
    stamps.mkdir(parents=True, exist_ok=True)
    (stamps / digest_hex).touch()


def usage(cache: Path) -> list[tuple[float, int, str]]:
    """(last use, bytes, digest hex) of every whole entry, least recently used first."""
    store = cache / "models" / "sha256"
    stamps = cache / "models" / "used"
    found = []
    for entry in store.iterdir() if store.is_dir() else ():
        if entry.name.startswith("."):  # a fetch in progress or an entry being removed
            continue
        try:
            size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            try:
                used = (stamps / entry.name).stat().st_mtime
            except FileNotFoundError:
                used = entry.stat().st_mtime
        except FileNotFoundError:  # removed by another proplet's trim meanwhile
            continue
        found.append((used, size, entry.name))
    return sorted(found)


def evict(
    cache: Path,
    budget: int,
    keep: Collection[str] = (),
    *,
    grace: float = GRACE_SECONDS,
    now: float | None = None,
) -> list[str]:
    """Remove least recently used entries until the cache holds at most `budget` bytes; the
    digests removed. Entries in `keep` or used within `grace` seconds stay even over budget."""
    entries = usage(cache)
    total = sum(size for _, size, _ in entries)
    moment = time.time() if now is None else now
    removed: list[str] = []
    for used, size, digest in entries:
        if total <= budget:
            break
        if digest in keep or moment - used < grace:
            continue
        if _remove(cache, digest):
            removed.append(digest)
        total -= size  # gone, by this proplet or by another one trimming at the same time
    return removed


def _remove(cache: Path, digest: str) -> bool:
    store = cache / "models" / "sha256"
    doomed = store / f".evict-{digest}-{uuid.uuid4().hex[:8]}"
    try:
        (store / digest).rename(doomed)
    except FileNotFoundError:
        return False
    for path in [doomed, *doomed.rglob("*")]:
        if path.is_dir():
            with contextlib.suppress(OSError):  # what stays is retried by the next trim
                path.chmod(0o700)  # sealed 0555: its files cannot be unlinked otherwise
    shutil.rmtree(doomed, ignore_errors=True)
    (cache / "models" / "used" / digest).unlink(missing_ok=True)
    return not os.path.exists(doomed)
