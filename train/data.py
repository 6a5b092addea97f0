"""Pretraining data: image folders, videos (frames or clips) and WebDataset-style `.tar` shards;
labelled folders for evaluation.

Images are decoded with OpenCV, resized so the shorter side is `size` and centre-cropped to
size x size (the same rule as the device's `shorter_side_crop`), and returned as uint8 CHW
RGB tensors; augmentation happens later, on whole batches. Every dataset yields
(tensor or None, label, name): unreadable images, broken videos and corrupt shard members
are counted, reported and skipped, never fatal.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
SHARD_EXTENSIONS = (".tar", ".tar.gz", ".tgz")

DataKind = Literal["auto", "images", "video", "shards"]
Item = tuple[torch.Tensor | None, int, str]


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    return files


def resize_crop(img: np.ndarray, size: int) -> np.ndarray:
    """BGR HWC -> RGB CHW uint8: shorter side to `size`, centre crop."""
    h, w = img.shape[:2]
    if (h, w) != (size, size):
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        y, x = (nh - size) // 2, (nw - size) // 2
        img = img[y:y + size, x:x + size]
    return np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))


def decode_rgb(data: bytes | np.ndarray, size: int) -> np.ndarray | None:
    """Decode an encoded image, resize and crop. None if it cannot be decoded."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    return None if img is None else resize_crop(img, size)


def load_rgb(path: Path, size: int) -> np.ndarray | None:
    """Decode, resize the shorter side to `size`, centre-crop. None if the file is unreadable."""
    return decode_rgb(np.fromfile(path, dtype=np.uint8), size)


