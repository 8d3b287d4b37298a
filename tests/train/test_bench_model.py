"""``bench model``'s GPU arithmetic on the CPU: FLOPs per training step, TFLOP/s and MFU, the peak table,
and the largest-batch search."""

from __future__ import annotations

import math

import pytest
from vidshard.benchmarks.model import (
    ModelBenchConfig,
    flops_per_clip,
    largest_batch,
    peak_tflops_for,
    throughput,
    train_flops_per_clip,
)
from vidshard.train.model import ViTConfig


@pytest.mark.parametrize("capacity", [0, 1, 2, 3, 37, 64, 255, 256, 1000, 5000])
def test_largest_batch_finds_the_capacity_in_log_steps(capacity: int) -> None:
    tried: list[int] = []

    def fits(b: int) -> bool:
        tried.append(b)
        return b <= capacity

    assert largest_batch(fits, limit=4096) == min(capacity, 4096)
    assert len(tried) <= 2 * math.ceil(math.log2(4096)) + 1
    assert all(1 <= b <= 4096 for b in tried)


def test_peaks_by_gpu_name() -> None:
    assert peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops_for("NVIDIA L4") == 121.0 and peak_tflops_for("NVIDIA L40S") == 362.0
    assert peak_tflops_for("Tesla V100-SXM2-16GB") is None  # no bf16 tensor cores: give --peak-tflops


def test_training_flops_tflops_and_mfu() -> None:
    vit = ViTConfig.from_preset("vit-b", frames=16, img_size=224, num_classes=400)
    sup = train_flops_per_clip("supervised", vit)
    assert sup == 3 * flops_per_clip(vit) and 1.0e12 < sup < 1.2e12  # the README's ~1.08 TFLOP per clip
    mae = train_flops_per_clip("mae", vit.with_(num_classes=0), mask_ratio=0.9)
    assert 0.1 * sup < mae < 0.5 * sup  # the encoder sees a tenth of the tokens; the decoder is light
    cfg = ModelBenchConfig(model="vit-b", batch_size=8)
    row = {"objective": "supervised", "step_s": 0.5}
    out = throughput(row, cfg, peak_tflops=312.0)
    assert out["tflops"] == pytest.approx(8 * sup / 0.5 / 1e12)
    assert out["mfu"] == pytest.approx(out["tflops"] / 312.0)
    assert throughput(row, cfg, peak_tflops=None)["mfu"] is None
    with pytest.raises(ValueError, match="peak_tflops"):
        ModelBenchConfig(peak_tflops=0)


def test_cli_help_names_the_gpu_options() -> None:
    from typer.testing import CliRunner
    from vidshard.cli import app

    runner = CliRunner()
    text = runner.invoke(app, ["bench", "model", "--help"], terminal_width=200).output
    assert "--peak-tflops" in text and "--fit" in text and "largest batch" in text
    text = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    assert "--beta2" in text and "AdamW beta2" in text
