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

# == bench =======================================================================================

# == demo ========================================================================================


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
