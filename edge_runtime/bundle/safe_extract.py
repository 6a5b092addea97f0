"""Reading bundle archives safely, and writing files so that they survive a crash.

A bundle arrives as a tar over the network, so it is read by this module's own parser, never
by `tarfile`: each 512-byte header is checked before the next is read, and what a header may
make the parser do is bounded (a PAX record or GNU long name of at most MAX_EXTENSION_BYTES,
no sparse maps, no base-256 sizes), so a crafted header costs what its bytes cost: CPython's
tarfile spent seconds and hundreds of MB on some (CVE-2024-6232). Only plain files and folders
pass, with relative paths without `..`, no links, no device files or FIFOs, no duplicates, and
caps on the number of members and their total size. A gzip-compressed tar is first inflated,
bounded by the same total. The files are then written by this code too (`O_EXCL | O_NOFOLLOW`,
fixed mode 0644).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from edgessl.errors import UnsafeArchiveError

MAX_TOTAL_BYTES = 4 << 30  # 4 GiB: a large fp32 model with its int8, OpenVINO and ONNX variants
MAX_MEMBERS = 10_000
MAX_EXTENSION_BYTES = 8192  # a PAX record block or a GNU long name: a path, not a payload
CHUNK = 1 << 20
FILE_MODE = 0o644
BLOCK = 512

_KINDS = {b"1": "a hard link", b"2": "a symbolic link", b"3": "a device file", b"4": "a device file",
          b"6": "a FIFO", b"S": "a sparse file", b"K": "a link (GNU long link name)", b"V": "a volume label",
          b"M": "a multi-volume continuation"}


@dataclass(frozen=True)
class Member:
    """A plain file of an archive that passed the checks."""

    name: str  # normalised relative POSIX path: no '.', '..', leading '/' or empty parts
    size: int
    offset: int  # where its content starts in the (uncompressed) archive


def safe_name(name: str) -> str | None:
    """The normalised relative path of an archive member name; None for the root folder ('.').
    Raises UnsafeArchiveError for anything that could land outside the destination."""
    if not name or any(unicodedata.category(ch) == "Cc" for ch in name):
        raise UnsafeArchiveError(f"archive member {name!r}: empty name or control characters")
    if "\\" in name:
        raise UnsafeArchiveError(f"archive member {name!r}: backslashes are not allowed in paths")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"archive member {name!r}: absolute paths are not allowed")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member {name!r}: '..' in a path is not allowed (it could write "
                                 f"outside the bundle folder)")
    return "/".join(parts) if parts else None


# -- the parser ------------------------------------------------------------------------------


def _octal(field: bytes, what: str) -> int:
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if field[0] & 0x80:
        raise UnsafeArchiveError(f"archive header with a base-256 {what}: not used by bundles")
    try:
        return int(text, 8)
    except ValueError:
        raise UnsafeArchiveError(f"archive header with a damaged {what} field") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax(data: bytes) -> dict[str, str]:
    """Records `LEN KEY=VALUE\n`, parsed in one linear pass (no regular expression)."""
    out, pos = {}, 0
    while pos < len(data):
        if data[pos] == 0:
            break
        space = data.find(b" ", pos, pos + 12)
        if space < 0 or not data[pos:space].isdigit():
            raise UnsafeArchiveError("archive with a damaged PAX record")
        length = int(data[pos:space])
        record = data[space + 1:pos + length]
        if length < 5 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise UnsafeArchiveError("archive with a damaged PAX record")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _headers(f: IO[bytes], size: int) -> Iterator[tuple[str, bytes, int, int]]:
    """(name, typeflag, size, data offset) of each entry, PAX and GNU long names applied."""
    pos = 0
    pending: dict[str, str] = {}
    while True:
        f.seek(pos)
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            raise UnsafeArchiveError("archive is truncated (it ends inside a header)")
        if block == bytes(BLOCK):
            return  # the end-of-archive marker
        stored = _octal(block[148:156], "checksum")
        if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]):
            raise UnsafeArchiveError(f"archive header at byte {pos} has a wrong checksum (not a tar, or damaged)")
        typeflag = block[156:157]
        length = _octal(block[124:136], "size")
        data = pos + BLOCK
        pos = data + (length + BLOCK - 1) // BLOCK * BLOCK
        if pos > size + BLOCK:  # the last data block may lack padding in some writers
            raise UnsafeArchiveError("archive is truncated (a member's data runs past its end)")
        if typeflag in (b"x", b"g", b"L"):
            if length > MAX_EXTENSION_BYTES:
                raise UnsafeArchiveError(f"archive has a {length}-byte {'PAX' if typeflag != b'L' else 'long name'} "
                                         f"header; at most {MAX_EXTENSION_BYTES} are allowed")
            f.seek(data)
            ext = f.read(length)
            if typeflag == b"x":
                pending.update(_pax(ext))
            elif typeflag == b"L":
                pending["path"] = ext.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            else:
                _pax(ext)  # a global header: checked, nothing in it applies to bundles
            continue
        name = _text(block[0:100])
        if block[257:262] == b"ustar" and block[345:500].strip(b"\0"):
            name = _text(block[345:500]) + "/" + name
        name = pending.pop("path", name)
        if "size" in pending:
            try:
                length = int(pending.pop("size"))
            except ValueError:
                raise UnsafeArchiveError("archive with a damaged PAX size") from None
            pos = data + (length + BLOCK - 1) // BLOCK * BLOCK
        pending.clear()
        yield name, typeflag, length, data


def scan(f: IO[bytes], size: int, *, max_total_bytes: int = MAX_TOTAL_BYTES,
         max_members: int = MAX_MEMBERS) -> list[Member]:
    """Check every member of the tar in `f` (`size` bytes) and return its plain files.

    Raises UnsafeArchiveError naming the first offending member."""
    files: dict[str, Member] = {}
    folders: set[str] = set()
    total = 0
    for count, (raw, typeflag, length, offset) in enumerate(_headers(f, size), start=1):
        if count > max_members:
            raise UnsafeArchiveError(f"archive has more than {max_members} members")
        name = safe_name(raw)
        if typeflag == b"5":
            if name is not None:
                if name in files:
                    raise UnsafeArchiveError(f"archive member {raw!r} is both a file and a folder")
                folders.add(name)
            continue
        if typeflag not in (b"0", b"\0", b"7"):
            kind = _KINDS.get(typeflag, f"an unsupported member type ({typeflag!r})")
            raise UnsafeArchiveError(f"archive member {raw!r} is {kind}; only plain files and folders are allowed "
                                     f"in a bundle")
        if name is None or name in files or name in folders:
            raise UnsafeArchiveError(f"archive member {raw!r} appears twice (or is also a folder)")
        total += length
        if length < 0 or total > max_total_bytes:
            raise UnsafeArchiveError(f"archive holds more than {max_total_bytes} bytes of files "
                                     f"(limit reached at {raw!r})")
        if offset + length > size:
            raise UnsafeArchiveError(f"archive member {raw!r}: truncated archive")
        files[name] = Member(name, length, offset)
    for name in files:
        clash = next((str(p) for p in PurePosixPath(name).parents if str(p) in files), None)
        if clash is not None:
            raise UnsafeArchiveError(f"archive member {name!r} lies under {clash!r}, which is a file")
    return list(files.values())


class Archive:
    """A tar (plain, or gzip-compressed) opened for checked reading: `members` passed `scan`."""

    def __init__(self, path: str | Path, *, max_total_bytes: int = MAX_TOTAL_BYTES,
                 max_members: int = MAX_MEMBERS) -> None:
        self.path = Path(path)
        try:
            self._file: IO[bytes] = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise UnsafeArchiveError(f"{path}: not a readable tar archive: {exc.strerror or exc}") from exc
        try:
            if self._file.read(2) == b"\x1f\x8b":
                self._file = self._inflate(max_total_bytes + (max_members + 2) * 3 * BLOCK)
            self._file.seek(0, io.SEEK_END)
            size = self._file.tell()
            if size < BLOCK:
                raise UnsafeArchiveError(f"{path}: not a readable tar archive ({size} bytes)")
            self.members = scan(self._file, size, max_total_bytes=max_total_bytes, max_members=max_members)
        except BaseException:
            self._file.close()
            raise

    def _inflate(self, limit: int) -> IO[bytes]:
        """The gzip's content in a temporary file, at most `limit` bytes of it (contents + headers)."""
        self._file.seek(0)
        out = tempfile.TemporaryFile()
        written = 0
        try:
            with gzip.GzipFile(fileobj=self._file) as z:
                while block := z.read(CHUNK):
                    written += len(block)
                    if written > limit:
                        raise UnsafeArchiveError(f"{self.path}: inflates past {limit} bytes")
                    out.write(block)
        except (OSError, EOFError) as exc:
            out.close()
            raise UnsafeArchiveError(f"{self.path}: not a readable gzip archive: {exc}") from exc
        except BaseException:
            out.close()
            raise
        self._file.close()
        return out

    def read(self, member: Member, limit: int) -> bytes:
        """The content of a small member (a manifest, a signature)."""
        if member.size > limit:
            raise UnsafeArchiveError(f"archive member {member.name!r} is {member.size} bytes; at most {limit} allowed")
        self._file.seek(member.offset)
        return self._file.read(member.size)

    def stream(self, member: Member) -> IO[bytes]:
        self._file.seek(member.offset)
        return io.BufferedReader(_Bounded(self._file, member.size))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Bounded(io.RawIOBase):
    """The next `size` bytes of a file, as a stream."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f, self._left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._left)
        data = self._f.read(n) if n else b""
        buffer[:len(data)] = data
        self._left -= len(data)
        return len(data)


def write_stream(source: IO[bytes], dest: Path, limit: int | None = None) -> tuple[str, int]:
    """Copy `source` into a new file `dest` (which must not exist, and is not followed if it is
    a link), fsync it; return (sha256, bytes written). More than `limit` bytes is an error."""
    digest = hashlib.sha256()
    written = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        while block := source.read(CHUNK):
            written += len(block)
            if limit is not None and written > limit:
                raise UnsafeArchiveError(f"{dest.name}: larger than the {limit} bytes expected")
            digest.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), written


def extract_member(archive: Archive, member: Member, dest_root: Path, name: str | None = None) -> str:
    """Write one checked member under `dest_root` (a folder this process created, so it holds
    no links), as `name` (default: its own); return its sha256."""
    target = dest_root.joinpath(*(name or member.name).split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    sha, written = write_stream(archive.stream(member), target, member.size)
    if written != member.size:
        raise UnsafeArchiveError(f"archive member {member.name!r}: {written} of {member.size} bytes "
                                 f"(truncated archive)")
    return sha


def safe_extract(archive: str | Path, dest: str | Path, *, max_total_bytes: int = MAX_TOTAL_BYTES,
                 max_members: int = MAX_MEMBERS) -> dict[str, str]:
    """Check the whole archive, then write its plain files into the empty folder `dest`;
    return name -> sha256. Nothing is written when a check fails."""
    dest = Path(dest)
    with Archive(archive, max_total_bytes=max_total_bytes, max_members=max_members) as tar:
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise UnsafeArchiveError(f"{dest}: extraction needs an empty folder")
        hashes = {m.name: extract_member(tar, m, dest) for m in tar.members}
    fsync_tree(dest)
    return hashes


# -- durability --------------------------------------------------------------------------


def fsync_dir(path: str | Path) -> None:
    """Make the entries of a folder (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every folder under `root`, deepest first, then `root` (files are fsynced when written)."""
    folders: Iterable[str] = [d for d, _, _ in os.walk(root)]
    for folder in sorted(folders, key=len, reverse=True):
        fsync_dir(folder)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data`: write a temp file, fsync, rename over, fsync the folder.
    A crash leaves either the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
