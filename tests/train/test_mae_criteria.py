"""Issue 6's reconstruction criterion on generated videos, measured in the test itself:
pretraining drives the held-out masked loss well below the loss of predicting the mean."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vidshard.benchmarks.mae import MAEBenchConfig, held_out_loss, motion_clips, pattern_clips, pretrain
from vidshard.train.data import normalize
from vidshard.train.mae import build_mae, normalized_targets, patchify


@pytest.fixture
def one_thread():
    """One math thread: spinning thread pools fight on shared cores (as the train tests do)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pretraining_beats_predicting_the_mean(tmp_path: Path, one_thread: None) -> None:
    torch.manual_seed(0)
    cfg = MAEBenchConfig(recon_steps=150)  # mask ratio 0.9, the default
    clips = pattern_clips(tmp_path, ("testsrc2",), cfg)  # (N, C, T, H, W) uint8, overlapping clips
    held = torch.arange(len(clips)) % 4 == 1
    model = build_mae(cfg.vit(), cfg.mae(cfg.recon_mask_ratio))
    before, baseline = held_out_loss(model, clips[held])
    pretrain(model, clips[~held], cfg.recon_steps, cfg)
    after, _ = held_out_loss(model, clips[held])
    # Per-tubelet normalised targets: predicting their mean (zero) costs about their variance, 1.
    assert baseline == pytest.approx(1.0, abs=0.05)
    assert before > 0.9 * baseline  # an untrained decoder is no better than the mean
    assert after < 0.5 * baseline, (before, after, baseline)


def test_moving_square_tubelets_have_targets(tmp_path: Path, one_thread: None) -> None:
    """VideoMAE's per-tubelet normalised target is all zeros on a flat tubelet; the benchmark's moving
    square is checkered, so every tubelet lying wholly on it still has something to predict."""
    cfg = MAEBenchConfig()
    clips, _ = motion_clips(tmp_path, 1, 0, cfg, step=8)  # (N, C, T, H, W) uint8
    video = normalize(clips, torch.device("cpu"))
    inside = patchify(clips.float() / 255, 8, 2).amin(-1) > 0.3  # (N, tubelets): every pixel on the square
    targets = normalized_targets(video, 8, 2)  # (N, tubelets, L)
    assert inside.sum() >= 20, inside.sum()
    assert (targets[inside].abs().amax(-1) > 0.5).all(), targets[inside].abs().amax(-1).min()


@pytest.mark.slow
def test_mae_benchmark_both_criteria(one_thread: None) -> None:
    """The full benchmark, seed 0 (about 95 s): reconstruction well below the mean, and fine-tuning from the
    MAE encoder reaches the target accuracy in fewer steps than from scratch (same run, same data)."""
    from vidshard.benchmarks.mae import run_mae_bench

    result = run_mae_bench(MAEBenchConfig(), log=lambda *_: None)
    assert result["reconstruction"]["ratio_to_baseline"] < 0.5, result["reconstruction"]
    ft = result["finetune"]
    assert ft["steps_pretrained"] is not None, ft
    assert ft["steps_scratch"] is None or ft["steps_pretrained"] < ft["steps_scratch"], ft
