"""Evidence that ``--objective clip`` learns: clips described by colour, shape and direction words;
held-out clips show new combinations of the same words. After a short CPU run, held-out text-to-video
recall@1 is far above chance and zero-shot direction classification beats chance widely."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from vidshard.preprocess.ffmpeg import Synth, synth_video
from vidshard.shards.schema import Manifest, SampleMeta, sample_members, video_id
from vidshard.shards.writer import ShardWriter
from vidshard.train.config import EvalConfig, TrainConfig
from vidshard.train.evaluate import evaluate
from vidshard.train.loop import train

COLOURS = {"red": "0xff2020", "blue": "0x4060ff"}
SHAPES = {"square": (16, 16), "bar": (30, 8)}  # (width, height) of the moving box
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
SPEED = 60.0  # pixels per second
# Combinations never seen in training (one direction per colour and shape); every word, and every pair of
# words, still appears in training in other combinations.
HELD_OUT = {("red", "square", "left"), ("red", "bar", "up"), ("blue", "square", "right"),
            ("blue", "bar", "down")}
PROMPTS = tuple(f"{c} {s} moving {{}}" for c in COLOURS for s in SHAPES)  # averaged: direction only


def caption(colour: str, shape: str, direction: str) -> str:
    return f"{colour} {shape} moving {direction}"


def captioned_shardset(folder: Path, combos: list[tuple[str, str, str]], per_combo: int, seed: int,
                       size: int = 64) -> Path:
    """A shard set of moving coloured boxes, captioned with their words, labeled by direction."""
    rng = random.Random(seed)
    names = list(DIRECTIONS)
    writer, infos, n = ShardWriter(folder, max_bytes=1 << 40), [], 0
    for i, (colour, shape, direction) in itertools.product(range(per_combo), combos):
        (w, h), (dx, dy) = SHAPES[shape], DIRECTIONS[direction]
        rel = f"{colour}_{shape}_{direction}_{seed}_{i}.mp4"
        path = synth_video(folder.parent / f"{folder.name}_raw" / rel, Synth(
            pattern="moving", seconds=1.0, fps=25.0, width=size, height=size, box=w, box_height=h,
            color=COLOURS[colour], velocity=(dx * SPEED, dy * SPEED), gop=8,
            start=(rng.uniform(0, size - w), rng.uniform(0, size - h))))
        meta = SampleMeta(video=rel, video_id=video_id(rel), chunk=0, start_s=0.0, end_s=1.0, frames=25,
                          fps=25.0, width=size, height=size, label=names.index(direction),
                          label_name=direction, caption=caption(colour, shape, direction))
        infos += writer.write(sample_members(meta, path.read_bytes()))
        n += 1
        if n % 12 == 0:
            infos.append(writer.close())
    if (last := writer.close()) is not None:
        infos.append(last)
    manifest = Manifest(settings={"synthetic": "captioned boxes", "seed": seed}, shards=infos, classes=names)
    manifest.totals.update(videos=n, samples=n, seconds=float(n))
    manifest.save(folder)
    return folder


def word_tokenizer(path: Path) -> Path:
    """A word-level tokenizer over the captions' words (built offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [*COLOURS, *SHAPES, *DIRECTIONS, "moving"]
    specials = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def captioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(train set: 12 combinations x 4 clips, held-out set: 4 new combinations x 6 clips, tokenizer)."""
    root = tmp_path_factory.mktemp("captioned")
    combos = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))
    train_set = captioned_shardset(root / "train", [c for c in combos if c not in HELD_OUT], 4, seed=1)
    held_out = captioned_shardset(root / "held_out", sorted(HELD_OUT), 6, seed=2)
    return train_set, held_out, word_tokenizer(root / "tokenizer.json")


def run_evidence(captioned: tuple[Path, Path, Path], out: Path, steps: int, seed: int = 0) -> dict:
    """Train a vit-t4 dual encoder for ``steps`` (training seed ``seed``) and evaluate retrieval and
    zero-shot direction on the held-out set.

    lr 5e-4 and 4 blocks: with 12 blocks (vit-t) at lr 1e-3 the loss stalls at ln 8 (only the colour
    is learned, train-set R@1 17%); at lr 3e-4 12 blocks learn, but less in the same CPU time.
    """
    train_set, held_out, tok = captioned
    cfg = TrainConfig(data=str(train_set), out=str(out), objective="clip", model="vit-t4", text_model="tiny",
                      tokenizer=str(tok), frames=8, stride=2, size=32, crop_scale=(0.6, 1.0), flip=False,
                      batch_size=16, steps=steps, lr=5e-4, warmup_steps=10, log_every=10,
                      ckpt_every=steps, workers=0, progress=False, threads=1, seed=seed)
    train(cfg)
    ec = EvalConfig(data=str(held_out), checkpoint=str(out), retrieval=True, zero_shot=True, prompts=PROMPTS,
                    temporal_views=1, spatial_views=1, workers=0, progress=False, threads=1)
    return evaluate(ec)


def test_clip_learns_words_it_never_saw_together(captioned: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The short version (120 steps, about 35 CPU-seconds): the loss falls and held-out text-to-video
    retrieval is above chance already."""
    from vidshard.train.metrics import read_metrics

    result = run_evidence(captioned, tmp_path / "run", steps=120)
    r = result["retrieval"]
    assert (r["clips"], r["texts"]) == (24, 4)  # held out: 4 new combinations x 6 clips
    # Chance: text->video R@1 = 1/4 (6 relevant clips of 24). Measured 0.75 (docs/clip.md).
    assert r["text_to_video"]["R@1"] >= 0.5, r
    losses = [m["loss"] for m in read_metrics(tmp_path / "run") if m["split"] == "train"]
    assert losses[-1] < 0.8 * losses[0], losses  # measured 2.61 -> 1.71
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["retrieval"]["mAP"] == pytest.approx(r["mAP"]) and "zero_shot" in saved


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clip_learns_words_it_never_saw_together_long(captioned: tuple[Path, Path, Path], tmp_path: Path,
                                                      seed: int) -> None:
    """Issue 11's criterion, per training seed: 400 steps, about 105 CPU-seconds each (docs/clip.md)."""
    result = run_evidence(captioned, tmp_path / "run", steps=400, seed=seed)
    r, z = result["retrieval"], result["zero_shot"]
    # Chance: R@1 1/4 both ways (text->video: 6 relevant clips of 24; video->text: 1 of 4 captions);
    # zero-shot: 1/4 (4 directions, each in a colour-shape combination never seen with it).
    assert r["text_to_video"]["R@1"] >= 3 * 0.25, r  # measured 1.0 on seeds 0, 1 and 2
    assert r["video_to_text"]["R@1"] >= 2 * 0.25, r  # measured 0.79-0.96
    assert z["chance"] == 0.25 and z["top1"] >= 2 * z["chance"], z  # measured 0.62-0.71


