"""`ghosttrack match` and `ghosttrack track` (registered lazily in cli/__init__.py)."""
from __future__ import annotations

from pathlib import Path

import click

from ghosttrack.cli.options import config_command_options
from ghosttrack.config_fields import from_options
from ghosttrack.precision import resolve_device
from ghosttrack.tracks.config import MatchRun, TrackRun


@click.command()
@config_command_options(MatchRun)
def match(**options) -> None:
    """Match the latents of consecutive layers' SAEs: a sparse edge list (src, dst, score) per pair.

    Without --store the score is data-free (decoder rows after folding thresholds, as SAE Match);
    with --store it is the correlation of the two latents over the store's held-out rows.
    """
    from ghosttrack.tracks.edges import run_matching
    from ghosttrack.tracks.match import BlockSizes

    cfg = from_options(MatchRun, options)
    out = cfg.out
    summary = run_matching(cfg.sae_dir, cfg.out, store_path=cfg.store, top=cfg.top, device=resolve_device(cfg.device),
                           blocks=BlockSizes(cfg.src_block, cfg.dst_block), access=cfg)
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
@config_command_options(TrackRun)
def track(**options) -> None:
    """Track one text's SAE latents from layer to layer: births, continuations, splits, merges, deaths."""
    from ghosttrack.tracks.pipeline import TrackingPipeline
    from ghosttrack.tracks.stats import token_statistics
    from ghosttrack.tracks.view import browser_links, latent_labels, write_outputs

    cfg = from_options(TrackRun, options)
    text = cfg.read_text()
    model, gguf, sae_dir, matches, out, min_activation = (cfg.model, cfg.gguf, cfg.sae_dir, cfg.matches, cfg.out,
                                                          cfg.min_activation)
    saes, _, _ = TrackingPipeline.check(model, sae_dir, matches, gguf=gguf)
    links = browser_links(cfg.interp, saes.layers, out)
    pipe = TrackingPipeline.open(model, sae_dir, matches, gguf=gguf, dtype=cfg.dtype, device=resolve_device(cfg.device),
                                 min_score=cfg.min_score, min_activation=min_activation)
    tracked = pipe.track_text(text)
    meta = {"model": pipe.loaded.name, "sae": str(saes.root), "matches": str(matches), "text": text,
            "min_score": pipe.tracker.min_score, "min_activation": min_activation}
    page = write_outputs(out, tracked.result, tracked.token_ids, tracked.pieces, meta=meta, links=links, shown=cfg.shown,
                         labels=latent_labels(cfg.interp, saes.layers), edge_score=pipe.tracker.edge_score)
    stats = token_statistics(tracked.result)
    r = tracked.result
    click.echo(f"{r.n_tokens} tokens, layers {', '.join(map(str, r.layers))}: {r.n_tracks:,} tracks, "
               f"{int(stats['births'][:, 1:].sum()):,} births and {int(stats['splits'].sum()):,} splits after the "
               f"first layer, {int(stats['deaths'].sum()):,} deaths, {int(stats['merges'].sum()):,} merges; "
               f"mean dominant share {stats['dominant_share'].mean():.3f}")
    click.echo(f"tracks: {Path(out) / 'tracks.json'}; per-token statistics: {Path(out) / 'token_stats.parquet'}")
    click.echo(f"view: {page}")
