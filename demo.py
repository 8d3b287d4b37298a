"""`vidshard demo` / `make demo`: the main job on a built-in sample, one step at a time.

Step 1 generates a small folder of sample videos (several codecs and containers,
sizes and frame rates, two classes: a white square moving left or right, so a
model can only tell them apart from motion, plus one deliberately broken file).
Step 2 preprocesses it into a shard set with ``--labels-from-dirs`` and prints the
summary. Later steps (train briefly, evaluate) are appended in :func:`run_demo`; the
last one preprocesses the same videos from a list with captions and trains a small
video-text model on them (``--objective clip``), printing a retrieval table.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from vidshard.preprocess.config import PreprocessConfig
from vidshard.preprocess.ffmpeg import Synth, synth_video
from vidshard.preprocess.run import PreprocessResult, preprocess

# (extension, codec, width, height, fps): one source per line, cycled over the videos of each class.
SOURCES = [
    ("mp4", "h264", 320, 240, 25.0),
    ("avi", "mpeg4", 240, 180, 30.0),
    ("webm", "vp9", 256, 144, 24.0),
    ("mov", "mjpeg", 176, 144, 15.0),
    ("ogv", "theora", 320, 180, 25.0),
    ("mkv", "vp8", 200, 150, 20.0),
]
CLASSES = {"left": -1.0, "right": 1.0}


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Where the demo writes and how big it is."""

    out_dir: Path = Path("demo-out")
    """Everything goes here: ``videos/`` (the sample) and ``shards/`` (the shard set)."""
    videos_per_class: int = 6
    """Sample videos per class."""
    seconds: float = 4.0
    """Length of each sample video."""
    workers: int = 0
    """Encoding processes (0 = all cores)."""
    seed: int = 0
    """Seed for the squares' start positions and speeds."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.videos_per_class < 1 or self.seconds <= 0:
            raise ValueError("videos_per_class must be >= 1 and seconds > 0")


@dataclass
class DemoResult:
    """What each step produced (later steps add their own entries to ``steps``)."""

    videos: Path
    """The sample folder."""
    shards: Path
    """The shard set."""
    preprocess: PreprocessResult | None = None
    """Step 2's result."""
    steps: dict[str, Any] = field(default_factory=dict)
    """Results of further steps by name."""


