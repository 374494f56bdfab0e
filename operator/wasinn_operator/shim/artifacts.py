"""Content-addressed wasm artifacts: `<root>/sha256/<hex>`, deduplicated, collected when unused.

Tasks refer to artifacts by digest; the store keeps no reference counts of its own (they could
drift from the tasks): `collect(keep)` removes every file whose digest no task refers to.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..atomicfile import replace_file
from .errors import BadRequestError, NotFoundError, TooLargeError, UnsupportedMediaError

WASM_MAGIC = b"\0asm"
DEFAULT_MAX_BYTES = 100 << 20
DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


class ArtifactStore:
    """Wasm modules on disk, named by their sha256."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._dir = root / "sha256"
        self._dir.mkdir(parents=True, exist_ok=True)

    def check(self, data: bytes) -> None:
        """`TooLargeError` past the limit, `UnsupportedMediaError` without the `\\0asm` magic."""
        if len(data) > self.max_bytes:
            raise TooLargeError(
                f"the module is {len(data)} bytes, over the {self.max_bytes}-byte limit"
            )
        if not data.startswith(WASM_MAGIC):
            raise UnsupportedMediaError(
                "the file is not a WebAssembly module (it does not start with \\0asm)"
            )

    def put(self, data: bytes) -> str:
        """Store the module (once per content) and return its `sha256:<hex>` digest."""
        self.check(data)
        hexdigest = hashlib.sha256(data).hexdigest()
        target = self._dir / hexdigest
        if not target.exists():
            replace_file(target, data)  # a reader never sees a partial file under the name
        return f"sha256:{hexdigest}"

    def path(self, digest: str) -> Path:
        """The file of a digest (`BadRequestError` if malformed, `NotFoundError` if absent)."""
        match = DIGEST.match(digest)
        if match is None:
            raise BadRequestError(f"{digest!r} is not a digest of the form sha256:<64 hex digits>")
        path = self._dir / match.group(1)
        if not path.is_file():
            raise NotFoundError(f"no artifact {digest}")
        return path

    def read(self, digest: str) -> bytes:
        """The module's bytes."""
        return self.path(digest).read_bytes()

    def digests(self) -> set[str]:
        """Every stored digest."""
        return {f"sha256:{p.name}" for p in self._dir.iterdir() if DIGEST.match(f"sha256:{p.name}")}

    def collect(self, keep: set[str]) -> list[str]:
        """Remove the artifacts not in `keep`; returns the removed digests."""
        removed = sorted(self.digests() - keep)
        for digest in removed:
            (self._dir / digest.removeprefix("sha256:")).unlink(missing_ok=True)
        return removed
