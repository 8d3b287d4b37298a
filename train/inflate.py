"""Start the video tower from image-CLIP weights: CLIP's image layout of the video ViT, and inflation.

``--vit-arch clip`` builds :class:`CLIPVideoViT`: the video ViT with CLIP's image-tower details
(a LayerNorm before the blocks, QuickGELU MLPs, LayerNorm eps 1e-5, a class token, learned positions).
:func:`inflate_image_clip` maps the weights of ``transformers``' ``CLIPVisionModel`` (a state dict
file, a safetensors file, or a ``save_pretrained`` folder) onto it, as AVION starts from CLIP:

- the 2D patch embedding ``(D, 3, P, P)`` becomes the ``(D, 3, tubelet, P, P)`` tubelet embedding with
  the weight split evenly over time, so a static clip embeds exactly like the image;
- the spatial positional embedding is repeated over time plus a temporal term initialised to zero
  (stored as one learned ``(1, t*h*w, D)`` embedding: the same function at the start, free afterwards);
  it is resized bicubically when the clip's grid differs from the image's;
- CLIP's class embedding plus its position becomes the class token; q/k/v are fused into ``qkv``.

A static clip of one tubelet then gives the image model's features exactly; with more tubelets every
time step's tokens embed like the image (the class token then attends to several copies).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import Mlp, VideoViT, ViTConfig

ARCHS = ("vidshard", "clip")
CLIP_EPS = 1e-5


class QuickGELUMlp(Mlp):
    """CLIP's MLP: ``fc2(x * sigmoid(1.702 x))``."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))


class CLIPVideoViT(VideoViT):
    """The video ViT in CLIP's image-tower layout (see the module docstring)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__(cfg)
        for blk in self.blocks:
            blk.mlp = QuickGELUMlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio))
        self.norm_pre = nn.LayerNorm(cfg.dim, eps=CLIP_EPS)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = CLIP_EPS
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, 1 + N, D): embed, class token, pre-norm, blocks, norm."""
        tokens = self.embed(x)  # (B, N, D)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.forward_tokens(self.norm_pre(tokens))


def build_video_tower(vit: ViTConfig, arch: str = "vidshard") -> VideoViT:
    """``VideoViT(vit)``, or :class:`CLIPVideoViT` (class token, learned positions) for ``arch='clip'``."""
    if arch not in ARCHS:
        raise ValueError(f"vit_arch must be one of {ARCHS}, got {arch!r}")
    if arch == "clip":
        return CLIPVideoViT(vit.with_(pool="cls", pos_embed="learned"))
    return VideoViT(vit)


# --- Reading image-CLIP weights -----------------------------------------------------------------

_PATCH = "embeddings.patch_embedding.weight"


