"""Reading bundle archives safely, and writing files so that they survive a crash.

A bundle arrives as a tar over the network, so every member is checked by this code before
anything is written: only plain files and folders, relative paths without `..`, no links,
no device files or FIFOs, no duplicates, a cap on the number of members and on their total
size. The files are then written by this code too (`O_EXCL | O_NOFOLLOW`, fixed mode
0644), never by `tarfile.extract*`, so its filters are a second line we do not rely on.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from edgessl.errors import UnsafeArchiveError

MAX_TOTAL_BYTES = 4 << 30  # 4 GiB: a large fp32 model with its int8, OpenVINO and ONNX variants
MAX_MEMBERS = 10_000
CHUNK = 1 << 20
FILE_MODE = 0o644


@dataclass(frozen=True)
class Member:
    """A plain file of an archive that passed the checks."""

    name: str  # normalised relative POSIX path: no '.', '..', leading '/' or empty parts
    size: int
    info: tarfile.TarInfo


def _kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"a symbolic link (to {info.linkname!r})"
    if info.islnk():
        return f"a hard link (to {info.linkname!r})"
    if info.ischr() or info.isblk():
        return "a device file"
    if info.isfifo():
        return "a FIFO"
    if info.type == tarfile.GNUTYPE_SPARSE:
        return "a sparse file"
    return f"an unsupported member type ({info.type!r})"


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


def scan(tar: tarfile.TarFile, *, max_total_bytes: int = MAX_TOTAL_BYTES,
         max_members: int = MAX_MEMBERS) -> list[Member]:
    """Check every member of `tar` (reading all headers) and return its plain files.

    Raises UnsafeArchiveError naming the first offending member."""
    files: dict[str, Member] = {}
    folders: set[str] = set()
    total = 0
    for count, info in enumerate(tar, start=1):
        if count > max_members:
            raise UnsafeArchiveError(f"archive has more than {max_members} members")
        name = safe_name(info.name)
        if info.isdir():
            if name is not None:
                if name in files:
                    raise UnsafeArchiveError(f"archive member {info.name!r} is both a file and a folder")
                folders.add(name)
            continue
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise UnsafeArchiveError(f"archive member {info.name!r} is {_kind(info)}; only plain files and "
                                     f"folders are allowed in a bundle")
        if name is None or name in files or name in folders:
            raise UnsafeArchiveError(f"archive member {info.name!r} appears twice (or is also a folder)")
        total += info.size
        if info.size < 0 or total > max_total_bytes:
            raise UnsafeArchiveError(f"archive holds more than {max_total_bytes} bytes of files "
                                     f"(limit reached at {info.name!r})")
        files[name] = Member(name, info.size, info)
    for name in files:
        parents = PurePosixPath(name).parents
        clash = next((str(p) for p in parents if str(p) in files), None)
        if clash is not None:
            raise UnsafeArchiveError(f"archive member {name!r} lies under {clash!r}, which is a file")
    return list(files.values())


def open_archive(path: str | Path) -> tarfile.TarFile:
    """Open a tar (plain or compressed) for reading; UnsafeArchiveError if it is not one."""
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise UnsafeArchiveError(f"{path}: not a readable tar archive: {exc}") from exc


def read_member(tar: tarfile.TarFile, member: Member, limit: int) -> bytes:
    """The content of a small member (a manifest, a signature)."""
    if member.size > limit:
        raise UnsafeArchiveError(f"archive member {member.name!r} is {member.size} bytes; at most {limit} allowed")
    stream = tar.extractfile(member.info)
    if stream is None:
        raise UnsafeArchiveError(f"archive member {member.name!r} cannot be read")
    with stream:
        return stream.read(member.size)


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


def extract_member(tar: tarfile.TarFile, member: Member, dest_root: Path) -> str:
    """Write one checked member under `dest_root` (a folder this process created, so it holds
    no links); return its sha256."""
    target = dest_root.joinpath(*member.name.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    stream = tar.extractfile(member.info)
    if stream is None:
        raise UnsafeArchiveError(f"archive member {member.name!r} cannot be read")
    with stream:
        sha, written = write_stream(stream, target, member.size)
    if written != member.size:
        raise UnsafeArchiveError(f"archive member {member.name!r}: {written} of {member.size} bytes "
                                 f"(truncated archive)")
    return sha


def safe_extract(archive: str | Path, dest: str | Path, *, max_total_bytes: int = MAX_TOTAL_BYTES,
                 max_members: int = MAX_MEMBERS) -> dict[str, str]:
    """Check the whole archive, then write its plain files into the empty folder `dest`;
    return name -> sha256. Nothing is written when a check fails."""
    dest = Path(dest)
    with open_archive(archive) as tar:
        members = scan(tar, max_total_bytes=max_total_bytes, max_members=max_members)
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise UnsafeArchiveError(f"{dest}: extraction needs an empty folder")
        hashes = {m.name: extract_member(tar, m, dest) for m in members}
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
