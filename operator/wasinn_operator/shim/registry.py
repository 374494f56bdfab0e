"""Propeller's registry chunk protocol: how a proplet gets an `image_url` module over MQTT.

The proplet asks on `registry/proplet` with `{"app_name": <image_url>}`; the proxy answers on
`registry/server` with `{"app_name", "chunk_idx", "total_chunks", "data": base64}` messages
(512000-byte chunks, in any order); the module is the chunks joined by index.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

REQUEST_TOPIC = "registry/proplet"
CHUNKS_TOPIC = "registry/server"


class RegistryError(Exception):
    """The module could not be assembled in time or a chunk was malformed."""


@dataclass
class _Download:
    chunks: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None
    size: int = 0
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class RegistryFetcher:
    """Requests modules by name and assembles the chunks the proxy sends back."""

    def __init__(self, request: Callable[[Mapping[str, Any]], bool], limit: int) -> None:
        self._request = request
        self._limit = limit
        self._lock = threading.Lock()
        self._downloads: dict[str, _Download] = {}

    def fetch(self, app_name: str, timeout: float) -> bytes:
        """The module named `app_name`; `RegistryError` after `timeout` seconds."""
        with self._lock:
            download = self._downloads.setdefault(app_name, _Download())
        try:
            if not self._request({"app_name": app_name}):
                raise RegistryError("the registry request could not be published")
            if not download.done.wait(timeout):
                got = len(download.chunks)
                raise RegistryError(
                    f"{app_name}: timed out after {timeout:g} s with {got} of "
                    f"{download.total if download.total is not None else '?'} chunks"
                )
            if download.error is not None:
                raise RegistryError(f"{app_name}: {download.error}")
            assert download.total is not None
            return b"".join(download.chunks[i] for i in range(download.total))
        finally:
            with self._lock:
                if self._downloads.get(app_name) is download:
                    del self._downloads[app_name]

    def on_chunk(self, message: Mapping[str, Any]) -> None:
        """Take one `registry/server` message (ignored unless a fetch waits for it)."""
        with self._lock:
            download = self._downloads.get(str(message.get("app_name")))
            if download is None or download.done.is_set():
                return
            try:
                index, total = int(message["chunk_idx"]), int(message["total_chunks"])
                data = base64.b64decode(str(message.get("data") or ""), validate=True)
            except (KeyError, TypeError, ValueError, binascii.Error) as exc:
                download.error = f"malformed chunk: {exc}"
                download.done.set()
                return
            if total < 1 or not 0 <= index < total or download.total not in (None, total):
                download.error = f"inconsistent chunk {index} of {total}"
                download.done.set()
                return
            download.total = total
            if index not in download.chunks:
                download.chunks[index] = data
                download.size += len(data)
            if download.size > self._limit:
                download.error = f"the module exceeds the {self._limit}-byte limit"
                download.done.set()
            elif len(download.chunks) == total:
                download.done.set()
