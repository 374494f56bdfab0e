"""Getting the wasm module: a file, an http(s) URL, an OCI artifact or inline base64.

Every source is size-capped and, when the task names a digest, verified before anything runs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where a module is fetched over http: a task on a file needs none
    import requests

from ..api import WasmSource
from ..api.summary import FailureReason
from ..api.task import MAX_WASM_BYTES, sha256_digest

HTTP_TIMEOUT = (10, 60)
HTTP_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # seconds between attempts
WASM_MEDIA_TYPES = ("application/wasm", "application/vnd.wasm.content.layer.v1+wasm")
LOCAL_REGISTRIES = ("localhost", "127.0.0.1", "[::1]")


class FetchError(Exception):
    """The module could not be obtained (`FetchFailed`: a later attempt may get it) or is not
    the module asked for (`InvalidWasm`: a wrong digest, an unreadable file); the message says
    why."""

    def __init__(self, message: str, reason: FailureReason = FailureReason.FETCH_FAILED) -> None:
        super().__init__(message)
        self.reason = reason


def fetch_wasm(
    source: WasmSource,
    limit: int = MAX_WASM_BYTES,
    registry_auth: Path | None = None,
    insecure_registries: tuple[str, ...] = (),
) -> bytes:
    """The module's bytes, checked against `source.digest` when one is given; OCI registries
    are reached over plain http when local or in `insecure_registries`."""
    if source.path is not None:
        data = _read_file(Path(source.path), limit)
    elif source.inline is not None:
        data = base64.b64decode(source.inline, validate=True)
    elif source.url is not None:
        data = _http_get(source.url, limit)
    elif source.image is not None:
        data = _oci_pull(source.image, limit, registry_auth, insecure_registries)
    else:
        raise FetchError(
            "wasm.configMapKeyRef must be mounted as a file by the operator and given as path"
        )
    if len(data) > limit:
        raise FetchError(f"the module is {len(data)} bytes, over the {limit}-byte limit")
    verify_digest(data, source.digest)
    return data


def verify_digest(data: bytes, expected: str | None) -> None:
    """Raise `FetchError` when `expected` is given and does not match."""
    if expected is not None and sha256_digest(data) != expected:
        raise FetchError(
            f"digest mismatch: expected {expected}, got {sha256_digest(data)}",
            FailureReason.INVALID_WASM,
        )


def _read_file(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise FetchError(f"{path} is {size} bytes, over the {limit}-byte limit")
        return path.read_bytes()
    except OSError as exc:
        raise FetchError(
            f"cannot read {path}: {exc.strerror or exc}", FailureReason.INVALID_WASM
        ) from None


def _http_get(url: str, limit: int) -> bytes:
    """GET the module; a server that is down for a moment (the shim restarting: connection
    refused, 502/503/504) is retried with backoff for about 15 s."""
    for delay in HTTP_RETRY_DELAYS:
        with contextlib.suppress(_TransientError):
            return _http_get_once(url, limit)
        time.sleep(delay)
    return _http_get_once(url, limit)  # its failure is the FetchError reported


class _TransientError(FetchError):
    """A failure worth retrying: the server may be back in a moment."""


def _http_get_once(url: str, limit: int) -> bytes:
    import requests  # noqa: PLC0415  (see the imports)

    try:
        with requests.get(url, stream=True, timeout=HTTP_TIMEOUT) as response:
            if response.status_code in (502, 503, 504):
                raise _TransientError(f"GET {url}: HTTP {response.status_code} {response.reason}")
            if response.status_code != 200:
                raise FetchError(f"GET {url}: HTTP {response.status_code} {response.reason}")
            chunks, size = [], 0
            for chunk in response.iter_content(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise FetchError(f"GET {url}: the body exceeds the {limit}-byte limit")
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.Timeout as exc:  # already waited long: not retried
        raise FetchError(f"cannot fetch {url}: {_reason(exc)}") from None
    except requests.ConnectionError as exc:
        raise _TransientError(f"cannot fetch {url}: {_reason(exc)}") from None
    except requests.RequestException as exc:
        raise FetchError(f"cannot fetch {url}: {_reason(exc)}") from None


def _reason(exc: requests.RequestException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out"):
        if marker in text:
            return marker
    return text.splitlines()[0][:300]


def _registry(reference: str) -> str:
    head = reference.split("/", 1)[0]
    return head if ("." in head or ":" in head or head == "localhost") else "docker.io"


def _oci_pull(
    reference: str, limit: int, registry_auth: Path | None, insecure_registries: tuple[str, ...]
) -> bytes:
    """Pull a wasm artifact with oras; the layer is the one with a wasm name or media type."""
    import oras.client  # noqa: PLC0415  (heavy import, only for image sources)

    registry = _registry(reference)
    insecure = registry.split(":")[0] in LOCAL_REGISTRIES or registry in insecure_registries
    client = oras.client.OrasClient(insecure=insecure)
    credentials = registry_credentials(registry, registry_auth)
    if credentials is not None:
        client.set_basic_auth(*credentials)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            manifest = client.get_manifest(reference)
            layers = manifest.get("layers", [])
            chosen = _wasm_layer(layers)
            if chosen is None:
                types = sorted({str(layer.get("mediaType")) for layer in layers})
                raise FetchError(f"{reference}: no wasm layer (media types: {', '.join(types)})")
            if int(chosen.get("size", 0)) > limit:
                raise FetchError(f"{reference}: the wasm layer exceeds the {limit}-byte limit")
            files = client.pull(target=reference, outdir=tmp)
        except FetchError:
            raise
        except Exception as exc:  # oras raises plain exceptions and HTTP errors alike
            raise FetchError(f"cannot pull {reference}: {str(exc).splitlines()[0][:300]}") from None
        title = chosen.get("annotations", {}).get("org.opencontainers.image.title")
        for name in files:
            if title is None or Path(name).name == title:
                return _read_file(Path(name), limit)
    raise FetchError(f"{reference}: the pulled artifact holds no wasm file")


def _wasm_layer(layers: list[dict[str, Any]]) -> dict[str, Any] | None:
    for layer in layers:
        annotations = layer.get("annotations") or {}
        title = str(annotations.get("org.opencontainers.image.title", ""))
        if layer.get("mediaType") in WASM_MEDIA_TYPES or title.endswith(".wasm"):
            return layer
    return None


def registry_credentials(registry: str, auth_file: Path | None) -> tuple[str, str] | None:
    """Username and password for `registry` from a docker config JSON (a mounted Secret)."""
    if auth_file is None or not auth_file.is_file():
        return None
    try:
        auths = json.loads(auth_file.read_text()).get("auths", {})
    except (OSError, ValueError) as exc:
        raise FetchError(f"registry credentials {auth_file}: {exc}") from None
    for host, entry in auths.items():
        if host.removeprefix("https://").removeprefix("http://").rstrip("/") != registry:
            continue
        if "auth" in entry:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, password
        if "username" in entry:
            return str(entry["username"]), str(entry.get("password", ""))
    return None
