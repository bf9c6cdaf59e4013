"""The `ghosttrack` command line: extract, info, train, run, interpret, evaluate."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from ghosttrack.cli.common import config_option, corpus_options
from ghosttrack.run_config import parse_layers, parse_token_count, save_resolved_config
from ghosttrack.errors import GhostTrackError
from ghosttrack.interrupts import INTERRUPTED_EXIT
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
    run_extraction(options, command="extract")


def run_extraction(options: dict, *, command: str) -> Path:
    """Check everything that needs no model weights, then load the model and extract (or repair)."""
    from accelerate import Accelerator

    from ghosttrack.corpus.sources import open_corpus
    from ghosttrack.extract import preflight
    from ghosttrack.extract.extractor import STORE_DTYPE_NAMES, ExtractionPlan, HiddenStateExtractor
    from ghosttrack.extract.models import load_model
    from ghosttrack.precision import resolve_dtype
    from ghosttrack.store.location import as_location

    if options["resume"] and options["overwrite"]:
        raise GhostTrackError("--resume and --overwrite exclude each other; pass one")
    repair, break_lock = options.get("repair", False), options.get("break_lock", False)
    if repair and not options["resume"]:
        raise GhostTrackError("--repair mends an existing store; pass it together with --resume")
    tokens = parse_token_count(options["tokens"])
    mode = "resume" if options["resume"] else "overwrite" if options["overwrite"] else "create"
    out = as_location(options["out"])  # a bad URL, or a missing s3fs/gcsfs, stops here
    # Cheap checks first: nothing up to the model load reads weights or writes a file.
    preflight.check_device(options["device"])
    shape = preflight.read_model_shape(options["model"], gguf=options["gguf"], revision=options["revision"])
    layers = parse_layers(options["layers"], shape.n_layers)
    device = None if options["device"] in (None, "auto") else options["device"]
    accelerator = Accelerator(cpu=device == "cpu")
    device = device or accelerator.device
    dtype, dtype_warning = resolve_dtype(options["dtype"], device)
    plan = ExtractionPlan(layers=layers, target_tokens=tokens, seq_len=options["seq_len"], hook=options["hook"],
                          chunk_tokens=options["chunk_tokens"], compute_dtype=dtype,
                          shard_chunks=options.get("shard_chunks") or 1,
                          store_dtype=options.get("store_dtype") or "fp16")
    preflight.check_model_fits(shape, layers, plan.seq_len, options["model"])
    corpus = open_corpus(options["corpus"], min_chars=options["min_chars"], wiki_language=options["wiki_language"],
                         wiki_date=options["wiki_date"], text_field=options["text_field"])
    preflight.check_corpus(corpus)
    expected = {"model": preflight.model_name(options["model"], options["gguf"]), "hook": plan.hook,
                "layers": plan.layers, "d_model": shape.d_model, "context_length": plan.seq_len,
                "chunk_tokens": plan.chunk_tokens, "target_tokens": plan.target_tokens, "corpus": corpus.describe(),
                "compute_dtype": dtype, "dtype": STORE_DTYPE_NAMES[plan.store_dtype]}
    nothing_to_do = preflight.check_store_state(out, mode, expected, break_lock=break_lock)
    if nothing_to_do and not repair:
        if accelerator.is_main_process:
            click.echo(nothing_to_do, err=True)
        return out
    if dtype_warning and accelerator.is_main_process:
        click.echo(dtype_warning, err=True)
    try:
        if accelerator.is_main_process:
            click.echo(f"loading {options['model']} ({dtype}) ...", err=True)
        loaded = load_model(options["model"], gguf=options["gguf"], dtype=dtype, device=device,
                            revision=options["revision"], causal_lm=False)
        extractor = HiddenStateExtractor(loaded, corpus, out, accelerator=accelerator)
        if repair:
            _repair(extractor, plan, out, options["batch_size"], progress=accelerator.is_local_main_process)
        if not nothing_to_do:
            extractor.extract(plan, batch_size=options["batch_size"], mode=mode, break_lock=break_lock,
                              progress=accelerator.is_local_main_process,
                              host_buffer_bytes=(options.get("host_buffer_mb") or 2048) << 20)
    except KeyboardInterrupt:
        from ghosttrack.store.format import read_store_attrs

        attrs = read_store_attrs(out) if out.is_dir() else None
        kept = (f"{out} keeps {attrs['committed_tokens']:,} committed tokens; rerun the same command with --resume "
                "to continue" if attrs else "nothing was written; rerun the same command")
        click.echo(f"\ninterrupted: {kept}", err=True)
        sys.exit(INTERRUPTED_EXIT)
    if accelerator.is_main_process:
        # --resume/--overwrite/--repair say how to treat an existing store, not what the store is.
        saved = {k: v for k, v in options.items() if k not in ("resume", "overwrite", "repair", "break_lock", "device")}
        save_resolved_config(out, command="extract", options=saved)
        _report_short_corpus(out)
        click.echo(f"wrote {out}", err=True)
    return out


def _report_short_corpus(out) -> None:
    """One line when the corpus ran out before --tokens (the store records it: ghosttrack info shows it)."""
    from ghosttrack.store.reader import ActivationStore

    store = ActivationStore.open(out, trust=True)
    if store.corpus_ran_out:
        click.echo(f"corpus ran out at {store.n_tokens:,} of {store.attrs['target_tokens']:,} tokens: {out} is "
                   f"complete with {store.n_tokens:,} tokens; pass a bigger --corpus for more", err=True)


def _repair(extractor, plan, out: Path, batch_size: int, *, progress: bool) -> None:
    from ghosttrack.store.verify import verify_store

    report = verify_store(out, progress=progress)
    if report.healthy:
        click.echo(f"store {out}: no damaged chunk to repair", err=True)
        return
    click.echo(f"repairing {len(report.damaged_chunks)} damaged chunk(s) of {out}: "
               f"{', '.join(map(str, report.damaged_chunks))}", err=True)
    from ghosttrack.extract.repair import repair_chunks

    repair_chunks(extractor, plan, report.damaged_chunks, batch_size=batch_size, progress=progress)
    again = verify_store(out)
    if not again.healthy:
        raise GhostTrackError(f"store {out} is still damaged after the repair ({len(again.damaged)} chunk file(s)): "
                              "the options differ from the original run's; rerun with its config.json (--config)")
    click.echo(f"repaired {len(report.damaged_chunks)} chunk(s); store {out} verifies healthy", err=True)


@main.command()
@click.argument("store")
def info(store: str) -> None:
    """Print a store's model, layers, tokens, size on disk and chunking."""
    from ghosttrack.store.reader import ActivationStore

    click.echo(ActivationStore.open(store, trust=True).summary())  # reads no chunk

