"""`ghosttrack detect`: hallucination detection scored with question-grouped cross-validation."""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import click

from ghosttrack.cli.options import config_command_options
from ghosttrack.config_fields import from_options
from ghosttrack.detect.config import DetectRun
from ghosttrack.detect.pipeline import DetectConfig


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
@config_command_options(DetectRun, only=("data", "test_data", "model", "gguf", "sae_path", "matches", "out", "cache",
                                         "probe_layers"))
@config_command_options(DetectRun, skip=("data", "test_data", "model", "gguf", "sae_path", "matches", "out", "cache",
                                         "probe_layers"))
def detect(ctx, **options) -> None:
    """Score hallucination detectors (tracker statistics, residual and SAE probes, log-probability,
    length) with K-fold cross-validation grouped by question, and transfer across datasets.

    \b
    ghosttrack detect --data sae-probes:truthqa_tf --test-data sae-probes:sciq_tf \\
        --model SmolLM2-135M-Instruct.Q4_1.gguf --sae runs/sae --out runs/detect
    """
    from ghosttrack.sae.folders import sae_dirs
    from ghosttrack.detect.pipeline import run_detection
    from ghosttrack.detect.report import markdown_table

    run = from_options(DetectRun, options)
    config = DetectConfig(**{f.name: getattr(run, f.name) for f in dataclasses.fields(DetectConfig)})
    results = run_detection(run.data, run.model, Path(run.out), sae_dirs=sae_dirs(run.sae_path) if run.sae_path else None,
                            matches=Path(run.matches) if run.matches else None, test_data=run.test_data, gguf=run.gguf,
                            config=config, command=_command_line(ctx), cache=Path(run.cache) if run.cache else None)
    click.echo(markdown_table(results))
