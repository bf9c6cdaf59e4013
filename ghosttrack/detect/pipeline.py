"""`ghosttrack detect` as a library call: check the inputs, compute (or reuse) features, evaluate, report."""
from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ghosttrack.detect.data import Examples, check_for_cv, load_examples, subsample_groups
from ghosttrack.detect.evaluate import evaluate_method, evaluate_transfer
from ghosttrack.detect.features import (FeatureSet, add_sae_features, add_track_features, cache_key, compute_features,
                                        load_features, save_features)
from ghosttrack.detect.methods import build_methods
from ghosttrack.detect.report import write_results
from ghosttrack.config_fields import check_fields
from ghosttrack.errors import GhostTrackError
from ghosttrack.sae.files import read_cfg
from ghosttrack.run_config import DEVICE, MODEL_DTYPES, parse_layers

OOF_FILE = "oof_scores.parquet"


@dataclass
class DetectConfig:
    folds: int = field(default=5, metadata={"min": 2})
    """Outer cross-validation folds (grouped)."""
    inner_folds: int = field(default=3, metadata={"min": 2})
    """Inner folds on each training split that choose a probe's layer, position and C."""
    seed: int = field(default=0, metadata={"min": 0})
    """Seeds the folds, the bootstrap and --max-examples."""
    bootstrap: int = field(default=1000, metadata={"min": 1})
    """Bootstrap resamples of groups for the AUROC interval."""
    batch_size: int = field(default=16, metadata={"min": 1})
    """Examples per forward pass."""
    max_tokens: int = field(default=128, metadata={"min": 8})
    """Longest input; the question is cut from the left to fit."""
    max_answer_tokens: int = field(default=48, metadata={"min": 1, "hidden": True})
    """Answer tokens kept (the rest are cut)."""
    max_examples: int | None = field(default=None, metadata={"min": 1})
    """Use a random subset of whole groups of about this many examples per source."""
    probe_layers: list[int] | str | None = None
    """Layers the residual probe chooses among (inside the training folds): 0-29, 0,6,11 or all (None)."""
    compare_seeds: int = field(default=5, metadata={"min": 0})
    """Fold seeds (seed, seed+1, ...) of the paired comparisons of methods; 0: no comparisons."""
    compare_layers: list[int] | str | None = None
    """Residual layers of the paired comparisons: 0,6,11 (default: the SAE layers; without SAEs the middle layer)."""
    min_score_decoder: float = field(default=0.3, metadata={"min": -1, "max": 1})
    """Tracker threshold on data-free (decoder) match scores, 2 cos - 1 for unit decoder rows."""
    min_score_coact: float = field(default=0.1, metadata={"min": -1, "max": 1})
    """Tracker threshold on co-activation match scores (activation correlation over held-out rows)."""
    p_true: bool = field(default=True, metadata={"flag": "--no-p-true", "invert": True})
    """Also score P(True): the model asked whether the answer is true (one more forward pass, cached);
    --no-p-true skips it."""
    own_answers: bool = False
    """Detect errors in the model's own answers (ghosttrack.detect.own): it answers each question
    greedily, graded against the gold answers, instead of scoring the data's statements."""
    max_new_tokens: int = field(default=24, metadata={"min": 1, "max": 512})
    """Longest answer the model generates with --own-answers."""
    device: str = field(default="cpu", metadata=DEVICE)
    """Device of the forward pass."""
    dtype: str = field(default="fp32", metadata={"choices": MODEL_DTYPES})
    """Model dtype."""

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("probe_layers", "compare_layers"):
            if isinstance(getattr(self, name), str):
                layers = parse_layers(getattr(self, name))
                setattr(self, name, None if layers == "all" else layers)
        if self.max_examples is not None and self.max_examples < 2 * self.folds:
            raise GhostTrackError(f"--max-examples {self.max_examples} is too few for {self.folds} folds")


def prepare_examples(spec: str, config: DetectConfig) -> Examples:
    """Load, subsample whole groups if asked, and refuse data a grouped K-fold cannot score."""
    examples = load_examples(spec)
    if config.max_examples:
        examples = subsample_groups(examples, config.max_examples, config.seed)
    # The inner split runs on (folds - 1) / folds of the groups: it needs enough of them too.
    check_for_cv(examples, max(config.folds, config.inner_folds + 1))
    return examples


def sae_layers(sae_dirs: list[Path]) -> dict[int, Path]:
    """{layer: SAE folder} from each cfg.json's hook_layer; only resid_post SAEs match what detect reads."""
    found: dict[int, Path] = {}
    for directory in sae_dirs:
        cfg = read_cfg(directory)
        meta = cfg.get("metadata", {})
        layer, hook = meta.get("hook_layer", cfg.get("hook_layer")), meta.get("hook_name", cfg.get("hook_name")) or ""
        if layer is None:
            raise GhostTrackError(f"{directory}/cfg.json names no hook_layer; detect needs the layer each SAE reads")
        if "resid_pre" in hook:
            raise GhostTrackError(f"{directory} was trained on {hook}; detect reads resid_post, train on that")
        if int(layer) in found:
            raise GhostTrackError(f"two SAEs for layer {layer}: {found[int(layer)]} and {directory}; pass one per layer")
        found[int(layer)] = directory
    return found


