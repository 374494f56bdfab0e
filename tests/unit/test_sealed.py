"""Sealed cache entries: only what this install wrote, for this identity, is ever returned."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from wasinn_operator.runtime.sealed import HEADER_BYTES, KEY_FILE, SealedDir, load_key

pytestmark = pytest.mark.unit


@pytest.fixture
def sealed(tmp_path: Path) -> SealedDir:
    key = load_key(tmp_path)
    assert key is not None
    return SealedDir(tmp_path / "entries", key, "test", ".bin", max_bytes=1 << 20)


def test_the_key_is_created_once_0600(tmp_path: Path) -> None:
    key = load_key(tmp_path / "cache")
    assert key is not None and len(key) == 32
    path = tmp_path / "cache" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert load_key(tmp_path / "cache") == key  # read back, not replaced
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [KEY_FILE]


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda p: p.chmod(0o644), "accessible to others (mode 644)"),
        (lambda p: p.write_bytes(b"short") or p.chmod(0o600), "does not hold a 32-byte key"),
        (lambda p: p.unlink() or p.symlink_to("/etc/hostname"), "Too many levels of symbolic"),
    ],
)
def test_an_untrustworthy_key_turns_the_caches_off(
    tmp_path: Path, spoil: object, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert load_key(tmp_path) is not None
    spoil(tmp_path / KEY_FILE)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, "wasinn.cache"):
        assert load_key(tmp_path) is None
    assert reason in caplog.text
    assert SealedDir.open(tmp_path / "x", None, "test", ".bin", 1 << 20) is None


def test_round_trip_is_0600(sealed: SealedDir) -> None:
    sealed.write("a", b"identity", b"payload")
    assert sealed.read("a", b"identity") == b"payload"
    assert stat.S_IMODE(sealed.path("a").stat().st_mode) == 0o600
    assert stat.S_IMODE(sealed.directory.stat().st_mode) == 0o700
    assert sealed.read("missing", b"identity") is None


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (flip, "fails verification"),
        (lambda p: p.write_bytes(p.read_bytes()[:-3]), "fails verification"),
        (lambda p: p.write_bytes(p.read_bytes()[: HEADER_BYTES - 1]), "impossible size"),
        (lambda p: p.write_bytes(b"X" + p.read_bytes()[1:]), "not a sealed entry"),
        (
            lambda p: p.write_bytes(b"\0asm an unsealed module, as caches used to be"),
            "not a sealed",
        ),
        (lambda p: p.unlink() or p.symlink_to(p.with_name("b.bin")), "cannot be opened"),
        (lambda p: p.unlink() or os.mkfifo(p), "not a regular file"),
        (lambda p: p.unlink() or p.mkdir(), "not a regular file"),
    ],
)
def test_tampered_entries_are_discarded(
    sealed: SealedDir, tamper: object, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    sealed.write("a", b"identity", b"payload" * 100)
    sealed.write("b", b"identity", b"other payload" * 100)
    tamper(sealed.path("a"))  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, "wasinn.cache"):
        assert sealed.read("a", b"identity") is None
    assert reason in caplog.text
    if not sealed.path("a").is_dir():
        assert not sealed.path("a").exists() and not sealed.path("a").is_symlink()


def test_an_entry_cannot_stand_in_for_another(sealed: SealedDir) -> None:
    sealed.write("a", b"identity a", b"payload a")
    sealed.write("b", b"identity b", b"payload b")
    sealed.path("b").replace(sealed.path("a"))  # b's valid entry under a's name
    assert sealed.read("a", b"identity a") is None
    sealed.write("c", b"identity c", b"payload c")
    assert sealed.read("c", b"identity d") is None  # right name, other identity


def test_another_installs_entries_are_refused(sealed: SealedDir, tmp_path: Path) -> None:
    other_key = load_key(tmp_path / "other")
    assert other_key is not None
    other = SealedDir(sealed.directory, other_key, "test", ".bin", 1 << 20)
    other.write("a", b"identity", b"payload")
    assert sealed.read("a", b"identity") is None


def test_the_size_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    key = load_key(tmp_path)
    assert key is not None
    small = SealedDir(tmp_path / "e", key, "test", ".bin", max_bytes=3 * (HEADER_BYTES + 1000))
    for i, name in enumerate("abc"):
        small.write(name, b"id", bytes(1000))
        os.utime(small.path(name), (1000 + i, 1000 + i))  # a, then b, then c were used
    assert small.read("a", b"id") is not None  # a is now the most recently used
    small.write("d", b"id", bytes(1000))
    assert sorted(p.name for p in small.directory.iterdir()) == ["a.bin", "c.bin", "d.bin"]
    small.write("big", b"id", bytes(4 * 1000))  # larger than the bound: never stored
    assert not small.path("big").exists()
