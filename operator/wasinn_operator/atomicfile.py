"""Writing a file so that readers never see half of it: a temporary file, then a rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_file(path: Path, data: bytes | memoryview) -> None:
    """Write `data` to `path` atomically; on failure the error is raised and no temporary file
    is left behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """`replace_file` for a cache: a full or read-only cache only costs the next start its
    compile time, so errors are swallowed."""
    with contextlib.suppress(OSError):
        replace_file(path, data)
