"""MAE building blocks: patchify, tube masking, the loss, and the model's wiring."""

from __future__ import annotations

import pytest
import torch
from vidshard.train.mae import (
    MAEConfig,
    build_mae,
    masked_mse,
    normalized_targets,
    num_masked,
    patchify,
    tube_masking,
    unpatchify,
    visible_share,
)
from vidshard.train.model import VideoViT, ViTConfig

TINY = ViTConfig(dim=32, depth=2, heads=2, patch_size=8, tubelet=2, frames=4, img_size=32)


def test_patchify_roundtrip_and_token_order_matches_embed() -> None:
    video = torch.randn(2, 3, 4, 32, 24)  # (B, C, T, H, W)
    x = patchify(video, patch=8, tubelet=2)
    assert x.shape == (2, 2 * 4 * 3, 2 * 8 * 8 * 3)
    assert torch.equal(unpatchify(x, (2, 4, 3), patch=8, tubelet=2), video)
    # Token n of patchify is the tubelet the encoder's Conv3d embeds as token n.
    vit = VideoViT(TINY)
    w = vit.patch_embed.weight  # (D, C, t, p, p)
    flat_w = w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], -1)  # (D, t*p*p*C), same order as patchify
    by_hand = x @ flat_w.T + vit.patch_embed.bias  # (B, N, D)
    conv = vit.patch_embed(video).flatten(2).transpose(1, 2)  # (B, N, D)
    torch.testing.assert_close(by_hand, conv, rtol=1e-4, atol=1e-4)


def test_patchify_rejects_indivisible_clips() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 3, 5, 32, 32), patch=8, tubelet=2)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9, 0.99])
def test_tube_masking_invariants(ratio: float) -> None:
    t, h, w = grid = (4, 5, 6)
    S, N, B = h * w, t * h * w, 7
    ids_keep, ids_restore, mask = tube_masking(B, grid, ratio, torch.Generator().manual_seed(0))
    n_mask = num_masked(ratio, S)
    assert n_mask == min(round(ratio * S), S - 1)
    assert ids_keep.shape == (B, t * (S - n_mask)) and ids_restore.shape == mask.shape == (B, N)
    per_frame = mask.view(B, t, S)
    # The same spatial mask at every time step, exactly n_mask masked per frame.
    assert torch.equal(per_frame, per_frame[:, :1].expand(-1, t, -1))
    assert torch.all(per_frame.sum(-1) == n_mask)
    for b in range(B):
        # ids_keep are exactly the unmasked tokens, each once.
        assert sorted(ids_keep[b].tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
        # ids_restore is a permutation that puts [visible, masked] back into token order.
        assert sorted(ids_restore[b].tolist()) == list(range(N))
        shuffled = torch.cat([torch.zeros(ids_keep.shape[1]), torch.ones(N - ids_keep.shape[1])])
        assert torch.equal(shuffled[ids_restore[b]], mask[b])
    assert visible_share(ratio, grid) == (S - n_mask) / S


def test_tube_masking_is_seeded_and_differs_per_sample() -> None:
    a = tube_masking(4, (2, 4, 4), 0.75, torch.Generator().manual_seed(3))[2]
    b = tube_masking(4, (2, 4, 4), 0.75, torch.Generator().manual_seed(3))[2]
    c = tube_masking(4, (2, 4, 4), 0.75, torch.Generator().manual_seed(4))[2]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(row.tolist()) for row in a}) > 1


def test_loss_counts_masked_tokens_only() -> None:
    target = torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]], dtype=torch.float32)
    pred = target.clone()
    pred[mask == 0] += 100.0  # wrong everywhere visible: must not count
    assert masked_mse(pred, target, mask).item() == 0.0
    pred[0, 0] += 1.0
    assert masked_mse(pred, target, mask).item() == pytest.approx(1.0 / 3)


