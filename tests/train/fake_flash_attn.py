"""A stand-in for the ``flash_attn`` package (2.8) that refuses inputs exactly where the real one does.

flash-attn's ``mha_fwd`` (csrc/flash_attn/flash_api.cpp) checks, in this order: the GPU's compute
capability (8.0 or newer: "FlashAttention only supports Ampere GPUs or newer."), the dtype ("FlashAttention
only support fp16 and bf16 data type"), the device of q, k, v ("q must be on CUDA"), a contiguous last
dimension, and the head size (at most 256, a multiple of 8). Inside those limits this fake computes
attention with SDPA in float32 and returns the input dtype; it counts its calls.

Install it with :func:`install` (a module in ``sys.modules``); "CUDA tensors" on a CPU-only machine are
simulated by patching ``torch.Tensor.is_cuda`` and ``torch.cuda.get_device_capability``.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch
import torch.nn.functional as F


def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                    softmax_scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """q, k, v: (B, N, H, hd) -> (B, N, H, hd), as flash-attn's."""
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise RuntimeError("query and key must have the same dtype")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not t.is_cuda:
            raise RuntimeError(f"{name} must be on CUDA")
        if t.stride(-1) != 1:
            raise RuntimeError("Input tensor must have contiguous last dimension")
    hd = q.shape[-1]
    if hd > 256:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256")
    if hd % 8:
        raise RuntimeError("query, key, value, and out_ must have a head_size that is a multiple of 8")
    CALLS.append((tuple(q.shape), q.dtype))
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2).float() for t in (q, k, v)))  # (B, H, N, hd)
    return out.transpose(1, 2).to(q.dtype)


CALLS: list[tuple[tuple[int, ...], torch.dtype]] = []


def install(monkeypatch: pytest.MonkeyPatch) -> list:
    """Put the fake into ``sys.modules`` and forget the model's earlier decision; returns the call log."""
    from vidshard.train import model as M

    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)  # importlib.util.find_spec finds it
    module.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    monkeypatch.setattr(M, "_flash_usable", None, raising=False)
    CALLS.clear()
    return CALLS


def pretend_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int] = (8, 0)) -> None:
    """CUDA "available" with a GPU of ``capability``, and every tensor reporting ``is_cuda``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
