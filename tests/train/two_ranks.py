"""Run as two ranks (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR/PORT`` set, as torchrun sets them) by
``test_ranks.py`` (not collected by pytest): ``two_ranks.py SHARDSET OUT [DEVICE]``, a small MAE run
(gloo on ``cpu``, NCCL on ``cuda``) that records what each rank did into ``OUT/rank{R}.pt``:

- the weights each rank built before DDP wrapped them, and whether DDP syncs buffers every step;
- every tube mask it drew;
- the weights after two steps (taken at the start of the third);
- in the third step rank 1's loss turns NaN: the error each rank stops with.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from vidshard.train import distributed, loop, mae
from vidshard.train.config import TrainConfig

KEYS = ("encoder.patch_embed", "encoder.blocks.0.", "decoder_pred")


def main(data: str, out: Path, rank: int, device: str = "cpu") -> None:
    seen: dict = {"masks": [], "calls": 0, "error": None}
    real_masking, real_wrap, real_loss = mae.tube_masking, distributed.wrap, mae.MAEObjective.loss

    def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        state = distributed.unwrap(model).state_dict()
        return {k: v.detach().clone() for k, v in state.items() if k.startswith(KEYS)}

    def masking(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = real_masking(*args, **kwargs)
        seen["masks"].append(result[0].cpu())  # ids_keep (B, K)
        return result

    def wrap(model, info, compile=False):  # noqa: ANN001, ANN202, A002
        seen["init"] = weights(model)
        wrapped = real_wrap(model, info, compile)
        seen["buffers_synced"] = distributed.buffers_synced_every_step(wrapped)
        return wrapped

    def loss(self, model, batch):  # noqa: ANN001, ANN202
        seen["calls"] += 1
        if seen["calls"] == 3:
            seen["after_2_steps"] = weights(model)
        value, metrics = real_loss(self, model, batch)
        if rank == 1 and seen["calls"] == 3:
            value = value * float("nan")
        return value, metrics

    mae.tube_masking, distributed.wrap, mae.MAEObjective.loss = masking, wrap, loss
    cfg = TrainConfig(data=data, out=str(out / "run"), objective="mae", steps=4, batch_size=4, frames=4,
                      stride=2, size=32, workers=0, progress=False, log_every=1, ckpt_every=100,
                      mask_ratio=0.75, decoder_dim=32, decoder_depth=1, device=device, threads=1)
    try:
        loop.train(cfg)
    except FloatingPointError as e:
        seen["error"] = str(e)
    torch.save({k: seen.get(k) for k in ("init", "after_2_steps", "masks", "buffers_synced", "error")},
               out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(os.environ["RANK"]), *sys.argv[3:4])
