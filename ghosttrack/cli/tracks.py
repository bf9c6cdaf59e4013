"""`ghosttrack match` and `ghosttrack track` (registered lazily in cli/__init__.py)."""
from __future__ import annotations

from pathlib import Path

import click

from ghosttrack.cli.common import local_output
from ghosttrack.cli.options import store_access, store_access_options
from ghosttrack.errors import GhostTrackError


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.command()
@click.option("--sae", "sae_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of per-layer SAE folders layer_<i>/ (the --out of ghosttrack train).")
@click.option("--out", required=True, type=click.Path(file_okay=False), callback=local_output,
              help="Output folder: layer_<i>_to_<j>.parquet per consecutive pair, and summary.json.")
@click.option("--store", default=None, type=click.Path(file_okay=False),
              help="Activation store the SAEs were trained on: score by co-activation over its held-out rows.")
@click.option("--top", type=click.IntRange(min=1), default=8, show_default=True,
              help="Candidates kept per latent.")
@click.option("--device", default=None, help="Device of the blocked computation (default: cuda if present, else cpu).")
@click.option("--src-block", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Source latents per tile of the data-free matching.")
@click.option("--dst-block", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Candidate latents per tile of the data-free matching.")
@store_access_options
def match(sae_dir: str, out: str, store: str | None, top: int, device: str | None, src_block: int,
          dst_block: int, **access) -> None:
    """Match the latents of consecutive layers' SAEs: a sparse edge list (src, dst, score) per pair.

    Without --store the score is data-free (decoder rows after folding thresholds, as SAE Match);
    with --store it is the correlation of the two latents over the store's held-out rows.
    """
    from ghosttrack.tracks.edges import run_matching
    from ghosttrack.tracks.match import BlockSizes

    summary = run_matching(sae_dir, out, store_path=store, top=top, device=device or _default_device(),
                           blocks=BlockSizes(src_block, dst_block), access=store_access(access))
    for pair in summary["pairs"]:
        head = f"layer {pair['src_layer']} -> {pair['dst_layer']}: {pair['edges']:,} edges"
        if "rows" in pair:
            head += f" over {pair['rows']:,} held-out rows"
        p10, p50, p90 = pair["best_score_p10_p50_p90"]
        if p50 is not None:
            head += f"; best score p10/p50/p90 {p10:.3f}/{p50:.3f}/{p90:.3f}"
        click.echo(f"{head}; {pair['sources_without_edges']:,} latents without a candidate ({pair['seconds']:.1f} s)")
    click.echo(f"edges: {Path(out)}/layer_<i>_to_<j>.parquet; summary: {Path(out) / 'summary.json'}")


@click.command()
@click.option("--model", required=True, help="HF hub id, local model directory, or a .gguf file (the SAEs' model).")
@click.option("--gguf", default=None, help="GGUF file name inside --model's directory.")
@click.option("--sae", "sae_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of per-layer SAE folders layer_<i>/.")
@click.option("--matches", required=True, type=click.Path(file_okay=False), help="The --out folder of ghosttrack match.")
@click.option("--text", default=None, help="Text to track.")
@click.option("--input", "input_file", default=None, type=click.Path(dir_okay=False),
              help="File whose text to track (instead of --text).")
@click.option("--out", required=True, type=click.Path(file_okay=False), callback=local_output,
              help="Output folder: tracks.json, token_stats.parquet, index.html.")
@click.option("--interp", default=None, type=click.Path(file_okay=False),
              help="The --out folder of ghosttrack interpret: latents link to their feature-browser pages.")
@click.option("--min-score", type=float, default=None, help="Edges scoring below this link nothing [default: 0.3].")
@click.option("--min-activation", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Latents at or below this activation count as silent.")
@click.option("--shown", type=click.IntRange(min=1), default=8, show_default=True,
              help="Strongest tracks drawn per token in the HTML view.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--device", default=None, help="Device (default: cuda if present, else cpu).")
def track(model: str, gguf: str | None, sae_dir: str, matches: str, text: str | None, input_file: str | None,
          out: str, interp: str | None, min_score: float | None, min_activation: float, shown: int, dtype: str,
          device: str | None) -> None:
    """Track one text's SAE latents from layer to layer: births, continuations, splits, merges, deaths."""
    from ghosttrack.tracks.pipeline import DEFAULT_MIN_SCORE, TrackingPipeline
    from ghosttrack.tracks.stats import token_statistics
    from ghosttrack.tracks.view import browser_links, write_outputs

    if (text is None) == (input_file is None):
        raise GhostTrackError("pass the text with exactly one of --text \"...\" or --input FILE")
    if input_file is not None:
        try:
            text = Path(input_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise GhostTrackError(f"cannot read --input {input_file} ({exc}); pass a UTF-8 text file") from exc
    if not text.strip():
        raise GhostTrackError("the text to track is empty; pass some text")
    saes, _, _ = TrackingPipeline.check(model, sae_dir, matches, gguf=gguf)
    links = browser_links(interp, saes.layers, out)
    pipe = TrackingPipeline.open(model, sae_dir, matches, gguf=gguf, dtype=dtype, device=device or _default_device(),
                                 min_score=DEFAULT_MIN_SCORE if min_score is None else min_score,
                                 min_activation=min_activation)
    tracked = pipe.track_text(text)
    meta = {"model": pipe.loaded.name, "sae": str(saes.root), "matches": str(matches), "text": text,
            "min_score": pipe.tracker.min_score, "min_activation": min_activation}
    page = write_outputs(out, tracked.result, tracked.token_ids, tracked.pieces, meta=meta, links=links, shown=shown)
    stats = token_statistics(tracked.result)
    r = tracked.result
    click.echo(f"{r.n_tokens} tokens, layers {', '.join(map(str, r.layers))}: {r.n_tracks:,} tracks, "
               f"{int(stats['births'][:, 1:].sum()):,} births and {int(stats['splits'].sum()):,} splits after the "
               f"first layer, {int(stats['deaths'].sum()):,} deaths, {int(stats['merges'].sum()):,} merges; "
               f"mean dominant share {stats['dominant_share'].mean():.3f}")
    click.echo(f"tracks: {Path(out) / 'tracks.json'}; per-token statistics: {Path(out) / 'token_stats.parquet'}")
    click.echo(f"view: {page}")
