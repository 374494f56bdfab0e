"""Where the compiled-module and model caches live (kept import-light for `wasinn run --help`)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$WASINN_CACHE_DIR`, else `$XDG_CACHE_HOME/wasinn`, else `~/.cache/wasinn`."""
    explicit = os.environ.get("WASINN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wasinn"
