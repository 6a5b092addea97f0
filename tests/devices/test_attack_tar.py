"""Parsing is bounded before anything is verified: a tar whose headers were crafted to make a
parser work (a PAX block of megabytes, a huge GNU long name, CVE-2024-6232's backtracking PAX
records, a gzip that inflates far) is refused at once, in little memory, by edgessl's own
parser, with the same checks on every other member kind; bundles packed by `edgessl flash` still
install."""

from __future__ import annotations

import gzip
import resource
import tarfile
import time

import pytest

from edgessl.devices.flash import pack_bundle
from edgessl.edge_runtime.bundle.safe_extract import MAX_EXTENSION_BYTES, Archive, safe_extract
from edgessl.edge_runtime.device.installer import install
from edgessl.edge_runtime.device.slots import status
from edgessl.errors import EdgesslError, UnsafeArchiveError


def header(name: str, typeflag: bytes, size: int) -> bytes:
    block = bytearray(512)
    block[0:len(name[:100])] = name[:100].encode()
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = f"{size:011o}\0".encode()
    block[136:148] = b"00000000000\0"
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[257:265] = b"ustar\x0000"
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def entry(name: str, typeflag: bytes, data: bytes) -> bytes:
    return header(name, typeflag, len(data)) + data + b"\0" * (-len(data) % 512)


def archive(*entries: bytes) -> bytes:
    return b"".join(entries) + b"\0" * 1024


def timed(path) -> tuple[float, str]:
    start = time.monotonic()
    with pytest.raises(UnsafeArchiveError) as info:
        Archive(path)
    return time.monotonic() - start, str(info.value)


@pytest.mark.parametrize(("what", "data", "message"), [
    ("a 4 MB PAX block", archive(entry("x", b"x", b"9" * (4 << 20)), entry("a", b"0", b"1")), "PAX header"),
    ("a 391 KB GNU long name", archive(entry("././@LongLink", b"L", b"n" * 400_000), entry("a", b"0", b"1")),
     "long name header"),
    ("CVE-2024-6232 records", archive(entry("x", b"x", b"0 " + b" " * 8000), entry("a", b"0", b"1")), "PAX record"),
    ("a global PAX block", archive(entry("g", b"g", b"1" * 20_000), entry("a", b"0", b"1")), "PAX header"),
    ("a checksum that lies", archive(entry("a", b"0", b"1"))[:148] + b"0000001\0" + b"\0" * 1400, "checksum"),
])
def test_crafted_headers_cost_nothing(tmp_path, what, data, message):
    for compress in (False, True):
        path = tmp_path / f"upload{'.gz' if compress else ''}"
        path.write_bytes(gzip.compress(data) if compress else data)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        took, error = timed(path)
        assert took < 0.5, (what, took)
        assert message in error, (what, error)
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mb < 64, (what, grown_mb)


def test_the_parser_keeps_the_member_checks(tmp_path):
    for typeflag, kind in ((b"2", "symbolic link"), (b"1", "hard link"), (b"3", "device file"), (b"6", "FIFO"),
                           (b"S", "sparse file"), (b"K", "link")):
        path = tmp_path / "t.tar"
        path.write_bytes(archive(entry("ok", b"0", b"fine"), entry("bad", typeflag, b"")))
        with pytest.raises(UnsafeArchiveError, match=kind):
            safe_extract(path, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    path = tmp_path / "dots.tar"
    path.write_bytes(archive(entry("x", b"x", b"19 path=../../evil\n"), entry("a", b"0", b"1")))
    with pytest.raises(UnsafeArchiveError, match=r"'\.\.' in a path"):
        safe_extract(path, tmp_path / "o2")  # a PAX path is checked like any other
    path = tmp_path / "short.tar"
    path.write_bytes(entry("a", b"0", b"1" * 2000)[:1000])
    with pytest.raises(UnsafeArchiveError, match="truncated"):
        Archive(path)
    big = gzip.compress(b"\0" * (8 << 20))  # inflates past the cap given
    (tmp_path / "bomb.tar.gz").write_bytes(big)
    with pytest.raises(UnsafeArchiveError, match="inflates past"):
        Archive(tmp_path / "bomb.tar.gz", max_total_bytes=1 << 20, max_members=10)
    assert MAX_EXTENSION_BYTES <= 8192


def test_real_tars_still_install(tmp_path, signed_bundle, device_root):
    bundle = signed_bundle("v1")
    root = device_root()
    plain = pack_bundle(bundle, tmp_path / "b.tar")
    gz = tmp_path / "b.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    with tarfile.open(tmp_path / "gnu.tar", "w", format=tarfile.GNU_FORMAT) as tar:  # another writer's layout
        for name in ("manifest.json", "manifest.sig", "center.npy", "golden.npz", "model.onnx"):
            tar.add(bundle / name, arcname=f"bundle/{name}")
    assert install(root, gz).ok and status(root).active_version == 1
    with pytest.raises(EdgesslError, match="not newer"):
        install(root, tmp_path / "gnu.tar")  # read, checked and refused for its version, not its layout
