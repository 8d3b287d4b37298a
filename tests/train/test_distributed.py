"""DistributedDataParallel on CPU: torchrun, gloo, 2 processes, uneven shards, must not hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vidshard.shards.schema import Manifest
from vidshard.train.checkpoint import load_checkpoint
from vidshard.train.distributed import DistInfo, mean_across, pick_device, setup
from vidshard.train.metrics import read_metrics


def test_torchrun_two_processes_with_uneven_shards(motion_train: Path, tmp_path: Path) -> None:
    counts = [s.samples for s in Manifest.load(motion_train).shards]
    assert len(set(counts)) > 1  # uneven shards
    vidshard = Path(sys.executable).parent / "vidshard"
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(vidshard), "train", str(motion_train), "--out", str(out), "--epochs", "2",
           "--batch-size", "16", "--frames", "4", "--stride", "2", "--size", "32", "--workers", "0",
           "--device", "cpu", "--log-every", "1", "--ckpt-every", "3", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 64 samples over 2 ranks at batch 16: 2 steps per epoch on each rank, 2 epochs.
    steps = [r["step"] for r in read_metrics(out) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4]  # one line per step: rank 0 logs alone
    assert all(r["clips_per_s"] > 0 for r in read_metrics(out))
    ckpt = load_checkpoint(out)
    assert ckpt["step"] == 4 and len(ckpt["rng"]) == 2  # both ranks' RNG states kept for --resume
    assert "4 steps" in proc.stdout


def test_setup_alone_is_a_world_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = setup("cpu")
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
    assert mean_across({"loss": 2.0}, info) == {"loss": 2.0}
    assert pick_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="--device cpu"):
            pick_device("cuda")
    assert DistInfo(1, 2, 1, torch.device("cpu")).is_main is False
