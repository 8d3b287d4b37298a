"""The video ViT: tubelet patch embedding, space-time positional embedding, joint
space-time attention over all tokens, pre-norm blocks, mean-pooled or class-token head.

Reads top to bottom: attention kernel picker, attention, MLP, DropPath, block,
positional embeddings, config and presets, the model. Nothing here probes the GPU
at import time; DDP and ``torch.compile`` wrapping live in ``train/distributed.py``
and ``train/loop.py``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

ATTN_IMPLS = ("auto", "flash", "sdpa", "reference")
log = logging.getLogger(__name__)


HALF = (torch.float16, torch.bfloat16)
"""The dtypes flash-attn computes in."""


def flash_attn_problem() -> str | None:
    """Why flash-attn cannot run on this machine, or None when it can.

    It needs a CUDA device of compute capability 8.0 or newer (Ampere; V100 and T4 are refused at the
    first call) and a package that imports: a build made for another torch fails at import with an
    undefined symbol, so the import is tried here, guarded, instead of at the first forward.
    """
    if not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 0):
        return f"the GPU has compute capability {major}.{minor}; flash-attn needs 8.0 (Ampere) or newer"
    try:
        from flash_attn import flash_attn_func  # noqa: F401  (optional dependency)
    except Exception as e:  # noqa: BLE001 (ImportError, OSError of a mismatched build, ...)
        return f"flash-attn does not import ({type(e).__name__}: {e})"
    return None


_flash_usable: bool | None = None  # decided at the first call (a plain global: torch.compile guards on it)


def flash_attn_usable() -> bool:
    """:func:`flash_attn_problem` decided once per process (never at import time) and logged."""
    global _flash_usable
    if _flash_usable is None:
        problem = flash_attn_problem()
        log.info("attention kernel for auto: %s", "flash-attn" if problem is None else f"SDPA ({problem})")
        _flash_usable = problem is None
    return _flash_usable


def flash_fits(q: Tensor) -> bool:
    """Whether flash-attn takes ``q``'s device and head size: CUDA, head dim <= 256 and a multiple of 8."""
    hd = q.shape[-1]
    return q.is_cuda and hd <= 256 and hd % 8 == 0


def pick_attention(q: Tensor, impl: str = "auto") -> str:
    """The one place that chooses the attention kernel for ``q`` ``(B, H, N, hd)``.

    - ``auto``: ``flash`` (flash-attn's kernel) for a CUDA tensor in fp16/bf16 that flash-attn takes, when
      :func:`flash_attn_usable`; else ``sdpa`` (PyTorch's ``scaled_dot_product_attention``, which on CUDA
      has its own flash and memory-efficient kernels and is exact in fp32).
    - ``flash``: flash-attn wherever it can run (fp32 is computed in bf16, see :func:`attention`); off
      CUDA (``eval --device cpu``, the reconstruction sheet) or for a head size it refuses, ``sdpa``.
    - ``sdpa``, ``reference``: as asked.
    """
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attention impl {impl!r} is not one of {ATTN_IMPLS}")
    if impl in ("sdpa", "reference"):
        return impl
    if not flash_fits(q):
        return "sdpa"
    if impl == "flash":
        return "flash"
    return "flash" if q.dtype in HALF and flash_attn_usable() else "sdpa"


def reference_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain softmax(q k^T / sqrt(d)) v; q, k, v: (B, H, N, hd) -> (B, H, N, hd). For tests and benches."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, N, N)
    return att.softmax(dim=-1) @ v


def flash_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """flash-attn on CUDA; fp32 inputs (no autocast, e.g. MAE validation) are computed in bf16 and the
    output cast back. q, k, v: (B, H, N, hd) -> (B, H, N, hd)."""
    if not flash_attn_usable():
        raise RuntimeError(f"attn_impl 'flash' asked for, but {flash_attn_problem()}; "
                           "use --attn-impl auto or sdpa")
    from flash_attn import flash_attn_func  # optional dependency, imported only on use

    dtype = q.dtype
    if dtype not in HALF:
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, N, H, hd)
    return out.transpose(1, 2).to(dtype)


