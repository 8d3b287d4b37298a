"""The objective protocol: a device batch in, a loss and 0-dim tensor metrics out, padding left out."""

from __future__ import annotations

import pytest
import torch
from vidshard.train.config import TrainConfig
from vidshard.train.loop import train_step
from vidshard.train.objectives import OBJECTIVES, get_objective
from vidshard.train.optim import build_optimizer
from vidshard.train.prefetch import device_batch

SMALL = dict(data="(test)", model="vit-t", frames=4, size=32, decoder_dim=32, decoder_depth=1, mask_ratio=0.5)


def _batch(valid: list[bool], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B = len(valid)
    return {"video": torch.randint(0, 256, (B, 3, 4, 32, 32), dtype=torch.uint8, generator=g),
            "label": torch.tensor([i % 3 for i in range(B)]), "valid": torch.tensor(valid),
            "key": [f"k{i}" for i in range(B)],
            "text": torch.randint(0, 250, (B, 8), generator=g)}  # token ids (clip; the others ignore them)


def _model(name: str) -> tuple[object, torch.nn.Module]:
    torch.manual_seed(0)
    obj = get_objective(name)
    return obj, obj.build_model(TrainConfig(objective=name, **SMALL), 3)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_loss_takes_the_batch_and_returns_tensor_metrics(name: str) -> None:
    obj, model = _model(name)
    batch = device_batch(_batch([True, True, True]), torch.device("cpu"))
    assert batch["video"].dtype == torch.float32 and batch["key"] == ["k0", "k1", "k2"]  # extras untouched
    loss, metrics = obj.loss(model, batch)
    assert loss.ndim == 0 and loss.requires_grad and metrics
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in metrics.values()), metrics


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_padding_clips_change_neither_loss_nor_metrics_nor_gradients(name: str) -> None:
    """Two batches that differ only in their invalid clip (content and label) give the same loss,
    metrics and gradients, and those equal the batch without that clip."""
    obj, model = _model(name)
    model.eval()  # no drop path; the MAE mask comes from the seeded generator below
    a, b = _batch([True, True, False], seed=1), _batch([True, True, False], seed=2)
    b["video"][:2], b["label"] = a["video"][:2], torch.tensor([0, 1, 0])  # the padding clip differs
    b["text"][:2] = a["text"][:2]
    trimmed = {k: a[k][:2] for k in ("video", "label", "valid", "text")}
    results = []
    for raw in (a, b, trimmed):
        torch.manual_seed(7)  # same MAE mask for the two valid clips (masks are drawn per clip in order)
        model.zero_grad()
        loss, metrics = obj.loss(model, device_batch(raw, torch.device("cpu")))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((loss.detach(), {k: v.item() for k, v in metrics.items()}, grads))
    for other in results[1:]:
        torch.testing.assert_close(other[0], results[0][0])
        assert other[1] == pytest.approx(results[0][1])
        torch.testing.assert_close(other[2], results[0][2])


def test_train_step_returns_device_tensors() -> None:
    obj, model = _model("supervised")
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    m = train_step(model, obj, device_batch(_batch([True, True]), torch.device("cpu")), opt, lr=1e-3,
                   clip_grad=1.0, amp=True)
    assert {"loss", "grad_norm", "acc"} <= set(m)
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in m.values())
