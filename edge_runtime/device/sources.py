"""Where a bundle to install comes from: a bundle directory or a .tar of one.

Both are read without following links; a tar is scanned by edgessl's own code (never
`tarfile.extract`), and every file written is checked against the signed manifest.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgessl.edge_runtime.bundle.manifest import MANIFEST, Manifest
from edgessl.edge_runtime.bundle.safe_extract import Archive, Member, extract_member, write_stream
from edgessl.edge_runtime.bundle.signing import SIGNATURE
from edgessl.errors import BundleError

MAX_MANIFEST_BYTES = 8 << 20

# -- bundle sources: a directory or a tar ---------------------------------------------------


class Source:
    manifest_bytes: bytes
    signature: bytes | None

    def check_files(self, manifest: Manifest) -> None:
        """Refuse files that are missing (and, for archives, unlisted)."""

    def write_into(self, manifest: Manifest, dest: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _check_written(name: str, sha: str, size: int, manifest: Manifest) -> None:
    entry = manifest.files[name]
    if size != entry.bytes:
        raise BundleError(f"{name}: {size} bytes, the signed manifest says {entry.bytes} (corrupted or tampered with)")
    if sha != entry.sha256:
        raise BundleError(f"{name}: sha256 does not match the signed manifest (corrupted or tampered with)")


class _DirSource(Source):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.manifest_bytes = self._read_small(MANIFEST, MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise BundleError(f"{path}: not a bundle (no {MANIFEST})") from None
        try:
            self.signature = self._read_small(SIGNATURE, 1 << 16)
        except FileNotFoundError:
            self.signature = None

    def check_files(self, manifest: Manifest) -> None:
        """Only what the signed manifest lists may be in the folder: anything else (a stray
        `numpy.py`, say) could be picked up by what later runs there."""
        found = []
        for folder, dirs, files in os.walk(self.path):
            rel = Path(folder).relative_to(self.path)
            for name in [*files, *[d for d in dirs if os.path.islink(os.path.join(folder, d))]]:
                found.append((rel / name).as_posix())
        unlisted = sorted(set(found) - set(manifest.files) - {MANIFEST, SIGNATURE})
        if unlisted:
            raise BundleError(f"{self.path} holds files the signed manifest does not list: {', '.join(unlisted[:5])}"
                              f"{' ...' if len(unlisted) > 5 else ''}; a bundle folder holds only what it was signed "
                              "with")

    def _read_small(self, name: str, limit: int) -> bytes:
        fd = os.open(self.path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise BundleError(f"{self.path / name}: larger than {limit} bytes")
        return data

    def write_into(self, manifest: Manifest, dest: Path) -> None:
        for name, entry in manifest.files.items():
            src = self.path / name
            try:
                st = os.lstat(src)
            except FileNotFoundError:
                raise BundleError(f"{name}: listed in the manifest but missing from {self.path}") from None
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"{name}: not a plain file (links are not allowed in a bundle)")
            target = dest.joinpath(*name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            with os.fdopen(os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                sha, size = write_stream(f, target, entry.bytes)
            _check_written(name, sha, size, manifest)


class _TarSource(Source):
    def __init__(self, path: Path) -> None:
        self.tar = Archive(path)
        try:
            names = {m.name for m in self.tar.members}
            prefix = ""
            if MANIFEST not in names:
                tops = {n.split("/", 1)[0] for n in names}
                if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST}" in names:
                    prefix = next(iter(tops)) + "/"
                else:
                    raise BundleError(f"{path}: no {MANIFEST} at the top of the archive (or in its one top folder)")
            self.members: dict[str, Member] = {m.name.removeprefix(prefix): m for m in self.tar.members}
            self.manifest_bytes = self.tar.read(self.members[MANIFEST], MAX_MANIFEST_BYTES)
            sig = self.members.get(SIGNATURE)
            self.signature = self.tar.read(sig, 1 << 16) if sig else None
        except BaseException:
            self.tar.close()
            raise

    def check_files(self, manifest: Manifest) -> None:
        unlisted = sorted(set(self.members) - set(manifest.files) - {MANIFEST, SIGNATURE})
        if unlisted:
            raise BundleError(f"archive holds files the signed manifest does not list: {', '.join(unlisted[:5])}")
        missing = sorted(set(manifest.files) - set(self.members))
        if missing:
            raise BundleError(f"archive lacks files listed in the manifest: {', '.join(missing[:5])}")
        for name, entry in manifest.files.items():
            if self.members[name].size != entry.bytes:
                raise BundleError(f"{name}: {self.members[name].size} bytes in the archive, the signed manifest "
                                  f"says {entry.bytes} (corrupted or tampered with)")

    def write_into(self, manifest: Manifest, dest: Path) -> None:
        for name in manifest.files:
            member = self.members[name]  # written under its name without the archive's top folder
            _check_written(name, extract_member(self.tar, member, dest, name), member.size, manifest)

    def close(self) -> None:
        self.tar.close()


def open_source(bundle: Path) -> Source:
    if bundle.is_dir():
        return _DirSource(bundle)
    if bundle.is_file():
        return _TarSource(bundle)
    raise BundleError(f"{bundle}: no such bundle (give a bundle directory or a .tar of one)")

