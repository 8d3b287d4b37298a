"""GPU contracts checked on the CPU: resume with a non-CPU device (simulated by ``meta``), eval and
``--init-from`` loading only what they use, ``--device cuda`` under torchrun, no host sync in a step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vidshard.train.checkpoint import latest_checkpoint, load_checkpoint, set_rng_state
from vidshard.train.config import TrainConfig
from vidshard.train.distributed import DistInfo, pick_device
from vidshard.train.evaluate import model_from_checkpoint
from vidshard.train.loop import _setup, train

CLIP = dict(frames=4, stride=2, size=32, crop_scale=(0.5, 1.0), flip=False, workers=0, progress=False,
            threads=1, model="vit-t", batch_size=8)
META = torch.device("meta")  # stands in for cuda:N: tensors that are not on the CPU


@pytest.fixture(scope="module")
def short_run(motion_train: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    """A 2-step supervised run with a checkpoint at step 2 (drop path: the RNG state matters)."""
    cfg = TrainConfig(data=str(motion_train), out=str(tmp_path_factory.mktemp("short") / "run"), steps=4,
                      stop_after=2, drop_path=0.1, log_every=1, **CLIP)
    assert train(cfg).steps == 2
    return cfg


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_resume_onto_a_non_cpu_device_keeps_rng_states_on_the_cpu(short_run: TrainConfig) -> None:
    """A checkpoint loaded with ``map_location=cuda:N`` turned the RNG states into CUDA tensors, which
    ``torch.set_rng_state`` refuses. Model and optimizer state must still end up on the device."""
    from dataclasses import replace

    run = _setup(replace(short_run, resume=True), DistInfo(0, 1, 0, META))
    assert run.step == 2
    assert all(p.device == META for p in run.model.parameters())
    state = next(iter(run.optimizer.state.values()))
    assert state["exp_avg"].device == META  # moved to the parameters' device by load_state_dict
    assert run.rng["torch"].device.type == "cpu" and run.rng["torch"].dtype == torch.uint8
    set_rng_state(run.rng)


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_eval_and_init_from_load_no_optimizer_state(short_run: TrainConfig) -> None:
    path = latest_checkpoint(short_run.out)
    assert "optimizer" in load_checkpoint(path)
    model, _, ckpt = model_from_checkpoint(path, META)
    assert "optimizer" not in ckpt and "rng" not in ckpt
    assert all(p.device == META for p in model.parameters())
    assert set(load_checkpoint(path, skip=("optimizer", "rng"))) == set(ckpt) | {"model"}


def test_bare_cuda_under_torchrun_means_this_ranks_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert pick_device("auto", local_rank=2) == torch.device("cuda", 2)
    assert pick_device("cuda:1", local_rank=3) == torch.device("cuda", 1)  # an explicit index is kept
    assert pick_device("cpu", local_rank=3) == torch.device("cpu")