def build_tracker(matches: Path | None, saes: dict, config: DetectConfig | None = None):
    """(HypothesisTracker over the SAE layers, None) or (None, why there is none). The threshold on
    match scores is the one for the matches' method (their summary.json): data-free decoder scores
    and co-activation correlations are on different scales."""
    if matches is None:
        return None, "no --matches given (make them with `ghosttrack match`)"
    if len(saes) < 2:
        return None, "tracks need SAEs on at least two layers (--sae with layer_<i>/ folders)"
    from ghosttrack.tracks.edges import SUMMARY_FILE, read_matches
    from ghosttrack.tracks.tracker import HypothesisTracker

    config = config or DetectConfig()
    summary = Path(matches) / SUMMARY_FILE
    method = json.loads(summary.read_text()).get("method", "decoder") if summary.is_file() else "decoder"
    min_score = config.min_score_coact if method == "coactivation" else config.min_score_decoder
    layers = sorted(saes)
    return HypothesisTracker(layers, read_matches(matches, layers), {k: saes[k].cfg.d_sae for k in layers},
                             min_score=min_score), None


def features_for(loaded, model_name: str, examples: Examples, layers: list[int], saes: dict, tracker,
                 config: DetectConfig, cache_root: Path, progress: bool = True,
                 token_layers: list[int] | None = None) -> tuple[FeatureSet, str]:
    """The FeatureSet of `examples`: the forward pass from CACHE/<key>/ when an identical run
    already made it, then the SAE latents and tracker statistics derived from its token rows.
    token_layers (default: the SAE layers) are the layers whose answer-token rows are kept."""
    token_layers = sorted(saes) if token_layers is None else sorted(token_layers)
    settings = {"max_tokens": config.max_tokens, "max_answer_tokens": config.max_answer_tokens, "dtype": config.dtype}
    key = cache_key(model_name, examples, layers, token_layers, settings)
    features = load_features(cache_root / key)
    if features is None:
        features = compute_features(loaded(), examples, layers, token_layers, batch_size=config.batch_size,
                                    max_tokens=config.max_tokens, max_answer_tokens=config.max_answer_tokens,
                                    progress=progress)
        save_features(features, cache_root / key)
    if config.p_true:
        from ghosttrack.detect.ptrue import p_true_scores

        path = cache_root / key / "p_true.npy"
        try:
            if not path.is_file():
                np.save(path.with_name("p_true.tmp.npy"), p_true_scores(
                    loaded(), examples, batch_size=config.batch_size, progress=progress))
                path.with_name("p_true.tmp.npy").replace(path)
            features.p_true = np.load(path)
        except GhostTrackError as exc:  # a tokenizer without distinct Yes / No tokens
            features.info["p_true_missing"] = str(exc)
    latents = add_sae_features(features, saes)
    if tracker is not None:
        add_track_features(features, tracker, latents)
    return features, key


