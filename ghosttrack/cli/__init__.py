"""The `ghosttrack` command line: extract, info, train, run, interpret, evaluate."""
from __future__ import annotations

import importlib
import sys

import click

from ghosttrack.cli.common import config_option, corpus_options
from ghosttrack.errors import GhostTrackError
from ghosttrack.store.errors import StoreError


class GhostTrackGroup(click.Group):
    """Turns the errors a user can fix into one line on stderr and exit code 2.

    Commands that live in their own modules load on first use, so `--help` stays fast.
    """

    lazy_commands = {
        "train": "ghosttrack.cli.train:train",
        "run": "ghosttrack.cli.run:run",
        "interpret": "ghosttrack.cli.analysis:interpret",
        "evaluate": "ghosttrack.cli.analysis:evaluate",
        "match": "ghosttrack.cli.tracks:match",
        "track": "ghosttrack.cli.tracks:track",
        "verify": "ghosttrack.cli.verify:verify",
        "detect": "ghosttrack.cli.detect:detect",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, name: str):
        if name in self.lazy_commands and name not in self.commands:
            module, attr = self.lazy_commands[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `ghosttrack` alone shows the help
        except click.ClickException as exc:
            _exit_with_one_line(exc)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (GhostTrackError, StoreError) as exc:
            click.echo(one_line(f"error: {exc}"), err=True)
            sys.exit(2)
        except click.ClickException as exc:  # a usage error of a command: one line too
            _exit_with_one_line(exc)


def one_line(text: str) -> str:
    """Any message (a YAML parser's, a chained exception's) as one line."""
    return " ".join(str(text).split())


def _exit_with_one_line(exc: click.ClickException) -> None:
    """click prints usage errors as usage + hint + message (three lines); ours are one, exit 2."""
    ctx = getattr(exc, "ctx", None)
    hint = f" (see {ctx.command_path} --help)" if ctx is not None and isinstance(exc, click.UsageError) else ""
    click.echo(one_line(f"error: {exc.format_message()}{hint}"), err=True)
    sys.exit(2)


@click.group(cls=GhostTrackGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ghosttrack")
def main() -> None:
    """GhostTrack: residual-stream activations -> sparse-autoencoder features, fast.

    \b
    ghosttrack extract --layers 0-11 --tokens 10M --out runs/gpt2-wiki
    ghosttrack info runs/gpt2-wiki
    ghosttrack train --store runs/gpt2-wiki --layer 6 --out runs/sae
    ghosttrack interpret --store runs/gpt2-wiki --sae runs/sae/layer_6 --out runs/interp
    """


def extract_options(*, in_run: bool = False):
    """Options of `extract`; `run` shares them, naming the ones `train` also has --extract-*."""
    prefix = "--extract-" if in_run else "--"
    options = [
        click.option("--model", default="gpt2", show_default=True,
                     help="HF hub id, local model directory, or a .gguf file."),
        click.option("--gguf", default=None, help="GGUF file name inside --model's directory (or a path to one)."),
        click.option("--revision", default=None, help="Model revision (branch, tag or commit) on the hub."),
        corpus_options,
        click.option("--hook", type=click.Choice(["resid_post", "resid_pre"]), default="resid_post", show_default=True,
                     help="Residual stream after block i (resid_post) or before it (resid_pre)."),
        click.option("--tokens", default="10M", show_default=True, help="Tokens to extract: 10M, 200k, 4096."),
        click.option("--seq-len", default=128, show_default=True, type=int, help="Tokens per packed sequence."),
        click.option(f"{prefix}batch-size", "extract_batch_size" if in_run else "batch_size", default=32,
                     show_default=True, type=int, help="Sequences per forward pass."),
        click.option("--chunk-tokens", default=None, type=int,
                     help="Rows per store chunk (multiple of --seq-len); default: >= 32 chunks, <= 65,536 rows."),
        click.option(f"{prefix}dtype", "extract_dtype" if in_run else "dtype",
                     type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
                     help="Model dtype for the forward pass; auto: bf16 on a GPU that has it, else fp32."),
        click.option("--store-dtype", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
                     help="Dtype of the stored rows; fp32 for activations beyond fp16's range (+-65504)."),
        click.option("--host-buffer-mb", type=click.IntRange(min=1), default=2048, show_default=True,
                     help="Host (pinned) memory for batches on their way to the disk."),
    ]
    if not in_run:
        options += [
            click.option("--layers", default="all", show_default=True, help="Blocks to store: 0-11, 0,6,11 or all."),
            click.option("--device", default=None, help="Device (default: what accelerate picks: cuda if present)."),
            click.option("--shard-chunks", type=click.IntRange(min=1), default=1, show_default=True,
                         help="Store N chunks per zarr v3 shard (one object each: far fewer objects on s3://, "
                              "gs://); a shard is then the unit of commit and resume."),
        ]

    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


@main.command()
@config_option
@extract_options()
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Store to write: a directory, or s3://BUCKET/RUN, gs://BUCKET/RUN, memory://RUN.")
@click.option("--resume", is_flag=True, help="Continue an interrupted store made with the same settings.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out.")
@click.option("--repair", is_flag=True,
              help="With --resume: re-extract the chunks `ghosttrack verify` finds damaged, then continue.")
@click.pass_context
def extract(ctx: click.Context, **options) -> None:
    """Write residual-stream activations of --layers into a chunked fp16 zarr store."""
    from ghosttrack.extract.pipeline import run_extraction

    run_extraction(options, command="extract")


@main.command()
@click.argument("store")
def info(store: str) -> None:
    """Print a store's model, layers, tokens, size on disk and chunking."""
    from ghosttrack.store.reader import ActivationStore

    click.echo(ActivationStore.open(store).summary())