class ImageFolder(Dataset):
    """Every image under `root` (recursive). Labels are the first folder level, if wanted."""

    def __init__(self, root: str | Path, size: int) -> None:
        self.root = Path(root)
        self.size = size
        self.files = list_images(self.root)
        self.class_names = sorted({p.relative_to(self.root).parts[0] for p in self.files if p.parent != self.root})
        index = {c: i for i, c in enumerate(self.class_names)}
        self.labels = [index.get(p.relative_to(self.root).parts[0], -1) for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        img = load_rgb(self.files[i], self.size)
        return (None if img is None else torch.from_numpy(img)), self.labels[i], str(self.files[i])


def collate(items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the readable images; return the paths of unreadable ones so the caller can report them."""
    good = [(img, label) for img, label, _ in items if img is not None]
    bad = [path for img, _, path in items if img is None]
    if not good:
        return torch.empty(0, 3, 0, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad


# ---------------------------------------------------------------- video

def list_videos(root: str | Path) -> list[Path]:
    """A video file, or every video under a folder (recursive)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: video file or folder not found")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no videos ({', '.join(sorted(VIDEO_EXTENSIONS))}) found")
    return files


def decode_video(path: Path, size: int, stride: int) -> np.ndarray | None:
    """Every `stride`-th frame of a video, resized and cropped: (F, 3, size, size) uint8, or None
    when OpenCV cannot open it or decode a single frame. A video that breaks off midway keeps
    the frames before the break (and is reported)."""
    cap = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        if not cap.isOpened():
            return None
        expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if i % stride == 0:
                frames.append(resize_crop(frame, size))
            i += 1
    finally:
        cap.release()
    if not frames:
        return None
    if expected > 0 and i < expected * 0.9:
        log.warning("%s: decoding stopped after %d of %d frames (truncated or corrupt); using those", path,
                    i, expected)
    return np.stack(frames)


class VideoFrames(Dataset):
    """Frames (clip_length 1) or clips (N, T, C, H, W) of every `stride`-th frame of the videos
    under `root`. Videos are decoded once, at `size`, and held in memory (size 32: 3 KB a frame);
    for corpora larger than memory, write frames to `.tar` shards. Clips do not overlap:
    clip k of a video holds sampled frames [k*T, (k+1)*T)."""

    def __init__(self, root: str | Path, size: int, stride: int = 1, clip_length: int = 1) -> None:
        if stride < 1 or clip_length < 1:
            raise ValueError(f"stride and clip_length must be >= 1, got {stride} and {clip_length}")
        self.root, self.size, self.stride, self.clip_length = Path(root), size, stride, clip_length
        self.videos: list[Path] = []
        self.frames: list[torch.Tensor] = []
        self.broken: list[str] = []
        for path in list_videos(self.root):
            data = decode_video(path, size, stride)
            if data is None:
                log.warning("skipping broken video %s (OpenCV cannot decode it)", path)
                self.broken.append(str(path))
                continue
            self.videos.append(path)
            self.frames.append(torch.from_numpy(data))
        if self.broken:
            log.warning("%d broken videos skipped", len(self.broken))
        self.index = [(v, k) for v, f in enumerate(self.frames) for k in range(len(f) // clip_length)]
        if not self.index:
            raise FileNotFoundError(f"{self.root}: no clip of {clip_length} frames (stride {stride}) in "
                                    f"{len(self.videos)} readable videos ({len(self.broken)} broken)")
        self.labels = [-1] * len(self.index)
        log.info("%d videos, %d frames sampled (stride %d), %d %s", len(self.videos),
                 sum(len(f) for f in self.frames), stride, len(self.index),
                 "frames" if clip_length == 1 else f"clips of {clip_length}")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Item:
        v, k = self.index[i]
        t = self.clip_length
        clip = self.frames[v][k * t:(k + 1) * t]
        name = f"{self.videos[v]}#{k * t * self.stride}"
        return (clip[0] if t == 1 else clip), -1, name


# ---------------------------------------------------------------- WebDataset-style shards

def detect_kind(spec: str) -> Literal["images", "video", "shards"]:
    from edgessl.train.shards import is_shard_spec

    if is_shard_spec(spec):
        return "shards"
    p = Path(spec)
    if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
        return "video"
    if p.is_dir():
        has_images = any(q.suffix.lower() in IMAGE_EXTENSIONS for q in p.rglob("*"))
        has_videos = any(q.suffix.lower() in VIDEO_EXTENSIONS for q in p.rglob("*"))
        if has_videos and not has_images:
            return "video"
        return "images"
    raise FileNotFoundError(f"{spec}: no image folder, video, or .tar shards there")


def build_dataset(spec: str, size: int, kind: DataKind = "auto", *, clip_length: int = 1,
                  video_stride: int = 1, seed: int = 0) -> Dataset | IterableDataset:
    """The pretraining dataset for `spec`; clip_length > 1 asks for clips (video only)."""
    kind = detect_kind(spec) if kind == "auto" else kind
    if clip_length > 1 and kind != "video":
        raise ValueError(f"{spec}: this method trains on clips of {clip_length} frames and needs videos "
                         f"(a video file or a folder of {', '.join(sorted(VIDEO_EXTENSIONS))}), got {kind}")
    if kind == "video":
        return VideoFrames(spec, size, stride=video_stride, clip_length=clip_length)
    if kind == "shards":
        from edgessl.train.shards import TarShards

        return TarShards(spec, size, seed=seed)
    return ImageFolder(spec, size)


def cache_dir() -> Path:
    """Where decoded image caches live: $EDGESSL_CACHE, else ~/.cache/edgessl."""
    import os

    return Path(os.environ.get("EDGESSL_CACHE") or Path.home() / ".cache" / "edgessl")


class CachedImages(Dataset):
    """An ImageFolder decoded and resized once into a (N, 3, S, S) uint8 `.npy` memory map.

    JPEG decoding every image every epoch is pure overhead on a CPU that also trains; the map
    is 3 KB an image at 32x32 (150 MB for CIFAR-10's 50,000), shared by every run on the same
    files (the key covers the folder, the size, and each file's name, size and mtime), and a
    batch is one fancy-index copy instead of N Python calls. Unreadable files are reported
    once, when the map is built, and left out."""

    def __init__(self, folder: ImageFolder, root: Path | None = None) -> None:
        import hashlib
        import json

        self.root, self.size = folder.root, folder.size
        h = hashlib.sha1(f"{folder.root.resolve()}|{folder.size}".encode())
        for p in folder.files:
            st = p.stat()
            h.update(f"|{p.relative_to(folder.root)}:{st.st_size}:{st.st_mtime_ns}".encode())
        base = (root or cache_dir()) / f"images-{folder.size}px-{h.hexdigest()[:16]}"
        npy, meta = base.with_suffix(".npy"), base.with_suffix(".json")
        if not (npy.is_file() and meta.is_file()):
            self._build(folder, npy, meta)
        info = json.loads(meta.read_text())
        self.array = np.load(npy, mmap_mode="r")
        self.valid = np.asarray(info["valid"], dtype=np.int64)
        if len(self.valid) == 0:
            raise FileNotFoundError(f"{folder.root}: none of the {len(folder.files)} images is readable")
        self.files = [folder.files[i] for i in self.valid]
        self.labels = [folder.labels[i] for i in self.valid]
        self.class_names = folder.class_names
        self.path = npy

    @staticmethod
    def _build(folder: ImageFolder, npy: Path, meta: Path) -> None:
        import json
        import os

        npy.parent.mkdir(parents=True, exist_ok=True)
        tmp = npy.with_name(f"{npy.stem}.{os.getpid()}.tmp.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(folder.files), 3, folder.size, folder.size))
        valid: list[int] = []
        for i, path in enumerate(folder.files):
            img = load_rgb(path, folder.size)
            if img is None:
                log.warning("skipping unreadable image %s", path)
                continue
            arr[i] = img
            valid.append(i)
        arr.flush()
        del arr
        log.info("decoded %d images (%d unreadable) once into %s", len(valid), len(folder.files) - len(valid), npy)
        os.replace(tmp, npy)  # atomic: a concurrent run sees the whole map or none
        meta_tmp = meta.with_name(f"{meta.stem}.{os.getpid()}.tmp")
        meta_tmp.write_text(json.dumps({"root": str(folder.root), "size": folder.size, "valid": valid}))
        os.replace(meta_tmp, meta)

    def __len__(self) -> int:
        return len(self.valid)

    def __getitem__(self, i: int) -> Item:
        return torch.from_numpy(np.array(self.array[self.valid[i]])), self.labels[i], str(self.files[i])

    def get_batch(self, indices: list[int]) -> torch.Tensor:
        """(len(indices), 3, S, S) uint8, one gather from the map."""
        rows = self.valid[np.asarray(indices, dtype=np.int64)]
        return torch.from_numpy(self.array[rows])
