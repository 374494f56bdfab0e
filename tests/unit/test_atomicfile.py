"""Cache files are whole or absent, and a failed write costs nothing but the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasinn_operator.atomicfile import write_atomically

pytestmark = pytest.mark.unit


def test_written_whole_with_no_temporary_left(tmp_path: Path) -> None:
    write_atomically(tmp_path / "a.blob", memoryview(b"\0asm" * 1000))
    assert (tmp_path / "a.blob").read_bytes() == b"\0asm" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["a.blob"]


def test_a_failed_write_is_swallowed_and_cleaned_up(tmp_path: Path) -> None:
    write_atomically(tmp_path / "missing-dir" / "a.blob", b"x")  # no directory: no file
    target = tmp_path / "taken"
    target.mkdir()  # the rename onto a directory fails after the data was written
    (target / "keep").write_text("")
    write_atomically(target, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
