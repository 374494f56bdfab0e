"""Model sources fetched by the host into a content-addressed cache: `<cache>/models/sha256/<hex>/`.

An https source is one file, named after the URL's last segment, unless that name ends in
`.tar`, `.tar.gz`, `.tgz`, `.tar.xz` or `.zip`: then it is an archive whose files become the
entry (`archive.py`; the digest is the archive's); an OCI source is an artifact
whose layers are the model's files (named by `org.opencontainers.image.title`, as `oras push`
writes them), read through the registry's v2 HTTP API: the manifest, whose sha256 must be the
source's, then every blob, each checked against its descriptor's digest and size. Anonymous
pulls and the bearer-token flow (`WWW-Authenticate: Bearer realm=...`) both work.

Everything streams through sha256 under a size cap into a staging directory beside the entry,
which is renamed into place only when whole and verified: a failure (offline, 404, a digest
mismatch, too big) leaves nothing in the cache. Only the host writes the cache; guests get an
entry read-only at /models/NAME.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a model is fetched: a task without model sources needs none
    import requests

from ..api.modelsource import MODEL_NAME, Location, ModelSource
from .archive import ArchiveError, is_archive, unpack
from .cachegc import touch

HTTP_TIMEOUT = (10, 60)
CHUNK = 1 << 16
MAX_MANIFEST_BYTES = 4 << 20
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
LOCAL_REGISTRIES = ("localhost", "127.0.0.1", "[::1]")
TITLE = "org.opencontainers.image.title"
Credentials = tuple[str, str]


class ModelFetchError(Exception):
    """A model source could not be fetched or is not the model asked for; nothing was cached."""


def entry_dir(cache: Path, digest_hex: str) -> Path:
    """Where the model with this sha256 lives in the cache."""
    return cache / "models" / "sha256" / digest_hex


def fetch_source(
    source: ModelSource,
    cache: Path,
    max_bytes: int,
    *,
    credentials: Credentials | None = None,
    insecure_registries: tuple[str, ...] = (),
) -> Path:
    """The cache directory holding `source`'s files, fetched and verified unless already there.

    `pvc://` sources are not fetched (the operator mounts them): ModelFetchError.
    """
    location = source.location
    if location.scheme == "pvc":
        raise ModelFetchError(f"{source.uri}: pvc:// sources are mounted by the operator")
    target = entry_dir(cache, source.digest_hex)
    if target.is_dir():
        touch(cache, source.digest_hex)
        return target  # entries appear whole (rename), so one that exists is complete
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    try:
        if location.scheme in ("https", "http"):
            _fetch_url(source, location, staging, max_bytes)
        else:
            _fetch_oci(source, location, staging, max_bytes, credentials, insecure_registries)
        _seal(staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent fetch of the same model that won
                raise
        touch(cache, source.digest_hex)
    finally:
        if staging.exists():
            staging.chmod(0o700)
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _seal(root: Path) -> None:
    """Make a finished entry read-only, files and (an archive's) directories, deepest first."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    root.chmod(0o555)


def _fetch_url(source: ModelSource, location: Location, staging: Path, max_bytes: int) -> None:
    import requests  # noqa: PLC0415  (see the imports)

    name = location.file_name
    if not is_archive(name):
        digest = _download(requests.Session(), source.uri, staging / name, max_bytes, {})
        _expect(source.uri, source.sha256 or "", digest)
        return
    # The digest pins the archive as published; it is checked before anything is unpacked.
    with tempfile.TemporaryDirectory(dir=staging.parent, prefix=".archive-") as tmp:
        archive = Path(tmp) / name
        digest = _download(requests.Session(), source.uri, archive, max_bytes, {})
        _expect(source.uri, source.sha256 or "", digest)
        try:
            unpack(archive, staging, max_bytes)
        except ArchiveError as exc:
            raise ModelFetchError(f"{source.uri}: {exc}") from None


def _download(
    session: requests.Session,
    url: str,
    path: Path,
    max_bytes: int,
    headers: dict[str, str],
    what: str = "",
) -> str:
    """GET `url` into `path` under `max_bytes`; the `sha256:<hex>` of what was written."""
    import requests  # noqa: PLC0415  (see the imports)

    hasher = hashlib.sha256()
    size = 0
    what = what or url
    try:
        with session.get(url, headers=headers, stream=True, timeout=HTTP_TIMEOUT) as response:
            _ok(response, url)
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > max_bytes:
                raise ModelFetchError(f"{what}: {declared} bytes, over the {max_bytes}-byte limit")
            with path.open("xb") as out:
                for chunk in response.iter_content(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ModelFetchError(f"{what}: more than the {max_bytes}-byte limit")
                    hasher.update(chunk)
                    out.write(chunk)
    except requests.RequestException as exc:
        raise ModelFetchError(f"cannot fetch {url}: {_reason(exc)}") from None
    return "sha256:" + hasher.hexdigest()


def _fetch_oci(
    source: ModelSource,
    location: Location,
    staging: Path,
    max_bytes: int,
    credentials: Credentials | None,
    insecure_registries: tuple[str, ...],
) -> None:
    registry = location.host
    local = registry.rsplit(":", 1)[0] in LOCAL_REGISTRIES or registry in LOCAL_REGISTRIES
    scheme = "http" if local or registry in insecure_registries else "https"
    base = f"{scheme}://{registry}/v2/{location.path}"
    client = _Registry(credentials)
    manifest_url = f"{base}/manifests/{location.reference}"
    body = client.get(manifest_url, {"Accept": ", ".join(MANIFEST_TYPES)}, MAX_MANIFEST_BYTES)
    _expect(source.uri, source.sha256 or "", "sha256:" + hashlib.sha256(body).hexdigest())
    layers = _layers(source.uri, body)
    total = sum(size for _, _, size in layers)
    if total > max_bytes:
        raise ModelFetchError(
            f"{source.uri}: {total} bytes of layers, over the {max_bytes}-byte limit"
        )
    for name, digest, size in layers:
        url = f"{base}/blobs/{digest}"
        got = client.download(url, staging / name, size, f"{source.uri}: layer {name}")
        _expect(f"{source.uri}: layer {name}", digest, got)
        if (staging / name).stat().st_size != size:
            raise ModelFetchError(f"{source.uri}: layer {name} is not the {size} bytes declared")


def _layers(uri: str, body: bytes) -> list[tuple[str, str, int]]:
    """(file name, digest, size) of every layer of an OCI manifest."""
    try:
        manifest = json.loads(body)
        descriptors: list[dict[str, Any]] = manifest["layers"]
        found = []
        for layer in descriptors:
            name = str((layer.get("annotations") or {}).get(TITLE, ""))
            digest, size = str(layer["digest"]), int(layer["size"])
            found.append((name, digest, size))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFetchError(f"{uri}: not an OCI image manifest ({exc})") from None
    if not found:
        raise ModelFetchError(f"{uri}: the artifact has no layers")
    names = [name for name, _, _ in found]
    for name, digest, _ in found:
        if not MODEL_NAME.match(name):
            raise ModelFetchError(
                f"{uri}: layer {digest} has no usable {TITLE} annotation ({name!r}); each layer "
                "must name its file (letters, digits, '.', '_', '-'), as `oras push` does"
            )
        if not re.match(r"^sha256:[0-9a-f]{64}$", digest):
            raise ModelFetchError(f"{uri}: layer {name}: digest {digest!r} is not sha256")
    if len(set(names)) != len(names):
        raise ModelFetchError(f"{uri}: two layers have the same file name")
    return found


class _Registry:
    """GETs against one registry, with the bearer-token flow when it answers 401."""

    def __init__(self, credentials: Credentials | None) -> None:
        import requests  # noqa: PLC0415  (see the imports)

        self.session = requests.Session()
        self.credentials = credentials
        self.token: str | None = None

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        headers = dict(extra)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def get(self, url: str, headers: dict[str, str], limit: int) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "body"
            self.download(url, path, limit, url, headers)
            return path.read_bytes()

    def download(
        self, url: str, path: Path, limit: int, what: str, headers: dict[str, str] | None = None
    ) -> str:
        try:
            return _download(self.session, url, path, limit, self._headers(headers or {}), what)
        except _UnauthorizedError as exc:
            if self.token is not None or not exc.challenge:
                raise ModelFetchError(f"{what}: HTTP 401 Unauthorized") from None
            self.token = self._login(exc.challenge, url)
            path.unlink(missing_ok=True)
            return _download(self.session, url, path, limit, self._headers(headers or {}), what)

    def _login(self, challenge: str, url: str) -> str:
        import requests  # noqa: PLC0415  (see the imports)

        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        if not challenge.lower().startswith("bearer") or not realm.startswith(
            ("https://", "http://")
        ):
            raise ModelFetchError(f"{url}: unsupported authentication challenge {challenge!r}")
        try:
            response = self.session.get(
                realm, params=params, auth=self.credentials, timeout=HTTP_TIMEOUT
            )
            _ok(response, realm)
            data = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise ModelFetchError(f"cannot get a registry token from {realm}: {exc}") from None
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ModelFetchError(f"the registry token service {realm} returned no token")
        return token


class _UnauthorizedError(ModelFetchError):
    def __init__(self, url: str, challenge: str) -> None:
        super().__init__(f"{url}: HTTP 401 Unauthorized")
        self.challenge = challenge


def _ok(response: requests.Response, url: str) -> None:
    if response.status_code == 401:
        raise _UnauthorizedError(url, response.headers.get("WWW-Authenticate", ""))
    if response.status_code != 200:
        raise ModelFetchError(f"GET {url}: HTTP {response.status_code} {response.reason}")


def _expect(what: str, expected: str, got: str) -> None:
    if expected != got:
        raise ModelFetchError(f"{what}: digest mismatch: expected {expected}, got {got}")


def _reason(exc: requests.RequestException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out"):
        if marker in text:
            return marker
    return text.splitlines()[0][:300] if text else type(exc).__name__
