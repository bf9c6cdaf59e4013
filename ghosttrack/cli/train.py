"""`ghosttrack train`: one SAE per layer of an activation store (options shared with `run`)."""
from __future__ import annotations

import sys

import click

from ghosttrack.cli.common import config_option
from ghosttrack.errors import GhostTrackError

INTERRUPTED_EXIT = 130


def train_options(func):
    """Options of `train` (except --store / --out / --layers), shared with `run`."""
    options = [
        click.option("--arch", type=click.Choice(["relu", "jumprelu", "topk"]), default="relu", show_default=True,
                     help="relu: ReLU + L1 (decoder-norm weighted); jumprelu: learned thresholds + L0; "
                          "topk: k largest latents per token, AuxK for dead ones."),
        click.option("--expansion", type=float, default=16, show_default=True,
                     help="Latents = expansion x d_model (ignored with --d-hidden)."),
        click.option("--d-hidden", type=int, default=None, help="Number of latents (overrides --expansion)."),
        click.option("--k", type=int, default=None, help="Active latents per token for topk [default: 32]."),
        click.option("--l1", type=float, default=None,
                     help="relu: L1 coefficient; higher gives a lower L0 [default: 1.0]."),
        click.option("--l0", type=float, default=None,
                     help="jumprelu: L0 coefficient; higher gives a lower L0 [default: 1.0]."),
        click.option("--bandwidth", type=float, default=None,
                     help="jumprelu: width of the threshold's straight-through kernel [default: 0.05]."),
        click.option("--init-threshold", type=float, default=None,
                     help="jumprelu: starting threshold [default: 0.01]."),
        click.option("--aux-k", type=int, default=None, help="topk: dead latents used by AuxK [default: d_model/2, <= 512]."),
        click.option("--aux-coeff", type=float, default=None, help="topk: AuxK loss weight [default: 1/32]."),
        click.option("--dead-tokens", type=int, default=None,
                     help="topk: tokens without firing after which AuxK treats a latent as dead [default: 200000]."),
        click.option("--epochs", type=float, default=1.0, show_default=True,
                     help="Passes over the training rows (fractions allowed)."),
        click.option("--batch-size", type=int, default=4096, show_default=True, help="Tokens per optimisation step."),
        click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak Adam learning rate."),
        click.option("--warmup", type=float, default=0.02, show_default=True,
                     help="Fraction of steps with a linear LR warm-up (then cosine decay)."),
        click.option("--min-lr-ratio", type=float, default=0.0, show_default=True,
                     help="The cosine decay ends at lr x this."),
        click.option("--sparsity-warmup", type=float, default=0.05, show_default=True,
                     help="Fraction of steps over which the L1/L0/AuxK coefficient ramps up from 0."),
        click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Gradient-norm clip (0: off)."),
        click.option("--dtype", type=click.Choice(["float32", "bfloat16", "fp32", "bf16"]), default="float32",
                     show_default=True, help="Compute dtype; bfloat16 autocasts (weights stay float32)."),
        click.option("--device", default="auto", show_default=True,
                     help="auto (cuda when present), cpu or cuda[:N]; data parallel under `accelerate launch` "
                          "(torchrun on CPU)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seeds initialisation, split and order."),
        click.option("--fused", is_flag=True,
                     help="Fused Triton kernel for relu/jumprelu (GPU; on CPU only with TRITON_INTERPRET=1, slow)."),
        click.option("--val-fraction", type=float, default=0.05, show_default=True,
                     help="Share of store chunks held out for validation."),
        click.option("--max-norm-ratio", type=float, default=3.0, show_default=True,
                     help="Skip rows whose norm exceeds this x the median (attention sinks); 0 keeps all. "
                          "Skipped rows are counted in history.json, never removed from the store."),
        click.option("--keep-flagged", is_flag=True, help="Also train on position-0 rows (skipped by default)."),
        click.option("--log-every", type=int, default=20, show_default=True, help="Steps between progress/history entries."),
        click.option("--checkpoint-every", type=int, default=500, show_default=True,
                     help="Steps between resumable checkpoints."),
        click.option("--device-resident", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
                     help="Hold the whole layer in device memory (auto: when it fits; on the CPU in 1/4 of free RAM)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command()
@config_option
@click.option("--store", required=True, type=click.Path(file_okay=False), help="Activation store (ghosttrack extract --out).")
@click.option("--layer", type=int, default=None, help="One layer to train (same as --layers N).")
@click.option("--layers", default=None, help="Layers to train: 6, 0-11, 0,6,11 or all [default: all].")
@train_options
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder; each layer goes to OUT/layer_<i>/ (best SAE, final/, trainer_state.pt, history.json).")
@click.option("--resume", is_flag=True, help="Continue interrupted runs in OUT (same options required).")
@click.option("--overwrite", is_flag=True, help="Replace existing runs in OUT.")
def train(**options) -> None:
    """Train a sparse autoencoder on each layer of an activation store."""
    run_training(options)


def run_training(options: dict, *, progress: bool = True) -> dict:
    """Resolve --layer/--layers, train, print one line per layer; GhostTrackError if any layer failed."""
    from ghosttrack.train.layers import train_layers

    options = dict(options)
    layer = options.pop("layer", None)
    if layer is not None and options.get("layers") not in (None, str(layer)):
        raise GhostTrackError("--layer and --layers disagree; pass one of them")
    layers = str(layer) if layer is not None else (options.get("layers") or "all")
    options["layers"] = layers
    try:
        results = train_layers(options["store"], layers, options["out"], options, progress=progress)
    except KeyboardInterrupt as exc:
        click.echo(f"\ninterrupted ({exc or 'Ctrl-C'}); rerun the same command with --resume to continue from "
                   f"the last checkpoint", err=True)
        sys.exit(INTERRUPTED_EXIT)
    failed = {layer: exc for layer, exc in results.items() if isinstance(exc, Exception)}
    for layer, summary in results.items():
        if layer not in failed:
            click.echo(_describe(summary), err=True)
    if failed:
        raise GhostTrackError(f"{len(failed)} of {len(results)} layers failed "
                              f"({', '.join(str(layer) for layer in failed)}); see the errors above")
    return results


def _describe(s: dict) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    skipped = s["skipped"]
    return (f"layer {s['layer']}: {s['steps']} steps, {s['tokens']:,} tokens -> {s['out_dir']}  "
            f"val FVU {fmt(s.get('val_fvu'), '.4f')}  L0 {fmt(s.get('val_l0'), '.1f')}  "
            f"dead {fmt(s.get('dead_fraction'), '.2%')}  skipped {skipped['flagged_skipped']:,} position-0 + "
            f"{skipped['outliers_skipped']:,} outlier rows" +
            (f" (> {skipped['max_norm_ratio']}x median norm)" if skipped["max_norm_ratio"] else ""))