def _clean(value):
    """NaN -> None, numpy scalars -> Python: strict JSON."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _data_summary(examples: Examples) -> dict:
    return {"source": examples.source, "rows": len(examples), "n_examples": len(examples),
            "n_groups": examples.n_groups, "n_positive": int(examples.labels.sum()),
            "duplicates_dropped": int(examples.notes.get("duplicates_dropped", 0)), **examples.notes}


def model_answers(loaded, model_name: str, examples: Examples, config: DetectConfig, cache_root: Path,
                  progress: bool) -> Examples:
    """--own-answers: the model answers every question with a gold answer; labels grade its answers."""
    from ghosttrack.detect.own import cached_answers, own_examples

    answers = cached_answers(loaded, model_name, examples, cache_root, max_new_tokens=config.max_new_tokens,
                             batch_size=config.batch_size, max_tokens=config.max_tokens, progress=progress)
    graded = own_examples(examples, answers, max_new_tokens=config.max_new_tokens)
    check_for_cv(graded, max(config.folds, config.inner_folds + 1))
    return graded


def compare_methods(features: FeatureSet, methods: list, examples: Examples, oof: dict, config: DetectConfig,
                    out: Path) -> list[dict]:
    """The paired comparisons (ghosttrack.detect.compare) and OUT/oof_scores.parquet: the out-of-fold
    score of every row for every method of the main table (table "methods", fold seed = --seed, fold -1:
    not recorded) and of the comparisons (table "comparisons", one block per fold seed)."""
    import pandas as pd

    from ghosttrack.detect.compare import run_comparisons
    from ghosttrack.detect.methods import PROBE_C

    layers = config.compare_layers or features.sae_layers or [features.layers[len(features.layers) // 2]]
    results, frame = [], pd.DataFrame()
    if config.compare_seeds:
        results, frame = run_comparisons(features, methods, examples.labels, examples.groups,
                                         seeds=[config.seed + i for i in range(config.compare_seeds)],
                                         n_folds=config.folds, inner_folds=config.inner_folds, layers=sorted(layers),
                                         probe_c=PROBE_C, n_boot=config.bootstrap, boot_seed=config.seed)
    frame.insert(0, "table", "comparisons")
    main = [pd.DataFrame({"table": "methods", "method": name, "fold_seed": config.seed, "fold": -1, "row": np.arange(len(scores)),
                          "group": examples.groups, "label": examples.labels, "score": scores})
            for name, scores in oof.items()]
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(main + [frame], ignore_index=True).to_parquet(out / OOF_FILE, index=False)
    return results


def run_detection(data: str, model: str, out: Path, *, sae_dirs: list[Path] | None = None, matches: Path | None = None,
                  test_data: str | None = None, gguf: str | None = None, config: DetectConfig | None = None,
                  command: str | None = None, progress: bool = True, cache: Path | None = None) -> dict:
    """Everything `ghosttrack detect` does; returns the results dict also written to OUT/results.json."""
    config = config or DetectConfig()
    examples = prepare_examples(data, config)
    test_examples = prepare_examples(test_data, config) if test_data else None
    sae_paths = sae_layers(sae_dirs or [])
    if matches is not None and not Path(matches).is_dir():
        raise GhostTrackError(f"--matches {matches} is not a folder; pass the OUT of `ghosttrack match`")

    from ghosttrack.extract.hooks import check_layers
    from ghosttrack.extract.models import load_model
    from ghosttrack.extract.preflight import read_model_shape
    from ghosttrack.sae import load_sae

    shape = read_model_shape(model, gguf=gguf)  # config.json or the GGUF header: no weights yet
    # The forward pass keeps every layer (the cache then serves any --probe-layers); the probe chooses among these.
    all_layers = list(range(shape.n_layers))
    layers = all_layers if config.probe_layers is None else sorted(set(config.probe_layers))
    check_layers(layers + list(sae_paths), shape.n_layers)
    saes = {layer: load_sae(path, config.device) for layer, path in sae_paths.items()}
    for layer, sae in saes.items():
        if sae.cfg.d_in != shape.d_model:
            raise GhostTrackError(f"the SAE {sae_paths[layer]} reads d_model={sae.cfg.d_in} but {model} has "
                                  f"{shape.d_model}; pass SAEs trained on this model")
    tracker, tracks_missing = build_tracker(matches, saes, config)
    state: dict = {}

    def loaded():
        if "model" not in state:
            state["model"] = load_model(model, gguf=gguf, dtype=config.dtype, device=config.device)
        return state["model"]

    cache_root = Path(cache) if cache else Path(out) / "cache"
    if config.own_answers:
        examples = model_answers(loaded, f"{model}/{gguf}", examples, config, cache_root, progress)
        test_examples = test_examples and model_answers(loaded, f"{model}/{gguf}", test_examples, config,
                                                        cache_root, progress)
    features, key = features_for(loaded, model, examples, all_layers, saes, tracker, config, cache_root, progress)
    if tracks_missing:
        features.info["tracks_missing"] = tracks_missing
    methods, skipped = build_methods(features, probe_layers=layers, answers=examples.answers)
    oof: dict = {}
    evaluated = [evaluate_method(m, examples.labels, examples.groups, n_folds=config.folds,
                                 inner_folds=config.inner_folds, seed=config.seed, n_boot=config.bootstrap,
                                 scores_out=oof)
                 for m in methods]
    comparisons = compare_methods(features, methods, examples, oof, config, Path(out))
    results = {
        "model": model if gguf is None else f"{model}/{gguf}",
        "data": _data_summary(examples),
        "split": {"kind": "group", "group_by": examples.notes.get("group_by", "question"), "n_folds": config.folds, "inner_folds": config.inner_folds, "seed": config.seed,
                  "bootstrap": config.bootstrap, "ci_level": 0.95, "n_examples": len(examples),
                  "n_groups": examples.n_groups, "n_positive": int(examples.labels.sum())},
        "methods": evaluated,
        "comparisons": comparisons,
        "skipped": skipped,
        "features": {"cache_key": key, "probe_layers": layers, "sae_layers": sorted(sae_paths),
                     "sae": {str(k): str(v) for k, v in sorted(sae_paths.items())},
                     "matches": str(matches) if matches else None, **features.info},
        "config": asdict(config),
        "machine": f"{platform.machine()} CPU" if config.device == "cpu" else config.device,
        "command": command,
    }
    if test_examples is not None:
        test_features, test_key = features_for(loaded, model, test_examples, all_layers, saes, tracker, config,
                                               cache_root, progress)
        test_methods = {m.name: m for m in build_methods(test_features, probe_layers=layers,
                                                          answers=test_examples.answers)[0]}
        results["transfer"] = {
            "train": examples.source, "test": test_examples.source, "test_data": _data_summary(test_examples),
            "test_cache_key": test_key,
            "methods": [evaluate_transfer(m, test_methods[m.name], examples.labels, examples.groups,
                                          test_examples.labels, test_examples.groups, inner_folds=config.inner_folds,
                                          seed=config.seed, n_boot=config.bootstrap)
                        for m in methods if m.name in test_methods],
        }
    results = _clean(results)
    write_results(Path(out), results)
    return results