def vision_state(state: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The ``CLIPVisionModel`` weights in ``state`` under their own names (``vision_model.`` and a
    full ``CLIPModel``'s other parts removed), or None when ``state`` holds none."""
    for prefix in ("vision_model.", ""):
        if prefix + _PATCH in state:
            return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return None


def read_image_clip(path: str | Path) -> dict[str, Tensor] | None:
    """Image-CLIP vision weights from a ``.pt``/``.bin`` state dict, a ``.safetensors`` file or a
    ``save_pretrained`` folder; None when ``path`` is something else (e.g. a vidshard checkpoint)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.safetensors")) or sorted(p.glob("pytorch_model*.bin"))
        if not found or (p / "checkpoints").is_dir():
            return None
        p = found[0]
    if not p.is_file():
        return None
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 (not a plain tensor file: not ours to read here)
            return None
    return vision_state(state) if isinstance(state, dict) else None


def _resize_grid(pos: Tensor, size: tuple[int, int]) -> Tensor:
    """``(g*g, D)`` spatial positions -> ``(h*w, D)``, bicubic when the grid differs."""
    g = round(pos.shape[0] ** 0.5)
    if g * g != pos.shape[0]:
        raise ValueError(f"image-CLIP positional embedding of {pos.shape[0]} patches is not a square grid")
    if (g, g) == size:
        return pos
    grid = pos.T.reshape(1, -1, g, g)  # (1, D, g, g)
    return F.interpolate(grid, size=size, mode="bicubic", align_corners=False)[0].flatten(1).T


def inflated_state(vision: dict[str, Tensor], model: CLIPVideoViT) -> dict[str, Tensor]:
    """The :class:`CLIPVideoViT` state dict made from ``CLIPVisionModel`` weights (see module doc)."""
    cfg = model.cfg
    patch = vision[_PATCH]  # (D, C, P, P)
    if patch.shape != (cfg.dim, cfg.in_chans, cfg.patch_size, cfg.patch_size):
        raise ValueError(f"image-CLIP patch embedding {tuple(patch.shape)} does not fit --model "
                         f"{cfg.dim}-wide ViT with {cfg.patch_size}-pixel patches (vit-b fits CLIP ViT-B/16)")
    t, h, w = cfg.grid()
    pos = vision["embeddings.position_embedding.weight"]  # (1 + g*g, D)
    spatial = _resize_grid(pos[1:], (h, w))  # (h*w, D)
    temporal = torch.zeros(t, 1, cfg.dim)  # zero-initialised temporal term
    out = {
        "patch_embed.weight": patch[:, :, None].repeat(1, 1, cfg.tubelet, 1, 1) / cfg.tubelet,
        "patch_embed.bias": torch.zeros(cfg.dim),
        "pos_embed": (spatial[None] + temporal).reshape(1, t * h * w, cfg.dim),  # (1, N, D), t-major
        "cls_token": (vision["embeddings.class_embedding"] + pos[0]).view(1, 1, cfg.dim),
        "norm_pre.weight": vision["pre_layrnorm.weight"], "norm_pre.bias": vision["pre_layrnorm.bias"],
        "norm.weight": vision["post_layernorm.weight"], "norm.bias": vision["post_layernorm.bias"],
    }
    for i in range(cfg.depth):
        src, dst = f"encoder.layers.{i}.", f"blocks.{i}."
        if src + "self_attn.q_proj.weight" not in vision:
            raise ValueError(f"image-CLIP weights have fewer than {cfg.depth} layers; use the matching "
                             "--model")
        for kind in ("weight", "bias"):
            out[dst + f"attn.qkv.{kind}"] = torch.cat(
                [vision[src + f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
            out[dst + f"attn.proj.{kind}"] = vision[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"norm1.{kind}"] = vision[src + f"layer_norm1.{kind}"]
            out[dst + f"norm2.{kind}"] = vision[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.fc1.{kind}"] = vision[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.fc2.{kind}"] = vision[src + f"mlp.fc2.{kind}"]
    if f"encoder.layers.{cfg.depth}.self_attn.q_proj.weight" in vision:
        raise ValueError(f"image-CLIP weights have more than {cfg.depth} layers; use the matching --model")
    return out


def inflate_image_clip(model: nn.Module, vision: dict[str, Tensor], source: str = "image-CLIP weights"
                       ) -> None:
    """Load inflated image-CLIP weights into ``model`` (must be a :class:`CLIPVideoViT`)."""
    if not isinstance(model, CLIPVideoViT):
        raise ValueError(f"{source}: image-CLIP weights start a video tower in CLIP's layout; add "
                         "--vit-arch clip (with --objective clip)")
    state = inflated_state(vision, model)
    own = model.state_dict()
    bad = [k for k, v in state.items() if own[k].shape != v.shape]
    if bad:
        shapes = [(tuple(state[k].shape), tuple(own[k].shape)) for k in bad[:3]]
        raise ValueError(f"{source}: {bad[:3]} do not fit the model (given vs model: {shapes})")
    model.load_state_dict(state, strict=True)