def videomae_targets(videos: torch.Tensor, patch: int, tubelet: int) -> torch.Tensor:
    """VideoMAE's run_mae_pretraining / engine_for_pretraining formula, written out with loops:
    ``unnorm = videos * std + mean``, then per tubelet and channel ``(x - mean) / (std(unbiased) + 1e-6)``,
    flattened as ``(p0 p1 p2 c)``."""
    mean = torch.tensor((0.485, 0.456, 0.406))
    std = torch.tensor((0.229, 0.224, 0.225))
    unnorm = videos * std[None, :, None, None, None] + mean[None, :, None, None, None]
    B, C, T, H, W = videos.shape
    out = []
    for b in range(B):
        tokens = []
        for t in range(0, T, tubelet):
            for h in range(0, H, patch):
                for w in range(0, W, patch):
                    cube = unnorm[b, :, t:t + tubelet, h:h + patch, w:w + patch]  # (C, p0, p1, p2)
                    pixels = cube.reshape(C, -1).T  # (p0 p1 p2, C)
                    normed = (pixels - pixels.mean(0)) / (pixels.std(0, unbiased=True) + 1e-6)
                    tokens.append(normed.reshape(-1))  # (p0 p1 p2 c)
        out.append(torch.stack(tokens))
    return torch.stack(out)


def test_targets_are_videomaes_per_channel_normalised_unnormalised_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 4, 16, 16, generator=g)
    pixels[:, 0] *= 0.2  # channels with very different ranges: a joint normalisation would differ
    video = (pixels - torch.tensor((0.485, 0.456, 0.406))[:, None, None, None]) / torch.tensor(
        (0.229, 0.224, 0.225))[:, None, None, None]  # as the loader normalises
    expected = videomae_targets(video, patch=8, tubelet=2)
    torch.testing.assert_close(normalized_targets(video, patch=8, tubelet=2), expected, atol=1e-4, rtol=1e-4)
    model = build_mae(TINY.with_(img_size=16), MAEConfig(decoder_dim=16, decoder_depth=1))
    torch.testing.assert_close(model.targets(video), expected, atol=1e-4, rtol=1e-4)


def test_encoder_sees_only_visible_tokens_and_loss_ignores_visible_pixels() -> None:
    torch.manual_seed(0)
    model = build_mae(TINY, MAEConfig(mask_ratio=0.75, decoder_dim=16, decoder_depth=1)).eval()
    seen: list[int] = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    video = torch.randn(2, 3, 4, 32, 32)
    loss, pred, mask = model(video, torch.Generator().manual_seed(1))
    assert seen == [2 * (16 - 12)]  # t * visible patches per frame
    assert pred.shape == (2, 32, 2 * 8 * 8 * 3) and mask.sum().item() == 2 * 2 * 12
    # The loss is the masked MSE against per-tubelet normalised pixels.
    expected = masked_mse(pred, normalized_targets(video, 8, 2), mask)
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert model.decoder_mask_token.grad is not None and model.encoder.patch_embed.weight.grad is not None


def test_state_dict_names_encoder_like_a_videovit() -> None:
    model = build_mae(TINY.with_(pool="cls", num_classes=5))
    vit_keys = set(VideoViT(TINY.with_(num_classes=0)).state_dict())
    enc = {k.removeprefix("encoder.") for k in model.state_dict() if k.startswith("encoder.")}
    assert enc == vit_keys
    assert all(k.startswith(("encoder.", "decoder_")) for k in model.state_dict())


def test_reconstruct_returns_clip_and_pixel_mask_in_input_range() -> None:
    model = build_mae(TINY, MAEConfig(decoder_dim=16, decoder_depth=1)).eval()
    video = torch.rand(1, 3, 4, 32, 32)
    recon, pixel_mask = model.reconstruct(video, torch.Generator().manual_seed(0))
    assert recon.shape == pixel_mask.shape == video.shape
    # Every pixel of a tubelet shares its mask value; masked share is the tube-masking share.
    assert set(pixel_mask.unique().tolist()) == {0.0, 1.0}
    assert pixel_mask.mean().item() == pytest.approx(num_masked(0.9, 16) / 16)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        MAEConfig(mask_ratio=1.0)
    with pytest.raises(ValueError, match="divisible"):
        MAEConfig(decoder_dim=100, decoder_heads=3)
