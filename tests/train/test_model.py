"""The video ViT: shapes, presets, the attention kernel picker, SDPA vs reference, init, checkpointing."""

from __future__ import annotations

import pytest
import torch
from vidshard.train import model as M
from vidshard.train.model import PRESETS, VideoViT, ViTConfig, sincos_pos_embed


def tiny(**kw) -> ViTConfig:
    base = dict(dim=48, depth=2, heads=3, patch_size=8, tubelet=2, frames=4, img_size=32, num_classes=5)
    return ViTConfig(**{**base, **kw})


def test_presets_have_standard_widths_and_depths() -> None:
    assert {k: (v["dim"], v["depth"], v["heads"]) for k, v in PRESETS.items()} == {
        "vit-t": (192, 12, 3), "vit-t4": (192, 4, 3), "vit-s": (384, 12, 6), "vit-b": (768, 12, 12),
        "vit-l": (1024, 24, 16)}
    cfg = ViTConfig.from_preset("vit-b", frames=16, img_size=224, num_classes=400)
    assert cfg.grid() == (8, 14, 14)
    n_params = sum(p.numel() for p in VideoViT(cfg).parameters())
    assert 86e6 < n_params < 88e6  # ViT-B/16 with a 2x16x16 tubelet and a 400-way head
    with pytest.raises(ValueError, match="unknown model preset"):
        ViTConfig.from_preset("vit-xxl")


@pytest.mark.parametrize("pool,pos", [("mean", "sincos"), ("cls", "learned")])
def test_forward_shapes(pool: str, pos: str) -> None:
    model = VideoViT(tiny(pool=pool, pos_embed=pos))
    x = torch.randn(2, 3, 4, 32, 32)
    tokens = model.embed(x)
    assert tokens.shape == (2, 2 * 4 * 4, 48)
    assert model.forward_tokens(tokens[:, :5]).shape == (2, 5, 48)  # any subset of tokens (MAE)
    feats = model.forward_features(x)
    assert feats.shape == (2, 32 + (pool == "cls"), 48)
    assert model(x).shape == (2, 5)
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("blocks.1.") for n in names)


def test_sincos_pos_embed_is_distinct_per_position() -> None:
    pe = sincos_pos_embed(192, (8, 14, 14))
    assert pe.shape == (8 * 14 * 14, 192)
    assert torch.unique(pe.round(decimals=5), dim=0).shape[0] == pe.shape[0]
    # A sin-cos model accepts another clip size; a learned one says what went wrong.
    assert VideoViT(tiny())(torch.randn(1, 3, 8, 48, 48)).shape == (1, 5)
    with pytest.raises(ValueError, match="learned positional embedding"):
        VideoViT(tiny(pos_embed="learned"))(torch.randn(1, 3, 8, 48, 48))


def test_sdpa_and_reference_agree_forward_and_backward() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    outs, grads = [], []
    for impl in ("sdpa", "reference"):
        out = M.attention(q, k, v, impl)
        g = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
        outs.append(out)
        grads.append(torch.autograd.grad(out, (q, k, v), g))
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_whole_model_agrees_between_kernels() -> None:
    torch.manual_seed(0)
    model = VideoViT(tiny())
    x = torch.randn(2, 3, 4, 32, 32)
    results = []
    for impl in ("sdpa", "reference"):
        model.set_attn_impl(impl)
        model.zero_grad()
        model(x).square().sum().backward()
        results.append((model(x).detach(), model.blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)


def test_pick_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    q = torch.zeros(1, 1, 4, 8)
    assert M.pick_attention(q) == "sdpa"
    assert M.pick_attention(q, "reference") == "reference"
    with pytest.raises(ValueError, match="not one of"):
        M.pick_attention(q, "xformers")
    # Pretend flash-attn is usable and q lives on CUDA: fp16/bf16 picks flash, fp32 stays on SDPA.
    monkeypatch.setattr(M, "_flash_usable", True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert M.pick_attention(q.half()) == "flash"
    assert M.pick_attention(q.bfloat16()) == "flash"
    assert M.pick_attention(q) == "sdpa"
    monkeypatch.setattr(M, "_flash_usable", False)
    assert M.pick_attention(q.half()) == "sdpa"


def test_init_weights_and_drop_path() -> None:
    model = VideoViT(tiny(drop_path=0.2, depth=3))
    assert [b.drop_path.p for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])
    assert model.blocks[0].norm1.weight.eq(1).all() and model.head.bias.eq(0).all()
    assert 0.015 < model.head.weight.std().item() < 0.025
    dp = M.DropPath(0.5).train()
    y = dp(torch.ones(1000, 2, 3))
    kept = y[:, 0, 0] > 0
    assert 350 < kept.sum() < 650 and torch.all(y[kept] == 2.0)  # whole samples dropped, rest rescaled
    assert torch.equal(dp.eval()(torch.ones(4, 2)), torch.ones(4, 2))


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    a = VideoViT(tiny())
    b = VideoViT(tiny(grad_checkpointing=True))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    for m in (a, b):
        m.train()
        m(x).sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=n)
