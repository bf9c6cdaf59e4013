"""SAE evaluation on held-out text: reconstruction metrics and the model's loss with the SAE spliced in.

Per batch of packed sequences the model runs three times:
  clean       -- unchanged; the residual x at the SAE's (layer, hook) is captured;
  spliced     -- x replaced by the SAE's reconstruction x_hat = decode(encode(x));
  zero        -- x replaced by zeros.
The upstream blocks are the same in all three runs, so x_hat is computed once from the
clean x. Rows the SAE was never trained on (position 0 of a sequence, the positions in
skip_positions, and rows whose norm exceeds max_norm_ratio x the median norm: the attention
sinks) keep their clean
value in the spliced and the zero-ablated runs and stay out of MSE / FVU / L0, the
way training skipped them (`splice_all` changes that).

    CE_*          = mean over predicted positions of -log p(next token)
    CE recovered  = (CE_zero - CE_spliced) / (CE_zero - CE_clean)   (1: as good as clean)
    KL            = mean over predicted positions of KL(p_clean || p_spliced)
Reconstruction metrics are those of `ghosttrack.metrics` (their formulas live there).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from ghosttrack.errors import GhostTrackError
from ghosttrack.extract.hooks import HOOK_POINTS, capture_residuals, check_layers, find_blocks, replace_residual
from ghosttrack.metrics import ReconstructionStats
from ghosttrack.config_fields import ConfigError, check_fields, skip_positions_setting
from ghosttrack.run_config import parse_token_count
from ghosttrack.store.rows import MAX_NORM_RATIO, norm_ratio


@dataclass
class EvalConfig:
    """How an SAE is evaluated."""

    tokens: int | str = field(default=200_000, metadata={"min": 1})
    """Held-out tokens to evaluate (rounded up to whole sequences): 200k, 1M, 4096."""
    seq_len: int = field(default=128, metadata={"min": 2})
    """Tokens per packed sequence."""
    batch_size: int = field(default=8, metadata={"min": 1})
    """Sequences per forward pass."""
    max_norm_ratio: float | None = field(default=MAX_NORM_RATIO, metadata={"min": 0})
    """Rows with norm > this x the median norm are left unspliced (attention sinks); 0 or None: no limit."""
    median_norm: float | None = field(default=None, metadata={"above": 0, "hidden": True})
    """The median norm of that rule: the one the SAE was trained with (from its cfg.json, taken over its
    training rows), so that evaluation skips the rows training skipped; None: each batch's own median."""
    splice_all: bool = False
    """Splice every position, position 0 and norm outliers included."""
    skip_positions: tuple[int, ...] | str = ()
    """Positions besides 0 left unspliced and out of the metrics, as in training (the CLI's default:
    the positions the SAE was trained without)."""
    dense_threshold: float = field(default=0.1, metadata={"above": 0, "max": 1})
    """A latent firing on more than this fraction of rows is dense."""
    progress: bool = field(default=True, metadata={"hidden": True})

    def __post_init__(self) -> None:
        check_fields(self)
        try:
            self.tokens = parse_token_count(self.tokens)
        except GhostTrackError as exc:
            raise ConfigError(f"--tokens: {exc}") from None
        self.max_norm_ratio = norm_ratio(self.max_norm_ratio)
        if self.skip_positions is not None:
            self.skip_positions = skip_positions_setting(self.skip_positions)

    @property
    def n_sequences(self) -> int:
        return math.ceil(self.tokens / self.seq_len)


def sae_hook(sae) -> tuple[int | None, str]:
    """(layer, hook point) from the SAE's metadata; hook names like blocks.6.hook_resid_post."""
    from ghosttrack.interpret.features import sae_layer

    name = str((getattr(sae, "metadata", {}) or {}).get("hook_name") or "")
    hook = next((h for h in HOOK_POINTS if h in name), "resid_post")
    return sae_layer(sae), hook


