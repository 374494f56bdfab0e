"""Model sources: a model named by URI and digest, fetched by the host and mounted read-only at
`/models/NAME` for the guest (as KServe's storage URIs are), beside the models volume.

URIs: `https://host/path/FILE` (one file, named after the last path segment; `http://` parses
too, and the policy refuses it unless an allowed origin is itself `http://`, as in tests),
`oci://registry/repository:tag` or `...@sha256:HEX` (an OCI artifact whose layers are the
model's files, each named by its `org.opencontainers.image.title` annotation) and
`pvc://claim/sub/path` (a directory on a PersistentVolumeClaim of the task's namespace: in a
cluster only). https and oci sources need `sha256`: the file's digest, or the OCI manifest's.

Which origins a task may name, and how large a model may be, is the task policy's
(`allowModelOrigins`, none by default; `maxModelBytes`): `check_sources`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
SCHEMES = ("https", "http", "oci", "pvc")
CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# An OCI repository path and tag, as the distribution spec writes them.
REPOSITORY = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
MAX_SOURCES = 16
URI_MAX = 2048
# Where the proplet finds a `pvc://` source's directory: the operator mounts each there.
PVC_SOURCES_DIR = "/var/run/wasinn/model-pvcs"


class ModelSourceError(ValueError):
    """A model source is malformed or not allowed; the message names the field."""


@dataclass(frozen=True)
class Location:
    """A parsed source URI."""

    scheme: str
    host: str  # https/http: host[:port]; oci: the registry; pvc: the claim
    path: str  # https/http: the URL path; oci: the repository; pvc: the path in the claim
    reference: str = ""  # oci: the tag or `sha256:...` digest

    @property
    def file_name(self) -> str:
        """https/http: the file's name (the last path segment)."""
        return PurePosixPath(unquote(self.path)).name


