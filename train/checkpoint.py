"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is a plain dict of tensors and Python values: ``model`` (state dict),
``optimizer``, ``step``, ``epoch``, ``rng``, and everything needed to rebuild the
model without the run folder: ``config`` (the TrainConfig), ``objective``,
``num_classes``, ``classes`` and ``model_config`` (the ViTConfig).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..shards.schema import atomic_write

FORMAT = "vidshard-checkpoint/1"
CKPT_DIR = "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step-{step:08d}.pt"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest complete checkpoint in ``run_dir`` (temporary files are never matched)."""
    found = sorted((Path(run_dir) / CKPT_DIR).glob("step-*.pt"))
    return found[-1] if found else None


def save_checkpoint(path: Path, state: dict[str, Any], keep: int | None = None) -> Path:
    """``torch.save`` to a temporary file, fsync, rename: a reader never sees half a checkpoint.

    With ``keep``, older ``step-*.pt`` files beside it are removed so ``keep`` remain.
    """
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))
    if keep is not None:
        for old in sorted(path.parent.glob("step-*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``), with an error that names the file.

    Load to the CPU (the default) and let ``load_state_dict`` move the model and optimizer state to
    their device: RNG states must stay CPU byte tensors. The file is memory-mapped, so the entries named
    in ``skip`` (e.g. ``optimizer`` for ``eval`` and ``--init-from``) are dropped without being read.
    """
    p = Path(path)
    if p.is_dir():  # a run folder: take its newest checkpoint
        found = latest_checkpoint(p)
        if found is None:
            raise FileNotFoundError(f"{p}: no checkpoints/step-*.pt in this folder")
        p = found
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint not found")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 (any unpickling failure means: not our checkpoint)
        raise ValueError(f"{p}: cannot be read as a vidshard checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{p}: not a {FORMAT} checkpoint written by `vidshard train`")
    for key in skip:
        ckpt.pop(key, None)
    return ckpt


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as weights-only-loadable values."""
    np_state = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "python_gauss": random.getstate()[2],
             "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s values; torch takes generator states only as CPU byte tensors."""
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].cpu().numpy().astype(np.uint32), state["numpy_pos"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


_DROP_PREFIXES = ("decoder", "head", "mask_token")


def encoder_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder weights of a checkpoint (supervised, MAE or clip) under ``VideoViT`` names:
    ``encoder.`` prefix stripped, decoder / head / mask-token keys dropped, and where an ``encoder.``
    exists everything beside it (a clip model's text tower and projections)."""
    out = {}
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    if any(k.startswith("encoder.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith("encoder.")}
    for k, v in state.items():
        if any(k.startswith(p) for p in _DROP_PREFIXES):
            continue
        if k.startswith("encoder."):
            k = k.removeprefix("encoder.")
            if k.startswith("head"):
                continue
        out[k] = v
    return out


def load_encoder(model: nn.Module, path: str | Path) -> list[str]:
    """Start ``model`` (a VideoViT) from the encoder in checkpoint ``path``; returns the keys left at
    their fresh init (the new head, a class token the source lacked). Raises on any other mismatch.

    ``path`` may also hold image-CLIP vision weights, inflated into a ``--vit-arch clip`` video tower."""
    from .inflate import inflate_image_clip, read_image_clip

    if (vision := read_image_clip(path)) is not None:
        inflate_image_clip(model, vision, str(path))
        return []
    state = encoder_state(load_checkpoint(path, skip=("optimizer", "rng")))
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path}: encoder weights do not fit this model ({bad[:3]} differ in shape); "
                         "use the same --model preset, frames and size as the pretraining run")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("head", "cls_token"))]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: encoder weights do not fit this model (missing {missing[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]})")
    return list(result.missing_keys)