def test_demo_caption_list_describes_its_sample_videos(tmp_path: Path) -> None:
    from vidshard.demo import DemoConfig, make_samples, write_caption_list
    from vidshard.preprocess.inputs import list_inputs

    cfg = DemoConfig(out_dir=tmp_path, videos_per_class=2, seconds=1.0, workers=1)
    videos = make_samples(tmp_path / "videos", cfg)
    items = list_inputs(write_caption_list(tmp_path / "videos", cfg))
    assert {it.path for it in items} == {p.resolve() for p in videos if "broken" not in p.name}
    for it in items:
        assert it.label_name in it.caption and it.caption.startswith("a square moving")
        assert it.caption.endswith(("near the top", "near the bottom"))


def test_cli_trains_and_evaluates_a_clip_model(captioned: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner
    from vidshard.cli import app
    from vidshard.train.checkpoint import load_checkpoint

    train_set, held_out, tok = captioned
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(train_set), "--objective", "clip", "--text-model", "tiny",
                              "--tokenizer", str(tok), "--embed-dim", "64", "--out", str(out), "--steps", "2",
                              "--batch-size", "8", "--frames", "4", "--size", "32", "--workers", "0",
                              "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(out)
    assert ckpt["objective"] == "clip" and ckpt["model"]["video_proj.weight"].shape[0] == 64
    res = runner.invoke(app, ["eval", str(held_out), "--checkpoint", str(out), "--retrieval", "--zero-shot",
                              "--prompt", "red square moving {}", "--prompt", "blue bar moving {}",
                              "--temporal-views", "1", "--spatial-views", "2", "--workers", "0", "--quiet"],
                        terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "text -> video" in res.output and "zero-shot classification" in res.output
    saved = json.loads((out / "eval.json").read_text())
    assert saved["zero_shot"]["prompts"] == ["red square moving {}", "blue bar moving {}"]
    assert saved["views"] == {"temporal": 1, "spatial": 2} and saved["retrieval"]["clips"] == 24
    bad = runner.invoke(app, ["eval", str(held_out), "--checkpoint", str(out), "--workers", "0", "--quiet"])
    assert bad.exit_code == 2 and "--retrieval / --zero-shot" in bad.output


@pytest.mark.slow
def test_torchrun_two_ranks_train_a_clip_model(captioned: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from vidshard.train.metrics import read_metrics

    train_set, _, tok = captioned
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(sys.executable).parent / "vidshard"), "train", str(train_set), "--objective", "clip",
           "--tokenizer", str(tok), "--out", str(out), "--steps", "3", "--batch-size", "8", "--frames", "4",
           "--size", "32", "--workers", "0", "--device", "cpu", "--log-every", "1", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "deprecated" not in proc.stderr
    assert [m["step"] for m in read_metrics(out) if m["split"] == "train"] == [1, 2, 3]
