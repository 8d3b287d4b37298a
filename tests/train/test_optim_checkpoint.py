"""The lr schedule and parameter groups (pure functions, invariants) and checkpoint round trips."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from vidshard.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_encoder,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vidshard.train.model import VideoViT, ViTConfig
from vidshard.train.optim import build_optimizer, layer_id, lr_at, param_groups

TINY = dict(dim=48, depth=3, heads=3, patch_size=8, frames=4, img_size=32)


def test_lr_schedule_warms_up_then_decays_to_min() -> None:
    kw = dict(total=100, base_lr=1.0, warmup=10, min_lr=0.01)
    lrs = [lr_at(s, **kw) for s in range(100)]
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))  # monotone after warm-up
    assert lr_at(100, **kw) == pytest.approx(0.01) and lr_at(500, **kw) == pytest.approx(0.01)
    assert lr_at(55, **kw) == pytest.approx(0.01 + 0.99 * 0.5)  # half way through the cosine
    assert lr_at(0, total=10, base_lr=1.0, warmup=0) == 1.0


def test_param_groups_cover_every_parameter_once_with_layer_decay() -> None:
    model = VideoViT(ViTConfig(**TINY, num_classes=4, pool="cls"))
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["head.weight"]["lr_scale"] == 1.0 and by_name["head.weight"]["weight_decay"] == 0.05
    assert by_name["blocks.2.mlp.fc1.weight"]["lr_scale"] == 0.5
    assert by_name["blocks.0.attn.qkv.weight"]["lr_scale"] == 0.125
    assert by_name["patch_embed.weight"]["lr_scale"] == 0.0625
    for nd in ("blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "cls_token", "head.bias"):
        assert by_name[nd]["weight_decay"] == 0.0
    assert layer_id("encoder.blocks.1.attn.qkv.weight", 3) == 2
    assert layer_id("decoder_blocks.0.attn.qkv.weight", 3) == 4
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    assert {g["lr"] for g in opt.param_groups} == {1e-3, 5e-4, 2.5e-4, 1.25e-4, 6.25e-5}


def test_checkpoint_round_trip_is_weights_only_and_atomic(tmp_path: Path) -> None:
    model = VideoViT(ViTConfig(**TINY, num_classes=4))
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state = {"model": model.state_dict(), "step": 7, "rng": rng_state(), "config": {"model": "vit-t"}}
    for step in (5, 7, 9):
        save_checkpoint(tmp_path / "checkpoints" / f"step-{step:08d}.pt", state, keep=2)
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == [
        "step-00000007.pt", "step-00000009.pt"]
    assert latest_checkpoint(tmp_path).name == "step-00000009.pt"
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    ckpt = load_checkpoint(tmp_path)  # a run folder gives its newest checkpoint
    set_rng_state(ckpt["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    assert ckpt["step"] == 7 and torch.equal(ckpt["model"]["head.weight"], model.head.weight)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")


def test_load_encoder_from_an_mae_style_checkpoint(tmp_path: Path) -> None:
    src = VideoViT(ViTConfig(**TINY))
    state = {f"encoder.{k}": v for k, v in src.state_dict().items()}
    state["decoder_embed.weight"] = torch.zeros(3, 3)
    state["mask_token"] = torch.zeros(1, 1, 48)
    save_checkpoint(tmp_path / "mae.pt", {"model": state})
    dst = VideoViT(ViTConfig(**TINY, num_classes=6, pool="cls"))
    fresh = load_encoder(dst, tmp_path / "mae.pt")
    assert sorted(fresh) == ["cls_token", "head.bias", "head.weight"]
    assert torch.equal(dst.blocks[2].mlp.fc2.weight, src.blocks[2].mlp.fc2.weight)
    wrong = VideoViT(ViTConfig(**{**TINY, "dim": 96}, num_classes=6))
    with pytest.raises(ValueError, match="same --model preset"):
        load_encoder(wrong, tmp_path / "mae.pt")


def test_eval_json_goes_to_the_run_folder(tmp_path: Path) -> None:
    from vidshard.train.evaluate import run_folder

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert run_folder(tmp_path / "run") == tmp_path / "run"
    assert run_folder(tmp_path / "run" / "checkpoints" / "step-00000003.pt") == tmp_path / "run"
    assert run_folder(tmp_path / "model.pt") == tmp_path
