"""Configs of ``vidshard train`` and ``vidshard eval``: frozen, keyword-only, validated.

``cli.py`` takes its option defaults from these dataclasses; ``--config FILE.toml``
gives the same fields (command-line options override the file).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

OBJECTIVES = ("supervised", "mae", "clip")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run decides; written to ``RUN/config.json`` and into every checkpoint."""

    data: str
    """Shard set to train on: folder, ``manifest.json`` path or ``http(s)://`` URL."""
    val_data: str | None = None
    """Shard set to validate on (top-1/top-5 every ``eval_every`` steps and at the end)."""
    out: str = "runs/train"
    """Run folder: config.json, metrics.jsonl, TensorBoard events, checkpoints/."""
    objective: str = "supervised"
    """``supervised`` (classification from the shard set's labels), ``mae`` (masked pretraining) or ``clip``
    (video-text contrastive, from the samples' captions)."""
    model: str = "vit-t"
    """Model preset: ``vit-t``, ``vit-s``, ``vit-b`` or ``vit-l``; ``vit-t4`` (ViT-T with 4 blocks) for CPU
    runs."""
    frames: int = 16
    """Frames per clip."""
    stride: int = 4
    """Take every ``stride``-th frame."""
    size: int = 224
    """Square crop side in pixels (a multiple of the 16-pixel patch)."""
    clips_per_sample: int = 1
    """Clips cut from each decoded sample per epoch (amortises decoding)."""
    crop_scale: tuple[float, float] = (0.08, 1.0)
    """Random resized crop: range of the crop's area as a fraction of the frame."""
    flip: bool = True
    """Random horizontal flips; turn off when labels depend on left/right (e.g. motion direction)."""
    batch_size: int = 8
    """Clips per step on each process."""
    epochs: int = 1
    """Passes over the shard set (ignored when ``steps`` is given)."""
    steps: int | None = None
    """Total optimizer steps; overrides ``epochs``."""
    lr: float = 5e-4
    """Peak learning rate (after warm-up)."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int | None = None
    """Linear warm-up steps; default 5% of the total."""
    weight_decay: float = 0.05
    """AdamW weight decay (not applied to biases, norms, positional embeddings, class token)."""
    beta2: float | None = None
    """AdamW beta2; default: the objective's (0.95 for ``mae`` as in VideoMAE, 0.999 otherwise)."""
    label_smoothing: float = 0.1
    """Cross-entropy label smoothing (supervised)."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""
    layer_decay: float = 1.0
    """Layer-wise learning-rate decay for fine-tuning (1.0 = off; 0.75 is usual after MAE)."""
    drop_path: float = 0.0
    """Stochastic depth rate at the last block."""
    pos_embed: str = "sincos"
    """Positional embedding: ``sincos`` (fixed) or ``learned``."""
    pool: str = "mean"
    """Head pooling: ``mean`` or ``cls``."""
    grad_checkpointing: bool = False
    """Recompute block activations in backward to save memory."""
    attn_impl: str = "auto"
    """Attention kernel: ``auto``, ``flash``, ``sdpa`` or ``reference``."""
    init_from: str | None = None
    """Checkpoint whose encoder weights start the model (decoder and head dropped, new head); for clip also
    image-CLIP vision weights (a CLIPVisionModel state dict), inflated into the video tower (--vit-arch
    clip)."""
    mask_ratio: float = 0.9
    """MAE: share of tubes masked."""
    decoder_dim: int = 192
    """MAE: decoder width."""
    decoder_depth: int = 4
    """MAE: decoder blocks."""
    text_model: str = "tiny"
    """clip: text tower, a preset (``tiny``, ``clip-b16``: fresh weights) or a folder / hub name of a
    pretrained CLIP text model (e.g. ``openai/clip-vit-base-patch16``)."""
    tokenizer: str | None = None
    """clip: a tokenizer.json file, a folder with one, or a hub name (default: the text model's own; a
    byte-level one for a preset)."""
    embed_dim: int = 0
    """clip: width of the shared video-text embedding (0: 256 for vit-t, 384 vit-s, 512 vit-b, 768 vit-l)."""
    vit_arch: str = "vidshard"
    """clip: video tower layout, ``vidshard`` or ``clip`` (CLIP's image tower: pre-norm, QuickGELU, class
    token, learned positions), needed to start from image-CLIP weights with --init-from."""
    workers: int = 2
    """Data-loading worker processes per training process (0 = in the main process)."""
    cache_dir: str | None = None
    """Where shards from an ``http(s)://`` or object-storage (``s3://``, ``gs://``, ``hf://``) shard set are
    cached (object storage default: ``~/.cache/vidshard``)."""
    cache_limit: str | None = None
    """Most the cache may hold, e.g. ``20G`` or ``500M``; least-recently-used shards not in use are evicted
    (and downloaded again when needed). Default: no limit."""
    timeout: float = 60.0
    """http(s) shard sets: seconds a connection or read may stall; a shard's whole transfer must end
    within this plus its size at 256 KiB/s (a hung or dripping server fails, it never waits forever)."""
    follow: bool = False
    """A growing shard set (``preprocess --watch``): each epoch takes in the shards added since the last
    (``--epochs`` counts batches at the start, so bound such a run with ``--steps``)."""
    seed: int = 0
    """Seed of the model init, data order, crops and masks."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    threads: int = 0
    """CPU threads for the model's math in each process (0 = torch's default, one per core); use 1
    when other busy processes share the cores, where spinning thread pools slow each other down."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    compile: bool = False
    """Wrap the model in ``torch.compile``."""
    log_every: int = 10
    """Write metrics.jsonl / TensorBoard every N steps."""
    ckpt_every: int = 200
    """Save a checkpoint every N steps (and always at the end)."""
    eval_every: int = 0
    """Validate every N steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep (the newest)."""
    resume: bool = False
    """Continue from the newest checkpoint in ``out``."""
    stop_after: int | None = None
    """Stop this invocation after this many steps (with a checkpoint), e.g. for time-boxed jobs."""
    progress: bool = True
    """Show the rich progress bar."""

    def __post_init__(self) -> None:
        from .model import ATTN_IMPLS, PRESETS  # here, so `vidshard --help` does not import torch

        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))  # TOML and JSON give lists
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.model not in PRESETS:
            raise ValueError(f"unknown model preset {self.model!r}; choose one of {sorted(PRESETS)}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        if self.size % 16:
            raise ValueError(f"size {self.size} must be a multiple of the 16-pixel patch")
        if self.frames < 2 or self.frames % 2:
            raise ValueError(f"frames {self.frames} must be even (tubelets of 2 frames)")
        for name in ("stride", "batch_size", "epochs", "log_every", "ckpt_every", "clips_per_sample",
                     "decoder_dim", "decoder_depth", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.beta2 is not None and not 0 < self.beta2 < 1:
            raise ValueError(f"beta2 must be in (0, 1), got {self.beta2}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.drop_path < 1:
            raise ValueError("label_smoothing and drop_path must be in [0, 1)")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale {self.crop_scale} must satisfy 0 < min <= max <= 1")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.vit_arch not in ("vidshard", "clip"):
            raise ValueError(f"vit_arch must be 'vidshard' or 'clip', got {self.vit_arch!r}")
        if self.vit_arch == "clip" and self.objective != "clip":
            raise ValueError("--vit-arch clip is for --objective clip")
        if min(self.workers, self.eval_every, self.clip_grad, self.threads, self.embed_dim) < 0:
            raise ValueError("workers, eval_every, clip_grad and threads may not be negative")
        cache_limit_bytes(self.cache_limit)  # validates it

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """``vidshard eval``: accuracy of a checkpoint on a shard set with several views per sample."""

    data: str
    """Shard set to evaluate on (must be labeled)."""
    checkpoint: str
    """Checkpoint written by ``vidshard train``."""
    out: str | None = None
    """JSON file for the results (default: ``eval.json`` next to the checkpoint's run folder)."""
    temporal_views: int = 2
    """Clips per sample spread over time; scores are averaged over all views."""
    spatial_views: int = 3
    """Crops per clip across the frame (1 = centre only)."""
    batch_size: int = 8
    """Samples per batch."""
    workers: int = 2
    """Data-loading worker processes."""
    cache_dir: str | None = None
    """Where shards from an ``http(s)://`` or object-storage shard set are cached."""
    cache_limit: str | None = None
    """Most the cache may hold, e.g. ``20G``; least-recently-used shards are evicted. Default: no limit."""
    timeout: float = 60.0
    """http(s) shard sets: seconds a connection or read may stall; a shard's whole transfer must end
    within this plus its size at 256 KiB/s (a hung or dripping server fails, it never waits forever)."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    threads: int = 0
    """CPU threads for the model's math (0 = torch's default)."""
    progress: bool = True
    """Show the rich progress bar."""
    retrieval: bool = False
    """clip checkpoints: video-text retrieval over the set's clips and captions (R@K, median rank, mAP,
    nDCG)."""
    zero_shot: bool = False
    """clip checkpoints: classify each clip by the text embeddings of its class names in the prompts."""
    prompts: tuple[str, ...] = ("a video of {}.",)
    """Zero-shot prompt templates ({} = the class name); several are averaged."""
    relevance: str | None = None
    """Retrieval: .npz file with keys, texts and a relevance matrix (default: identical captions)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if not self.prompts or any("{}" not in p for p in self.prompts):
            raise ValueError(f"every --prompt needs a {{}} for the class name, got {list(self.prompts)}")
        if self.temporal_views < 1 or self.spatial_views < 1 or self.batch_size < 1:
            raise ValueError("views and batch_size must be at least 1")
        if self.workers < 0 or self.threads < 0:
            raise ValueError("workers and threads may not be negative")
        cache_limit_bytes(self.cache_limit)  # validates it


