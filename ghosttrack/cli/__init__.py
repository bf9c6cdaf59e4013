"""The `ghosttrack` command line: extract, info, verify, train, run, interpret, evaluate, match, track, detect."""
from __future__ import annotations

import importlib
import sys

import click

from ghosttrack.cli.common import config_option
from ghosttrack.cli.options import config_command_options
from ghosttrack.config_fields import from_options
from ghosttrack.extract.config import ExtractConfig
from ghosttrack.run_config import StoreArgument
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


RUN_FLAGS = {"batch_size": "--extract-batch-size", "dtype": "--extract-dtype"}
"""`run`'s spelling of the extraction options that `train` also has."""
NOT_IN_RUN = ("layers", "device", "shard_chunks", "out", "resume", "overwrite", "repair")
"""Extraction options `run` sets itself (or shares with training, or does not offer)."""


def extract_options(*, in_run: bool = False):
    """Options of `extract` (ExtractConfig's fields); `run` shares them, naming the ones `train` also
    has --extract-*."""
    if in_run:
        return config_command_options(ExtractConfig, skip=NOT_IN_RUN, flags=RUN_FLAGS)
    return config_command_options(ExtractConfig)


@main.command()
@config_option
@extract_options()
def extract(**options) -> None:
    """Write residual-stream activations of --layers into a chunked fp16 zarr store."""
    from ghosttrack.extract.pipeline import run_extraction

    run_extraction(from_options(ExtractConfig, options), command="extract")


@main.command()
@config_command_options(StoreArgument)
def info(**options) -> None:
    """Print a store's model, layers, tokens, size on disk and chunking."""
    from ghosttrack.store.reader import ActivationStore

    click.echo(ActivationStore.open(from_options(StoreArgument, options).store, trust=True).summary())  # no chunk read

