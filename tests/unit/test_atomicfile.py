"""Files are written whole or not at all, readable by their owner only."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from wasinn_operator.atomicfile import replace_file

pytestmark = pytest.mark.unit


def test_written_whole_0600_with_no_temporary_left(tmp_path: Path) -> None:
    replace_file(tmp_path / "a.blob", b"head", memoryview(b"\0asm" * 1000))
    assert (tmp_path / "a.blob").read_bytes() == b"head" + b"\0asm" * 1000
    assert stat.S_IMODE((tmp_path / "a.blob").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["a.blob"]


def test_a_failed_write_raises_and_cleans_up(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        replace_file(tmp_path / "missing-dir" / "a.blob", b"x")
    target = tmp_path / "taken"
    target.mkdir()  # the rename onto a directory fails after the data was written
    (target / "keep").write_text("")
    with pytest.raises(IsADirectoryError):
        replace_file(target, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
