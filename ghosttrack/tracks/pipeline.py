"""Text in, tracks out: one forward pass stopped after the deepest SAE layer, each layer's SAE
encoder, then the tracker. `TrackingPipeline.open` refuses bad inputs before the model loads."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ghosttrack.tracks.config import DEFAULT_MIN_SCORE  # noqa: F401 - re-exported
from ghosttrack.errors import GhostTrackError
from ghosttrack.tracks.codes import SparseCodes
from ghosttrack.tracks.edges import read_matches
from ghosttrack.tracks.saes import LayerSAEs, find_layer_saes
from ghosttrack.tracks.tracker import HypothesisTracker, TrackResult

"""Edges scoring below this link nothing (both scores are 1 for a perfect match, <= 0 for none)."""


def sae_hook(saes: LayerSAEs) -> str:
    """The residual hook point the SAEs were trained on (from SAELens's hook_name), one for all."""
    hooks = set()
    for layer in saes.layers:
        cfg = saes.cfgs[layer]
        name = str(cfg.get("hook_name") or cfg.get("metadata", {}).get("hook_name") or "")
        hooks.add("resid_pre" if name.endswith("resid_pre") else "resid_post")
    if len(hooks) > 1:
        raise GhostTrackError(f"the SAEs in {saes.root} were trained on different hook points ({', '.join(hooks)}); "
                              f"track SAEs of one hook point")
    return hooks.pop()


@dataclass
class TrackedText:
    """One sequence's tracks and the readable pieces of its tokens."""

    result: TrackResult
    token_ids: list[int]
    pieces: list[str]


class TrackingPipeline:
    """A model, its per-layer SAEs and their edge lists."""

    def __init__(self, loaded, saes: dict[int, torch.nn.Module], tracker: HypothesisTracker, hook: str,
                 min_activation: float = 0.0):
        self.loaded, self.saes, self.tracker, self.hook = loaded, saes, tracker, hook
        self.layers = tracker.layers
        self.min_activation = min_activation

    @classmethod
    def check(cls, model: str, sae_dir: str | Path, matches: str | Path, *, gguf: str | None = None):
        """Everything `open` checks before loading weights: returns (LayerSAEs, edges, hook)."""
        from ghosttrack.extract.preflight import read_model_shape

        saes = find_layer_saes(sae_dir)
        edges = read_matches(matches, saes.layers)
        hook = sae_hook(saes)
        shape = read_model_shape(model, gguf=gguf)
        if shape.d_model != saes.d_in:
            raise GhostTrackError(f"the SAEs in {saes.root} expect d_model={saes.d_in} but {model} has "
                                  f"{shape.d_model}; pass the model they were trained on")
        if saes.layers[-1] >= shape.n_layers:
            raise GhostTrackError(f"the SAEs in {saes.root} cover layer {saes.layers[-1]} but {model} has layers "
                                  f"0-{shape.n_layers - 1}; pass the model they were trained on")
        for (i, j), e in edges.items():
            if len(e["src"]) and (int(e["src"].max()) >= saes.d_sae(i) or int(e["dst"].max()) >= saes.d_sae(j)):
                raise GhostTrackError(f"the edges {i}->{j} in {matches} name latents beyond the SAEs in {saes.root} "
                                      f"({saes.d_sae(i)} and {saes.d_sae(j)} latents); rerun ghosttrack match on them")
        return saes, edges, hook

    @classmethod
    def open(cls, model: str, sae_dir: str | Path, matches: str | Path, *, gguf: str | None = None,
             dtype: str = "fp32", device: str = "cpu", min_score: float = DEFAULT_MIN_SCORE,
             min_activation: float = 0.0) -> "TrackingPipeline":
        from ghosttrack.extract.models import load_model

        saes, edges, hook = cls.check(model, sae_dir, matches, gguf=gguf)
        loaded = load_model(model, gguf=gguf, dtype=dtype, device=device, causal_lm=False)
        modules = {layer: saes.load(layer, device) for layer in saes.layers}
        tracker = HypothesisTracker(saes.layers, edges, {k: saes.d_sae(k) for k in saes.layers},
                                    min_score=min_score, device=device)
        return cls(loaded, modules, tracker, hook, min_activation)

    @torch.no_grad()
    def encode(self, input_ids: torch.Tensor) -> dict[int, SparseCodes]:
        """(1, T) token ids -> each SAE layer's active latents per token (one forward, stopped early)."""
        from ghosttrack.extract.hooks import capture_residuals, forward_until

        hidden: dict[int, torch.Tensor] = {}
        with capture_residuals(self.loaded.model, self.layers, self.hook, lambda k, h: hidden.__setitem__(k, h)):
            forward_until(self.loaded.model, input_ids.to(self.loaded.device))
        return {layer: SparseCodes.from_dense(self.saes[layer].encode(hidden[layer][0].float()), self.min_activation)
                for layer in self.layers}

    def track_ids(self, input_ids: torch.Tensor) -> TrackResult:
        return self.tracker.track(self.encode(input_ids))

    def token_ids(self, text: str) -> list[int]:
        ids = self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise GhostTrackError("the text is empty after tokenization; pass some text")
        limit = self.loaded.context_length
        if limit and len(ids) > limit:
            raise GhostTrackError(f"the text has {len(ids)} tokens but {self.loaded.name} reads at most {limit}; "
                                  f"shorten it")
        return ids

    def track_text(self, text: str) -> TrackedText:
        ids = self.token_ids(text)
        result = self.track_ids(torch.tensor([ids]))
        pieces = self.loaded.tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
        return TrackedText(result, ids, pieces)
