"""The pinned model manifest (sources.toml): PyPI distributions and how each model file is made.

Loading validates everything up front, so a step never meets a missing key: a distribution is
pinned by project, version, filename (a wheel or sdist of that project and version), size and
sha256, and names no host; digests are lowercase sha256 hex, paths relative, and a step may
only read files of its model declared before it.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.(whl|tar\.gz)\Z")
DISTRIBUTION_KEYS = frozenset({"version", "license", "filename", "size", "sha256"})

# make step -> (required keys, optional keys), besides `make` itself
STEPS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "extract": (frozenset({"from", "sha256"}), frozenset()),
    "imagenet-labels": (frozenset({"from", "from_sha256", "sha256"}), frozenset()),
    "efficientnet-lite0-ir": (frozenset({"from", "from_sha256"}), frozenset({"sha256"})),
    "image-tensor": (frozenset({"input", "sha256"}), frozenset()),
    "uniform-f32": (frozenset({"seed", "skip", "shape", "sha256"}), frozenset()),
    "native-output": (
        frozenset({"model", "input", "index", "sha256", "stats", "tolerance"}),
        frozenset(),
    ),
    "golden": (frozenset({"sha256"}), frozenset()),
}
STATS = ("min", "max", "mean", "l2")


class ManifestError(ValueError):
    """The manifest is malformed or names something it does not define; the message says where."""


@dataclass(frozen=True)
class Distribution:
    """One file of a PyPI project release, pinned by filename, size and sha256."""

    name: str  # the project
    version: str
    license: str
    filename: str
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        """The pip requirement for the release: `name==version`."""
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Step:
    """How one model file is made, and the sha256 it must have (None: checked by golden.json)."""

    path: str
    make: str
    sha256: str | None
    dist: str | None = None
    member: str | None = None
    from_sha256: str | None = None
    inputs: tuple[str, ...] = ()
    seed: int = 0
    skip: int = 0
    shape: tuple[int, ...] = ()
    index: int = 0
    stats: Mapping[str, float] = field(default_factory=dict)
    tolerance: float = 0.0


@dataclass(frozen=True)
class Model:
    """A model directory: its files in build order and the content of its golden.json."""

    name: str
    description: str
    files: tuple[Step, ...]
    golden: Mapping[str, Any]
    digest: str  # of this model's manifest entry and its distributions: a change rebuilds it

    def distributions(self) -> list[str]:
        """The distributions its files come from, in first-use order."""
        return list(dict.fromkeys(s.dist for s in self.files if s.dist is not None))


@dataclass(frozen=True)
class Manifest:
    distributions: Mapping[str, Distribution]
    models: Mapping[str, Model]

    def model(self, name: str) -> Model:
        """The model called `name`, or a ManifestError listing the known ones."""
        if name not in self.models:
            known = ", ".join(self.models)
            raise ManifestError(f"unknown model {name!r} (known: {known})")
        return self.models[name]


def load_manifest(path: Path | None = None) -> Manifest:
    """The manifest at `path`, by default the one shipped in this package."""
    if path is None:
        text = resources.files(__package__).joinpath("sources.toml").read_text("utf-8")
        where = "sources.toml"
    else:
        text, where = path.read_text("utf-8"), str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    return parse_manifest(data, where)


def parse_manifest(data: Mapping[str, Any], where: str = "manifest") -> Manifest:
    """Validate parsed TOML into a Manifest."""
    dists = {
        name: _distribution(f"{where}: distributions.{name}", name, table)
        for name, table in _table(data, "distributions", where).items()
    }
    models = {
        name: _model(f"{where}: models.{name}", name, table, dists)
        for name, table in _table(data, "models", where).items()
    }
    return Manifest(dists, models)


def _distribution(where: str, name: str, table: Any) -> Distribution:
    table = _mapping(table, where)
    if extra := sorted(set(table) - DISTRIBUTION_KEYS):
        raise ManifestError(
            f"{where}: takes no {', '.join(extra)} (a distribution is pinned by "
            f"{', '.join(sorted(DISTRIBUTION_KEYS))}; pip's index is where it comes from)"
        )
    version = _str(table, "version", where)
    filename = _str(table, "filename", where)
    if not _FILENAME.match(filename) or not _is_release_file(filename, name, version):
        raise ManifestError(
            f"{where}: filename must be a wheel (.whl) or sdist (.tar.gz) of "
            f"{name} {version}, not {filename!r}"
        )
    return Distribution(
        name=_name(name, where),
        version=version,
        license=_str(table, "license", where),
        filename=filename,
        size=_int(table, "size", where),
        sha256=_digest(table, "sha256", where),
    )


def _is_release_file(filename: str, project: str, version: str) -> bool:
    """Whether `filename` is named as a file of `project` `version` (wheel or sdist)."""
    if filename.endswith(".whl"):
        parts = filename.removesuffix(".whl").split("-")
        if len(parts) not in (5, 6):
            return False
    else:
        parts = filename.removesuffix(".tar.gz").rsplit("-", 1)
    normalized = re.sub(r"[-_.]+", "-", parts[0]).lower()
    return normalized == re.sub(r"[-_.]+", "-", project).lower() and parts[1] == version


def _model(where: str, name: str, table: Any, dists: Mapping[str, Distribution]) -> Model:
    table = _mapping(table, where)
    steps: list[Step] = []
    for path, spec in _table(table, "files", where).items():
        steps.append(_step(f"{where}.files.{path!r}", path, spec, dists, [s.path for s in steps]))
    makes = [s.make for s in steps]
    if makes.count("golden") != 1 or steps[-1].make != "golden":
        raise ManifestError(f"{where}: the last file, and only it, must be made by `golden`")
    golden = _table(table, "golden", where)
    referenced = {s.dist: dists[s.dist].__dict__ for s in steps if s.dist is not None}
    canonical = json.dumps({"model": table, "distributions": referenced}, sort_keys=True)
    return Model(
        name=_name(name, where),
        description=_str(table, "description", where),
        files=tuple(steps),
        golden=golden,
        digest=hashlib.sha256(canonical.encode()).hexdigest(),
    )


def _step(
    where: str, path: str, spec: Any, dists: Mapping[str, Distribution], earlier: list[str]
) -> Step:
    spec = _mapping(spec, where)
    _path(path, where)
    make = _str(spec, "make", where)
    if make not in STEPS:
        raise ManifestError(f"{where}: make {make!r} is not one of {', '.join(STEPS)}")
    required, optional = STEPS[make]
    keys = set(spec) - {"make"}
    if missing := sorted(required - keys):
        raise ManifestError(f"{where}: make {make!r} needs {', '.join(missing)}")
    if extra := sorted(keys - required - optional):
        raise ManifestError(f"{where}: make {make!r} takes no {', '.join(extra)}")
    step: dict[str, Any] = {"path": path, "make": make, "sha256": None}
    if "sha256" in spec:
        step["sha256"] = _digest(spec, "sha256", where)
    if "from" in spec:
        dist, sep, member = _str(spec, "from", where).partition(":")
        if not sep or dist not in dists:
            raise ManifestError(
                f"{where}: from must be DISTRIBUTION:MEMBER of a known distribution"
            )
        step.update(dist=dist, member=_path(member, where))
    if "from_sha256" in spec:
        step["from_sha256"] = _digest(spec, "from_sha256", where)
    inputs = [_str(spec, key, where) for key in ("model", "input") if key in spec]
    for name in inputs:
        if name not in earlier:
            raise ManifestError(f"{where}: {name!r} must be a file declared before it")
    step["inputs"] = tuple(inputs)
    for key in ("seed", "skip", "index"):
        if key in spec:
            step[key] = _int(spec, key, where)
    if "shape" in spec:
        shape = spec["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) and d > 0 for d in shape):
            raise ManifestError(f"{where}: shape must be a list of positive integers")
        step["shape"] = tuple(shape)
    if "stats" in spec:
        stats = _mapping(spec["stats"], f"{where}.stats")
        if sorted(stats) != sorted(STATS) or not all(_is_number(v) for v in stats.values()):
            raise ManifestError(f"{where}: stats must give the numbers {', '.join(STATS)}")
        step["stats"] = {k: float(v) for k, v in stats.items()}
    if "tolerance" in spec:
        if not _is_number(spec["tolerance"]) or not 0 < spec["tolerance"] < 1:
            raise ManifestError(f"{where}: tolerance must be a number in (0, 1)")
        step["tolerance"] = float(spec["tolerance"])
    return Step(**step)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where}: must be a table")
    return value


def _table(table: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    if key not in table:
        raise ManifestError(f"{where}: {key} is missing")
    return _mapping(table[key], f"{where}.{key}")


def _str(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: {key} must be a non-empty string")
    return value


def _int(table: Mapping[str, Any], key: str, where: str) -> int:
    value = table.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestError(f"{where}: {key} must be a non-negative integer")
    return value


def _digest(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ManifestError(f"{where}: {key} must be 64 lowercase hex digits")
    return value


def _name(name: str, where: str) -> str:
    if not _NAME.match(name):
        raise ManifestError(f"{where}: name must match {_NAME.pattern}")
    return name


def _path(path: str, where: str) -> str:
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or any(p in ("..", ".") or p[0] == "." for p in parts):
        raise ManifestError(f"{where}: {path!r} must be a relative path without hidden parts")
    return path


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
