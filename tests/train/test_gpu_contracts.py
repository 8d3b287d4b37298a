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


def test_the_sync_counter_sees_what_makes_a_gpu_wait() -> None:
    from .host_syncs import HostSyncCounter

    x = torch.randn(8)
    for read_back in (lambda: x.sum().item(), lambda: bool(torch.isfinite(x).all()), lambda: float(x.max()),
                      lambda: x[x > 0], lambda: x.tolist(), lambda: (x > 0).nonzero()):
        with HostSyncCounter() as c:
            read_back()
        assert c.syncs, read_back
    with HostSyncCounter(ignore=(x,)) as c:
        x.sum(), x.add_(1), x.max()  # queued work only; and an ignored tensor's item()
        x.tolist()
    assert c.syncs == []


def test_steps_do_not_wait_for_the_gpu_except_to_log(motion_train: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every host sync of a run (loading batches excluded) happens at a logging step: none inside
    ``train_step``, none between two logs. MAE, padding clips and drop path included."""
    from torch.utils._python_dispatch import _disable_current_modes
    from vidshard.train import loop

    from .host_syncs import HostSyncCounter

    calls = {"step": 0, "inside": False}
    real_step, real_batches = loop.train_step, loop._batches

    def step(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["inside"] = True
        counter.optimizer = args[3]  # AdamW's step counters stay on the host
        before = len(counter.syncs)
        out = real_step(*args, **kwargs)
        inside.extend(counter.syncs[before:])
        calls["step"] += 1
        calls["inside"] = False
        return out

    def batches(run):  # noqa: ANN001, ANN202  (the loader works on the host by design)
        gen = real_batches(run)
        while True:
            with _disable_current_modes():
                item = next(gen)
            yield item

    class AtStep(HostSyncCounter):
        def _record(self, op: str) -> None:
            super()._record(op)
            self.syncs[-1] = (*self.syncs[-1], calls["step"])

    inside: list = []
    monkeypatch.setattr(loop, "train_step", step)
    monkeypatch.setattr(loop, "_batches", batches)
    cfg = TrainConfig(data=str(motion_train), out=str(tmp_path / "run"), objective="mae", steps=6,
                      log_every=3, ckpt_every=100, drop_path=0.1, mask_ratio=0.75, decoder_dim=32,
                      decoder_depth=1, **{**CLIP, "batch_size": 24})  # 64 clips: the last batch is padded
    with AtStep() as counter:
        loop.train(cfg)
    assert inside == [], inside[:5]
    assert {s[2] for s in counter.syncs} <= {0, 3, 6}, [s for s in counter.syncs if s[2] not in (0, 3, 6)][:5]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_gpu_suite_refuses_to_pass_without_a_gpu() -> None:
    import os
    import subprocess
    import sys

    import vidshard

    root = Path(vidshard.__file__).parent
    bin_dir = str(Path(sys.executable).parent)
    make = subprocess.run(["make", "-s", "-o", ".venv/.installed", f"BIN={bin_dir}", "test-gpu"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert make.returncode != 0 and "no CUDA device" in make.stderr, make.stderr
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"]
    enabled = subprocess.run(pytest_cmd, cwd=root, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "VIDSHARD_GPU_TESTS": "1"})
    assert enabled.returncode != 0 and "no CUDA device" in enabled.stdout + enabled.stderr
    # Without VIDSHARD_GPU_TESTS=1 the suite is not collected: were it collected, this very `make test`
    # run would stop at tests/gpu's "no CUDA device" exit.
