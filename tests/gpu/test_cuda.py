"""What only a GPU can check: flash-attn against SDPA in bf16, bf16 autocast + fused AdamW + compile
training, resume on CUDA, gradient checkpointing's memory, two NCCL ranks. Run with ``make test-gpu``."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from vidshard.train import model as M
from vidshard.train.checkpoint import latest_checkpoint, load_checkpoint
from vidshard.train.config import TrainConfig
from vidshard.train.loop import train, train_step
from vidshard.train.model import PRESETS, VideoViT, ViTConfig
from vidshard.train.objectives import get_objective
from vidshard.train.optim import build_optimizer
from vidshard.train.prefetch import device_batch

CLIP = dict(frames=4, stride=2, size=32, crop_scale=(0.5, 1.0), flip=False, workers=0, progress=False,
            model="vit-t", batch_size=4)


def _flash_or_skip() -> None:
    if not M.flash_attn_usable():
        pytest.skip(f"flash-attn is not usable here: {M.flash_attn_problem()}")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_flash_and_sdpa_agree_forward_and_backward_in_bf16(preset: str, cuda_device: torch.device) -> None:
    _flash_or_skip()
    p = PRESETS[preset]
    hd = p["dim"] // p["heads"]
    g = torch.Generator(cuda_device).manual_seed(0)
    q, k, v = (torch.randn(2, p["heads"], 392, hd, device=cuda_device, generator=g, dtype=torch.bfloat16)
               .requires_grad_() for _ in range(3))  # 392 tokens: 8x224 clip at 16x16x2 tubelets is 1568
    grad_out = torch.randn_like(q)
    results = []
    for impl in ("flash", "sdpa"):
        out = M.attention(q, k, v, impl)
        assert M.pick_attention(q, impl) == impl
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
        results.append((out.float(), [gr.float() for gr in grads]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=2e-2, rtol=2e-2)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)


def test_flash_in_fp32_runs_in_bf16_and_matches_sdpa(cuda_device: torch.device) -> None:
    _flash_or_skip()
    q, k, v = (torch.randn(2, 3, 128, 64, device=cuda_device) for _ in range(3))
    out = M.attention(q, k, v, "flash")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("objective", ["supervised", "mae"])
def test_bf16_fused_adamw_and_compile_lower_the_loss(objective: str, cuda_device: torch.device) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(data="(gpu test)", objective=objective, frames=8, size=64, decoder_dim=64,
                      decoder_depth=1, compile=True)
    obj = get_objective(objective)
    model = obj.build_model(cfg, 4).to(cuda_device)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0, device=cuda_device)
    assert opt.defaults["fused"] is True
    compiled = torch.compile(model)
    raw = {"video": torch.randint(0, 256, (4, 3, 8, 64, 64), dtype=torch.uint8).pin_memory(),
           "label": torch.arange(4), "valid": torch.ones(4, dtype=torch.bool)}
    losses = []
    for _ in range(15):  # the same batch: the loss must fall
        m = train_step(compiled, obj, device_batch(raw, cuda_device), opt, lr=1e-3, clip_grad=1.0, amp=True)
        losses.append(m["loss"])
    losses = torch.stack(losses).tolist()
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.8 * losses[0], losses


def test_resume_on_cuda_reaches_the_uninterrupted_weights(tiny_shardset: Path, tmp_path: Path) -> None:
    base = TrainConfig(data=str(tiny_shardset), out=str(tmp_path / "full"), steps=6, lr=1e-3, warmup_steps=1,
                       drop_path=0.1, log_every=1, ckpt_every=100, device="cuda", **CLIP)
    train(base)
    cut = replace(base, out=str(tmp_path / "cut"), stop_after=3)
    assert train(cut).steps == 3
    assert train(replace(cut, stop_after=None, resume=True)).steps == 6
    a = load_checkpoint(latest_checkpoint(tmp_path / "full"))["model"]
    b = load_checkpoint(latest_checkpoint(tmp_path / "cut"))["model"]
    for k in a:  # bf16 autocast: kernels may differ run to run in the last bits
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-3, msg=k)


def test_grad_checkpointing_same_gradients_less_memory(cuda_device: torch.device) -> None:
    vit = ViTConfig.from_preset("vit-s", frames=8, img_size=112, num_classes=10)
    x = torch.randn(4, 3, 8, 112, 112, device=cuda_device)
    grads, peaks = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = VideoViT(vit.with_(grad_checkpointing=ckpt)).to(cuda_device).train()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(cuda_device)
        base = torch.cuda.memory_allocated(cuda_device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x).float().square().mean().backward()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated(cuda_device) - base)
        grads.append({n: p.grad.float().clone() for n, p in model.named_parameters()})
        del model
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-2, rtol=1e-2, msg=n)
    assert peaks[1] < 0.7 * peaks[0], peaks


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs for 2 NCCL ranks")
def test_two_nccl_ranks_same_weights_other_masks(tiny_shardset: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "test_ranks", Path(__file__).parents[1] / "train" / "test_ranks.py")
    ranks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ranks)
    ranks.run_two_ranks(tiny_shardset, tmp_path, device="cuda")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for k in r0["init"]:
        assert torch.equal(r0["after_2_steps"][k], r1["after_2_steps"][k]), k
    assert all(not torch.equal(a, b) for a, b in zip(r0["masks"], r1["masks"], strict=True))
    assert r0["error"] == r1["error"] and r0["error"].startswith("step 3:")
