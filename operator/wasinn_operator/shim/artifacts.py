"""Content-addressed wasm artifacts: `<root>/sha256/<hex>`, deduplicated, removed when unused.

A module arrives as a `ModuleUpload`: written to a temporary file in the store as it is
received (the size limit and the `\\0asm` magic checked, the sha256 computed on the way), then
renamed to its digest, so no reader ever sees part of a module and no module is held in memory.
Files are created 0600 and directories 0700.

Removal is conservative: only a digest that an operation of this process stopped referring to
is a candidate, and it goes only if no task refers to it any more (`release`). A file nobody
refers to for another reason (a replaced or emptied database, a crash between the write and the
record) stays: a database that looks empty must never empty the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from ..api.task import DIGEST, MAX_WASM_BYTES, WASM_MAGIC
from .errors import (
    BadRequestError,
    NotFoundError,
    TooLargeError,
    UnavailableError,
    UnsupportedMediaError,
)

DIGEST_RE = re.compile(DIGEST)
TEMP_PREFIX, TEMP_SUFFIX = ".upload-", ".tmp"
STALE_TEMP_SECONDS = 3600  # an upload's temporary file older than this was left by a crash
NOT_WASM = "the file is not a WebAssembly module (it does not start with \\0asm)"


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) 0700; an existing directory is left as it is."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)


class ModuleUpload:
    """A module being received into the store; `commit` names it by digest, `discard` (or
    leaving the `with` block without a commit) removes it."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        try:
            fd, name = tempfile.mkstemp(dir=store.directory, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
        except OSError as exc:
            raise store.unavailable(exc) from None
        self._path = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._head = b""
        self._gone = False  # the temporary file was renamed or removed
        self.size = 0

    def write(self, chunk: bytes | memoryview) -> None:
        """Append `chunk`: `TooLargeError` past the limit, `UnsupportedMediaError` as soon as
        the start is not `\\0asm`."""
        if self._file is None:
            raise ValueError("the upload is closed")
        self.size += len(chunk)
        if self.size > self._store.max_bytes:
            raise TooLargeError(f"the module is over the {self._store.max_bytes}-byte limit")
        if len(self._head) < len(WASM_MAGIC):
            self._head += bytes(chunk[: len(WASM_MAGIC) - len(self._head)])
            if not WASM_MAGIC.startswith(self._head):
                raise UnsupportedMediaError(NOT_WASM)
        self._hash.update(chunk)
        try:
            self._file.write(chunk)
        except OSError as exc:
            raise self._store.unavailable(exc) from None

    @property
    def digest(self) -> str:
        """`sha256:<hex>` of what was written so far."""
        return f"sha256:{self._hash.hexdigest()}"

    def commit(self) -> str:
        """Give the module its name (once per content) and return its digest."""
        if self._file is None:
            raise ValueError("the upload is closed")
        if self._head != WASM_MAGIC:
            raise UnsupportedMediaError(NOT_WASM)
        target = self._store.directory / self._hash.hexdigest()
        try:
            if not target.is_file():  # else the same content is stored already
                self._file.flush()
                os.fsync(self._file.fileno())  # on disk before any task record names it
                self._file.close()
                self._file = None
                os.replace(self._path, target)
                self._gone = True  # renamed: nothing to remove
        except OSError as exc:
            raise self._store.unavailable(exc) from None
        finally:
            self.discard()
        return f"sha256:{target.name}"

    def discard(self) -> None:
        """Remove the temporary file (no-op after a commit)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if not self._gone:
            self._path.unlink(missing_ok=True)
            self._gone = True

    def __enter__(self) -> ModuleUpload:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.discard()


class ArtifactStore:
    """Wasm modules on disk, named by their sha256."""

    def __init__(self, root: Path, max_bytes: int = MAX_WASM_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.directory = root / "sha256"
        private_dir(self.directory)
        self._remove_stale_uploads()

    def _remove_stale_uploads(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        for path in self.directory.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def unavailable(self, exc: OSError) -> UnavailableError:
        """The error for a failed disk operation on the store (full disk, permissions)."""
        return UnavailableError(
            f"the artifact store {self.directory} failed: {exc.strerror or exc}"
        )

    def upload(self) -> ModuleUpload:
        """A new module to write into the store."""
        return ModuleUpload(self)

    def put(self, data: bytes | memoryview) -> str:
        """Store the module (once per content) and return its `sha256:<hex>` digest."""
        if len(data) > self.max_bytes:
            raise TooLargeError(
                f"the module is {len(data)} bytes, over the {self.max_bytes}-byte limit"
            )
        with self.upload() as upload:
            upload.write(data)
            return upload.commit()

    def path(self, digest: str) -> Path:
        """The file of a digest (`BadRequestError` if malformed, `NotFoundError` if absent)."""
        match = DIGEST_RE.match(digest)
        if match is None:
            raise BadRequestError(f"{digest!r} is not a digest of the form sha256:<64 hex digits>")
        path = self.directory / digest.removeprefix("sha256:")
        if not path.is_file():
            raise NotFoundError(f"no artifact {digest}")
        return path

    def open(self, digest: str) -> BinaryIO:
        """The module's file, open for reading (it stays readable if removed meanwhile)."""
        try:
            return self.path(digest).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"no artifact {digest}") from None
        except OSError as exc:
            raise self.unavailable(exc) from None

    def read(self, digest: str) -> bytes:
        """The module's bytes."""
        with self.open(digest) as f:
            return f.read()

    def digests(self) -> set[str]:
        """Every stored digest."""
        return {
            f"sha256:{p.name}"
            for p in self.directory.iterdir()
            if DIGEST_RE.match(f"sha256:{p.name}")
        }

    def release(self, candidates: set[str], referenced: set[str]) -> list[str]:
        """Remove the `candidates` (digests an operation stopped referring to) that no task
        refers to (`referenced`); returns the removed digests."""
        removed = sorted(d for d in candidates - referenced if DIGEST_RE.match(d))
        for digest in removed:
            (self.directory / digest.removeprefix("sha256:")).unlink(missing_ok=True)
        return removed

    def check_writable(self) -> str | None:
        """None when a file can be created in the store, else why not."""
        try:
            with tempfile.TemporaryFile(dir=self.directory) as probe:
                probe.write(b"\0")
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as exc:
            return f"{self.directory} is not writable: {exc.strerror or exc}"
        return None

    def free_bytes(self) -> int:
        """Free space on the store's filesystem, for an unprivileged writer."""
        return shutil.disk_usage(self.directory).free
