"""The attention kernel picker against a fake flash-attn that raises exactly where flash-attn 2.8 raises."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from vidshard.train import model as M
from vidshard.train.model import VideoViT, ViTConfig

from . import fake_flash_attn as fake

TINY = ViTConfig(dim=64, depth=1, heads=2, patch_size=8, tubelet=2, frames=4, img_size=16)


def _qkv(dtype: torch.dtype = torch.float32, hd: int = 32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 2, 8, hd, generator=g).to(dtype) for _ in range(3))  # (B, H, N, hd)


def test_the_fake_refuses_what_flash_attn_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake is only useful if it fails where the real kernel fails."""
    q, k, v = (t.transpose(1, 2) for t in _qkv(torch.bfloat16))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(RuntimeError, match="must be on CUDA"):  # real CPU tensors on an Ampere machine
        fake.flash_attn_func(q, k, v)
    fake.pretend_gpu(monkeypatch, (7, 5))
    with pytest.raises(RuntimeError, match="Ampere"):
        fake.flash_attn_func(q, k, v)
    fake.pretend_gpu(monkeypatch, (8, 0))
    with pytest.raises(RuntimeError, match="fp16 and bf16"):
        fake.flash_attn_func(q.float(), k.float(), v.float())
    for hd, msg in ((264, "at most 256"), (12, "multiple of 8")):
        q2, k2, v2 = (t.transpose(1, 2) for t in _qkv(torch.bfloat16, hd))
        with pytest.raises(RuntimeError, match=msg):
            fake.flash_attn_func(q2, k2, v2)
    assert fake.flash_attn_func(q, k, v).dtype == torch.bfloat16


def test_flash_asked_for_off_cuda_falls_back_to_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """``eval --device cpu`` or the reconstruction sheet with a model trained with ``--attn-impl flash``."""
    calls = fake.install(monkeypatch)
    torch.manual_seed(0)
    model = VideoViT(TINY.with_(attn_impl="flash")).eval()
    x = torch.randn(2, 3, 4, 16, 16)
    out = model(x)
    model.set_attn_impl("sdpa")
    torch.testing.assert_close(out, model(x))
    assert calls == []


def test_auto_on_an_ampere_gpu_uses_flash_for_half_and_sdpa_for_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake.install(monkeypatch)
    fake.pretend_gpu(monkeypatch, (8, 0))
    q, k, v = _qkv(torch.bfloat16)
    out = M.attention(q, k, v, "auto")
    assert len(calls) == 1 and out.dtype == torch.bfloat16 and out.shape == q.shape
    torch.testing.assert_close(out.float(), F.scaled_dot_product_attention(q.float(), k.float(), v.float()),
                               atol=2e-2, rtol=2e-2)
    q, k, v = _qkv(torch.float32)
    M.attention(q, k, v, "auto")  # fp32 without autocast (MAE validation): exact SDPA
    assert len(calls) == 1
    for hd in (12, 264):  # head sizes flash-attn refuses go to SDPA, also when flash is asked for
        M.attention(*_qkv(torch.bfloat16, hd), "flash")
    assert len(calls) == 1


def test_flash_in_fp32_on_cuda_runs_in_bf16_and_returns_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake.install(monkeypatch)
    fake.pretend_gpu(monkeypatch, (9, 0))
    q, k, v = _qkv(torch.float32)
    out = M.attention(q, k, v, "flash")
    assert calls == [((2, 8, 2, 32), torch.bfloat16)] and out.dtype == torch.float32
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=2e-2, rtol=2e-2)


def test_auto_on_an_older_gpu_stays_on_sdpa_and_flash_says_why(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    calls = fake.install(monkeypatch)
    fake.pretend_gpu(monkeypatch, (7, 5))  # T4
    with caplog.at_level(logging.INFO, logger="vidshard.train.model"):
        for _ in range(3):
            M.attention(*_qkv(torch.float16), "auto")
    assert calls == []
    decided = [r.getMessage() for r in caplog.records if "attention kernel" in r.getMessage()]
    assert len(decided) == 1 and "7.5" in decided[0]  # decided once, logged with the reason
    with pytest.raises(RuntimeError, match="compute capability 7.5.*--attn-impl auto or sdpa"):
        M.attention(*_qkv(torch.float16), "flash")


def test_a_flash_attn_build_that_does_not_import_is_not_picked(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """A wheel built for another torch is found by importlib but fails when imported."""
    pkg = tmp_path / "flash_attn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    monkeypatch.setattr(M, "_flash_usable", None, raising=False)
    fake.pretend_gpu(monkeypatch, (8, 0))
    assert "undefined symbol" in M.flash_attn_problem()
    q, k, v = _qkv(torch.bfloat16)
    torch.testing.assert_close(M.attention(q, k, v, "auto"), F.scaled_dot_product_attention(q, k, v))
