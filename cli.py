"""vidshard's command line: one typer app, one plain function call per command.

No logic lives here: each command builds the config dataclass of its stage
(option defaults come from that dataclass) and calls one library function.
"""

from __future__ import annotations

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

# == train / eval (train/) =======================================================================

# == verify / serve / inspect / merge (shards/) ==================================================

# == bench =======================================================================================

# == demo ========================================================================================


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
