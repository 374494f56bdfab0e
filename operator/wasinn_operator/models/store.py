"""A models directory filled from the manifest: `<dir>/<name>/...`, like ../shared/models.

A model is built in a staging directory and moved into place whole, so readers never see half
of one. `<dir>/.wasinn-fetch/` holds the bookkeeping: a stamp per model (the manifest digest it
was made from and every file's sha256), the staging directories and a lock, so fetches running
at the same time take turns. The runtime registers only directories holding model files, so it
ignores this one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..atomicfile import replace_file
from .download import FetchError, cached_distribution, locked, sha256_file
from .manifest import Manifest, Model
from .steps import Context, make

STATE_DIR = ".wasinn-fetch"
FOREIGN = "exists, but was not made by `wasinn models fetch`"


def cache_root() -> Path:
    """`$WASINN_CACHE`, else `$XDG_CACHE_HOME/wasinn`, else `~/.cache/wasinn`."""
    explicit = os.environ.get("WASINN_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wasinn"


def default_models_dir() -> Path:
    """Where fetched models go unless told otherwise: `<cache root>/models`."""
    return cache_root() / "models"


def default_downloads_dir() -> Path:
    """Where downloaded distributions are kept: `<cache root>/downloads`."""
    return cache_root() / "downloads"


@dataclass
class Fetched:
    """The outcome of one fetch."""

    path: Path
    built: bool  # False: it was already present and verified
    notes: list[str] = field(default_factory=list)


def problem(model: Model, models_dir: Path) -> str | None:
    """Why `<models_dir>/<name>` is not a verified copy of `model`, or None when it is."""
    target = models_dir / model.name
    stamp = _stamp_path(models_dir, model.name)
    if not target.exists():
        return "missing"
    if not stamp.is_file():
        return FOREIGN
    try:
        recorded = json.loads(stamp.read_text())
        files: dict[str, str] = recorded["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its stamp is unreadable"
    if recorded.get("manifest") != model.digest or set(files) != {s.path for s in model.files}:
        return "made from another version of the manifest"
    for path, digest in files.items():
        file = target / path
        if not file.is_file() or sha256_file(file) != digest:
            return f"{path} is missing or changed"
    return None


def fetch(
    manifest: Manifest,
    model: Model,
    models_dir: Path,
    downloads: Path,
    mirror: str | None = None,
    log: TextIO | None = None,
) -> Fetched:
    """Make `<models_dir>/<name>` from the pinned sources, unless it is there and verified."""
    target = models_dir / model.name
    state = models_dir / STATE_DIR
    if _needs_building(model, models_dir) is None:  # checked before writing anything there
        return Fetched(target, built=False)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot write to {models_dir}: {exc.strerror or exc}") from None
    with locked(state / "lock"):
        reason = _needs_building(model, models_dir)  # again: another fetch may have made it
        if reason is None:
            return Fetched(target, built=False)
        _say(log, f"{model.name}: {reason}; making it in {target}")
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f"{model.name}.", dir=state))
        try:
            notes, digests = _build(manifest, model, staging, downloads, mirror, log)
            stamp = {"manifest": model.digest, "files": digests}
            replace_file(_stamp_path(models_dir, model.name), json.dumps(stamp, indent=1).encode())
            _swap(staging / "files", target, state)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    for note in notes:
        _say(log, f"{model.name}: note: {note}")
    elapsed = time.monotonic() - started
    _say(log, f"{model.name}: {len(digests)} files made and verified in {elapsed:.1f} s")
    return Fetched(target, built=True, notes=notes)


def _needs_building(model: Model, models_dir: Path) -> str | None:
    """Why the model must be (re)built, None when it is ready; a directory that is not ours is
    an error, never replaced."""
    reason = problem(model, models_dir)
    if reason == FOREIGN:
        raise FetchError(
            f"{models_dir / model.name} exists and was not made by `wasinn models fetch`; "
            "move it away or fetch into another directory (--dir)"
        )
    return reason


def _build(
    manifest: Manifest,
    model: Model,
    staging: Path,
    downloads: Path,
    mirror: str | None,
    log: TextIO | None,
) -> tuple[list[str], dict[str, str]]:
    files = staging / "files"
    files.mkdir()

    def dist(name: str) -> Path:
        return cached_distribution(manifest.distributions[name], downloads, mirror, log)

    ctx = Context(model, files, staging / "work", dist)
    notes: list[str] = []
    digests: dict[str, str] = {}
    for step in model.files:
        data, note = make(step, ctx)
        out = files / step.path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        digests[step.path] = sha256_file(out)
        if note is not None:
            notes.append(note)
    return notes, digests


def _swap(new: Path, target: Path, state: Path) -> None:
    """Put `new` at `target`, replacing an older copy in two renames."""
    old = None
    if target.exists():
        old = state / f"old.{target.name}.{os.getpid()}"
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _stamp_path(models_dir: Path, name: str) -> Path:
    return models_dir / STATE_DIR / f"{name}.json"


def _say(log: TextIO | None, line: str) -> None:
    if log is not None:
        log.write(line + "\n")
        log.flush()
