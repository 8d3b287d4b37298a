"""Masked video autoencoding (VideoMAE-style) on top of the video ViT.

Follows facebookresearch/mae ``models_mae.py`` and VideoMAE (Tong et al. 2022):

- ``tube_masking``: one random spatial mask per clip, repeated over every time
  step (a masked "tube"), so a masked patch cannot be copied from the frame next
  to it. The default ratio is 0.9.
- ``forward_encoder``: the encoder embeds all tubelets, keeps only the visible
  ones and runs its blocks on those (10 % of the tokens at ratio 0.9: this is
  where pretraining saves most of its compute).
- ``forward_decoder``: a light decoder (own width and depth) fills the masked
  places with a learned mask token, adds its own fixed sin-cos positions and
  predicts the pixels of every tubelet.
- ``forward_loss``: MSE against VideoMAE's targets (the clip un-normalised to [0, 1], each tubelet
  normalised per channel by its own mean and std), on masked tokens of valid clips only.

The encoder is a plain :class:`~vidshard.train.model.VideoViT` held as
``self.encoder``, so its parameters are named ``encoder.<VideoViT name>`` and
``--init-from`` can load them into a classifier (the ``decoder_*`` parameters are
dropped there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import TrainConfig
from .data import MEAN, STD
from .model import Block, VideoViT, ViTConfig, sincos_pos_embed_3d

Grid = tuple[int, int, int]
"""Token grid ``(t, h, w)``: tubelets along time, patches along height and width."""


@dataclass(frozen=True, kw_only=True)
class MAEConfig:
    """Masked-autoencoder settings on top of the encoder's :class:`ViTConfig`."""

    mask_ratio: float = 0.9
    """Share of the spatial patches masked in every clip (the same ones in every frame)."""
    decoder_dim: int = 192
    """Width of the decoder's tokens."""
    decoder_depth: int = 4
    """Number of decoder blocks."""
    decoder_heads: int = 0
    """Attention heads of the decoder; 0 picks ``decoder_dim // 64`` (at least 1)."""
    norm_pix_loss: bool = True
    """Reconstruct each tubelet's pixels normalised per channel by its own mean and std (VideoMAE's
    default); otherwise the plain pixels in [0, 1]."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.decoder_dim < 1 or self.decoder_depth < 1:
            raise ValueError(f"decoder_dim and decoder_depth must be >= 1, got "
                             f"{self.decoder_dim} and {self.decoder_depth}")
        heads = self.heads
        if self.decoder_dim % heads:
            raise ValueError(f"decoder_dim {self.decoder_dim} is not divisible by decoder_heads {heads}")

    @property
    def heads(self) -> int:
        return self.decoder_heads or max(1, self.decoder_dim // 64)


# --- Pure tensor functions --------------------------------------------------------------------


def patchify(video: Tensor, patch: int, tubelet: int) -> Tensor:
    """Cut a clip into flattened tubelets, in the token order of ``VideoViT.embed``.

    video: ``(B, C, T, H, W)`` -> ``(B, N, tubelet * patch * patch * C)`` with
    ``N = T/tubelet * H/patch * W/patch`` ordered time, then rows, then columns.
    """
    B, C, T, H, W = video.shape
    if T % tubelet or H % patch or W % patch:
        raise ValueError(f"clip {T}x{H}x{W} is not divisible into {tubelet}x{patch}x{patch} tubelets")
    t, h, w = T // tubelet, H // patch, W // patch
    x = video.reshape(B, C, t, tubelet, h, patch, w, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, t, h, w, tubelet, p, p, C)
    return x.reshape(B, t * h * w, tubelet * patch * patch * C)


def unpatchify(x: Tensor, grid: Grid, patch: int, tubelet: int) -> Tensor:
    """Inverse of :func:`patchify`: ``(B, N, tubelet * patch * patch * C)`` -> ``(B, C, T, H, W)``."""
    B, N, L = x.shape
    t, h, w = grid
    C = L // (tubelet * patch * patch)
    if t * h * w != N or C * tubelet * patch * patch != L:
        raise ValueError(f"tokens {tuple(x.shape)} do not fit grid {grid} of {tubelet}x{patch}x{patch}")
    x = x.reshape(B, t, h, w, tubelet, patch, patch, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, t, tubelet, h, p, w, p)
    return x.reshape(B, C, t * tubelet, h * patch, w * patch)


def num_masked(ratio: float, spatial: int) -> int:
    """Patches masked per frame: ``round(ratio * spatial)``, leaving at least one visible."""
    return min(round(ratio * spatial), spatial - 1)


def tube_masking(batch: int, grid: Grid, ratio: float, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Random tube masks: the same spatial patches are masked at every time step.

    Returns ``ids_keep`` ``(B, t * n_keep)`` (indices of the visible tokens, in
    time-major order), ``ids_restore`` ``(B, N)`` (puts ``[visible, masked]``
    back into token order, as in MAE) and ``mask`` ``(B, N)`` (1.0 = masked).
    Exactly ``num_masked(ratio, h * w)`` patches are masked per time step.
    """
    t, h, w = grid
    spatial, n = h * w, t * h * w
    n_keep = spatial - num_masked(ratio, spatial)
    noise = torch.rand(batch, spatial, generator=generator)  # on the CPU: same masks on any device
    order = noise.argsort(dim=1)  # (B, S): the first n_keep stay visible
    keep_s, drop_s = order[:, :n_keep].sort(dim=1).values, order[:, n_keep:]
    offsets = torch.arange(t)[None, :, None] * spatial  # (1, t, 1)
    keep = (offsets + keep_s[:, None, :]).reshape(batch, t * n_keep)  # (B, t * n_keep)
    drop = (offsets + drop_s[:, None, :]).reshape(batch, n - t * n_keep)  # (B, t * n_mask)
    ids_restore = torch.cat([keep, drop], dim=1).argsort(dim=1)  # (B, N)
    mask = torch.ones(batch, n)
    mask[:, : keep.shape[1]] = 0.0
    mask = mask.gather(1, ids_restore)  # (B, N) in token order
    return keep.to(device), ids_restore.to(device), mask.to(device)


