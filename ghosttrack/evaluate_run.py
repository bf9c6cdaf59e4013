"""`ghosttrack evaluate` from start to end: the SAE, the rule of the rows it was trained on, the
held-out text, the model, the three runs per batch (evaluate.py) and the result file."""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ghosttrack.config_fields import ConfigError
from ghosttrack.corpus.config import CorpusConfig
from ghosttrack.errors import GhostTrackError
from ghosttrack.evaluate import EvalConfig
from ghosttrack.extract.config import HOOK_POINTS
from ghosttrack.run_config import DevicePlacement, ModelDtype, ModelSource, check_local_output, parse_token_count
from ghosttrack.store.rows import MAX_NORM_RATIO, RowRule

@dataclass
class EvaluateRun(EvalConfig, ModelDtype, DevicePlacement, CorpusConfig, ModelSource):
    """`ghosttrack evaluate`: which SAE, on which held-out text, spliced where, written where."""

    sae_path: str | None = field(default=None, metadata={"flag": "--sae", "param": "sae_path", "required": True})
    """SAE folder."""
    model: str | None = None
    """HF hub id, model directory or .gguf file (default: the SAE's model_name)."""
    tokens: int | str = "200k"
    """Held-out tokens to evaluate: 200k, 1M, 4096."""
    skip_tokens: str = "auto"
    """Tokens of the corpus to skip first; auto: those the SAE's store extracted from this corpus."""
    layer: int | None = field(default=None, metadata={"min": 0})
    """Block to splice at (default: the SAE's hook_layer)."""
    hook: str | None = field(default=None, metadata={"choices": HOOK_POINTS})
    """Hook point (default: from the SAE's hook_name, else resid_post)."""
    max_norm_ratio: float | None = field(default=None, metadata={"min": 0})
    """Rows with norm > this x the median norm keep their clean value (attention sinks); 0: no limit.
    Default: the rule the SAE was trained with (ratio and median norm saved in its cfg.json)."""
    skip_positions: tuple[int, ...] | str | None = None
    """Positions left out besides 0 (default: those the SAE was trained without)."""
    allow_layer_mismatch: bool = False
    """Splice at a --layer / --hook other than the one the SAE was trained on, on purpose."""
    out: str | None = None
    """JSON file to write (default: SAE/evaluation.json)."""

    def __post_init__(self) -> None:
        # Absent and 0 differ here: absent is the SAE's own rule, 0 is no limit.
        self.ratio_given = self.max_norm_ratio is not None
        super().__post_init__()
        CorpusConfig.__post_init__(self)
        if self.skip_tokens != "auto":
            try:
                parse_token_count(self.skip_tokens)
            except GhostTrackError as exc:
                raise ConfigError(f"--skip-tokens: {exc} (or auto)") from None
        check_local_output("--out", self.out)
        if self.sae_path is not None and not Path(self.sae_path).is_dir():
            raise ConfigError(f"--sae {self.sae_path}: no such folder; pass the folder ghosttrack train wrote")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_evaluation(cfg: EvaluateRun, options: dict[str, Any] | None = None) -> tuple[dict[str, Any], Path]:
    """Evaluate; returns (the result, the file it was written to). Everything that needs no weights is
    checked before the model loads (the layer, the hook, --seq-len against the model's context).
    `options`: the command line as given, saved with the result so that --config reruns it."""
    from ghosttrack.corpus.packing import pack_batches
    from ghosttrack.evaluate import default_output, evaluate_sae, held_out_skip, sae_hook
    from ghosttrack.extract.models import load_model
    from ghosttrack.extract.preflight import check_corpus, read_model_shape
    from ghosttrack.interpret.inputs import sae_skip_positions
    from ghosttrack.precision import resolve_device
    from ghosttrack.sae.agreement import check_layer_agreement, resolve_recorded_path
    from ghosttrack.sae.module import load_sae
    from ghosttrack.store.files import write_json

    device = resolve_device(cfg.device)
    sae = load_sae(cfg.sae_path, device=device)
    check_layer_agreement(sae.metadata, cfg.layer, cfg.hook, sae=str(cfg.sae_path),
                          allow_mismatch=cfg.allow_layer_mismatch)
    meta_layer, meta_hook = sae_hook(sae)
    layer = cfg.layer if cfg.layer is not None else meta_layer
    if layer is None:
        raise GhostTrackError("the SAE's metadata names no layer; pass --layer")
    model = cfg.model or resolve_recorded_path(sae.metadata.get("model_name"), cfg.sae_path)
    if not model:
        raise GhostTrackError("the SAE's metadata names no model; pass --model")
    corpus = cfg.open()
    check_corpus(corpus)  # reachable, with a document, before minutes of model loading
    context = read_model_shape(model, gguf=cfg.gguf).context_length
    if context is not None and cfg.seq_len > context:
        raise ConfigError(f"--seq-len {cfg.seq_len} is longer than {model}'s context of {context} positions; "
                          f"pass --seq-len {context} or less")
    # The rule the SAE was trained with: its ratio (unless --max-norm-ratio) and its training median.
    trained = RowRule.from_sae_metadata(sae.metadata)
    ratio = cfg.max_norm_ratio if cfg.ratio_given else (trained.max_norm_ratio if trained else MAX_NORM_RATIO)
    if trained is None and ratio is not None:
        _say("note: the SAE does not record its training norm rule; each batch's median norm is used")
    config = EvalConfig(tokens=cfg.tokens, seq_len=cfg.seq_len, batch_size=cfg.batch_size, max_norm_ratio=ratio,
                        median_norm=trained.median_norm if trained else None, splice_all=cfg.splice_all,
                        dense_threshold=cfg.dense_threshold,
                        skip_positions=cfg.skip_positions if cfg.skip_positions is not None
                        else sae_skip_positions(sae))
    if cfg.skip_tokens == "auto":
        skip, why = held_out_skip(sae, corpus.describe(), config.seq_len, sae_dir=cfg.sae_path)
    else:
        skip, why = parse_token_count(cfg.skip_tokens) // config.seq_len, "--skip-tokens"
    _say(f"held-out text: {why}")
    loaded = load_model(model, gguf=cfg.gguf, dtype=cfg.dtype, device=device)
    batches = pack_batches(corpus.get_texts(), loaded.tokenizer, config.seq_len, config.batch_size,
                           max_sequences=config.n_sequences, skip_sequences=skip)
    result = evaluate_sae(sae, loaded, batches, layer=layer, hook=cfg.hook or meta_hook, config=config)
    result.update(sae=str(cfg.sae_path), corpus=corpus.describe(), skipped_sequences=skip, held_out=why)
    # With "command" and "options" the result doubles as a resolved config: --config FILE reruns it.
    saved = {k: v for k, v in (options if options is not None else asdict(cfg)).items() if k != "config"}
    result.update(command="evaluate", options=saved)
    out = Path(cfg.out) if cfg.out else default_output(cfg.sae_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, default=str, newline=True)  # atomic: an interrupted write never leaves half a file
    return result, out
