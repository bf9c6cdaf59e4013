"""The `ghosttrack` command line: extract, info, train, run, interpret, evaluate."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from ghosttrack.cli.common import config_option, corpus_options, parse_layers, parse_token_count, save_resolved_config
from ghosttrack.errors import GhostTrackError
from ghosttrack.store.errors import StoreError

INTERRUPTED_EXIT = 130


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
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, name: str):
        if name in self.lazy_commands and name not in self.commands:
            module, attr = self.lazy_commands[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (GhostTrackError, StoreError) as exc:
            click.echo(f"error: {exc}", err=True)
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
        click.option(f"{prefix}dtype", "extract_dtype" if in_run else "dtype", type=click.Choice(["fp32", "fp16", "bf16"]),
                     default="fp32", show_default=True, help="Model dtype for the forward pass (rows are stored as fp16)."),
    ]
    if not in_run:
        options += [
            click.option("--layers", default="all", show_default=True, help="Blocks to store: 0-11, 0,6,11 or all."),
            click.option("--device", default=None, help="Device (default: what accelerate picks: cuda if present)."),
        ]

    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


@main.command()
@config_option
@extract_options()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Store directory to write.")
@click.option("--resume", is_flag=True, help="Continue an interrupted store made with the same settings.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out.")
@click.pass_context
def extract(ctx: click.Context, **options) -> None:
    """Write residual-stream activations of --layers into a chunked fp16 zarr store."""
    run_extraction(options, command="extract")


def run_extraction(options: dict, *, command: str) -> Path:
    from accelerate import Accelerator

    from ghosttrack.corpus.sources import open_corpus
    from ghosttrack.extract.extractor import ExtractionPlan, HiddenStateExtractor
    from ghosttrack.extract.models import load_model

    if options["resume"] and options["overwrite"]:
        raise GhostTrackError("--resume and --overwrite exclude each other; pass one")
    tokens = parse_token_count(options["tokens"])
    device = None if options["device"] in (None, "auto") else options["device"]
    accelerator = Accelerator(cpu=device == "cpu")
    device = device or accelerator.device
    corpus = open_corpus(options["corpus"], min_chars=options["min_chars"], wiki_language=options["wiki_language"],
                         wiki_date=options["wiki_date"], text_field=options["text_field"])
    if accelerator.is_main_process:
        click.echo(f"loading {options['model']} ...", err=True)
    loaded = load_model(options["model"], gguf=options["gguf"], dtype=options["dtype"], device=device,
                        revision=options["revision"], causal_lm=False)
    layers = parse_layers(options["layers"], loaded.n_layers)
    plan = ExtractionPlan(layers=layers, target_tokens=tokens, seq_len=options["seq_len"], hook=options["hook"],
                          chunk_tokens=options["chunk_tokens"], compute_dtype=options["dtype"])
    mode = "resume" if options["resume"] else "overwrite" if options["overwrite"] else "create"
    out = Path(options["out"])
    extractor = HiddenStateExtractor(loaded, corpus, out, accelerator=accelerator)
    try:
        extractor.extract(plan, batch_size=options["batch_size"], mode=mode,
                          progress=accelerator.is_local_main_process)
    except KeyboardInterrupt:
        from ghosttrack.store.reader import ActivationStore

        committed = ActivationStore.open(out).n_tokens
        click.echo(f"\ninterrupted: {out} keeps {committed:,} committed tokens; "
                   f"rerun the same command with --resume to continue", err=True)
        sys.exit(INTERRUPTED_EXIT)
    if accelerator.is_main_process:
        # --resume/--overwrite say how to treat an existing store, not what the store is.
        saved = {k: v for k, v in options.items() if k not in ("resume", "overwrite", "device")}
        save_resolved_config(out, command="extract", options=saved)
        click.echo(f"wrote {out}", err=True)
    return out


@main.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False))
def info(store: str) -> None:
    """Print a store's model, layers, tokens, size on disk and chunking."""
    from ghosttrack.store.reader import ActivationStore

    click.echo(ActivationStore.open(store).summary())

