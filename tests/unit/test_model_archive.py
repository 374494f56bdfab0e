"""Model archives from a tenant: what is unpacked, and every rule that refuses one."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from wasinn_operator.models.archive import ArchiveError, is_archive, unpack

pytestmark = pytest.mark.unit


def tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as out:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                out.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
    return path


def test_names_that_are_archives() -> None:
    assert all(is_archive(n) for n in ("m.tar", "m.tar.gz", "M.TGZ", "m.tar.xz", "m.zip"))
    assert not any(is_archive(n) for n in ("model.onnx", "model.bin", "tar.gz.onnx"))


@pytest.mark.parametrize("mode,suffix", [("w", "tar"), ("w:gz", "tgz"), ("w:xz", "tar.xz")])
def test_one_top_directory_is_stripped(tmp_path: Path, mode: str, suffix: str) -> None:
    archive = tar(
        tmp_path / f"m.{suffix}",
        [("effnet/model.xml", b"<xml/>"), ("effnet/model.bin", b"\0" * 10)],
        mode,
    )
    into = tmp_path / "out"
    into.mkdir()
    assert unpack(archive, into, 1 << 20) == ["model.xml", "model.bin"]
    assert (into / "model.xml").read_bytes() == b"<xml/>"


def test_files_at_the_root_and_subdirectories_are_kept(tmp_path: Path) -> None:
    archive = tar(tmp_path / "m.tar.gz", [("model.onnx", b"x"), ("extra/labels.txt", b"a\nb\n")])
    into = tmp_path / "out"
    into.mkdir()
    assert sorted(unpack(archive, into, 1 << 20)) == ["extra/labels.txt", "model.onnx"]
    assert (into / "extra" / "labels.txt").read_text() == "a\nb\n"


def test_zip(tmp_path: Path) -> None:
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.writestr("model.tflite", b"tflite" * 100)
    into = tmp_path / "out"
    into.mkdir()
    assert unpack(archive, into, 1 << 20) == ["model.tflite"]
    assert (into / "model.tflite").read_bytes() == b"tflite" * 100


def link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    "member,reason",
    [
        (("../escape.bin", b"x"), "must be relative paths inside the archive"),
        (("/etc/passwd", b"x"), "must be relative paths inside the archive"),
        (("a/../../b", b"x"), "must be relative paths inside the archive"),
        (link("model.bin", tarfile.SYMTYPE, "/etc/shadow"), "only regular files and directories"),
        (link("model.bin", tarfile.LNKTYPE, "model.xml"), "only regular files and directories"),
        (device("null"), "only regular files and directories"),
    ],
)
def test_forbidden_members(
    tmp_path: Path, member: tarfile.TarInfo | tuple[str, bytes], reason: str
) -> None:
    archive = tar(tmp_path / "m.tar", [("model.xml", b"x"), member], "w")
    into = tmp_path / "out"
    into.mkdir()
    with pytest.raises(ArchiveError, match=reason):
        unpack(archive, into, 1 << 20)
    assert not (tmp_path / "escape.bin").exists()


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as out:
        info = zipfile.ZipInfo("model.bin")
        info.external_attr = 0o120777 << 16
        out.writestr(info, "/etc/shadow")
    into = tmp_path / "out"
    into.mkdir()
    with pytest.raises(ArchiveError, match="links are not allowed"):
        unpack(archive, into, 1 << 20)


def test_size_and_count_caps(tmp_path: Path) -> None:
    into = tmp_path / "out"
    into.mkdir()
    big = tar(tmp_path / "big.tar.gz", [("model.bin", b"\0" * 4096)])
    with pytest.raises(ArchiveError, match="4096 bytes unpacked, over the 1000-byte limit"):
        unpack(big, into, 1000)
    many = tar(tmp_path / "many.tar", [(f"f{i}", b"") for i in range(5)], "w")
    with pytest.raises(ArchiveError, match="5 files, more than the 4 allowed"):
        unpack(many, into, 1 << 20, max_files=4)
    empty = tar(tmp_path / "empty.tar", [], "w")
    with pytest.raises(ArchiveError, match="holds no files"):
        unpack(empty, into, 1 << 20)


def test_sizes_that_lie_stop_at_the_cap(tmp_path: Path) -> None:
    """A zip whose header declares less than it inflates to is cut at the cap, not trusted."""
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.writestr("model.bin", b"\0" * 100_000)
    data = bytearray(archive.read_bytes())
    # Patch both the local header's and the central directory's uncompressed size to 10.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        data[at + offset : at + offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    into = tmp_path / "out"
    into.mkdir()
    with pytest.raises(ArchiveError, match=r"model\.bin: cannot unpack \(Bad CRC-32"):
        unpack(archive, into, 1000)
    assert (into / "model.bin").stat().st_size <= 1000


def test_garbage_and_duplicates(tmp_path: Path) -> None:
    into = tmp_path / "out"
    into.mkdir()
    junk = tmp_path / "m.tar.gz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        unpack(junk, into, 1 << 20)
    twice = tar(tmp_path / "twice.tar", [("model.bin", b"1"), ("model.bin", b"2")], "w")
    with pytest.raises(ArchiveError, match="a second member of that name"):
        unpack(twice, into, 1 << 20)
