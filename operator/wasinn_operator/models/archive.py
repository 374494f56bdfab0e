"""Unpacking a model archive (`.tar`, `.tar.gz`/`.tgz`, `.tar.xz`, `.zip`) from an https source.

An OpenVINO IR model is two files (`model.xml` + `model.bin`), so a single-URL source needs an
archive for it, as KServe's storage initializer unpacks them. The archive comes from a tenant:
only regular files and directories are taken (no links, devices or FIFOs), every name must stay
inside the target (no absolute paths, no `..`), and the number of files and the unpacked size are
capped, counted from the bytes actually written, so that a decompression bomb stops at the cap.
When every file sits under one top-level directory, that directory is stripped, so that
`model/model.xml` and `model.xml` give the same entry.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

_Opener = Callable[[str], IO[bytes]]
SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".zip")
MAX_FILES = 64
CHUNK = 1 << 16


class ArchiveError(ValueError):
    """The archive is malformed or breaks a rule; the message says which member and why."""


def is_archive(name: str) -> bool:
    """Whether a source file of this name is unpacked rather than kept as one file."""
    return name.lower().endswith(SUFFIXES)


def unpack(archive: Path, into: Path, max_bytes: int, max_files: int = MAX_FILES) -> list[str]:
    """Unpack `archive` into the existing empty directory `into`; the relative names written.

    ArchiveError names the member and the rule it breaks; what was written stays for the caller
    to discard with the rest of its staging directory.
    """
    members = list(_members(archive))
    files = [(name, size) for name, size, is_dir in members if not is_dir]
    if not files:
        raise ArchiveError(f"{archive.name}: the archive holds no files")
    if len(files) > max_files:
        raise ArchiveError(f"{archive.name}: {len(files)} files, more than the {max_files} allowed")
    declared = sum(size for _, size in files)
    if declared > max_bytes:
        raise ArchiveError(
            f"{archive.name}: {declared} bytes unpacked, over the {max_bytes}-byte limit"
        )
    strip = _common_top(name for name, _ in files)
    written: list[str] = []
    budget = max_bytes
    with _opened(archive) as open_member:
        for name, _ in files:
            relative = PurePosixPath(*PurePosixPath(name).parts[strip:])
            target = into.joinpath(*relative.parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open_member(name) as source, target.open("xb") as out:
                    while chunk := source.read(CHUNK):
                        budget -= len(chunk)
                        if budget < 0:  # the headers lied about the sizes
                            raise ArchiveError(
                                f"{archive.name}: more than {max_bytes} bytes unpacked ({name})"
                            )
                        out.write(chunk)
            except FileExistsError:
                raise ArchiveError(
                    f"{archive.name}: {name}: a second member of that name"
                ) from None
            except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
                raise ArchiveError(f"{archive.name}: {name}: cannot unpack ({exc})") from None
            written.append(relative.as_posix())
    return written


def _members(archive: Path) -> Iterator[tuple[str, int, bool]]:
    """(name, declared size, is a directory) of every member; ArchiveError for a forbidden one."""
    if archive.name.lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(archive) as zipped:
                for info in zipped.infolist():
                    # A symlink in a zip is a regular entry whose mode says S_IFLNK.
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise ArchiveError(
                            f"{archive.name}: {info.filename}: links are not allowed"
                        )
                    yield _checked(archive, info.filename), info.file_size, info.is_dir()
        except (zipfile.BadZipFile, OSError) as exc:
            raise ArchiveError(f"{archive.name}: not a readable zip archive ({exc})") from None
        return
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                if not (member.isfile() or member.isdir()):
                    raise ArchiveError(
                        f"{archive.name}: {member.name}: only regular files and directories are "
                        "allowed (no links, devices or FIFOs)"
                    )
                yield _checked(archive, member.name), member.size, member.isdir()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{archive.name}: not a readable tar archive ({exc})") from None


def _checked(archive: Path, name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or not path.parts:
        raise ArchiveError(
            f"{archive.name}: {name!r}: member names must be relative paths inside the archive"
        )
    return path.as_posix()


def _common_top(names: Iterator[str]) -> int:
    """1 when every file is under the same top-level directory, else 0."""
    tops = {PurePosixPath(n).parts[0] if len(PurePosixPath(n).parts) > 1 else "" for n in names}
    return 1 if len(tops) == 1 and "" not in tops else 0


@contextmanager
def _opened(archive: Path) -> Iterator[_Opener]:
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            yield zipped.open
        return
    with tarfile.open(archive, mode="r:*") as tar:

        def open_member(name: str) -> IO[bytes]:
            extracted = tar.extractfile(name)
            if extracted is None:
                raise ArchiveError(f"{archive.name}: {name}: not a regular file")
            return extracted

        yield open_member