def splice_mask(x_BTD: torch.Tensor, max_norm_ratio: float | None, splice_all: bool,
                skip_positions: tuple[int, ...] = (), median_norm: float | None = None) -> torch.Tensor:
    """(B, T) True where the SAE replaces the residual: not position 0 nor a skipped position,
    norm within max_norm_ratio x median_norm (None: the median norm of the other positions)."""
    mask = torch.ones(x_BTD.shape[:2], dtype=torch.bool, device=x_BTD.device)
    if splice_all:
        return mask
    mask[:, 0] = False
    mask[:, [p for p in skip_positions if p < x_BTD.shape[1]]] = False
    if max_norm_ratio is not None and mask[0].any():
        norm_BT = x_BTD.float().norm(dim=-1)
        median = norm_BT[:, mask[0]].median() if median_norm is None else median_norm
        mask &= norm_BT <= max_norm_ratio * median
    return mask


class _LossStats:
    """Sums of next-token CE (clean, spliced, zero) and KL(clean || spliced) over predicted positions."""

    def __init__(self):
        self.n = 0
        self.ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
        self.kl = 0.0

    @torch.no_grad()
    def update(self, ids_BT: torch.Tensor, logits: dict[str, torch.Tensor]) -> None:
        target = ids_BT[:, 1:].reshape(-1)
        logp_clean = None
        for name in ("clean", "spliced", "zero"):
            logp = torch.log_softmax(logits[name][:, :-1].float(), dim=-1).flatten(0, 1)
            self.ce[name] += float(-logp.gather(1, target[:, None]).sum())
            if name == "clean":
                logp_clean = logp
            elif name == "spliced":
                self.kl += float((logp_clean.exp() * (logp_clean - logp)).sum())
        self.n += target.numel()

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        ce = {k: v / n for k, v in self.ce.items()}
        gap = ce["zero"] - ce["clean"]
        return {
            "predicted_tokens": self.n,
            "ce_clean": ce["clean"],
            "ce_spliced": ce["spliced"],
            "ce_zero_ablated": ce["zero"],
            "ce_loss_recovered": (ce["zero"] - ce["spliced"]) / gap if gap != 0 else math.nan,
            "kl_clean_spliced": self.kl / n,
        }


@torch.no_grad()
def evaluate_sae(sae, loaded, batches: Iterable[np.ndarray], *, layer: int, hook: str = "resid_post",
                 config: EvalConfig | None = None) -> dict[str, Any]:
    """Evaluate `sae` at (layer, hook) of `loaded` (a LoadedModel) on (b, T) token-id batches."""
    config = config or EvalConfig()
    model = loaded.model
    check_layers([layer], len(find_blocks(model)))
    if sae.cfg.d_in != loaded.d_model:
        raise GhostTrackError(f"the SAE expects d_in={sae.cfg.d_in} but {loaded.name} has d_model={loaded.d_model}; "
                              "pass the model the SAE was trained on")
    if not loaded.is_causal:
        raise GhostTrackError(f"{loaded.name} is not a causal LM: evaluate needs next-token predictions")
    device = loaded.device
    sae = sae.to(device).eval()
    recon = ReconstructionStats(sae.cfg.d_in, sae.cfg.d_sae, device=device)
    losses = _LossStats()
    spliced_rows = total_rows = 0
    bar = tqdm(total=config.n_sequences * config.seq_len, unit="tok", unit_scale=True, desc=f"evaluate layer {layer}",
               disable=not config.progress)
    for batch in batches:
        ids_BT = torch.as_tensor(np.asarray(batch), dtype=torch.long, device=device)
        captured: list[torch.Tensor] = []
        with capture_residuals(model, [layer], hook, lambda _, h: captured.append(h.detach().clone()),
                               stop_after_deepest=False):
            logits_clean = model(input_ids=ids_BT, use_cache=False).logits
        x_BTD = captured[0]
        mask_BT = splice_mask(x_BTD, config.max_norm_ratio, config.splice_all, config.skip_positions,
                              config.median_norm)
        x_ND = x_BTD[mask_BT].to(sae.W_enc.dtype)
        acts_NH = sae.encode(x_ND)
        x_hat_ND = sae.decode(acts_NH)
        recon.update(x_ND, x_hat_ND, (acts_NH > 0).sum(-1), (acts_NH > 0).sum(0))
        x_hat_BTD = x_BTD.clone()
        x_hat_BTD[mask_BT] = x_hat_ND.to(x_BTD.dtype)
        m_BT1 = mask_BT[..., None]
        with replace_residual(model, layer, hook, lambda h: torch.where(m_BT1, x_hat_BTD, h)):
            logits_spliced = model(input_ids=ids_BT, use_cache=False).logits
        with replace_residual(model, layer, hook, lambda h: torch.where(m_BT1, torch.zeros_like(h), h)):
            logits_zero = model(input_ids=ids_BT, use_cache=False).logits
        losses.update(ids_BT, {"clean": logits_clean, "spliced": logits_spliced, "zero": logits_zero})
        spliced_rows += int(mask_BT.sum())
        total_rows += mask_BT.numel()
        bar.update(ids_BT.numel())
    bar.close()
    if total_rows == 0:
        raise GhostTrackError("no held-out text to evaluate on: the corpus ran out; pass a larger --corpus "
                              "or --skip-tokens 0")
    metrics = recon.result(dense_threshold=config.dense_threshold)
    return {
        "layer": layer,
        "hook": hook,
        "model": loaded.name,
        "tokens": total_rows,
        "spliced_rows": spliced_rows,
        "unspliced_rows": total_rows - spliced_rows,
        "mse": metrics.get("mse", math.nan),
        "fvu": metrics.get("fvu", math.nan),
        "l0": metrics.get("l0", math.nan),
        "l2_ratio": metrics.get("l2_ratio", math.nan),
        "dead_fraction": metrics.get("never_fired_fraction", math.nan),
        "dense_fraction": metrics.get("dense_fraction", math.nan),
        **losses.result(),
        "config": asdict(config),
    }


