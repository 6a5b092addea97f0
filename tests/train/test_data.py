import io
import tarfile
from pathlib import Path

import pytest
import torch

from edgessl import synthetic
from edgessl.train.data import ImageFolder, VideoFrames, build_dataset, collate, detect_kind
from edgessl.train.shards import TarShards, count_shard, expand_shards, write_shards

SHARED_VIDEO = Path(__file__).resolve().parents[3] / "shared" / "data" / "video"


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    # 5 classes x 6 frames = 30 frames, 32x32
    synthetic.write_video(root / "a.mp4", seconds_per_class=0.6, fps=10, size=32, seed=1)
    (root / "sub").mkdir()
    synthetic.write_video(root / "sub" / "b.mp4", seconds_per_class=0.4, fps=10, size=32, seed=2)
    (root / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    synthetic.write_image_set(root, per_class=4, size=24, seed=0)
    return root


def test_video_frames_with_stride_and_broken_videos_skipped(videos):
    frames = VideoFrames(videos, size=16, stride=2)
    assert frames.broken == [str(videos / "broken.mp4")]
    assert len(frames) == 15 + 10  # every 2nd of 30 and 20 frames
    img, label, name = frames[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8 and label == -1 and name.endswith("a.mp4#0")
    assert frames[1][2].endswith("a.mp4#2")


def test_video_clips_for_clip_methods(videos):
    clips = VideoFrames(videos, size=16, stride=1, clip_length=4)
    assert len(clips) == 30 // 4 + 20 // 4
    batch, _, bad = collate([clips[i] for i in range(3)])
    assert batch.shape == (3, 4, 3, 16, 16) and not bad
    # consecutive frames of a clip are consecutive video frames
    assert torch.equal(clips[1][0][0], VideoFrames(videos, size=16)[4][0])


def test_kind_detection_and_clear_errors(videos, images, tmp_path):
    assert detect_kind(str(videos)) == "video"
    assert detect_kind(str(videos / "a.mp4")) == "video"
    assert detect_kind(str(images)) == "images"
    assert isinstance(build_dataset(str(images), 16), ImageFolder)
    with pytest.raises(ValueError, match="clips"):
        build_dataset(str(images), 16, clip_length=4)
    (tmp_path / "only_broken").mkdir()
    (tmp_path / "only_broken" / "x.mp4").write_bytes(b"junk")
    with pytest.raises(FileNotFoundError, match="1 broken"):
        VideoFrames(tmp_path / "only_broken", size=16)


@pytest.fixture(scope="module")
def shards(images, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    files = sorted(images.rglob("*.png"))  # 20 images
    paths = write_shards(files, str(root / "shard-{}.tar"), per_shard=7)  # 7 + 7 + 6
    with tarfile.open(paths[-1], "a") as tar:  # a corrupt image and a label, streamed like the rest
        for name, data in (("zzbad.jpg", b"not a jpeg"), ("zzbad.cls", b"3")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return root


def test_shard_specs_expand(shards):
    three = [shards / f"shard-{i:06d}.tar" for i in range(3)]
    assert expand_shards(str(shards)) == three
    assert expand_shards(str(shards / "shard-{000000..000002}.tar")) == three
    assert expand_shards(str(shards / "shard-*.tar")) == three
    assert expand_shards(f"{three[0]},{three[2]}") == [three[0], three[2]]
    assert [count_shard(p) for p in three] == [7, 7, 7]
    assert detect_kind(str(shards)) == "shards"


def test_shards_stream_without_unpacking_and_report_corrupt_members(shards):
    ds = TarShards(str(shards), size=16, seed=0, shuffle_buffer=0)
    assert len(ds) == 21
    it = iter(ds)
    items = [next(it) for _ in range(21)]  # one pass over every sample (the stream is endless)
    names = [name for _, _, name in items]
    assert len(set(names)) == 21
    bad = [(img, label, name) for img, label, name in items if img is None]
    assert len(bad) == 1 and bad[0][1] == 3 and bad[0][2].endswith(":zzbad")
    good = next(img for img, _, _ in items if img is not None)
    assert good.shape == (3, 16, 16) and good.dtype == torch.uint8


def test_shard_stream_is_shuffled_and_deterministic_per_epoch(shards):
    ds = TarShards(str(shards), size=16, seed=0, shuffle_buffer=8)

    def first(n: int) -> list[str]:
        it = iter(ds)
        return [next(it)[2] for _ in range(n)]

    a = first(42)
    assert len(set(a)) == 21 and a == first(42)
    ds.set_epoch(1)
    assert first(42) != a


def test_shards_are_split_between_processes(shards):
    ds = TarShards(str(shards), size=16)
    assert ds.samples_per_rank(2) == [14, 7]
    seen = []
    for rank in range(2):
        ds.set_epoch(0, rank, 2)
        it = iter(ds)
        seen.append({next(it)[2].split(":")[0] for _ in range(7)})
    assert not seen[0] & seen[1]
    with pytest.raises(ValueError, match="at least one"):
        ds.samples_per_rank(4)


@pytest.mark.data
@pytest.mark.skipif(not SHARED_VIDEO.is_dir(), reason="../shared/data/video not present")
def test_real_videos_decode():
    frames = VideoFrames(SHARED_VIDEO, size=32, stride=10)
    assert not frames.broken and len(frames.videos) >= 2
    assert len(frames) >= (250 + 120) // 10
    assert frames[0][0].float().std() > 5  # real content, not a blank frame
