"""vidshard's command line: one typer app, one plain function call per command.

No logic lives here: each command builds the config dataclass of its stage
(option defaults come from that dataclass) and calls one library function.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    name="vidshard",
    help="Train video transformers on one machine in a day: preprocess raw videos into "
    "WebDataset shards once, then stream them into a FlashAttention video ViT.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
bench_app = typer.Typer(help="Reproducible speed measurements (figures and ratios against a baseline).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")


# == preprocess (preprocess/) ====================================================================


def _pp_default(name: str):
    from vidshard.preprocess.config import PreprocessConfig

    return PreprocessConfig.__dataclass_fields__[name].default


def _preset_or(text: str, option: str, cast=str):
    """An x264 option's value, or None (the preset's choice) for 'preset'."""
    if text.lower() == "preset":
        return None
    try:
        return cast(text)
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected a whole number or 'preset'") from None


@app.command("preprocess")
def preprocess_cmd(
    input: Path = typer.Argument(..., help="Folder of videos (searched recursively; any file that "
                                 "probes as a video), a .csv / .jsonl list with 'path' and optional "
                                 "'label', 'start', 'end', 'caption', or a shard set to re-encode (a folder "
                                 "with manifest.json or *.tar: vidshard or any WebDataset of videos)."),
    output: Path = typer.Argument(..., help="Shard-set folder. Run the same command again to resume after a "
                                  "kill or to add new videos."),
    chunk_seconds: float = typer.Option(_pp_default("chunk_seconds"), help="Length of each clip, seconds."),
    min_chunk_seconds: float | None = typer.Option(None, help="A last piece shorter than this joins the "
                                            "previous chunk (default: a fifth of --chunk-seconds)."),
    short_side: int = typer.Option(_pp_default("short_side"), help="Output short side in pixels (even)."),
    fps: float = typer.Option(0.0, help="Resample to this frame rate; 0 keeps each source's rate."),
    crf: int = typer.Option(_pp_default("crf"), help="x264 quality: lower is better and bigger."),
    gop: int = typer.Option(_pp_default("gop"), help="A keyframe every N frames (random clip access cost)."),
    preset: str = typer.Option(_pp_default("preset"), help="x264 speed preset."),
    tune: str = typer.Option(_pp_default("tune") or "none", help="x264 tune, or none: fastdecode (no CABAC, "
                             "no deblocking) is part of the default encoding, which decodes ~1.9x faster in "
                             "the loader than the old one (no tune, crf 23; docs/performance.md)."),
    bframes: str = typer.Option(str(_pp_default("bframes")), help="x264 B-frames between reference frames, "
                                "or 'preset' (3 for veryfast)."),
    b_pyramid: str = typer.Option(_pp_default("b_pyramid"), help="x264 b-pyramid: none (no B-frame is a "
                                  "reference, so the loader skips every B-frame a clip does not show), "
                                  "strict, normal, or 'preset'."),
    b_adapt: str = typer.Option(str(_pp_default("b_adapt")), help="x264 b-adapt: 0 always places --bframes "
                                "B-frames, 1 or 2 adaptive placement, or 'preset'."),
    keep_audio: bool = typer.Option(False, "--keep-audio", help="Keep the first audio track (AAC)."),
    labels_from_dirs: bool = typer.Option(False, "--labels-from-dirs",
                                          help="First folder level under INPUT is the class name."),
    shard_size: str = typer.Option("1GB", help="Maximum shard size: bytes or e.g. 500MB, 1GB, 2GiB."),
    prefix: str = typer.Option(_pp_default("prefix"), help="Shard name prefix: PREFIX-000000.tar."),
    workers: int = typer.Option(0, help="Parallel encoding processes; 0 = all cores."),
    part: str = typer.Option("", help="I/N: process only part I of N of the inputs (a deterministic split "
                             "for N machines or a Slurm array); shards are named PREFIX-pIIofNN-*.tar."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try inputs in failures.jsonl again."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Probe inputs, show the plan, encode nothing."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar: plain log lines (for batch logs)."),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero when any input failed."),
    min_free_space: str = typer.Option("256MiB", help="Stop cleanly (no video marked failed) when OUTPUT's "
                                       "disk has less free space than this; 0 = no margin (a full disk is "
                                       "still detected)."),
    watch: bool = typer.Option(False, "--watch", help="Keep running as a service: encode what INPUT holds, "
                               "then each new file as it arrives; SIGTERM/SIGINT stop it cleanly (exit 0)."),
    settle_seconds: float = typer.Option(_pp_default("settle_seconds"), help="--watch: a file counts once "
                                         "unchanged this long, or once NAME.done exists beside it."),
    flush_seconds: float = typer.Option(_pp_default("flush_seconds"), help="--watch: publish a partly filled "
                                        "shard after this long without a new video."),
    poll: bool = typer.Option(False, "--poll", help="--watch: list INPUT every --poll-seconds instead of "
                              "waiting for change events (NFS and other network file systems)."),
    poll_seconds: float = typer.Option(_pp_default("poll_seconds"), help="--watch --poll: seconds between "
                                       "two listings of INPUT."),
    split_at_scenes: bool = typer.Option(False, "--split-at-scenes", help="Snap chunk boundaries to shot "
                                         "cuts (scdet's score, found while transcoding: one decode) so no "
                                         "clip spans a cut; KEY.json gets starts_at_cut."),
    scene_threshold: float = typer.Option(_pp_default("scene_threshold"), help="scdet score (0-100) above "
                                          "which a frame starts a new shot (--split-at-scenes)."),
    min_shot_seconds: float = typer.Option(_pp_default("min_shot_seconds"), help="Ignore a cut this soon "
                                           "after the previous one: a flash is not a new shot."),
) -> None:
    """Re-encode raw videos into short resized H.264 clips in WebDataset tar shards (+ manifest.json)."""
    from vidshard.preprocess.config import PreprocessConfig, parse_size
    from vidshard.preprocess.inputs import InputError
    from vidshard.preprocess.plan import parse_part
    from vidshard.preprocess.run import preprocess
    from vidshard.preprocess.space import OutputFailure
    from vidshard.preprocess.store import SettingsMismatch

    try:
        cfg = PreprocessConfig(
            input=input, output=output, chunk_seconds=chunk_seconds, min_chunk_seconds=min_chunk_seconds,
            short_side=short_side, fps=fps or None, crf=crf, gop=gop, preset=preset,
            tune=None if tune.lower() == "none" else tune, bframes=_preset_or(bframes, "--bframes", int),
            b_pyramid=_preset_or(b_pyramid, "--b-pyramid"), b_adapt=_preset_or(b_adapt, "--b-adapt", int),
            keep_audio=keep_audio,
            labels_from_dirs=labels_from_dirs, shard_size=parse_size(shard_size), prefix=prefix,
            workers=workers, part=parse_part(part) if part else None, retry_failed=retry_failed,
            dry_run=dry_run, quiet=quiet, strict=strict, min_free_space=parse_size(min_free_space),
            split_at_scenes=split_at_scenes, scene_threshold=scene_threshold,
            min_shot_seconds=min_shot_seconds, watch=watch, settle_seconds=settle_seconds,
            flush_seconds=flush_seconds, poll=poll, poll_seconds=poll_seconds)
        result = preprocess(cfg)
    except OutputFailure as e:  # the disk under OUTPUT, not the input: exit 3 means "free space, run again"
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(3) from None
    except (ValueError, InputError, SettingsMismatch, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: finished videos are kept; run the same command again to resume", err=True)
        raise typer.Exit(130) from None
    if not dry_run:
        raise typer.Exit(result.exit_code(strict))


# == train / eval (train/) =======================================================================


def _tr_help(name: str, cls_name: str = "TrainConfig") -> str:
    """An option's help: the config field's docstring and its default."""
    from vidshard.train import config

    cls = getattr(config, cls_name)
    default = config.default_of(cls, name)
    shown = "" if default is None else f" [dim]\\[default: {default}][/dim]"
    return config.field_docs(cls)[name].replace("``", "") + shown


def _tr_run(fn, *args):
    """Call a library function; turn the errors a user can fix into one clear line and exit code 2."""
    try:
        return fn(*args)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError, RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command("train")
def train_cmd(
    shardset: str = typer.Argument(None, help="Shard set to train on: folder, manifest.json, http(s):// "
                                   "or object-storage URL such as s3://bucket/set/ (or `data` in --config)."),
    config: Path = typer.Option(None, "--config", help="TOML file with any of these options (top level or "
                                "under \\[train]); options given here override it."),
    model: str = typer.Option(None, help=_tr_help("model")),
    objective: str = typer.Option(None, help=_tr_help("objective")),
    frames: int = typer.Option(None, help=_tr_help("frames")),
    stride: int = typer.Option(None, help=_tr_help("stride")),
    size: int = typer.Option(None, help=_tr_help("size")),
    batch_size: int = typer.Option(None, help=_tr_help("batch_size")),
    epochs: int = typer.Option(None, help=_tr_help("epochs")),
    steps: int = typer.Option(None, help=_tr_help("steps")),
    lr: float = typer.Option(None, help=_tr_help("lr")),
    min_lr: float = typer.Option(None, help=_tr_help("min_lr")),
    warmup_steps: int = typer.Option(None, help=_tr_help("warmup_steps")),
    weight_decay: float = typer.Option(None, help=_tr_help("weight_decay")),
    beta2: float = typer.Option(None, help=_tr_help("beta2")),
    label_smoothing: float = typer.Option(None, help=_tr_help("label_smoothing")),
    clip_grad: float = typer.Option(None, help=_tr_help("clip_grad")),
    layer_decay: float = typer.Option(None, help=_tr_help("layer_decay")),
    drop_path: float = typer.Option(None, help=_tr_help("drop_path")),
    crop_scale: tuple[float, float] | None = typer.Option(None, help=_tr_help("crop_scale")),
    flip: bool = typer.Option(None, "--flip/--no-flip", help=_tr_help("flip")),
    clips_per_sample: int = typer.Option(None, help=_tr_help("clips_per_sample")),
    workers: int = typer.Option(None, help=_tr_help("workers")),
    out: str = typer.Option(None, help=_tr_help("out")),
    seed: int = typer.Option(None, help=_tr_help("seed")),
    val: str = typer.Option(None, help=_tr_help("val_data")),
    resume: bool = typer.Option(None, "--resume", help=_tr_help("resume")),
    init_from: str = typer.Option(None, help=_tr_help("init_from")),
    mask_ratio: float = typer.Option(None, help=_tr_help("mask_ratio")),
    decoder_dim: int = typer.Option(None, help=_tr_help("decoder_dim")),
    decoder_depth: int = typer.Option(None, help=_tr_help("decoder_depth")),
    text_model: str = typer.Option(None, help=_tr_help("text_model")),
    tokenizer: str = typer.Option(None, help=_tr_help("tokenizer")),
    embed_dim: int = typer.Option(None, help=_tr_help("embed_dim")),
    vit_arch: str = typer.Option(None, help=_tr_help("vit_arch")),
    pos_embed: str = typer.Option(None, help=_tr_help("pos_embed")),
    pool: str = typer.Option(None, help=_tr_help("pool")),
    grad_checkpointing: bool = typer.Option(None, "--grad-checkpointing",
                                            help=_tr_help("grad_checkpointing")),
    attn_impl: str = typer.Option(None, help=_tr_help("attn_impl")),
    device: str = typer.Option(None, help=_tr_help("device")),
    threads: int = typer.Option(None, help=_tr_help("threads")),
    amp: bool = typer.Option(None, "--amp/--no-amp", help=_tr_help("amp")),
    compile: bool = typer.Option(None, "--compile/--no-compile", help=_tr_help("compile")),
    log_every: int = typer.Option(None, help=_tr_help("log_every")),
    ckpt_every: int = typer.Option(None, help=_tr_help("ckpt_every")),
    eval_every: int = typer.Option(None, help=_tr_help("eval_every")),
    keep_checkpoints: int = typer.Option(None, help=_tr_help("keep_checkpoints")),
    stop_after: int = typer.Option(None, help=_tr_help("stop_after")),
    cache_dir: str = typer.Option(None, help=_tr_help("cache_dir")),
    cache_limit: str = typer.Option(None, help=_tr_help("cache_limit")),
    timeout: float = typer.Option(None, help=_tr_help("timeout")),
    follow: bool = typer.Option(None, "--follow", help=_tr_help("follow")),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a video ViT on a shard set: supervised from its labels, MAE, or contrastive from captions.

    Writes RUN/config.json, RUN/metrics.jsonl, TensorBoard events in RUN/tb and checkpoints in
    RUN/checkpoints. Several processes: [bold]torchrun --nproc-per-node N $(which vidshard) train ...[/bold]
    """
    options = dict(locals())  # every option, before anything else is defined here
    from vidshard.train.config import TrainConfig, build_config
    from vidshard.train.loop import train

    for k in ("shardset", "config", "quiet", "val"):
        options.pop(k)
    options.update(data=shardset, val_data=val, progress=False if quiet else None)
    cfg = _tr_run(build_config, TrainConfig, config, options)
    result = _tr_run(train, cfg)
    if result.checkpoint is not None:
        typer.echo(f"{result.steps} steps, last loss {result.last_loss:.4f}; checkpoint {result.checkpoint}")
    if result.val is not None:
        from vidshard.train.metrics import describe_validation

        typer.echo(describe_validation(result.val))


