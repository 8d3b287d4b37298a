"""Video-text contrastive pretraining (``--objective clip``): a dual encoder and symmetric InfoNCE.

As in CLIP, AVION and LaViLa:

- the video tower is the video ViT (pooled: mean of the tokens or the class token) and a linear
  projection to ``embed_dim``; the text tower is a CLIP text transformer (``train/text.py``) with its
  own projection; both embeddings are L2-normalised;
- the loss is the symmetric cross-entropy over the similarity matrix of a batch, scaled by a learnable
  temperature (``logit_scale``: init ln(1/0.07), the scale is clamped at 100);
- under DDP every rank gathers every rank's embeddings *with gradient*
  (``torch.distributed.nn.functional.all_gather``), so the negatives are the global batch; each rank
  scores its own rows and weighs them so that the mean over ranks (which DDP's gradient averaging
  computes) is exactly the loss of one process holding the whole batch;
- padding clips (``valid`` False: repeats that fill a rank's quota) are neither queries nor negatives.
"""

from __future__ import annotations

import json
import math
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TrainConfig
from .model import VideoViT
from .text import CaptionTokens, TextSpec, build_text_tower, load_pretrained_text, text_features, text_spec

EMBED_DIMS = {"vit-t": 256, "vit-t4": 256, "vit-s": 384, "vit-b": 512, "vit-l": 768}
"""Default shared embedding width per video preset (``--embed-dim 0``)."""
INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


def gather_with_grad(x: Tensor) -> Tensor:
    """``(B, ...)`` on each rank -> ``(world * B, ...)`` in rank order, gradients flowing back to every
    rank's own rows (a plain copy when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # torch 2.13 deprecates it for a private API; it is still the public one
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        return torch.cat(all_gather(x), dim=0)


def gather_plain(x: Tensor) -> Tensor:
    """Like :func:`gather_with_grad` for tensors without gradient (masks)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def contrastive_loss(video: Tensor, text: Tensor, scale: Tensor, valid: Tensor | None = None
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """Symmetric InfoNCE over the global batch.

    ``video`` and ``text``: ``(B, E)`` L2-normalised embeddings of this rank's pairs; ``scale``: 0-dim
    logit scale; ``valid``: bool ``(B,)`` (False rows are no query and no negative). Returns this rank's
    loss (its rows' summed cross-entropies over the global count of valid rows, times the world size:
    the mean over ranks is the single-process loss) and 0-dim metrics: ``acc`` (in-batch video-to-text
    top-1 over this rank's valid rows) and ``scale``.
    """
    B = video.shape[0]
    valid = torch.ones(B, dtype=torch.bool, device=video.device) if valid is None else valid.to(video.device)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    all_video, all_text = gather_with_grad(video), gather_with_grad(text)  # (W*B, E)
    all_valid = gather_plain(valid)  # (W*B,)
    # Large and finite, not -inf: a batch of padding only must give zero gradients, not NaN.
    ignore = torch.where(all_valid, 0.0, -1e9)  # (W*B,)
    video, text, scale = video.float(), text.float(), scale.float()
    logits_v2t = scale * video @ all_text.float().T + ignore  # (B, W*B)
    logits_t2v = scale * text @ all_video.float().T + ignore  # (B, W*B)
    target = torch.arange(B, device=video.device) + rank * B  # own pair's global column
    safe = torch.where(valid, target, 0)  # invalid rows are dropped below; keep their targets finite
    per_row = (F.cross_entropy(logits_v2t, safe, reduction="none")
               + F.cross_entropy(logits_t2v, safe, reduction="none")) / 2  # (B,)
    per_row = torch.where(valid, per_row, 0.0)
    loss = per_row.sum() * world / all_valid.sum().clamp(min=1)
    with torch.no_grad():
        hits = (logits_v2t.argmax(-1) == target) & valid
        acc = hits.sum() / valid.sum().clamp(min=1)
    return loss, {"acc": acc, "scale": scale.detach()}


class VideoTextModel(nn.Module):
    """The dual encoder: ``encoder`` (a :class:`VideoViT` without head) + ``video_proj``, ``text`` (CLIP
    text tower with ``text_projection``) and ``logit_scale``. The text spec (config and tokenizer) rides
    along in the state dict as the ``text_spec`` buffer, so a checkpoint rebuilds the model offline."""

    def __init__(self, encoder: VideoViT, spec: TextSpec, embed_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.cfg = encoder.cfg  # what checkpoints record as model_config
        self.spec = spec
        self.video_proj = nn.Linear(encoder.cfg.dim, embed_dim, bias=False)
        nn.init.normal_(self.video_proj.weight, std=encoder.cfg.dim ** -0.5)
        self.text = build_text_tower(spec, embed_dim)
        self.eos_id = json.loads(spec.config_json)["eos_token_id"]
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / INIT_TEMPERATURE)))
        blob = torch.frombuffer(bytearray(json.dumps(spec.to_dict()).encode()), dtype=torch.uint8)
        self.register_buffer("text_spec", blob.clone())

    def encode_video(self, video: Tensor) -> Tensor:
        """``(B, C, T, H, W)`` normalised clips -> ``(B, E)`` unit-norm embeddings."""
        pooled = self.encoder(video)  # (B, D): no head, pooled as the ViT config says
        return F.normalize(self.video_proj(pooled), dim=-1)

    def encode_text(self, ids: Tensor) -> Tensor:
        """``(B, L)`` token ids -> ``(B, E)`` unit-norm embeddings."""
        return F.normalize(text_features(self.text, ids, self.eos_id), dim=-1)

    def scale(self) -> Tensor:
        """0-dim logit scale, ``exp(logit_scale)`` clamped at 100."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, video: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, C, T, H, W)``, ``(B, L)`` -> video ``(B, E)``, text ``(B, E)``, scale (0-dim)."""
        return self.encode_video(video), self.encode_text(ids), self.scale()


