"""DDP on CPU (gloo): `torchrun -m edgessl pretrain` with 2 processes against 1 process.

BatchNorm: under DDP the loop converts BatchNorm to `GlobalBatchNorm` (statistics over the
batch of all processes; torch's SyncBatchNorm needs a GPU), SimCLR gathers the embeddings of
all processes for its negatives, and every process draws the augmentations of its rows of the
global batch. So 2 processes x 4 images take the same steps as 1 process x 8 images, up to
float rounding (E[x^2] - E[x]^2 vs two-pass variance, summation order).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from edgessl.synthetic import write_image_set
from edgessl.train.batches import EpochSampler
from edgessl.train.checkpoint import load_checkpoint
from edgessl.train.pretrain import PretrainConfig, pretrain


def records(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_epoch_sampler_shards_each_global_batch_by_rank():
    one = list(EpochSampler(20, seed=3, epoch=1, batch_size=8))
    parts = [list(EpochSampler(20, seed=3, epoch=1, batch_size=8, rank=r, world=2)) for r in range(2)]
    assert parts[0] == one[0:4] + one[8:12] and parts[1] == one[4:8] + one[12:16]
    resumed = [list(EpochSampler(20, seed=3, epoch=1, start=8, batch_size=8, rank=r, world=2)) for r in range(2)]
    assert resumed == [one[8:12], one[12:16]]


def test_two_processes_match_one_process(tmp_path):
    data = tmp_path / "images"
    write_image_set(data, per_class=8, size=24, seed=0)
    args = ["--data", str(data), "--image-size", "16", "--batch-size", "8", "--epochs", "0.6", "--threads", "1",
            "--checkpoint-every", "1", "--no-tensorboard", "--keep-checkpoints", "0",
            "--precision", "fp32"]  # bf16 (auto on CPUs with native bf16) rounds differently per split
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    # --standalone: a local rendezvous on a free port.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "edgessl", "pretrain", "--out", str(tmp_path / "two"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    pretrain(PretrainConfig(data=str(data), out=str(tmp_path / "one"), image_size=16, batch_size=8, epochs=0.6,
                            threads=1, checkpoint_every=1, tensorboard=False, keep_checkpoints=0, precision="fp32"))
    two, one = records(tmp_path / "two"), records(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    assert all(r["ranks_identical"] for r in two)  # checked at every checkpoint, across processes
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    sa = load_checkpoint(tmp_path / "one")["method_state"]
    sb = load_checkpoint(tmp_path / "two")["method_state"]
    assert sa.keys() == sb.keys()  # GlobalBatchNorm saves plain BatchNorm state
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-4, rtol=1e-4), k