def imagenet_stats(video: Tensor) -> tuple[Tensor, Tensor]:
    """The loader's normalisation (ImageNet mean and std) as ``(1, C, 1, 1, 1)`` on ``video``'s device."""
    shape = (1, -1, 1, 1, 1)
    return (torch.tensor(MEAN, device=video.device, dtype=video.dtype).view(shape),
            torch.tensor(STD, device=video.device, dtype=video.dtype).view(shape))


def unnormalize(video: Tensor) -> Tensor:
    """ImageNet-normalised ``(B, C, T, H, W)`` -> pixels in [0, 1]."""
    mean, std = imagenet_stats(video)
    return video * std + mean


def renormalize(pixels: Tensor) -> Tensor:
    """Inverse of :func:`unnormalize`: pixels in [0, 1] -> ImageNet-normalised."""
    mean, std = imagenet_stats(pixels)
    return (pixels - mean) / std


def normalized_targets(video: Tensor, patch: int, tubelet: int, eps: float = 1e-6) -> Tensor:
    """VideoMAE's targets (``normlize_target``): each tubelet of the un-normalised clip (pixels in
    [0, 1]), every channel normalised by that tubelet's own mean and unbiased std of the channel:
    ``(x - mean) / (std + eps)``.

    ``video``: ImageNet-normalised ``(B, C, T, H, W)`` -> ``(B, N, L)``, L ordered (pixels, channel).
    """
    C = video.shape[1]
    x = patchify(unnormalize(video), patch, tubelet)  # (B, N, L)
    B, N, L = x.shape
    x = x.view(B, N, L // C, C)  # (B, N, P, C): the tubelet's P pixels per channel
    x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + eps)
    return x.view(B, N, L)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over masked tokens of the per-token MSE.

    ``pred`` and ``target`` ``(B, N, L)``, ``mask`` ``(B, N)`` (1.0 = masked) -> scalar.
    """
    per_token = (pred - target).pow(2).mean(dim=-1)  # (B, N)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


# --- The model ---------------------------------------------------------------------------------


class MaskedVideoAutoencoder(nn.Module):
    """A :class:`VideoViT` encoder on the visible tubelets plus a light pixel decoder."""

    def __init__(self, encoder: VideoViT, cfg: MAEConfig = MAEConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        vit = encoder.cfg
        self.patch, self.tubelet = vit.patch_size, vit.tubelet
        self.grid: Grid = vit.grid()  # the clip size the model is built for; others work too
        d = cfg.decoder_dim
        # Every decoder parameter is named decoder_*, so --init-from can drop them by prefix.
        self.decoder_embed = nn.Linear(vit.dim, d)
        self.decoder_mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_blocks = nn.ModuleList(
            Block(d, cfg.heads, vit.mlp_ratio, attn_impl=vit.attn_impl) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_pred = nn.Linear(d, self.tubelet * self.patch * self.patch * vit.in_chans)
        pos = sincos_pos_embed_3d(d, self.grid)[None]  # (1, N, d), fixed
        self.register_buffer("decoder_pos_embed", pos, persistent=False)
        self._init_decoder()

    def _init_decoder(self) -> None:
        """Decoder init as in MAE (the encoder initialised itself): xavier linears, small mask token."""
        nn.init.normal_(self.decoder_mask_token, std=0.02)
        for name, m in self.named_modules():
            if not name.startswith("decoder"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def grid_of(self, video: Tensor) -> Grid:
        """Token grid of a ``(B, C, T, H, W)`` clip."""
        T, H, W = video.shape[2:]
        return T // self.tubelet, H // self.patch, W // self.patch

    def mask(self, video: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`tube_masking` for a batch of clips at this model's ratio."""
        return tube_masking(video.shape[0], self.grid_of(video), self.cfg.mask_ratio, generator, video.device)

    def forward_encoder(self, video: Tensor, ids_keep: Tensor) -> Tensor:
        """Encode only the visible tubelets: ``(B, C, T, H, W)``, ``(B, K)`` -> ``(B, K, D)``."""
        tokens = self.encoder.embed(video)  # (B, N, D), positions already added
        D = tokens.shape[-1]
        visible = tokens.gather(1, ids_keep[..., None].expand(-1, -1, D))  # (B, K, D)
        return self.encoder.forward_tokens(visible)  # (B, K, D)

    def decoder_pos(self, grid: Grid) -> Tensor:
        """``(1, N, d)`` fixed sin-cos positions of the decoder for a token grid."""
        if grid == self.grid:
            return self.decoder_pos_embed
        return sincos_pos_embed_3d(self.cfg.decoder_dim, grid)[None].to(self.decoder_pos_embed.device)

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor, grid: Grid) -> Tensor:
        """Predict every tubelet's pixels: ``(B, K, D)``, ``(B, N)`` -> ``(B, N, L)``."""
        x = self.decoder_embed(latent)  # (B, K, d)
        B, K, d = x.shape
        N = ids_restore.shape[1]
        fill = self.decoder_mask_token.expand(B, N - K, d)  # (B, N-K, d)
        x = torch.cat([x, fill], dim=1)  # (B, N, d) as [visible, masked]
        x = x.gather(1, ids_restore[..., None].expand(-1, -1, d))  # (B, N, d) in token order
        x = x + self.decoder_pos(grid).to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))  # (B, N, L)

    def targets(self, video: Tensor) -> Tensor:
        """What the decoder should output for an ImageNet-normalised clip, as VideoMAE: ``(B, C, T, H, W)``
        -> ``(B, N, L)``, per-tubelet per-channel normalised pixels, or the pixels in [0, 1]."""
        if self.cfg.norm_pix_loss:
            return normalized_targets(video, self.patch, self.tubelet)
        return patchify(unnormalize(video), self.patch, self.tubelet)

    def forward_loss(self, video: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """MSE on the masked tubelets only; ``pred`` ``(B, N, L)``, ``mask`` ``(B, N)`` -> scalar.

        Computed in float32 (the per-tubelet variance is too coarse in bf16).
        """
        return masked_mse(pred.float(), self.targets(video.float()), mask)

    def forward(self, video: Tensor, generator: torch.Generator | None = None, valid: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, C, T, H, W)`` -> ``(loss, pred (B, N, L), mask (B, N))`` with a fresh tube mask.

        ``valid`` ``(B,)`` bool: clips marked False (padding) are left out of the loss.
        """
        ids_keep, ids_restore, mask = self.mask(video, generator)
        pred = self.forward_decoder(self.forward_encoder(video, ids_keep), ids_restore, self.grid_of(video))
        counted = mask if valid is None else mask * valid[:, None].to(mask.dtype)  # (B, N)
        return self.forward_loss(video, pred, counted), pred, mask

    @torch.no_grad()
    def reconstruct(self, video: Tensor, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor]:
        """Reconstructed clip and pixel mask, both ``(B, C, T, H, W)`` in the input's value range.

        With normalised targets a prediction is mapped back with each tubelet's own
        mean and std (as the VideoMAE visualisation does): the shapes and edges are
        the model's, the brightness of each tubelet comes from the original.
        """
        _, pred, mask = self(video, generator)
        if self.cfg.norm_pix_loss:  # undo the target normalisation with each tubelet's own statistics
            C = video.shape[1]
            patches = patchify(unnormalize(video), self.patch, self.tubelet)  # (B, N, L) in [0, 1]
            B, N, L = patches.shape
            patches = patches.view(B, N, L // C, C)
            mean = patches.mean(dim=-2, keepdim=True)
            std = patches.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6
            pred = (pred.view(B, N, L // C, C) * std + mean).view(B, N, L)
        L = pred.shape[-1]
        grid = self.grid_of(video)
        recon = renormalize(unpatchify(pred, grid, self.patch, self.tubelet))  # back to the input's range
        pixel_mask = unpatchify(mask[..., None].expand(-1, -1, L), grid, self.patch, self.tubelet)
        return recon, pixel_mask


def visible_share(mask_ratio: float, grid: Grid) -> float:
    """Share of the tokens the encoder's blocks see under tube masking."""
    _, h, w = grid
    return (h * w - num_masked(mask_ratio, h * w)) / (h * w)



def build_mae(vit: ViTConfig, cfg: MAEConfig = MAEConfig()) -> MaskedVideoAutoencoder:
    """An MAE whose encoder is ``VideoViT(vit)`` without head or class token.

    The class token and head would get no gradient here (and trip DDP), and a
    fine-tuning run makes its own new head anyway.
    """
    return MaskedVideoAutoencoder(VideoViT(vit.with_(num_classes=0, pool="mean")), cfg)


class MAEObjective:
    """``--objective mae``: the loop's interface to masked pretraining. Needs no labels."""

    needs_labels = False
    beta2 = 0.95  # VideoMAE's pretraining setting

    def build_model(self, cfg: TrainConfig, num_classes: int) -> nn.Module:
        from .objectives import vit_config  # here, not at the top: objectives.py imports this module

        mae = MAEConfig(mask_ratio=cfg.mask_ratio, decoder_dim=cfg.decoder_dim,
                        decoder_depth=cfg.decoder_depth)
        return build_mae(vit_config(cfg, 0), mae)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Masked reconstruction loss over the valid clips of ``batch`` (labels are not used);
        ``masked``: the share of tokens masked. See :mod:`vidshard.train.objectives` for the batch."""
        valid = batch["valid"]
        loss, _, mask = model(batch["video"], valid=valid)  # through forward, so DDP sees the call
        keep = valid.to(mask.dtype)  # (B,)
        return loss, {"masked": (mask.mean(1) * keep).sum() / keep.sum().clamp(min=1.0)}
