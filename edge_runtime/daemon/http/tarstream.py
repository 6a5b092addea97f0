"""A tar archive written as it is sent: plain regular files, uncompressed (POSIX ustar).

`members` turns (name, bytes, mtime) into the archive's bytes one member at a time, so an
archive of thousands of crops is never held in memory whole; the end is two zero blocks, padded
to tar's 10240-byte record like `tarfile` and GNU tar write it. Names are used exactly as given
(no folders are added, no links are ever written); a name that ustar cannot hold is an error.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240


def member(name: str, data: bytes, mtime: float) -> bytes:
    """One regular file: its header, its bytes, padding to the next block."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = len(data), int(mtime), 0o644, tarfile.REGTYPE
    header = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
    return header + data + b"\0" * (-len(data) % BLOCK)


def members(files: Iterable[tuple[str, bytes, float]]) -> Iterator[bytes]:
    """The archive of `files` ((name, bytes, mtime), consumed lazily), member by member, then its end."""
    written = 0
    for name, data, mtime in files:
        chunk = member(name, data, mtime)
        written += len(chunk)
        yield chunk
    end = 2 * BLOCK
    yield b"\0" * (end + (-(written + end) % RECORD))