def cache_limit_bytes(text: str | int | None) -> int | None:
    """``--cache-limit`` in bytes (``"20G"`` -> 20 * 10**9), None for no limit."""
    if text is None:
        return None
    from ..shards.cache_limit import parse_size

    n = parse_size(text)
    if n < 1:
        raise ValueError(f"cache_limit {text!r} must be more than 0 bytes")
    return n


def read_toml(path: str | Path) -> dict[str, Any]:
    """Options from a TOML file, either top level or under ``[train]``; dashes become underscores."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{p}: not valid TOML ({e})") from None
    data = data.get("train", data)
    return {k.replace("-", "_"): v for k, v in data.items()}


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (for ``--help`` texts)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) else None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(doc, str):
            docs[node.target.id] = " ".join(doc.split())
    return docs


def default_of(cls: type, name: str) -> Any:
    """A field's default value (for ``--help`` texts)."""
    return {f.name: f.default for f in fields(cls)}[name]


def build_config(cls: type, config_file: str | Path | None, options: dict[str, Any]) -> Any:
    """``cls`` from its defaults, then the TOML file, then the options given (``None`` = not given)."""
    values = read_toml(config_file) if config_file else {}
    values.update({k: v for k, v in options.items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"{config_file}: " if config_file else ""
        raise ValueError(f"{where}unknown option(s) {unknown}; known: {sorted(known)}")
    if "data" in known and not values.get("data"):
        raise ValueError("no shard set given: pass SHARDSET or set data = \"...\" in the --config file")
    return cls(**values)
