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


@app.command("preprocess")
def preprocess_cmd(
    input: Path = typer.Argument(..., help="Folder of videos (searched recursively; any file that "
                                 "probes as a video) or a .csv / .jsonl list with 'path' and optional "
                                 "'label', 'start', 'end', 'caption'."),
    output: Path = typer.Argument(..., help="Shard-set folder. Run the same command again to resume after a "
                                  "kill or to add new videos."),
    chunk_seconds: float = typer.Option(_pp_default("chunk_seconds"), help="Length of each clip, seconds."),
    min_chunk_seconds: float = typer.Option(_pp_default("min_chunk_seconds"),
                                            help="A last piece shorter than this joins the previous chunk."),
    short_side: int = typer.Option(_pp_default("short_side"), help="Output short side in pixels (even)."),
    fps: float = typer.Option(0.0, help="Resample to this frame rate; 0 keeps each source's rate."),
    crf: int = typer.Option(_pp_default("crf"), help="x264 quality: lower is better and bigger."),
    gop: int = typer.Option(_pp_default("gop"), help="A keyframe every N frames (random clip access cost)."),
    preset: str = typer.Option(_pp_default("preset"), help="x264 speed preset."),
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
) -> None:
    """Re-encode raw videos into short resized H.264 clips in WebDataset tar shards (+ manifest.json)."""
    from vidshard.preprocess.config import PreprocessConfig, parse_size
    from vidshard.preprocess.inputs import InputError
    from vidshard.preprocess.plan import parse_part
    from vidshard.preprocess.run import preprocess
    from vidshard.preprocess.store import SettingsMismatch

    try:
        cfg = PreprocessConfig(
            input=input, output=output, chunk_seconds=chunk_seconds, min_chunk_seconds=min_chunk_seconds,
            short_side=short_side, fps=fps or None, crf=crf, gop=gop, preset=preset, keep_audio=keep_audio,
            labels_from_dirs=labels_from_dirs, shard_size=parse_size(shard_size), prefix=prefix,
            workers=workers, part=parse_part(part) if part else None, retry_failed=retry_failed,
            dry_run=dry_run, quiet=quiet, strict=strict)
        result = preprocess(cfg)
    except (ValueError, InputError, SettingsMismatch) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if not dry_run:
        raise typer.Exit(result.exit_code(strict))


# == train / eval (train/) =======================================================================

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
    shardset: str = typer.Argument(..., help="Shard-set folder, its manifest.json, or an http(s):// URL "
                                   "serving it (vidshard serve)."),
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
    for status in ("missing", "corrupt"):
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
) -> None:
    """Serve a shard set read-only over HTTP to other machines.

    Range requests supported; only manifest.json, failures.jsonl and the listed shards are
    reachable. Train elsewhere from the printed http://host:port/ with --cache-dir.
    """
    from vidshard.shards.serve import ServeConfig, serve

    try:
        cfg = ServeConfig(shardset=shardset, host=host, port=port)
        serve(cfg)
    except (OSError, ValueError) as e:
        raise _sh_fail(e) from None


@app.command("inspect")
def inspect_cmd(
    shardset: str = typer.Argument(..., help="Shard-set folder, its manifest.json, or an http(s):// URL."),
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

    Samples, hours, classes with counts, resolutions, frame rates and clip durations.
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


# == bench =======================================================================================


@bench_app.command("preprocess")
def bench_preprocess_cmd(
    inputs: Path = typer.Option(None, help="Folder of videos to time (default: generate synthetic ones)."),
    videos: int = typer.Option(8, help="Synthetic videos to generate (H.264 640x480)."),
    seconds: float = typer.Option(12.0, help="Length of each synthetic video, seconds."),
    workers: int = typer.Option(0, help="Parallel processes on both sides; 0 = all cores."),
    repeats: int = typer.Option(2, help="Alternating repeats; the best time of each side counts."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """vidshard preprocess against bare ffmpeg doing the identical transcode, same files and parallelism."""
    import json

    from vidshard.benchmarks.preprocess import BenchConfig, bench_preprocess, report

    res = bench_preprocess(BenchConfig(inputs=inputs, videos=videos, seconds=seconds, workers=workers,
                                       repeats=repeats))
    typer.echo(json.dumps(res.to_dict(), indent=2) if json_out else report(res))


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
    clips: int = typer.Option(None, help="Clips timed per row, after the first batch (default 48)."),
    clips_per_sample: int = typer.Option(None, "--clips-per-sample",
                                         help="K of the clips-per-sample row; 1 skips it (default 4)."),
    repeats: int = typer.Option(None, help="Measure the rows this many times, interleaved; keep each best "
                                "(default 2)."),
    workdir: str = typer.Option(None, help="Folder for generated inputs, reused when present (default: a "
                                "temporary folder)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Clips/s of the shard loader vs raw videos loaded the conventional way vs the decode-only limit."""
    from rich.console import Console
    from vidshard.benchmarks.loader import LoaderBenchConfig, run_bench, show, write_json

    given = dict(shardset=shardset, raw=raw, frames=frames, stride=stride, size=size, workers=workers,
                 batch_size=batch_size, clips=clips, clips_per_sample=clips_per_sample, repeats=repeats,
                 workdir=workdir)
    console = Console()
    try:  # defaults live in LoaderBenchConfig: pass only what was given
        result = run_bench(LoaderBenchConfig(**{k: v for k, v in given.items() if v is not None}), console)
    except (OSError, ValueError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    show(result, console)
    if json_out is not None:
        console.print(f"figures written to {write_json(result, json_out)}")


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
