"""Data a component's bridge (bridge.py) hands to the host in pieces, before the call using it."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..nn.abi import NNErrno, NNError

STAGING = "wasinn:host/staging"
# Stands for the staged buffers in the call that follows the pieces (see bridge.wat).
MARKER = b"\0wasinn:nn-staged\0"


class Staging:
    """Bytes a bridge hands over in pieces before the call that uses them (per run)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pieces: dict[int, list[bytes]] = {}
        self._size = 0

    def push(self, index: int, chunk: bytes) -> None:
        """Append a piece to staged buffer `index`; past the limit, `too_large`."""
        if self._size + len(chunk) > self._limit:
            self._pieces.clear()
            self._size = 0
            raise NNError(
                NNErrno.TOO_LARGE,
                f"staged data would exceed {self._limit} bytes (the run's limit on data the "
                "host holds for it)",
            )
        self._pieces.setdefault(index, []).append(chunk)
        self._size += len(chunk)

    def take(self, given: list[npt.NDArray[np.uint8]]) -> list[npt.NDArray[np.uint8]]:
        """What `given` stands for: the staged buffers if it is the marker, else itself.

        The staging is emptied either way: it belongs to the very next call only.
        """
        pieces, self._pieces, self._size = self._pieces, {}, 0
        if not pieces or len(given) != 1 or given[0].tobytes() != MARKER:
            return given
        if sorted(pieces) != list(range(len(pieces))):
            raise NNError(NNErrno.INVALID_ARGUMENT, "staged buffers are not numbered 0 to n-1")
        return [np.frombuffer(bytearray().join(pieces[i]), np.uint8) for i in range(len(pieces))]