def spec_from_state(state: dict[str, Tensor]) -> TextSpec:
    """The :class:`TextSpec` stored in a :class:`VideoTextModel` state dict."""
    blob = state.get("text_spec")
    if blob is None:
        raise ValueError("not a contrastive (clip) model: its weights carry no text_spec")
    return TextSpec(**json.loads(bytes(blob.to(torch.uint8).tolist()).decode()))


def embed_dim_for(cfg: TrainConfig) -> int:
    """``--embed-dim``, or the preset's default (512 for vit-b)."""
    return cfg.embed_dim or EMBED_DIMS.get(cfg.model, 512)


def build_clip(cfg: TrainConfig, spec: TextSpec, load_pretrained: bool = True) -> VideoTextModel:
    """The dual encoder ``cfg`` asks for, with the text tower of ``spec`` (its pretrained weights
    loaded when it names them and ``load_pretrained``; a rebuilt checkpoint needs none)."""
    from .inflate import build_video_tower
    from .objectives import vit_config

    model = VideoTextModel(build_video_tower(vit_config(cfg, 0), cfg.vit_arch), spec, embed_dim_for(cfg))
    if load_pretrained and spec.pretrained:
        load_pretrained_text(model.text, spec.pretrained)
    return model


class ClipObjective:
    """``--objective clip``: the loop's interface to contrastive pretraining. Needs captions, no labels.

    :meth:`caption_hook` gives the loader its tokenising hook (the loop asks before it builds the
    loader); :meth:`restore` takes the text spec from a checkpoint's weights, so rebuilding a trained
    model reads no tokenizer files and no hub.
    """

    needs_labels = False
    beta2 = 0.98  # AdamW's second beta in CLIP, AVION and LaViLa

    def __init__(self) -> None:
        self.spec: TextSpec | None = None
        self.restored = False

    def text_spec(self, cfg: TrainConfig) -> TextSpec:
        if self.spec is None:
            self.spec = text_spec(cfg.text_model, cfg.tokenizer, embed_dim_for(cfg))
        return self.spec

    def caption_hook(self, cfg: TrainConfig, train: bool = True) -> CaptionTokens:
        """What the loader workers run on each sample's captions (pick one, tokenise)."""
        return self.text_spec(cfg).hooks(train)

    def restore(self, state: dict[str, Tensor]) -> None:
        """Use the text spec stored in a trained model's state dict."""
        self.spec, self.restored = spec_from_state(state), True

    def build_model(self, cfg: TrainConfig, num_classes: int) -> nn.Module:
        return build_clip(cfg, self.text_spec(cfg), load_pretrained=not self.restored)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Symmetric InfoNCE of ``video`` ``(B, C, T, H, W)`` against ``text`` ``(B, L)`` token ids (one
        caption per clip, tokenised by the loader), padding clips left out; metrics ``acc`` (in-batch
        video-to-text top-1) and ``scale``."""
        if "text" not in batch:
            raise ValueError("a clip batch needs 'text' token ids: build the loader with the objective's "
                             "caption_hook")
        video = batch["video"]
        ids = batch["text"].to(video.device, non_blocking=True)
        v, t, scale = model(video, ids)  # through forward, so DDP sees the call
        return contrastive_loss(v, t, scale, batch["valid"])