@app.command("eval")
def eval_cmd(
    shardset: str = typer.Argument(..., help="Shard set to evaluate on (labeled for accuracy and "
                                   "--zero-shot, captioned for --retrieval)."),
    checkpoint: str = typer.Option(..., help="Checkpoint file (or a run folder: its newest checkpoint)."),
    out: str = typer.Option(None, help="JSON file for the results [dim]\\[default: RUN/eval.json][/dim]."),
    temporal_views: int = typer.Option(None, help=_tr_help("temporal_views", "EvalConfig")),
    spatial_views: int = typer.Option(None, help=_tr_help("spatial_views", "EvalConfig")),
    batch_size: int = typer.Option(None, help=_tr_help("batch_size", "EvalConfig")),
    workers: int = typer.Option(None, help=_tr_help("workers", "EvalConfig")),
    device: str = typer.Option(None, help=_tr_help("device", "EvalConfig")),
    threads: int = typer.Option(None, help=_tr_help("threads", "EvalConfig")),
    cache_dir: str = typer.Option(None, help=_tr_help("cache_dir", "EvalConfig")),
    cache_limit: str = typer.Option(None, help=_tr_help("cache_limit", "EvalConfig")),
    timeout: float = typer.Option(None, help=_tr_help("timeout", "EvalConfig")),
    retrieval: bool = typer.Option(None, "--retrieval", help=_tr_help("retrieval", "EvalConfig")),
    zero_shot: bool = typer.Option(None, "--zero-shot", help=_tr_help("zero_shot", "EvalConfig")),
    prompt: list[str] = typer.Option(None, "--prompt", help="Zero-shot prompt template ({} = the class "
                                     "name); repeat for several, averaged \\[default: a video of {}.]"),
    relevance: str = typer.Option(None, help=_tr_help("relevance", "EvalConfig")),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Top-1 / top-5 and per-class accuracy of a checkpoint, scores averaged over several views.

    A clip (video-text) checkpoint: zero-shot retrieval (--retrieval) and classification (--zero-shot).
    """
    from vidshard.train.config import EvalConfig, build_config
    from vidshard.train.evaluate import evaluate, print_result

    options = dict(data=shardset, checkpoint=checkpoint, out=out, temporal_views=temporal_views,
                   spatial_views=spatial_views, batch_size=batch_size, workers=workers, device=device,
                   threads=threads, cache_dir=cache_dir, cache_limit=cache_limit, timeout=timeout,
                   progress=False if quiet else None, retrieval=retrieval, zero_shot=zero_shot,
                   prompts=tuple(prompt) if prompt else None, relevance=relevance)
    result = _tr_run(evaluate, _tr_run(build_config, EvalConfig, None, options))
    print_result(result)
    if "top1" in result:
        typer.echo(f"top-1 {result['top1']:.1%}, top-5 {result['top5']:.1%}; wrote {result['out']}")
    else:
        typer.echo(f"wrote {result['out']}")


# == verify / serve / inspect / merge (shards/) ==================================================


def _sh_default(module: str, cls: str, name: str):
    import importlib

    config = getattr(importlib.import_module(f"vidshard.shards.{module}"), cls)
    return config.__dataclass_fields__[name].default


def _sh_fail(e: Exception) -> typer.Exit:
    typer.echo(f"error: {e}", err=True)
    return typer.Exit(2)


@app.command("verify")
def verify_cmd(
    shardset: str = typer.Argument(..., help="Shard-set folder, its manifest.json, an http(s):// URL "
                                   "serving it (vidshard serve), or an object-storage URL (s3://bucket/set/)."),
    deep: bool = typer.Option(False, "--deep", help="Also decode the first frame of every clip (slower)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Check a shard set against its manifest.json before training on it.

    Every shard's sha256, size and sample count, and every sample's members and metadata.
    Exits 1 naming the missing or corrupt shards (2 when the set cannot be read at all).
    """
    from rich.console import Console
    from vidshard.shards.cache import FetchError
    from vidshard.shards.verify import VerifyConfig, report_table, verify

    try:
        result = verify(VerifyConfig(location=shardset, deep=deep, progress=not quiet))
    except (OSError, ValueError, FetchError) as e:
        raise _sh_fail(e) from None
    Console().print(report_table(result))
    for line in result.warnings:
        typer.echo(f"warning: {line}", err=True)
    for line in result.problems:
        typer.echo(f"problem: {line}", err=True)
    for status in ("missing", "corrupt", "refused"):
        names = [c.name for c in result.bad if c.status == status]
        if names:
            typer.echo(f"{status}: {' '.join(names)}", err=True)
    if not result.ok:
        typer.echo(f"FAILED: {shardset} is not intact; re-copy or re-create the shards named above.",
                   err=True)
        raise typer.Exit(1)
    typer.echo(f"OK: {len(result.shards)} shards, {result.manifest.num_samples} samples match the manifest.")


@app.command("serve")
def serve_cmd(
    shardset: Path = typer.Argument(..., help="Shard-set folder (with manifest.json) to serve read-only."),
    host: str = typer.Option(_sh_default("serve", "ServeConfig", "host"),
                             help="Interface to bind; 0.0.0.0 serves other machines (the default is this "
                             "machine only)."),
    port: int = typer.Option(_sh_default("serve", "ServeConfig", "port"),
                             help="TCP port; 0 picks a free one."),
    max_connections: int = typer.Option(_sh_default("serve", "ServeConfig", "max_connections"),
                                        help="Connections served at once; more get 503 (clients retry)."),
    idle_timeout: float = typer.Option(_sh_default("serve", "ServeConfig", "idle_timeout"),
                                       help="Seconds before a silent connection is closed."),
) -> None:
    """Serve a shard set read-only over HTTP to other machines.

    Range requests supported; only manifest.json, failures.jsonl and the listed shards are
    reachable. Train elsewhere from the printed http://host:port/ with --cache-dir.
    """
    from vidshard.shards.serve import ServeConfig, serve

    try:
        cfg = ServeConfig(shardset=shardset, host=host, port=port, max_connections=max_connections,
                          idle_timeout=idle_timeout)
        serve(cfg)
    except (OSError, ValueError) as e:
        raise _sh_fail(e) from None


@app.command("inspect")
def inspect_cmd(
    shardset: str = typer.Argument(..., help="Shard-set folder, its manifest.json, an http(s):// URL or an "
                                   "object-storage URL (s3://bucket/set/)."),
    sheet: Path = typer.Option(None, help="Write a contact sheet (PNG) of a few samples' frames here."),
    samples: int = typer.Option(_sh_default("inspect", "InspectConfig", "samples"),
                                help="Samples (rows) on the contact sheet, spread over the set."),
    frames: int = typer.Option(_sh_default("inspect", "InspectConfig", "frames"),
                               help="Frames per sample on the contact sheet."),
    reconstruct: str = typer.Option(None, help="MAE checkpoint: write its reconstructions of a few samples "
                                    "to --sheet instead (input, masked, reconstruction rows)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Summarise a shard set and optionally draw a contact sheet of its clips.

    Samples, hours, classes with counts, captions, resolutions, frame rates and clip durations.
    """
    from rich.console import Console
    from vidshard.shards.cache import FetchError
    from vidshard.shards.inspect import InspectConfig, inspect, summary_tables

    if reconstruct and sheet is None:
        raise _sh_fail(ValueError("--reconstruct needs --sheet FILE.png to write the reconstructions to"))
    try:
        cfg = InspectConfig(location=shardset, sheet=None if reconstruct else sheet, samples=samples,
                            frames=frames, progress=not quiet)
        summary = inspect(cfg)
        if reconstruct:
            from vidshard.train.visualize import save_reconstruction_sheet

            save_reconstruction_sheet(reconstruct, shardset, sheet, samples)
    except (OSError, ValueError, FetchError) as e:
        raise _sh_fail(e) from None
    console = Console()
    for table in summary_tables(summary):
        console.print(table)
    if sheet is not None:
        typer.echo(f"contact sheet: {sheet}")


@app.command("merge")
def merge_cmd(
    paths: list[Path] = typer.Argument(..., help="SET... OUTPUT: shard sets made with the same settings "
                                       "(e.g. the parts of `preprocess --part I/N`), then the new folder."),
    copy: bool = typer.Option(False, "--copy", help="Copy shards instead of hard-linking them."),
    prefix: str = typer.Option(None, help="Shard name prefix in OUTPUT (default: the sets' prefix)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Combine shard sets made on different machines into one.

    Shards are hard-linked (or copied) into OUTPUT and renumbered under one manifest. Refuses sets
    whose settings or class lists differ, or whose sample keys overlap.
    """
    from vidshard.shards.merge import MergeConfig, MergeError, merge

    if len(paths) < 2:
        raise _sh_fail(ValueError("give at least one shard set and the OUTPUT folder"))
    try:
        m = merge(MergeConfig(sets=tuple(paths[:-1]), output=paths[-1], copy=copy, prefix=prefix,
                              progress=not quiet))
    except (OSError, ValueError, MergeError) as e:
        raise _sh_fail(e) from None
    typer.echo(f"merged {len(paths) - 1} sets into {paths[-1]}: {len(m.shards)} shards, "
               f"{m.num_samples} samples")


@app.command("copy")
def copy_cmd(
    source: str = typer.Argument(..., help="Shard set to copy: folder, manifest.json, http(s):// URL or "
                                 "object-storage URL (s3://bucket/set/, gs://..., hf://...)."),
    dest: str = typer.Argument(..., help="Folder or object-storage prefix to copy it to (not http). Run the "
                               "same command again to resume after a kill."),
    workers: int = typer.Option(_sh_default("copy", "CopyConfig", "workers"),
                                help="Shards copied at the same time."),
    attempts: int = typer.Option(_sh_default("copy", "CopyConfig", "attempts"),
                                 help="Tries per shard before it is reported as failed."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Copy a shard set to or from object storage (or between folders), checking every shard's sha256.

    Shards already at DEST with the right size and sha256 are kept; manifest.json is written last,
    only when every shard arrived intact. Credentials come from the environment (AWS_*, GOOGLE_*, HF_TOKEN).
    """
    from vidshard.shards.cache import FetchError
    from vidshard.shards.copy import CopyConfig, copy_set

    try:
        r = copy_set(CopyConfig(source=source, dest=dest, workers=workers, attempts=attempts,
                                progress=not quiet))
    except (OSError, ValueError, FetchError) as e:
        raise _sh_fail(e) from None
    for name, why in r.failed:
        typer.echo(f"failed: {name}: {why}", err=True)
    typer.echo(f"{len(r.copied)} shards copied ({r.bytes_copied} bytes), {len(r.kept)} already there, "
               f"{len(r.failed)} failed" + ("; manifest.json written" if r.manifest_written else
                                             "; manifest.json NOT written: run the command again"))
    if not r.ok:
        raise typer.Exit(1)


# == bench =======================================================================================


@bench_app.command("preprocess")
def bench_preprocess_cmd(
    inputs: Path = typer.Option(None, help="Folder of videos to time (default: generate synthetic ones)."),
    videos: int = typer.Option(8, help="Synthetic videos to generate (H.264 640x480)."),
    seconds: float = typer.Option(12.0, help="Length of each synthetic video, seconds."),
    workers: int = typer.Option(0, help="Parallel processes on both sides; 0 = all cores."),
    repeats: int = typer.Option(2, help="Alternating repeats; the best time of each side counts."),
    gop_sweep: bool = typer.Option(False, "--gop-sweep", help="Instead: file size against random "
                                   "clip-decode speed for gop 4 to 250 (how the default --gop was chosen)."),
    encode_sweep: bool = typer.Option(False, "--encode-sweep", help="Instead: bytes, SSIM/PSNR, encode speed "
                                      "and decode-only clips/s per x264 candidate (how --tune/--crf were "
                                      "chosen)."),
    candidate: list[str] = typer.Option(None, "--candidate", help="With --encode-sweep: "
                                        "TUNE,CRF,GOP,BF[,B_PYRAMID[,B_ADAPT]] ('-': the preset's choice; "
                                        "e.g. fastdecode,22,16,5,none,0; the first is the baseline); "
                                        "repeatable."),
    json_out: Path = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """vidshard preprocess against bare ffmpeg doing the identical transcode, same files and parallelism."""
    import json

    from vidshard.benchmarks.preprocess import BenchConfig, bench_preprocess, report, sweep_report
    from vidshard.benchmarks.preprocess import gop_sweep as sweep
    from vidshard.shards.schema import atomic_write

    if encode_sweep:
        from vidshard.benchmarks.preprocess import CANDIDATES, encode_report, parse_candidate
        from vidshard.benchmarks.preprocess import encode_sweep as esweep

        try:
            cands = tuple(parse_candidate(c) for c in candidate) if candidate else CANDIDATES
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        figures = esweep(cands, repeats=repeats)
        typer.echo(encode_report(figures))
    elif gop_sweep:
        rows = sweep()
        typer.echo(sweep_report(rows))
        figures: object = rows
    else:
        res = bench_preprocess(BenchConfig(inputs=inputs, videos=videos, seconds=seconds, workers=workers,
                                           repeats=repeats))
        typer.echo(report(res))
        figures = res.to_dict()
    if json_out is not None:
        atomic_write(json_out, (json.dumps(figures, indent=2) + "\n").encode())
        typer.echo(f"figures written to {json_out}")


@bench_app.command("scenes")
def bench_scenes_cmd(
    videos: int = typer.Option(4, help="Generated videos, each a join of several shots at known times."),
    shots: int = typer.Option(5, help="Shots per video."),
    seed: int = typer.Option(0, help="Seed of the shot patterns and lengths."),
    flicker: bool = typer.Option(False, "--flicker", help="Also use a source that flickers on every frame "
                                 "(a test of false cuts)."),
    size: str = typer.Option("640x480", help="WIDTHxHEIGHT of the generated videos (larger sources cost "
                             "more to decode, which one decode pass saves)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Shot-cut detection (the in-pass scdet score vs ffmpeg scdet vs PySceneDetect) on videos with
    known cuts, and the extra cost of --split-at-scenes in a preprocessing run."""
    import json

    from vidshard.benchmarks.scenes import ScenesBenchConfig, report, run_scenes_bench
    from vidshard.shards.schema import atomic_write

    w, _, h = size.partition("x")
    if not (w.isdigit() and h.isdigit()):
        raise typer.BadParameter(f"{size!r}: expected WIDTHxHEIGHT, e.g. 1280x720", param_hint="--size")
    res = run_scenes_bench(ScenesBenchConfig(videos=videos, shots=shots, seed=seed, flicker=flicker,
                                             size=(int(w), int(h))))
    typer.echo(report(res))
    if json_out is not None:
        atomic_write(json_out, json.dumps(res, indent=2).encode())


@bench_app.command("loader")
def bench_loader_cmd(
    shardset: str = typer.Argument(None, help="Shard set to read (folder, manifest.json, URL, brace "
                                   "pattern); omitted: small inputs are generated and preprocessed."),
    raw: str = typer.Option(None, "--raw", help="The original raw videos (a file or folder) for the "
                            "conventional baseline; omitted: generated."),
    frames: int = typer.Option(None, help="Frames per clip (default 16)."),
    stride: int = typer.Option(None, help="Frame stride within a clip (default 4)."),
    size: int = typer.Option(None, help="Output side in pixels (default 224)."),
    workers: int = typer.Option(None, help="DataLoader workers, the same for every row (default 2)."),
    batch_size: int = typer.Option(None, help="Clips per batch (default 8)."),
    clips: int = typer.Option(None, help="Clips timed per row, once every worker delivered (default 48)."),
    clips_per_sample: int = typer.Option(None, "--clips-per-sample",
                                         help="K of the clips-per-sample row; 1 skips it (default 4)."),
    repeats: int = typer.Option(None, help="Measure the rows this many times, interleaved; report each "
                                "row's median and the median ratio within repeats (default 5)."),
    workdir: str = typer.Option(None, help="Folder for generated inputs, reused when present (default: a "
                                "temporary folder)."),
    cache_dir: str = typer.Option(None, "--cache-dir", help="For an http(s) SHARDSET: download each shard "
                                  "once into this folder (checked against the manifest's sha256) and "
                                  "time the cached copies; reused by later runs."),
    cache_limit: str = typer.Option(None, "--cache-limit", help="Most the cache may hold, e.g. 20G or 500M; "
                                    "least-recently-used shards are evicted (rows then include downloads)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Clips/s of the shard loader vs raw videos loaded the conventional way vs the decode-only limit."""
    from rich.console import Console
    from vidshard.benchmarks.loader import LoaderBenchConfig, run_bench, show, write_json

    given = dict(shardset=shardset, raw=raw, frames=frames, stride=stride, size=size, workers=workers,
                 batch_size=batch_size, clips=clips, clips_per_sample=clips_per_sample, repeats=repeats,
                 workdir=workdir, cache_dir=cache_dir)
    console = Console()
    try:  # defaults live in LoaderBenchConfig: pass only what was given
        if cache_limit is not None:
            from vidshard.shards.cache_limit import parse_size

            given["cache_limit"] = parse_size(cache_limit)
        result = run_bench(LoaderBenchConfig(**{k: v for k, v in given.items() if v is not None}), console)
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: a shard could not be fetched
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    show(result, console)
    if json_out is not None:
        console.print(f"figures written to {write_json(result, json_out)}")


@bench_app.command("model")
def bench_model_cmd(
    model: str = typer.Option("vit-t", help="Model preset: vit-t, vit-t4, vit-s, vit-b or vit-l."),
    frames: int = typer.Option(16, help="Frames per clip."),
    size: int = typer.Option(224, help="Crop side in pixels."),
    batch_size: int = typer.Option(1, help="Clips per training step."),
    steps: int = typer.Option(3, help="Timed steps per path (after one warm-up step); the median counts."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
    threads: int = typer.Option(0, help="CPU threads (0 = torch's default); 1 is steadier when shared."),
    peak_tflops: float = typer.Option(None, help="The device's peak dense bf16 TFLOP/s for MFU "
                                      "[dim]\\[default: looked up by GPU name][/dim]."),
    fit: bool = typer.Option(True, "--fit/--no-fit", help="On CUDA: search the largest batch that fits, "
                             "with and without gradient checkpointing."),
    json_out: Path = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
    objective: str = typer.Option(None, help="clip: instead, peak memory of the video and the text tower "
                                  "per batch size (--batch-sizes, --text-model)."),
    batch_sizes: str = typer.Option("1,2,4", help="--objective clip: batch sizes, comma-separated."),
    text_model: str = typer.Option("clip-b16", help="--objective clip: text tower preset or folder/hub."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing",
                                            help="--objective clip: recompute video activations."),
) -> None:
    """Training-step time, TFLOP/s, MFU and peak memory: fused attention (flash-attn / SDPA) vs the plain
    reference; on CUDA also the largest batch that fits. --objective clip: memory of each tower instead."""
    from vidshard.benchmarks.clip_memory import clip_memory, print_clip_memory
    from vidshard.benchmarks.model import ModelBenchConfig, print_report, run_bench

    cfg = _tr_run(lambda: ModelBenchConfig(model=model, frames=frames, size=size, batch_size=batch_size,
                                           steps=steps, device=device, threads=threads,
                                           peak_tflops=peak_tflops, fit=fit,
                                           grad_checkpointing=grad_checkpointing))
    if objective == "clip":
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
        print_clip_memory(_tr_run(clip_memory, cfg, sizes, text_model), json_out)
    elif objective is None:
        print_report(_tr_run(run_bench, cfg), json_out)
    else:
        raise _sh_fail(ValueError(f"--objective {objective!r}: bench model knows only clip"))


@bench_app.command("mae")
def bench_mae_cmd(
    seed: int = typer.Option(0, help="Seed of the generated data, model init, masks and batches."),
    json_out: Path = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Masked pretraining on generated videos (about 2 min on 2 cores): held-out reconstruction loss against
    predicting the mean, and fine-tuning from the MAE encoder against from scratch (steps to an accuracy)."""
    import json

    import torch
    from vidshard.benchmarks.mae import MAEBenchConfig, run_mae_bench

    torch.set_num_threads(1)
    result = run_mae_bench(MAEBenchConfig(seed=seed))
    if json_out:
        json_out.write_text(json.dumps(result, indent=2) + "\n")


# == demo ========================================================================================


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the sample videos and shard set."),
    workers: int = typer.Option(0, help="Encoding processes; 0 = all cores."),
) -> None:
    """Run the main job on a built-in sample: generate videos, preprocess them, print the summary."""
    from vidshard.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out_dir=out, workers=workers))
    if result.preprocess is not None and result.preprocess.total.videos_ok == 0:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
