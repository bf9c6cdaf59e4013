"""`ghosttrack interpret` and `ghosttrack evaluate` (added to the main group in cli.py)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ghosttrack.cli.common import config_option, corpus_options, local_output, token_count
from ghosttrack.cli.options import store_access, store_access_options
from ghosttrack.errors import GhostTrackError
from ghosttrack.run_config import parse_token_count, save_resolved_config
from ghosttrack.store.stats import MAX_NORM_RATIO


def _ratio(value: float | None) -> float | None:
    """--max-norm-ratio 0 turns the outlier rule off."""
    return None if value is None or value == 0 else value


def _skip_tokens(ctx, param, value) -> int | str:
    return value if value is None or str(value) == "auto" else parse_token_count(value)


def _positions(ctx, param, value) -> tuple[int, ...] | None:
    """--skip-positions '0,1' -> (0, 1); '' or 'none' -> (); absent -> None (the SAE's own rule)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):  # from a saved config.json
        value = ",".join(str(p) for p in value) or "none"
    text = str(value).strip().strip("[]()").strip().lower()  # click turns a saved [1, 2] into "[1, 2]"
    if text in ("", "none"):
        return ()
    try:
        positions = tuple(sorted({int(p) for p in text.replace(" ", "").split(",") if p}))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a list of positions; write e.g. 1 or 0,1 (or none)") from None
    if any(p < 0 for p in positions):
        raise click.BadParameter(f"'{value}': positions are >= 0")
    return positions


SKIP_POSITIONS_HELP = ("Sequence positions left out besides position 0, e.g. 1 or 0,1 (tokens after an attention "
                       "sink that peak many features); 'none' keeps them. Default: the positions the SAE was "
                       "trained without (saved with it), so training, interpretation and evaluation agree.")


def sae_dirs(path: str | Path) -> list[Path]:
    """An SAE directory, or a folder of per-layer ones (layer_<i>/), as a sorted list."""
    path = Path(path)
    if (path / "cfg.json").is_file():
        return [path]
    found = sorted((p for p in path.glob("layer_*") if (p / "cfg.json").is_file()),
                   key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else -1)
    if not found:
        raise GhostTrackError(f"{path} holds no SAE (cfg.json + sae_weights.safetensors) and no layer_<i>/ SAE "
                              "folders; pass the folder ghosttrack train wrote")
    return found


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.command()
@config_option
@click.option("--store", required=True, type=click.Path(file_okay=False), help="Activation store (ghosttrack extract --out).")
@click.option("--sae", "sae_path", required=True, type=click.Path(exists=True, file_okay=False),
              help="SAE folder (cfg.json + sae_weights.safetensors), or a folder of layer_<i>/ SAE folders.")
@click.option("--layer", type=int, default=None, help="Store layer to read (default: the SAE's hook_layer).")
@click.option("--top-k", type=click.IntRange(min=1), default=20, show_default=True,
              help="Top-activating examples kept per feature.")
@click.option("--out", default="runs/interp", show_default=True, type=click.Path(file_okay=False), callback=local_output,
              help="Output folder; each layer goes to OUT/layer_<i>/.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4096, show_default=True, help="Rows per encoder call.")
@click.option("--device", default=None, help="Device for the pass (default: cuda if present, else cpu).")
@click.option("--context-before", type=click.IntRange(min=0), default=12, show_default=True,
              help="Tokens of context shown before the activating token.")
@click.option("--context-after", type=click.IntRange(min=0), default=4, show_default=True,
              help="Tokens of context shown after it.")
@click.option("--max-norm-ratio", type=click.FloatRange(min=0), default=MAX_NORM_RATIO, show_default=True,
              help="Skip rows whose norm exceeds this x the median (attention sinks), as training does; 0: keep all.")
@click.option("--include-flagged", is_flag=True, help="Also scan position-0 rows (skipped by default).")
@click.option("--skip-positions", default=None, callback=_positions, help=SKIP_POSITIONS_HELP)
@click.option("--dense-threshold", type=click.FloatRange(min=0, max=1, min_open=True), default=0.1, show_default=True,
              help="Features active on more than this fraction of rows are listed as dense.")
@click.option("--model", default=None,
              help="Model directory (safetensors) or .gguf file: adds the tokens each feature promotes and "
                   "suppresses (W_dec through the final norm scale and W_U, read from the files; the model is "
                   "not run). Absent: that section is omitted.")
@click.option("--gguf", default=None, help="GGUF file name inside --model's directory.")
@click.option("--quantile-bands", type=click.IntRange(min=0), default=5, show_default=True,
              help="Bands of equal share of each feature's activations shown with examples (0: none).")
@click.option("--examples-per-band", type=click.IntRange(min=1), default=3, show_default=True,
              help="Examples shown per quantile band.")
@click.option("--neighbors", type=click.IntRange(min=0), default=10, show_default=True,
              help="Nearest features by decoder cosine listed per feature (0: none).")
@click.option("--format", "output_format", type=click.Choice(["auto", "json", "jsonl"]), default="auto",
              show_default=True, help="features.json, features.jsonl, or jsonl above 16,384 features (auto).")
@click.option("--no-html", is_flag=True, help="Skip the HTML feature browser.")
@click.option("--show", default="", help="Feature ids to print in the terminal, e.g. 0,17,42.")
@click.option("--allow-layer-mismatch", is_flag=True,
              help="Read --layer (or a store hook) other than the one the SAE was trained on, on purpose.")
@store_access_options
def interpret(**options) -> None:
    """Top examples, common tokens, dead/dense features and an HTML browser for every SAE feature.

    One pass over the stored layer through the SAE encoder; contexts come from the stored
    token ids, so the model is not needed.
    """
    from ghosttrack.interpret.features import InterpretConfig, analyze_sae, print_feature_summary
    from ghosttrack.sae.agreement import check_layer_agreement
    from ghosttrack.sae.files import read_cfg
    from ghosttrack.store.format import read_store_attrs
    from ghosttrack.store.location import as_location

    try:
        show = [int(s) for s in options["show"].replace(" ", "").split(",") if s]
    except ValueError:
        raise click.BadParameter(f"'{options['show']}' is not a list of feature ids; write e.g. 0,17,42",
                                 param_hint="--show") from None
    config = InterpretConfig(
        top_k=options["top_k"], batch_size=options["batch_size"], device=options["device"] or _default_device(),
        context_before=options["context_before"], context_after=options["context_after"],
        skip_flagged=not options["include_flagged"], max_norm_ratio=_ratio(options["max_norm_ratio"]),
        dense_threshold=options["dense_threshold"], output_format=options["output_format"],
        html=not options["no_html"], skip_positions=options["skip_positions"], model=options["model"],
        gguf=options["gguf"], quantile_bands=options["quantile_bands"],
        examples_per_band=options["examples_per_band"], neighbors=options["neighbors"],
        store=store_access(options),
    )
    dirs = sae_dirs(options["sae_path"])
    if len(dirs) > 1 and options["layer"] is not None:
        raise GhostTrackError("--layer applies to one SAE; pass --sae DIR/layer_<i> for a single layer")
    store_at = as_location(options["store"])
    store_hook = (read_store_attrs(store_at) or {}).get("hook") if store_at.is_dir() else None
    for directory in dirs:
        check_layer_agreement(read_cfg(directory), options["layer"], store_hook,
                              sae=str(directory), allow_mismatch=options["allow_layer_mismatch"])
        summary = analyze_sae(directory, options["store"], options["out"], layer=options["layer"], config=config)
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
@click.option("--sae", "sae_path", required=True, type=click.Path(exists=True, file_okay=False), help="SAE folder.")
@click.option("--model", default=None, help="HF hub id, model directory or .gguf file (default: the SAE's model_name).")
@click.option("--gguf", default=None, help="GGUF file name inside --model's directory.")
@corpus_options
@click.option("--tokens", default="200k", show_default=True, callback=token_count,
              help="Held-out tokens to evaluate: 200k, 1M, 4096.")
@click.option("--seq-len", type=click.IntRange(min=2), default=128, show_default=True, help="Tokens per packed sequence.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Sequences per forward pass.")
@click.option("--skip-tokens", default="auto", show_default=True, callback=_skip_tokens,
              help="Tokens of the corpus to skip first; auto: those the SAE's store extracted from this corpus.")
@click.option("--layer", type=int, default=None, help="Block to splice at (default: the SAE's hook_layer).")
@click.option("--hook", type=click.Choice(["resid_post", "resid_pre"]), default=None,
              help="Hook point (default: from the SAE's hook_name, else resid_post).")
@click.option("--max-norm-ratio", type=click.FloatRange(min=0), default=None,
              help="Rows with norm > this x the median norm keep their clean value (attention sinks); 0: no limit. "
                   "Default: the rule the SAE was trained with (ratio and median norm saved in its cfg.json).")
@click.option("--splice-all", is_flag=True, help="Splice every position, position 0 and outliers included.")
@click.option("--allow-layer-mismatch", is_flag=True,
              help="Splice at a --layer / --hook other than the one the SAE was trained on, on purpose.")
@click.option("--skip-positions", default=None, callback=_positions, help=SKIP_POSITIONS_HELP)
@click.option("--dense-threshold", type=click.FloatRange(min=0, max=1, min_open=True), default=0.1, show_default=True,
              help="Latents firing on more than this fraction of rows count as dense.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Model dtype.")
@click.option("--device", default=None, help="Device (default: cuda if present, else cpu).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), callback=local_output,
              help="JSON file to write (default: SAE/evaluation.json).")
def evaluate(**options) -> None:
    """MSE, FVU, L0, dead/dense fractions and next-token CE / KL with the SAE spliced into the model."""
    from ghosttrack.corpus.sources import open_corpus
    from ghosttrack.evaluate import EvalConfig, default_output, evaluate_sae, format_table, held_out_skip, sae_hook
    from ghosttrack.extract.models import load_model
    from ghosttrack.extract.preflight import check_corpus
    from ghosttrack.corpus.packing import pack_batches
    from ghosttrack.interpret.inputs import sae_skip_positions
    from ghosttrack.sae.module import load_sae

    from ghosttrack.sae.agreement import check_layer_agreement, resolve_recorded_path, trained_norm_rule

    device = options["device"] or _default_device()
    sae = load_sae(options["sae_path"], device=device)
    check_layer_agreement(sae.metadata, options["layer"], options["hook"], sae=str(options["sae_path"]),
                          allow_mismatch=options["allow_layer_mismatch"])
    meta_layer, meta_hook = sae_hook(sae)
    layer = options["layer"] if options["layer"] is not None else meta_layer
    if layer is None:
        raise GhostTrackError("the SAE's metadata names no layer; pass --layer")
    model = options["model"] or resolve_recorded_path(sae.metadata.get("model_name"), options["sae_path"])
    if not model:
        raise GhostTrackError("the SAE's metadata names no model; pass --model")
    # The outlier rule the SAE was trained with: its ratio (unless --max-norm-ratio) and its training median.
    rule = trained_norm_rule(sae.metadata)
    ratio = _ratio(options["max_norm_ratio"]) if options["max_norm_ratio"] is not None else (rule[0] if rule else MAX_NORM_RATIO)
    median = rule[1] if rule else None
    if rule is None and ratio is not None:
        click.echo("note: the SAE does not record its training norm rule; each batch's median norm is used", err=True)
    config = EvalConfig(tokens=options["tokens"], seq_len=options["seq_len"],
                        batch_size=options["batch_size"], max_norm_ratio=ratio, median_norm=median,
                        splice_all=options["splice_all"], dense_threshold=options["dense_threshold"],
                        skip_positions=options["skip_positions"] if options["skip_positions"] is not None
                        else sae_skip_positions(sae))
    corpus = open_corpus(options["corpus"], min_chars=options["min_chars"], wiki_language=options["wiki_language"],
                         wiki_date=options["wiki_date"], text_field=options["text_field"])
    check_corpus(corpus)  # reachable, with a document, before minutes of model loading
    if options["skip_tokens"] == "auto":
        skip, why = held_out_skip(sae, corpus.describe(), config.seq_len, sae_dir=options["sae_path"])
    else:
        skip, why = options["skip_tokens"] // config.seq_len, "--skip-tokens"
    click.echo(f"held-out text: {why}", err=True)
    loaded = load_model(model, gguf=options["gguf"], dtype=options["dtype"], device=device)
    batches = pack_batches(corpus.get_texts(), loaded.tokenizer, config.seq_len, config.batch_size,
                           max_sequences=config.n_sequences, skip_sequences=skip)
    result = evaluate_sae(sae, loaded, batches, layer=layer, hook=options["hook"] or meta_hook, config=config)
    result.update(sae=str(options["sae_path"]), corpus=corpus.describe(), skipped_sequences=skip, held_out=why)
    # With "command" and "options" the result doubles as a resolved config: --config FILE reruns it.
    result.update(command="evaluate", options={k: v for k, v in options.items() if k != "config"})
    out = Path(options["out"]) if options["out"] else default_output(options["sae_path"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    click.echo(format_table(result))
    click.echo(f"wrote {out}")
