"""The model cache's trim: least recently used first, never what a task holds or just used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wasinn_operator.models.cachegc import evict, touch, usage
from wasinn_operator.models.remote import entry_dir

pytestmark = pytest.mark.unit


def entry(cache: Path, digest: str, size: int, used: float) -> None:
    path = entry_dir(cache, digest)
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(b"\0" * size)
    (path / "model.bin").chmod(0o444)
    path.chmod(0o555)  # sealed as fetch_source leaves it
    touch(cache, digest)
    os.utime(cache / "models" / "used" / digest, (used, used))


def test_least_recently_used_go_first_until_within_budget(tmp_path: Path) -> None:
    for digest, used in (("a" * 64, 1000.0), ("b" * 64, 3000.0), ("c" * 64, 2000.0)):
        entry(tmp_path, digest, 100, used)
    assert [d[0] for _, _, d in usage(tmp_path)] == ["a", "c", "b"]
    assert evict(tmp_path, 150, now=10_000.0) == ["a" * 64, "c" * 64]
    assert [d for _, _, d in usage(tmp_path)] == ["b" * 64]
    assert sorted(p.name for p in (tmp_path / "models" / "sha256").iterdir()) == ["b" * 64]
    assert not (tmp_path / "models" / "used" / ("a" * 64)).exists()


def test_kept_and_recently_used_entries_stay_even_over_budget(tmp_path: Path) -> None:
    entry(tmp_path, "a" * 64, 100, 1000.0)
    entry(tmp_path, "b" * 64, 100, 9_900.0)  # used 100 s ago: within the grace
    entry(tmp_path, "c" * 64, 100, 500.0)
    assert evict(tmp_path, 0, keep={"a" * 64}, grace=600.0, now=10_000.0) == ["c" * 64]
    assert sorted(d for _, _, d in usage(tmp_path)) == ["a" * 64, "b" * 64]


def test_within_budget_nothing_goes_and_fetches_in_progress_are_ignored(tmp_path: Path) -> None:
    entry(tmp_path, "a" * 64, 100, 1.0)
    (tmp_path / "models" / "sha256" / ".fetch-123").mkdir()
    assert evict(tmp_path, 100, now=10_000.0) == []
    assert evict(tmp_path / "empty", 0) == []  # no cache yet


def test_an_entry_without_a_stamp_counts_from_its_own_mtime(tmp_path: Path) -> None:
    entry(tmp_path, "a" * 64, 10, 1.0)
    (tmp_path / "models" / "used" / ("a" * 64)).unlink()
    os.utime(entry_dir(tmp_path, "a" * 64), (5.0, 5.0))
    assert usage(tmp_path) == [(5.0, 10, "a" * 64)]
