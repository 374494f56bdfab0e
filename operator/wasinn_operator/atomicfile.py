"""Writing a file so that readers never see half of it: a temporary file, then a rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(path: Path, *chunks: bytes | bytearray | memoryview) -> None:
    """Write the concatenated `chunks` to `path` atomically, as a new 0600 file; on failure the
    error is raised and no temporary file is left behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
