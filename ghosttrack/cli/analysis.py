"""`ghosttrack interpret` and `ghosttrack evaluate` (registered lazily in cli/__init__.py)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ghosttrack.cli.common import config_option
from ghosttrack.cli.options import config_command_options
from ghosttrack.config_fields import from_options
from ghosttrack.errors import GhostTrackError
from ghosttrack.evaluate_run import EvaluateRun
from ghosttrack.interpret.config import SKIP_POSITIONS_HELP, InterpretRun
from ghosttrack.run_config import save_resolved_config
from ghosttrack.sae.folders import sae_dirs


@click.command()
@config_option
@config_command_options(InterpretRun, only=("store", "sae_path", "layer", "top_k", "out", "batch_size", "device"))
@config_command_options(InterpretRun, skip=("store", "sae_path", "layer", "top_k", "out", "batch_size", "device"),
                        help_overrides={"skip_positions": SKIP_POSITIONS_HELP})
def interpret(**options) -> None:
    """Top examples, common tokens, dead/dense features and an HTML browser for every SAE feature.

    One pass over the stored layer through the SAE encoder; contexts come from the stored
    token ids, so the model is not needed.
    """
    from ghosttrack.interpret.features import analyze_sae, print_feature_summary
    from ghosttrack.sae.agreement import check_layer_agreement
    from ghosttrack.sae.files import read_cfg
    from ghosttrack.store.format import read_store_attrs
    from ghosttrack.store.location import as_location

    config = from_options(InterpretRun, options)
    show = config.feature_ids
    dirs = sae_dirs(config.sae_path)
    if len(dirs) > 1 and config.layer is not None:
        raise GhostTrackError("--layer applies to one SAE; pass --sae DIR/layer_<i> for a single layer")
    store_at = as_location(config.store)
    store_hook = (read_store_attrs(store_at) or {}).get("hook") if store_at.is_dir() else None
    for directory in dirs:
        check_layer_agreement(read_cfg(directory), config.layer, store_hook,
                              sae=str(directory), allow_mismatch=config.allow_layer_mismatch)
        summary = analyze_sae(directory, config.store, config.out, layer=config.layer, config=config, access=config)
        layer_dir = Path(summary["files"]["features"]).parent
        save_resolved_config(layer_dir, "interpret", {**options, "sae_path": str(directory)})
        n = summary["d_sae"]
        click.echo(f"layer {summary['layer']}: {n:,} features over {summary['rows_scanned']:,} rows "
                   f"({summary['rows_skipped_flagged']:,} position-0 and {summary['rows_skipped_outliers']:,} "
                   f"outlier rows skipped); dead {summary['dead']['count']:,} ({summary['dead']['fraction']:.1%}), "
                   f"dense {summary['dense']['count']:,} ({summary['dense']['fraction']:.1%})"
                   + (f"; positions {','.join(map(str, summary['skip_positions']))} skipped "
                      f"({summary['rows_skipped_positions']:,} rows)" if summary["skip_positions"] else ""))
        if summary.get("peak_hint"):
            click.echo(f"note: {summary['peak_hint']}")
        if show:
            records = _load_records(Path(summary["files"]["features"]))
            for f in show:
                if not 0 <= f < n:
                    raise GhostTrackError(f"--show {f}: the SAE has features 0-{n - 1}")
                print_feature_summary(records[f])
        click.echo(f"features: {summary['files']['features']}")
        if "html" in summary["files"]:
            click.echo(f"feature browser: {summary['files']['html']}")


def _load_records(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line]
    return json.loads(path.read_text())


@click.command()
@config_option
@config_command_options(EvaluateRun, help_overrides={"skip_positions": SKIP_POSITIONS_HELP})
def evaluate(**options) -> None:
    """MSE, FVU, L0, dead/dense fractions and next-token CE / KL with the SAE spliced into the model."""
    from ghosttrack.evaluate import format_table
    from ghosttrack.evaluate_run import run_evaluation

    result, out = run_evaluation(from_options(EvaluateRun, options), options)
    click.echo(format_table(result))
    click.echo(f"wrote {out}")