def parse_uri(uri: str) -> Location:
    """The parts of a source URI; ModelSourceError says what is wrong with it."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ModelSourceError(
            f"{uri!r}: the scheme must be one of https://, oci://, pvc:// (http:// where the "
            "policy allows it)"
        )
    if any(c.isspace() or c == "\\" for c in uri) or not uri.isprintable():
        raise ModelSourceError(
            f"{uri!r}: spaces, backslashes and control characters are not allowed"
        )
    if scheme in ("https", "http"):
        return _parse_url(uri, scheme)
    if scheme == "oci":
        return _parse_oci(uri, rest)
    claim, _, path = rest.partition("/")
    if not CLAIM.match(claim) or len(claim) > 253:
        raise ModelSourceError(f"{uri!r}: {claim!r} is not a PersistentVolumeClaim name")
    if path.startswith("/") or ".." in PurePosixPath(path).parts:
        raise ModelSourceError(f"{uri!r}: the path inside the claim must be relative, without '..'")
    return Location("pvc", claim, str(PurePosixPath(path)) if path else "")


def _parse_url(uri: str, scheme: str) -> Location:
    parts = urlsplit(uri)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ModelSourceError(f"{uri!r}: credentials in the URL are not allowed")
    if not parts.hostname:
        raise ModelSourceError(f"{uri!r}: no host")
    if parts.query or parts.fragment:
        raise ModelSourceError(f"{uri!r}: a query or fragment is not allowed")
    segments = unquote(parts.path).split("/")
    if any(s in (".", "..") for s in segments):
        raise ModelSourceError(f"{uri!r}: '.' and '..' path segments are not allowed")
    location = Location(scheme, parts.netloc, parts.path or "/")
    if not MODEL_NAME.match(location.file_name):
        raise ModelSourceError(
            f"{uri!r}: the URL must end with a file name such as model.onnx (letters, digits, "
            "'.', '_', '-')"
        )
    return location


def _parse_oci(uri: str, rest: str) -> Location:
    registry, _, name = rest.partition("/")
    if (
        not registry
        or not name
        or not ("." in registry or ":" in registry or registry == "localhost")
    ):
        raise ModelSourceError(
            f"{uri!r}: must be oci://REGISTRY/REPOSITORY:TAG or oci://REGISTRY/REPOSITORY@sha256:HEX"
            " with the registry's host name"
        )
    if "@" in name:
        repository, _, reference = name.partition("@")
        if not SHA256.match(reference):
            raise ModelSourceError(f"{uri!r}: the digest after '@' must be sha256:<64 hex>")
    else:
        repository, colon, reference = name.rpartition(":")
        if not colon or "/" in reference:
            raise ModelSourceError(f"{uri!r}: name a tag (:TAG) or a digest (@sha256:HEX)")
        if not TAG.match(reference):
            raise ModelSourceError(f"{uri!r}: {reference!r} is not a valid tag")
    if not REPOSITORY.match(repository):
        raise ModelSourceError(f"{uri!r}: {repository!r} is not a valid repository name")
    return Location("oci", registry, repository, reference)


class ModelSource(BaseModel):
    """A model fetched by URI and verified by digest, mounted read-only at /models/NAME."""

    # The API server checks the scheme and the digest too (the operator parses the rest).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.uri.matches('^(https?|oci|pvc)://')",
                    "message": "uri must start with https://, oci:// or pvc://",
                },
                {
                    "rule": "self.uri.startsWith('pvc://') || has(self.sha256)",
                    "message": "sha256 is required for https and oci sources",
                },
            ]
        },
    )
    name: str = Field(
        pattern=MODEL_NAME.pattern,
        description="The model's name: the guest sees it at /models/NAME and loads it by name.",
    )
    uri: str = Field(
        min_length=1,
        description="https://HOST/PATH/FILE, oci://REGISTRY/REPOSITORY:TAG (or @sha256:HEX; the "
        "artifact's layers are the model's files) or pvc://CLAIM/PATH.",
        json_schema_extra={"maxLength": URI_MAX},
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256.pattern,
        description="sha256:HEX of the file (https) or of the OCI manifest (oci); required for "
        "both, checked before the model is used.",
    )

    @model_validator(mode="after")
    def _valid(self) -> ModelSource:
        location = parse_uri(self.uri)
        if location.scheme != "pvc" and self.sha256 is None:
            raise ModelSourceError(f"{self.uri!r}: a digest (sha256:<64 hex>) is required")
        pinned = location.reference if location.reference.startswith("sha256:") else None
        if pinned is not None and self.sha256 is not None and self.sha256 != pinned:
            raise ModelSourceError(f"{self.uri!r}: the digest {self.sha256} differs from the URI's")
        return self

    @property
    def location(self) -> Location:
        """The parsed URI."""
        return parse_uri(self.uri)

    @property
    def digest_hex(self) -> str:
        """The sha256 hex the cache keys the model by (pvc sources have none)."""
        return (self.sha256 or "").removeprefix("sha256:")


def parse_cli_source(text: str) -> ModelSource:
    """`NAME@sha256:HEX=URI` (or `NAME=URI`), as `wasinn run --model` takes it."""
    head, eq, uri = text.partition("=")
    if not eq or not uri:
        raise ModelSourceError(f"--model {text!r}: give NAME@sha256:HEX=URI")
    name, at, digest = head.partition("@")
    try:
        return ModelSource(name=name, uri=uri, sha256=digest if at else None)
    except ValueError as exc:
        raise ModelSourceError(f"--model {text!r}: {_first_error(exc)}") from None


def check_sources(sources: Sequence[ModelSource], origins: Sequence[str], where: str) -> None:
    """ModelSourceError unless every source is from an allowed origin and names are unique."""
    if len(sources) > MAX_SOURCES:
        raise ModelSourceError(f"{where}: {len(sources)} sources; at most {MAX_SOURCES}")
    seen: set[str] = set()
    for index, source in enumerate(sources):
        at = f"{where}[{index}]"
        if source.name in seen:
            raise ModelSourceError(f"{at}.name: {source.name!r} is named twice")
        seen.add(source.name)
        if not origin_allowed(source.uri, origins):
            allowed = ", ".join(origins) if origins else "none"
            raise ModelSourceError(
                f"{at}.uri: {source.uri}: origin not allowed (allowed: {allowed})"
            )


def check_origin(origin: str) -> str:
    """An allowed-origin setting, checked: a URI prefix with its scheme (`pvc://` alone: every
    claim of the task's namespace)."""
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in SCHEMES or not (rest or scheme == "pvc"):
        raise ValueError(
            f"allowed model origin {origin!r} must start with https://, http://, oci:// or "
            "pvc:// and name a host, registry or claim"
        )
    return origin


def origin_allowed(uri: str, origins: Sequence[str]) -> bool:
    """Whether `uri` is under one of `origins`: the origin is a prefix ending at a boundary, so
    `https://models.example` allows `https://models.example/x.onnx` but not
    `https://models.example.evil/x.onnx`."""
    for origin in origins:
        if uri == origin:
            return True
        # An OCI origin may stop at a repository (`oci://reg/org/model` allows its tags).
        boundary = "/:@" if origin.startswith("oci://") else "/"
        if uri.startswith(origin) and (origin.endswith("/") or uri[len(origin)] in boundary):
            return True
    return False


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", exc)).removeprefix("Value error, ")
        return f"{field}: {message}" if field else message
    return str(exc)
