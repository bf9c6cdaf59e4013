"""`ghosttrack detect`: hallucination detection scored with question-grouped cross-validation."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from ghosttrack.cli.common import local_output
from ghosttrack.run_config import parse_layers


def _command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the options that differ from their defaults (for the report)."""
    words = ["ghosttrack", "detect"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is not None and value != param.default and param.opts:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


@click.command()
@click.pass_context
@click.option("--data", required=True,
              help="Examples: a .jsonl/.csv/.parquet file with question, answer, label (1 correct, 0 false) "
                   "and optional group columns, or sae-probes:truthqa_tf / sae-probes:sciq_tf.")
@click.option("--test-data", default=None, help="A second source: train on --data, test on this (transfer).")
@click.option("--model", required=True, help="HF hub id, local model directory, or a .gguf file.")
@click.option("--gguf", default=None, help="GGUF file name inside --model's directory.")
@click.option("--sae", "sae_path", default=None, type=click.Path(exists=True, file_okay=False),
              help="SAE folder, or a folder of layer_<i>/ SAE folders (the sparse SAE probe; the tracker's layers).")
@click.option("--matches", default=None, type=click.Path(file_okay=False),
              help="Edge lists from `ghosttrack match` (the tracker's statistics, method 'tracks').")
@click.option("--out", required=True, type=click.Path(file_okay=False), callback=local_output,
              help="Output folder: results.json, results.md, cache/ (features per model, data and layers).")
@click.option("--cache", default=None, type=click.Path(file_okay=False), callback=local_output,
              help="Feature cache folder, shareable between runs [default: OUT/cache].")
@click.option("--probe-layers", default="all", show_default=True,
              help="Layers the residual probe chooses among (inside the training folds): 0-29, 0,6,11 or all.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="Outer grouped folds.")
@click.option("--inner-folds", type=click.IntRange(min=2), default=3, show_default=True,
              help="Inner grouped folds that choose layer, position and C on the training rows only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds folds, bootstrap and --max-examples.")
@click.option("--bootstrap", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Bootstrap resamples of groups for the AUROC interval.")
@click.option("--max-examples", type=click.IntRange(min=1), default=None,
              help="Use a random subset of whole groups of about this many examples per source.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Examples per forward.")
@click.option("--max-tokens", type=click.IntRange(min=8), default=128, show_default=True,
              help="Longest input; the question is cut from the left to fit.")
@click.option("--device", default="cpu", show_default=True, help="Device of the forward pass.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
def detect(ctx, data, test_data, model, gguf, sae_path, matches, out, cache, probe_layers, folds, inner_folds, seed, bootstrap,
           max_examples, batch_size, max_tokens, device, dtype) -> None:
    """Score hallucination detectors (tracker statistics, residual and SAE probes, log-probability,
    length) with K-fold cross-validation grouped by question, and transfer across datasets.

    \b
    ghosttrack detect --data sae-probes:truthqa_tf --test-data sae-probes:sciq_tf \\
        --model SmolLM2-135M-Instruct.Q4_1.gguf --sae runs/sae --out runs/detect
    """
    from ghosttrack.cli.analysis import sae_dirs
    from ghosttrack.detect.pipeline import DetectConfig, run_detection

    layers = parse_layers(probe_layers)
    config = DetectConfig(folds=folds, inner_folds=inner_folds, seed=seed, bootstrap=bootstrap,
                          batch_size=batch_size, max_tokens=max_tokens, max_examples=max_examples,
                          probe_layers=None if layers == "all" else layers, device=device, dtype=dtype)
    results = run_detection(data, model, Path(out), sae_dirs=sae_dirs(sae_path) if sae_path else None,
                            matches=Path(matches) if matches else None, test_data=test_data, gguf=gguf,
                            config=config, command=_command_line(ctx), cache=Path(cache) if cache else None)
    from ghosttrack.detect.report import markdown_table

    click.echo(markdown_table(results))
