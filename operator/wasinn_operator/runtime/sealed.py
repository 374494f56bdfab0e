"""Compiled-code cache files that cannot be forged: HMAC-sealed, size-bounded directories.

wasmtime deserializes and OpenVINO imports compiled code without checking it: whoever can write
a cache file chooses the native code the next run executes. So every entry is sealed with
HMAC-SHA256 under a per-install secret key, over the entry's identity (what it was compiled
from and for: module sha256 and engine fingerprint, or the model's key) and its payload, and is
verified in private memory before it is used: a forged, foreign, truncated or damaged entry, a
symlink or anything but a regular file is discarded (and logged) and the caller compiles afresh.

The key is `cache.key` in the cache root: 32 random bytes, mode 0600, created once per install.
A key file that is not a regular file of this user, readable by no one else, is never used: the
disk caches are then off (compiles are slower, results the same). Entries live in
subdirectories, written only by the host, atomically, 0600, in directories created 0700.
Each directory has a size bound; the least recently used entries (access times set on use) go
first.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import stat
import threading
import time
from pathlib import Path

from ..atomicfile import replace_file

log = logging.getLogger("wasinn.cache")

KEY_FILE = "cache.key"
KEY_BYTES = 32
MAGIC = b"WASINN\x01\x00"
TAG_BYTES = 32
HEADER_BYTES = len(MAGIC) + TAG_BYTES
STALE_TEMP_SECONDS = 3600.0


def load_key(root: Path) -> bytes | None:
    """The install's cache key under `root`, created on first use; None when unusable."""
    path = root / KEY_FILE
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = _read_key(path)
        if key is None:
            _create_key(path)
            key = _read_key(path)
    except OSError as exc:
        log.warning("compiled-code caches off: cannot use the key %s: %s", path, exc)
        return None
    if key is None:
        log.warning("compiled-code caches off: the key %s is unusable", path)
    return key


def _read_key(path: Path) -> bytes | None:
    """The key, or None if absent; raises OSError for a key that must not be trusted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{path} is not a regular file owned by this user")
        if st.st_mode & 0o077:
            raise OSError(f"{path} is accessible to others (mode {stat.S_IMODE(st.st_mode):o})")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise OSError(f"{path} does not hold a {KEY_BYTES}-byte key")
    return key


def _create_key(path: Path) -> None:
    """Write a new key; a key another process created meanwhile wins (link never replaces)."""
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_into(fd: int, buffer: bytearray) -> int:
    """Fill `buffer` from `fd`; the count read (short at end of file)."""
    view, done = memoryview(buffer), 0
    while done < len(buffer):
        got = os.readv(fd, [view[done:]])
        if got == 0:
            break
        done += got
    return done


class SealedDir:
    """One cache directory of sealed entries, bounded to `max_bytes` in total.

    Every failure to read or write is a cache miss: a cache costs compile time, never
    correctness.
    """

    @classmethod
    def open(
        cls, directory: Path, key: bytes | None, domain: str, suffix: str, max_bytes: int
    ) -> SealedDir | None:
        """The directory, created 0700; None (no disk cache) without a key or a directory."""
        if key is None:
            return None
        try:
            return cls(directory, key, domain, suffix, max_bytes)
        except OSError as exc:
            log.warning("compiled-code cache %s off: %s", directory, exc)
            return None

    def __init__(
        self, directory: Path, key: bytes, domain: str, suffix: str, max_bytes: int
    ) -> None:
        self.directory = directory
        self._key = key
        self._domain = domain.encode()
        self._suffix = suffix
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, name: str) -> Path:
        """The file of entry `name`."""
        return self.directory / f"{name}{self._suffix}"

    def _tag(self, name: str, identity: bytes, payload: bytes | bytearray | memoryview) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (self._domain, name.encode(), identity):
            mac.update(len(part).to_bytes(8, "little"))
            mac.update(part)
        mac.update(payload)
        return mac.digest()

    def read(self, name: str, identity: bytes) -> bytearray | None:
        """The verified payload of entry `name` sealed for `identity`, or None.

        The payload is verified and returned in private memory (never a mapping of the file),
        so the file cannot change between the check and the use.
        """
        path = self.path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a symlink (ELOOP), a directory, no permission
            self.discard(path, f"cannot be opened as a file ({exc.strerror})")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.discard(path, "is not a regular file")
                return None
            if not HEADER_BYTES < st.st_size <= self.max_bytes:
                self.discard(path, f"has an impossible size ({st.st_size} bytes)")
                return None
            data = bytearray(st.st_size)
            got = _read_into(fd, data)
            with contextlib.suppress(OSError):  # the LRU clock; mtime says when it was written
                os.utime(fd, ns=(time.time_ns(), st.st_mtime_ns))
        except OSError as exc:
            log.warning("compiled-code cache: cannot read %s: %s", path, exc)
            return None
        finally:
            os.close(fd)
        if got != st.st_size or data[: len(MAGIC)] != MAGIC:
            self.discard(path, "is truncated or not a sealed entry")
            return None
        with memoryview(data) as view:
            expected = self._tag(name, identity, view[HEADER_BYTES:])
        if not hmac.compare_digest(bytes(data[len(MAGIC) : HEADER_BYTES]), expected):
            self.discard(path, "fails verification (forged, foreign or damaged)")
            return None
        del data[:HEADER_BYTES]
        return data

    def write(self, name: str, identity: bytes, payload: bytes | bytearray | memoryview) -> None:
        """Seal and store `payload` atomically (0600), then keep the directory in bounds."""
        size = HEADER_BYTES + len(payload)
        if size > self.max_bytes:
            return
        try:
            replace_file(self.path(name), MAGIC + self._tag(name, identity, payload), payload)
        except OSError as exc:
            log.warning("compiled-code cache: cannot write %s: %s", self.path(name), exc)
            return
        self.evict()

    def discard(self, path: Path, why: str) -> None:
        """Remove an entry that must not be used, saying why."""
        log.warning("compiled-code cache: discarding %s: it %s", path, why)
        with contextlib.suppress(OSError):
            path.unlink()

    def evict(self) -> None:
        """Delete least recently used entries until the directory fits its bound."""
        with self._lock:
            entries: list[tuple[int, int, Path]] = []
            now = time.time()
            try:
                with os.scandir(self.directory) as scan:
                    for entry in scan:
                        st = entry.stat(follow_symlinks=False)
                        path = Path(entry.path)
                        if entry.name.endswith(".tmp") and now - st.st_mtime > STALE_TEMP_SECONDS:
                            path.unlink(missing_ok=True)  # left by a killed writer
                        elif entry.name.endswith(self._suffix) and stat.S_ISREG(st.st_mode):
                            entries.append((st.st_atime_ns, st.st_size, path))
            except OSError as exc:
                log.warning("compiled-code cache: cannot scan %s: %s", self.directory, exc)
                return
            total = sum(size for _, size, _ in entries)
            for _, size, path in sorted(entries):
                if total <= self.max_bytes:
                    break
                with contextlib.suppress(OSError):
                    path.unlink()
                    total -= size
