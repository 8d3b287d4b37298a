"""Training through the real loader: motion must be learned, a killed run resumes exactly, eval with views."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from vidshard.train.checkpoint import latest_checkpoint, load_checkpoint
from vidshard.train.config import EvalConfig, TrainConfig, build_config
from vidshard.train.evaluate import evaluate
from vidshard.train.loop import train
from vidshard.train.metrics import read_metrics

# Small clips (8 frames at stride 2, 32x32 crops of 64x64 videos) keep CPU steps cheap; no flips,
# since flipping would turn "left" into "right". One thread: test runs share the cores.
CLIP = dict(frames=8, stride=2, size=32, crop_scale=(0.5, 1.0), flip=False, workers=0, progress=False,
            threads=1)


def test_vit_t_learns_motion_direction_on_held_out_clips(motion_train: Path, motion_val: Path,
                                                          tmp_path: Path) -> None:
    cfg = TrainConfig(data=str(motion_train), val_data=str(motion_val), out=str(tmp_path / "run"),
                      model="vit-t", batch_size=8, steps=160, lr=1e-3, warmup_steps=10, label_smoothing=0.0,
                      log_every=10, ckpt_every=50, **CLIP)
    result = train(cfg)
    assert result.steps == 160 and result.val is not None
    assert result.val["top1"] >= 0.9, result.val
    # The run folder: config, metrics per interval, TensorBoard events, checkpoints.
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["model"] == "vit-t"
    records = read_metrics(run)
    train_recs = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_recs] == list(range(10, 161, 10))
    assert {"loss", "lr", "clips_per_s", "data_wait", "acc"} <= set(train_recs[0])
    assert 0 <= train_recs[-1]["data_wait"] <= 1 and train_recs[-1]["clips_per_s"] > 0
    assert train_recs[-1]["loss"] < train_recs[0]["loss"]
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    ckpts = [p.name for p in sorted((run / "checkpoints").iterdir())]
    assert ckpts == ["step-00000150.pt", "step-00000160.pt"]
    # eval: several views per sample, scores averaged; JSON written; per-class accuracy.
    ev = evaluate(EvalConfig(data=str(motion_val), checkpoint=str(result.checkpoint), temporal_views=2,
                             spatial_views=2, workers=0, threads=1, progress=False,
                             out=str(tmp_path / "ev.json")))
    assert ev["samples"] == 32 and ev["top1"] >= 0.9  # (top-5 of 4 classes is always 1: not checked)
    per_class = ev["per_class"]
    assert {k: v["samples"] for k, v in per_class.items()} == {"right": 8, "left": 8, "down": 8, "up": 8}
    assert sum(v["accuracy"] * v["samples"] for v in per_class.values()) == pytest.approx(ev["top1"] * 32)
    assert json.loads((tmp_path / "ev.json").read_text())["top1"] == ev["top1"]


# Logits of two views per sample (7 classes; -30 is "never"). The answer is the class whose softmax
# probability, averaged over the views, is highest; each sample defeats a wrong way of combining views.
VIEW_LOGITS = [
    # label 1: the views' favourites (0, then 2) lose to the class both views like: not first/last view only
    (1, [[-0.916, -1.050, -30, -1.386, -30, -30, -30], [-30, -1.050, -0.916, -1.386, -30, -30, -30]]),
    # label 0: very sure in view 1, "never" in view 2; averaged logits would pick class 1 instead
    (0, [[10, 7, -30, -30, -30, -30, -30], [-30, 7, 7.5, -30, -30, -30, -30]]),
    # label 6: ranked last by both views: a top-1 and a top-5 miss
    (6, [[5, 4, 3, 2, 1, 0, -1], [5, 4, 3, 2, 1, 0, -1]]),
    # label 4: ranked fifth: a top-1 miss, a top-5 hit
    (4, [[5, 4, 3, 2, 1, 0, -1], [5, 4, 3, 2, 1, 0, -1]]),
    # label 1 again, ranked second: class 1 has one hit in two samples
    (1, [[0, 4, 0, 5, 0, 0, 0], [0, 4, 0, 5, 0, 0, 0]]),
]


class _ViewTable(torch.nn.Module):
    """A "model" that returns the logits of the view it is shown: every pixel of view ``i`` holds ``i``."""

    def __init__(self, table: torch.Tensor) -> None:  # (views, K)
        from vidshard.train.data import normalize

        super().__init__()
        self.table = table
        ids = torch.arange(len(table), dtype=torch.uint8).view(-1, 1, 1, 1, 1).expand(-1, 3, 1, 1, 1)
        self.keys = normalize(ids, torch.device("cpu"))[:, 0, 0, 0, 0]  # (views,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, T, H, W) -> (N, K)
        return self.table[(x[:, 0, 0, 0, 0, None] - self.keys).abs().argmin(-1)]


def test_eval_averages_the_views_probabilities_and_counts_per_class() -> None:
    from vidshard.train.evaluate import evaluate_model

    table = torch.tensor([view for _, views in VIEW_LOGITS for view in views])  # (5 * 2, 7)
    video = torch.arange(10, dtype=torch.uint8).view(5, 2, 1, 1, 1, 1).expand(5, 2, 3, 2, 4, 4)
    batch = {"video": video.contiguous(), "label": torch.tensor([y for y, _ in VIEW_LOGITS])}
    res = evaluate_model(_ViewTable(table), [batch], torch.device("cpu"), [f"c{k}" for k in range(7)])
    # The first two samples really tell the ways apart (so this test can fail):
    probs, logits = table.softmax(-1).view(5, 2, 7), table.view(5, 2, 7)
    assert probs.mean(1).argmax(-1)[:2].tolist() == [1, 0]
    assert probs[:2, 0].argmax(-1).tolist() == [0, 0] and probs[:2, 1].argmax(-1).tolist() == [2, 2]
    assert logits.mean(1).argmax(-1)[1] == 1
    assert res["samples"] == 5 and res["top1"] == pytest.approx(2 / 5) and res["top5"] == pytest.approx(4 / 5)
    acc = {k: (v["accuracy"], v["samples"]) for k, v in res["per_class"].items()}
    assert acc == {"c0": (1.0, 1), "c1": (0.5, 2), "c2": (None, 0), "c3": (None, 0), "c4": (0.0, 1),
                   "c5": (None, 0), "c6": (0.0, 1)}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(run))["model"]


def test_killed_run_resumes_to_the_same_weights(motion_train: Path, tmp_path: Path) -> None:
    # 64 samples at batch 16: 4 batches per epoch, so the stop at step 3 lands mid-epoch and the
    # resumed run crosses an epoch boundary. drop_path exercises the restored RNG.
    base = dict(data=str(motion_train), batch_size=16, steps=7, lr=1e-3, warmup_steps=2, drop_path=0.1,
                log_every=1, ckpt_every=100, **CLIP)
    train(TrainConfig(out=str(tmp_path / "full"), **base))
    first = train(TrainConfig(out=str(tmp_path / "cut"), stop_after=3, **base))
    assert first.steps == 3 and latest_checkpoint(tmp_path / "cut").name == "step-00000003.pt"
    resumed = train(TrainConfig(out=str(tmp_path / "cut"), resume=True, **base))
    assert resumed.steps == 7
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "full")}
    resumed_losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "cut")}
    assert resumed_losses == pytest.approx(losses, rel=1e-4)
    ckpt = load_checkpoint(tmp_path / "cut")
    assert ckpt["step"] == 7 and ckpt["objective"] == "supervised" and ckpt["classes"][0] == "right"


def test_config_file_and_options(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\ndata = "shards/"\nmodel = "vit-s"\nbatch-size = 4\nlr = 1e-4\n')
    cfg = build_config(TrainConfig, toml, {"lr": 3e-4, "steps": None})
    assert (cfg.data, cfg.model, cfg.batch_size, cfg.lr, cfg.steps) == ("shards/", "vit-s", 4, 3e-4, None)
    toml.write_text('data = "x"\nlearning_rate = 1\n')
    with pytest.raises(ValueError, match="unknown option.*learning_rate"):
        build_config(TrainConfig, toml, {})
    with pytest.raises(ValueError, match="no shard set given"):
        build_config(TrainConfig, None, {"data": None})
    with pytest.raises(ValueError, match="unknown model preset"):
        TrainConfig(data="x", model="vit-q")


def test_supervised_training_refuses_an_unlabeled_shard_set(motion_train: Path, tmp_path: Path) -> None:
    from vidshard.shards.schema import Manifest

    m = Manifest.load(motion_train)
    m.classes = None
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    for s in m.shards:
        (folder / s.name).symlink_to(motion_train / s.name)
    m.save(folder)
    with pytest.raises(ValueError, match="needs a labeled shard set"):
        train(TrainConfig(data=str(folder), out=str(tmp_path / "run"), steps=1, **CLIP))


def test_cli_help_lists_the_options() -> None:
    from typer.testing import CliRunner
    from vidshard.cli import app

    runner = CliRunner()
    text = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    for opt in ("--model", "--frames", "--stride", "--size", "--batch-size", "--epochs", "--steps", "--lr",
                "--workers", "--out", "--seed", "--val", "--config", "--resume", "--init-from", "--no-flip",
                "--follow"):
        assert opt in text, opt
    assert "Peak learning rate" in text  # help texts come from TrainConfig's field docs
    text = runner.invoke(app, ["eval", "--help"], terminal_width=200).output
    assert "--checkpoint" in text and "--temporal-views" in text
    text = runner.invoke(app, ["bench", "model", "--help"], terminal_width=200).output
    assert "--json" in text and "--model" in text
    bad = runner.invoke(app, ["train", "nowhere/", "--model", "vit-q"])
    assert bad.exit_code == 2 and "unknown model preset" in bad.output


def test_sigkilled_cli_run_resumes_to_the_same_weights(motion_train: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    vidshard = str(Path(sys.executable).parent / "vidshard")
    args = [str(motion_train), "--steps", "8", "--batch-size", "16", "--frames", "8", "--stride", "2",
            "--size", "32", "--crop-scale", "0.5", "1.0", "--no-flip", "--workers", "0", "--threads", "1",
            "--lr", "1e-3", "--warmup-steps", "2", "--log-every", "1", "--ckpt-every", "2", "--quiet"]
    cut = tmp_path / "cut"
    proc = subprocess.Popen([vidshard, "train", *args, "--out", str(cut)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while latest_checkpoint(cut) is None or latest_checkpoint(cut).name < "step-00000004.pt":
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run, no chance to clean up
    proc.wait(timeout=60)
    killed_at = load_checkpoint(cut)["step"]
    assert 4 <= killed_at < 8
    subprocess.run([vidshard, "train", *args, "--out", str(cut), "--resume"], check=True, timeout=300,
                   capture_output=True)
    subprocess.run([vidshard, "train", *args, "--out", str(tmp_path / "full")], check=True, timeout=300,
                   capture_output=True)
    a, b = _weights(tmp_path / "full"), _weights(cut)
    assert load_checkpoint(cut)["step"] == 8
    steps = [r["step"] for r in read_metrics(cut)]
    assert steps == list(range(1, 9))  # lines logged after the checkpoint, before the kill, are dropped
    full_losses = [r["loss"] for r in read_metrics(tmp_path / "full")]
    assert [r["loss"] for r in read_metrics(cut)] == pytest.approx(full_losses, rel=1e-4)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