def held_out_skip(sae, corpus_spec: dict[str, Any], seq_len: int, sae_dir=None) -> tuple[int, str]:
    """Sequences to skip so that evaluation text was not extracted for training, and why.

    When the SAE's metadata names its store and that store was extracted from this same
    corpus with the same sequence length, its sequences are skipped; otherwise nothing is.
    """
    from ghosttrack.store.errors import StoreError
    from ghosttrack.store.reader import ActivationStore

    meta = getattr(sae, "metadata", {}) or {}
    store_path = meta.get("store") or (meta.get("ghosttrack") or {}).get("store")
    if sae_dir is not None:  # a path relative to where training ran: found from any folder
        from ghosttrack.sae.agreement import resolve_recorded_path

        store_path = resolve_recorded_path(store_path, sae_dir)
    if not store_path:
        return 0, "the SAE does not name its store: the text may overlap its training data"
    try:
        store = ActivationStore.open(store_path, trust=True)  # its attributes only: no chunk is read
    except StoreError:
        return 0, f"store {store_path} not found: the text may overlap the SAE's training data"
    if store.attrs.get("corpus") != corpus_spec:
        return 0, f"a different corpus than store {store_path}: held out"
    if store.context_length != seq_len:
        return 0, f"store {store_path} packed {store.context_length}-token sequences; pass --seq-len " \
                  f"{store.context_length} to skip its text"
    n_seq = int(store.attrs.get("target_tokens") or store.n_tokens) // seq_len
    return n_seq, f"skipped the {n_seq:,} sequences extracted into {store_path}"


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as a Markdown table."""
    rows = [
        ("tokens evaluated", f"{result['tokens']:,} ({result['spliced_rows']:,} spliced)"),
        ("MSE", f"{result['mse']:.5g}"),
        ("FVU", f"{result['fvu']:.4f}"),
        ("mean L0", f"{result['l0']:.2f}"),
        ("L2 ratio", f"{result['l2_ratio']:.4f}"),
        ("dead fraction", f"{result['dead_fraction']:.2%}"),
        ("dense fraction", f"{result['dense_fraction']:.2%}"),
        ("CE clean", f"{result['ce_clean']:.4f}"),
        ("CE with SAE spliced", f"{result['ce_spliced']:.4f}"),
        ("CE layer zero-ablated", f"{result['ce_zero_ablated']:.4f}"),
        ("CE loss recovered", f"{result['ce_loss_recovered']:.2%}"),
        ("KL(clean || spliced)", f"{result['kl_clean_spliced']:.5f}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'metric'.ljust(width)} | value |", f"| {'-' * width} | --- |"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


def default_output(sae_dir: str | Path) -> Path:
    return Path(sae_dir) / "evaluation.json"