def make_samples(folder: Path, cfg: DemoConfig) -> list[Path]:
    """Step 1: the sample videos (kept if already there, so a re-run is quick)."""
    rng = random.Random(cfg.seed)
    paths = []
    for label, direction in CLASSES.items():
        for i in range(cfg.videos_per_class):
            ext, codec, w, h, fps = SOURCES[i % len(SOURCES)]
            speed = rng.uniform(30, 60) * direction
            spec = Synth(seconds=cfg.seconds, fps=fps, width=w, height=h, codec=codec, pattern="moving",
                         velocity=(speed * w / 320, 0.0), start=(rng.uniform(0, w), rng.uniform(0, h - 40)),
                         box=max(16, h // 6))
            path = folder / label / f"{label}_{i:02d}_{codec}.{ext}"
            if not path.exists():
                synth_video(path, spec)
            paths.append(path)
    broken = folder / "right" / "broken_download.mp4"
    broken.write_bytes(b"<html>404 Not Found</html>\n")  # shows up in failures.jsonl, never stops the run
    return [*paths, broken]


def caption_of(label: str, y: float, height: int) -> str:
    """What a sample video shows, in words: which way the square moves and where it runs."""
    where = "top" if y < (height - 40) / 2 else "bottom"
    return f"a square moving {label} near the {where}"


def word_tokenizer(captions: list[str], path: Path) -> Path:
    """A word-level tokenizer of the captions' words (built offline, in milliseconds)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    words = sorted({w for c in captions for w in c.split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    tok.save(str(path))
    return path


def write_caption_list(folder: Path, cfg: DemoConfig) -> Path:
    """``videos/captions.csv``: path, label and caption of every sample video (the same draws as
    :func:`make_samples`), the input of the contrastive step."""
    import csv
    import io

    rng = random.Random(cfg.seed)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label", "caption"])
    for label in CLASSES:
        for i in range(cfg.videos_per_class):
            ext, codec, w, h, _ = SOURCES[i % len(SOURCES)]
            rng.uniform(30, 60), rng.uniform(0, w)  # speed and x, drawn as in make_samples
            y = rng.uniform(0, h - 40)
            writer.writerow([f"{label}/{label}_{i:02d}_{codec}.{ext}", label, caption_of(label, y, h)])
    path = folder / "captions.csv"
    path.write_text(buf.getvalue())
    return path


def preprocess_config(cfg: DemoConfig) -> PreprocessConfig:
    """Step 2's settings: the defaults, with short clips and a small short side for a quick demo."""
    return PreprocessConfig(input=cfg.out_dir / "videos", output=cfg.out_dir / "shards",
                            labels_from_dirs=True, chunk_seconds=2.0, min_chunk_seconds=1.0, short_side=128,
                            workers=cfg.workers, shard_size=1 << 16)  # a few shards, for loader workers


def run_demo(cfg: DemoConfig = DemoConfig(), console: Console | None = None) -> DemoResult:
    """Run every demo step in order and print what each did."""
    console = console or Console(stderr=True)
    result = DemoResult(videos=cfg.out_dir / "videos", shards=cfg.out_dir / "shards")

    console.rule("[bold]step 1: sample videos")
    files = make_samples(result.videos, cfg)
    console.print(f"{len(files)} files in {result.videos} ({len(CLASSES)} classes: {', '.join(CLASSES)}; "
                  f"codecs {', '.join(sorted({s[1] for s in SOURCES}))}; one broken file on purpose)")

    console.rule("[bold]step 2: vidshard preprocess")
    pp = preprocess_config(cfg)
    console.print(f"vidshard preprocess {pp.input} {pp.output} --labels-from-dirs --chunk-seconds "
                  f"{pp.chunk_seconds:g} --short-side {pp.short_side}", markup=False, highlight=False)
    result.preprocess = preprocess(pp, console=console)

    # == later steps (training engineer): train a ViT-T briefly on result.shards, evaluate it, and
    # == record what they return in result.steps["train"], result.steps["eval"].
    from vidshard.train.config import EvalConfig, TrainConfig
    from vidshard.train.evaluate import evaluate, print_table
    from vidshard.train.loop import train

    console.rule("[bold]step 3: vidshard train (vit-t, briefly)")
    # Left vs right is told apart by motion only, so no flips; small clips keep CPU steps short.
    tc = TrainConfig(data=str(result.shards), out=str(cfg.out_dir / "run"), model="vit-t", frames=8, stride=6,
                     size=48, crop_scale=(0.6, 1.0), flip=False, batch_size=8, steps=120, lr=1e-3,
                     warmup_steps=10, label_smoothing=0.0, log_every=10, ckpt_every=50, threads=1,
                     workers=min(2, cfg.workers or 2))
    console.print(f"vidshard train {tc.data} --out {tc.out} --model vit-t --frames 8 --stride 6 --size 48 "
                  "--crop-scale 0.6 1.0 --no-flip --batch-size 8 --steps 120 --lr 1e-3 --warmup-steps 10 "
                  "--label-smoothing 0 --threads 1", markup=False, highlight=False)
    result.steps["train"] = train(tc)
    console.print(f"{result.steps['train'].steps} steps; metrics in {tc.out}/metrics.jsonl, TensorBoard "
                  f"events in {tc.out}/tb, checkpoint {result.steps['train'].checkpoint}")

    console.rule("[bold]step 4: vidshard eval")
    ec = EvalConfig(data=str(result.shards), checkpoint=str(result.steps["train"].checkpoint),
                    temporal_views=2, spatial_views=1, workers=tc.workers, threads=1)
    console.print("(on the demo's own shard set: a sanity check that training worked, not a held-out "
                  "score)")
    result.steps["eval"] = evaluate(ec)
    print_table(result.steps["eval"], console)

    run_clip_step(cfg, result, console)
    return result


def run_clip_step(cfg: DemoConfig, result: DemoResult, console: Console) -> None:
    """Step 5: the same videos with captions (a CSV list), a short contrastive run whose video tower
    starts from step 3's classifier (``--init-from``), retrieval and zero-shot evaluation as tables."""
    from vidshard.train.clip_eval import print_clip_result
    from vidshard.train.config import EvalConfig, TrainConfig
    from vidshard.train.evaluate import evaluate
    from vidshard.train.loop import train

    console.rule("[bold]step 5: video-text contrastive training (--objective clip, briefly)")
    listing = write_caption_list(result.videos, cfg)
    pp = PreprocessConfig(input=listing, output=cfg.out_dir / "captioned", chunk_seconds=2.0,
                          min_chunk_seconds=1.0, short_side=64, workers=cfg.workers, shard_size=1 << 16,
                          quiet=True)
    console.print(f"vidshard preprocess {listing} {pp.output} --chunk-seconds 2 --short-side 64   "
                  f"# a list with path,label,caption", markup=False, highlight=False)
    preprocess(pp, console=Console(quiet=True))
    captions = [row.split(",")[2] for row in listing.read_text().splitlines()[1:]]
    tok = word_tokenizer(captions, cfg.out_dir / "tokenizer.json")
    tc = TrainConfig(data=str(pp.output), out=str(cfg.out_dir / "clip-run"), objective="clip", model="vit-t",
                     text_model="tiny", tokenizer=str(tok), frames=8, stride=6, size=48,
                     crop_scale=(0.6, 1.0), flip=False, batch_size=8, steps=40, lr=1e-3, warmup_steps=5,
                     log_every=10, ckpt_every=40, threads=1, workers=min(2, cfg.workers or 2), progress=False,
                     init_from=str(cfg.out_dir / "run"))
    console.print(f"vidshard train {tc.data} --objective clip --init-from {tc.init_from} --text-model tiny "
                  f"--tokenizer {tok} --out {tc.out} --frames 8 --stride 6 --size 48 --no-flip "
                  "--batch-size 8 --steps 40 --lr 1e-3 --threads 1   # tokenizer.json: the captions' words",
                  markup=False, highlight=False)
    result.steps["clip_train"] = train(tc)
    ec = EvalConfig(data=str(pp.output), checkpoint=tc.out, retrieval=True, zero_shot=True,
                    prompts=("a square moving {} near the top", "a square moving {} near the bottom"),
                    temporal_views=1, spatial_views=1, workers=tc.workers, threads=1, progress=False)
    console.print(f"vidshard eval {ec.data} --checkpoint {ec.checkpoint} --retrieval --zero-shot "
                  "--prompt 'a square moving {} near the top' --prompt 'a square moving {} near the bottom'",
                  markup=False, highlight=False)
    console.print("(on the captions it trained on, after 40 steps from step 3's video encoder: a sanity "
                  "check, not a benchmark)")
    result.steps["clip_eval"] = evaluate(ec)
    print_clip_result(result.steps["clip_eval"], console)
