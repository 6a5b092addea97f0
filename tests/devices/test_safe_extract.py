"""Safe tar extraction: every member checked before anything is written."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from edgessl.edge_runtime.bundle.safe_extract import atomic_write, safe_extract, safe_name
from edgessl.errors import UnsafeArchiveError


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("name, error", [
    ("../x", "'..' in a path"), ("a/../../x", "'..' in a path"), ("/etc/x", "absolute paths"),
    ("a\\..\\x", "backslashes"), ("", "empty name"), ("a\nb", "control characters"),
])
def test_unsafe_names(name, error):
    with pytest.raises(UnsafeArchiveError, match=error):
        safe_name(name)


def test_safe_names():
    assert safe_name("./a/./b.onnx") == "a/b.onnx" and safe_name(".") is None and safe_name("a/") == "a"


@pytest.mark.parametrize("kind, error", [
    (tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"), (tarfile.CHRTYPE, "device file"),
    (tarfile.BLKTYPE, "device file"), (tarfile.FIFOTYPE, "FIFO"), (tarfile.GNUTYPE_SPARSE, "sparse file"),
])
def test_special_members_refused_and_nothing_written(kind, error, tmp_path, helpers):
    archive = _tar(tmp_path / "a.tar", [helpers.member("good.txt", data=b"fine"),
                                        helpers.member("bad", kind, linkname="good.txt")])
    with pytest.raises(UnsafeArchiveError, match=error):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_duplicates_clashes_and_caps(tmp_path, helpers):
    dup = _tar(tmp_path / "dup.tar", [helpers.member("a", data=b"1"), helpers.member("a", data=b"2")])
    with pytest.raises(UnsafeArchiveError, match="appears twice"):
        safe_extract(dup, tmp_path / "o1")
    clash = _tar(tmp_path / "clash.tar", [helpers.member("a", data=b"1"), helpers.member("a/b", data=b"2")])
    with pytest.raises(UnsafeArchiveError, match="lies under 'a', which is a file"):
        safe_extract(clash, tmp_path / "o2")
    big = _tar(tmp_path / "big.tar", [helpers.member(f"f{i}", data=b"x" * 600) for i in range(3)])
    with pytest.raises(UnsafeArchiveError, match="more than 1000 bytes"):
        safe_extract(big, tmp_path / "o3", max_total_bytes=1000)
    with pytest.raises(UnsafeArchiveError, match="more than 2 members"):
        safe_extract(big, tmp_path / "o4", max_members=2)
    (tmp_path / "not.tar").write_bytes(b"hello")
    with pytest.raises(UnsafeArchiveError, match="not a readable tar archive"):
        safe_extract(tmp_path / "not.tar", tmp_path / "o5")


def test_extracts_plain_files(tmp_path, helpers):
    folder = tarfile.TarInfo("sub")
    folder.type = tarfile.DIRTYPE
    archive = _tar(tmp_path / "ok.tar", [(folder, b""), helpers.member("sub/a.bin", data=b"abc"),
                                         helpers.member("./b.txt", data=b"")])
    hashes = safe_extract(archive, tmp_path / "out")
    assert set(hashes) == {"sub/a.bin", "b.txt"}
    assert (tmp_path / "out" / "sub" / "a.bin").read_bytes() == b"abc"
    assert (tmp_path / "out" / "sub" / "a.bin").stat().st_mode & 0o777 == 0o644


def test_atomic_write(tmp_path):
    atomic_write(tmp_path / "f", b"one")
    atomic_write(tmp_path / "f", b"two")
    assert (tmp_path / "f").read_bytes() == b"two" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