def attention(q: Tensor, k: Tensor, v: Tensor, impl: str = "auto") -> Tensor:
    """Attention with the kernel from :func:`pick_attention`; q, k, v: (B, H, N, hd) -> (B, H, N, hd)."""
    kind = pick_attention(q, impl)
    if kind == "flash":
        return flash_attention(q, k, v)
    if kind == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    return reference_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (joint space-time)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, impl: str = "auto") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.impl = impl
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)  # (B, N, 3, H, hd)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        out = attention(qkv[0], qkv[1], qkv[2], self.impl)  # (B, H, N, hd)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: two residual lines."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 qkv_bias: bool = True, attn_impl: str = "auto") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias, attn_impl)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """(N,) positions -> (N, dim) [sin | cos] with the transformer frequencies; ``dim`` even."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double()[:, None] * omega[None, :]  # (N, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_pos_embed_3d(dim: int, grid: tuple[int, int, int]) -> Tensor:
    """Fixed 3-D sin-cos embedding for a (T', H', W') token grid -> (T'*H'*W', dim), t-major order.

    A quarter of the channels (rounded to even) encode time, the rest height and
    width in equal even parts. ``dim`` must be even.
    """
    if dim % 2:
        raise ValueError(f"sin-cos positional embedding needs an even dim, got {dim}")
    t, h, w = grid
    dt = (dim // 4) // 2 * 2
    dh = (dim - dt) // 2 // 2 * 2
    dw = dim - dt - dh
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([_sincos_1d(dt, tt.flatten()), _sincos_1d(dh, hh.flatten()),
                      _sincos_1d(dw, ww.flatten())], dim=1)


sincos_pos_embed = sincos_pos_embed_3d


PRESETS: dict[str, dict[str, Any]] = {
    "vit-t": {"dim": 192, "depth": 12, "heads": 3},
    # ViT-T's width with 4 blocks, for CPU runs from scratch on small sets (tests): a step costs about
    # 0.6x vit-t's, and in similar CPU time it learns more than vit-t (docs/clip.md, evidence).
    "vit-t4": {"dim": 192, "depth": 4, "heads": 3},
    "vit-s": {"dim": 384, "depth": 12, "heads": 6},
    "vit-b": {"dim": 768, "depth": 12, "heads": 12},
    "vit-l": {"dim": 1024, "depth": 24, "heads": 16},
}


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Shape and options of a :class:`VideoViT`."""

    dim: int = 192
    """Token width."""
    depth: int = 12
    """Number of transformer blocks."""
    heads: int = 3
    """Attention heads (``dim`` must divide by it)."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of ``dim``."""
    patch_size: int = 16
    """Spatial side of a tubelet in pixels."""
    tubelet: int = 2
    """Frames per tubelet."""
    frames: int = 16
    """Frames per clip the model is built for (sets the learned positional embedding)."""
    img_size: int = 224
    """Square crop side the model is built for."""
    in_chans: int = 3
    """Input channels (RGB)."""
    num_classes: int = 0
    """Classifier outputs; 0 gives no head (features only)."""
    pos_embed: str = "sincos"
    """``sincos`` (fixed 3-D sin-cos) or ``learned``."""
    pool: str = "mean"
    """``mean`` (average of all tokens) or ``cls`` (a class token)."""
    drop_path: float = 0.0
    """Stochastic depth at the last block; rises linearly from 0 at the first."""
    head_dropout: float = 0.0
    """Dropout before the classifier."""
    qkv_bias: bool = True
    """Bias in the q, k, v projection."""
    grad_checkpointing: bool = False
    """Recompute each block's activations in backward (saves memory, costs ~30% time)."""
    attn_impl: str = "auto"
    """Attention kernel: ``auto`` (flash-attn on CUDA fp16/bf16 when usable, else SDPA), ``flash``
    (SDPA off CUDA), ``sdpa``, ``reference``; see :func:`pick_attention`."""

    def __post_init__(self) -> None:
        if self.dim % self.heads or self.dim % 2:
            raise ValueError(f"dim {self.dim} must be even and divisible by heads {self.heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.frames % self.tubelet:
            raise ValueError(f"frames {self.frames} is not a multiple of tubelet {self.tubelet}")
        if self.pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {self.pos_embed!r}")
        if self.pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {self.pool!r}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ViTConfig:
        """``ViTConfig.from_preset("vit-b", frames=16, img_size=224, num_classes=400)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def grid(self, frames: int | None = None, size: int | None = None) -> tuple[int, int, int]:
        """Token grid (T', H', W') for a clip of ``frames`` x ``size`` x ``size``."""
        f, s = frames or self.frames, size or self.img_size
        return f // self.tubelet, s // self.patch_size, s // self.patch_size

    def with_(self, **changes: Any) -> ViTConfig:
        return replace(self, **changes)


class VideoViT(nn.Module):
    """Video ViT over (B, C, T, H, W) float clips."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        kernel = (cfg.tubelet, cfg.patch_size, cfg.patch_size)
        self.patch_embed = nn.Conv3d(cfg.in_chans, D, kernel_size=kernel, stride=kernel)
        n = math.prod(cfg.grid())
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, n, D))
        else:
            self.register_buffer("pos_embed", sincos_pos_embed_3d(D, cfg.grid())[None], persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.pool == "cls" else None
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(D, cfg.heads, cfg.mlp_ratio, r, cfg.qkv_bias, cfg.attn_impl) for r in rates)
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head_drop = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """Set every parameter: truncated normal (std 0.02) linears, xavier patch embed, unit norms."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer over the flattened tubelet
        nn.init.zeros_(self.patch_embed.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def set_attn_impl(self, impl: str) -> None:
        """Switch every block's attention kernel (``auto``/``flash``/``sdpa``/``reference``)."""
        if impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
        for blk in self.blocks:
            blk.attn.impl = impl

    def pos_embed_for(self, grid: tuple[int, int, int]) -> Tensor:
        """(1, N, D) positional embedding for a token grid; sin-cos adapts to other clip sizes."""
        if grid == self.cfg.grid():
            return self.pos_embed
        if self.cfg.pos_embed == "learned":
            raise ValueError(f"clip gives a token grid {grid}, but the learned positional embedding was "
                             f"built for {self.cfg.grid()}; use the model's frames/img_size")
        return sincos_pos_embed_3d(self.cfg.dim, grid)[None].to(self.pos_embed.device)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) float -> (B, N, D) tokens (tubelet embed + pos embed, no class token)."""
        x = self.patch_embed(x)  # (B, D, T', H', W')
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), t-major
        return x + self.pos_embed_for(grid).to(x.dtype)

    def forward_tokens(self, tokens: Tensor) -> Tensor:
        """(B, N', D) -> (B, N', D): the blocks and the final norm, for any subset of tokens."""
        x = tokens
        for blk in self.blocks:
            if self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.norm(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, N(+1), D): embed, class token (if ``pool='cls'``), blocks, norm."""
        tokens = self.embed(x)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.forward_tokens(tokens)

    def forward_head(self, feats: Tensor) -> Tensor:
        """(B, N(+1), D) -> (B, num_classes) (or (B, D) without a head): pool, dropout, linear."""
        pooled = feats[:, 0] if self.cfg.pool == "cls" else feats.mean(dim=1)  # (B, D)
        return self.head(self.head_drop(pooled))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) float, normalised -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))
