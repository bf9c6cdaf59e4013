"""Every detection feature of every example from one forward pass, cached on disk.

Per example the model reads "Q: {question}\\nA:" followed by " {answer}" (tokenized apart, so the
answer's tokens are exactly its own). The forward pass keeps, per probed layer, the residual stream
(resid_post) averaged over the answer's tokens, at its last token, and at the last token before the
answer (a control that never sees the answer); the model's mean
log-probability of the answer's tokens; the answer's length in tokens; and the answer tokens' own
residual rows at the SAE layers (`token_rows`). SAE latents and tracker statistics are computed from
those rows afterwards (`add_sae_features`, `add_track_features`): a new SAE or new matches need
no new forward pass.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from ghosttrack.detect.data import Examples
from ghosttrack.errors import GhostTrackError

PROMPT_TEMPLATE = "Q: {question}\nA:"
FEATURES_VERSION = 3  # bump when what is computed changes: old caches then miss


@dataclass
class FeatureSet:
    """Features of N examples. Residual arrays are float16 (L, N, D): halves memory, ample for a probe."""

    layers: list[int]
    resid_mean: np.ndarray
    resid_last: np.ndarray
    answer_logprob: np.ndarray  # (N,) mean log p(answer token | everything before it)
    answer_tokens: np.ndarray  # (N,) answer length in tokens
    resid_prompt: np.ndarray | None = None  # (L, N, D) float16 at the last token before the answer
    token_layers: list[int] = field(default_factory=list)
    token_rows: np.ndarray | None = None  # (len(token_layers), R, D) float32: every answer token, example order
    sae_layers: list[int] = field(default_factory=list)
    sae_mean: dict[int, sp.csr_matrix] = field(default_factory=dict)
    sae_last: dict[int, sp.csr_matrix] = field(default_factory=dict)
    sae_active: dict[int, sp.csr_matrix] = field(default_factory=dict)  # share of answer tokens each latent fires on
    p_true: np.ndarray | None = None  # (N,) log p(Yes) - log p(No) asked whether the answer is true (ptrue.py)
    track_stats: np.ndarray | None = None  # (N, S)
    track_names: list[str] = field(default_factory=list)
    track_bag: sp.csr_matrix | None = None  # (N, F) followed memberships and edges (ghosttrack.detect.bags)
    track_bag_names: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.answer_tokens)

    @property
    def row_offsets(self) -> np.ndarray:
        """Example i's answer tokens are token_rows[:, offsets[i]:offsets[i + 1]]."""
        return np.concatenate([[0], np.cumsum(self.answer_tokens)])


def encode_example(tokenizer, question: str, answer: str, max_tokens: int, max_answer_tokens: int) -> tuple[list[int], int]:
    """(token ids, index of the first answer token); the question is cut from the left to fit."""
    specials = tokenizer("", add_special_tokens=True)["input_ids"]  # e.g. a BOS some tokenizers add
    prompt = tokenizer(PROMPT_TEMPLATE.format(question=question), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"][:max_answer_tokens]
    room = max_tokens - len(answer_ids) - len(specials)
    if room < 1:
        raise GhostTrackError(f"--max-tokens {max_tokens} leaves no room for the question; raise it above "
                              f"{max_answer_tokens + len(specials) + 1}")
    prompt = list(specials) + prompt[-room:]
    return prompt + answer_ids, len(prompt)


def _batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Indices sorted by length (little padding), cut into batches."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def compute_features(loaded, examples: Examples, layers: list[int], token_layers: list[int] = (), *,
                     batch_size: int = 16, max_tokens: int = 128, max_answer_tokens: int = 48,
                     progress: bool = True) -> FeatureSet:
    """Run `loaded` (ghosttrack.extract.LoadedModel) once over every example; see the module doc."""
    from ghosttrack.extract.hooks import capture_residuals

    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    encoded = [encode_example(tokenizer, q, a, max_tokens, max_answer_tokens)
               for q, a in zip(examples.questions, examples.answers)]
    n, d = len(encoded), loaded.d_model
    token_layers = sorted(set(token_layers))
    probe_index = {layer: i for i, layer in enumerate(layers)}
    resid_mean = np.zeros((len(layers), n, d), np.float16)
    resid_last = np.zeros((len(layers), n, d), np.float16)
    resid_prompt = np.zeros((len(layers), n, d), np.float16)
    n_answer = np.array([len(ids) - start for ids, start in encoded], np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_answer)])
    token_rows = np.zeros((len(token_layers), int(offsets[-1]), d), np.float32)
    logprob = np.zeros(n)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    for idx in tqdm(_batches([len(ids) for ids, _ in encoded], batch_size), desc="detect features",
                    unit="batch", disable=not progress):
        seqs = [encoded[i][0] for i in idx]
        starts = torch.tensor([encoded[i][1] for i in idx])
        ends = torch.tensor([len(s) for s in seqs])
        width = int(ends.max())
        ids_BT = torch.full((len(idx), width), pad, dtype=torch.long)
        for b, seq in enumerate(seqs):
            ids_BT[b, :len(seq)] = torch.tensor(seq)
        positions_T = torch.arange(width)
        answer_BT = (positions_T >= starts[:, None]) & (positions_T < ends[:, None])
        attention_BT = (positions_T < ends[:, None]).long()
        hidden: dict[int, torch.Tensor] = {}

        def sink(layer: int, hidden_BTD: torch.Tensor) -> None:
            hidden[layer] = hidden_BTD.detach().float().cpu()

        with capture_residuals(model, sorted(set(layers) | set(token_layers)), "resid_post", sink,
                               stop_after_deepest=False):
            logits_BTV = model(input_ids=ids_BT.to(device), attention_mask=attention_BT.to(device),
                               use_cache=False).logits.float().cpu()
        # log p(token t | tokens < t) is read from the logits at t - 1.
        targets_BT = ids_BT[:, 1:]
        token_lp_BT = logits_BTV[:, :-1].gather(-1, targets_BT[..., None])[..., 0] - logits_BTV[:, :-1].logsumexp(-1)
        scored_BT = answer_BT[:, 1:].float()
        logprob[idx] = ((token_lp_BT * scored_BT).sum(1) / scored_BT.sum(1)).numpy()
        weights_BT = answer_BT.float() / (ends - starts)[:, None]
        for layer, k in probe_index.items():
            resid_mean[k, idx] = torch.einsum("bt,btd->bd", weights_BT, hidden[layer]).numpy()
            resid_last[k, idx] = hidden[layer][torch.arange(len(idx)), ends - 1].numpy()
            resid_prompt[k, idx] = hidden[layer][torch.arange(len(idx)), starts - 1].numpy()
        for k, layer in enumerate(token_layers):
            for b, i in enumerate(idx):
                token_rows[k, offsets[i]:offsets[i + 1]] = hidden[layer][b, starts[b]:ends[b]].numpy()

    return FeatureSet(
        layers=list(layers), resid_mean=resid_mean, resid_last=resid_last, answer_logprob=logprob,
        answer_tokens=n_answer, resid_prompt=resid_prompt, token_layers=token_layers, token_rows=token_rows,
        info={"prompt_template": PROMPT_TEMPLATE, "max_tokens": max_tokens, "max_answer_tokens": max_answer_tokens},
    )


@torch.no_grad()
def sae_latents(features: FeatureSet, layer: int, sae, rows_per_call: int = 4096) -> torch.Tensor:
    """(R, H) latents of every answer token at `layer`."""
    rows = features.token_rows[features.token_layers.index(layer)]
    device = sae.W_enc.device
    return torch.cat([sae.encode(torch.from_numpy(rows[i:i + rows_per_call]).to(device)).float().cpu()
                      for i in range(0, len(rows), rows_per_call)] or [torch.zeros(0, sae.cfg.d_sae)])


def add_sae_features(features: FeatureSet, saes: dict) -> dict[int, torch.Tensor]:
    """Fill sae_mean / sae_last (answer-token mean and last token, sparse) from the token rows;
    returns the per-token latents for the tracker."""
    offsets = features.row_offsets
    example_of_row = torch.from_numpy(np.repeat(np.arange(len(features)), features.answer_tokens))
    counts = torch.from_numpy(features.answer_tokens).double()
    latents = {}
    for layer in sorted(saes):
        acts_RH = sae_latents(features, layer, saes[layer])
        mean_NH = torch.zeros(len(features), acts_RH.shape[1], dtype=torch.float64).index_add_(
            0, example_of_row, acts_RH.double()) / counts[:, None]
        features.sae_mean[layer] = sp.csr_matrix(mean_NH.numpy())
        features.sae_last[layer] = sp.csr_matrix(acts_RH[torch.from_numpy(offsets[1:] - 1)].numpy())
        features.sae_active[layer] = sp.csr_matrix((torch.zeros_like(mean_NH).index_add_(
            0, example_of_row, (acts_RH > 0).double()) / counts[:, None]).numpy())
        latents[layer] = acts_RH
    features.sae_layers = sorted(saes)
    return latents


def add_track_features(features: FeatureSet, tracker, latents: dict[int, torch.Tensor]) -> None:
    """Tracker statistics per example over its answer tokens (tracks follow one token across layers,
    so tracking the answer's rows alone equals tracking the whole text and pooling the answer)."""
    from ghosttrack.detect.bags import track_bag
    from ghosttrack.tracks.codes import SparseCodes
    from ghosttrack.tracks.stats import track_statistics

    offsets = features.row_offsets
    results = []
    for i in range(len(features)):
        codes = {layer: SparseCodes.from_dense(latents[layer][offsets[i]:offsets[i + 1]]) for layer in tracker.layers}
        results.append(tracker.track(codes))
    features.track_stats, features.track_names = track_statistics(results)
    features.track_bag, features.track_bag_names = track_bag(results, features.answer_tokens, tracker)


# --- the cache ------------------------------------------------------------------------------------

def _file_stamp(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, int(stat.st_mtime)]


def cache_key(model: str, examples: Examples, layers: list[int], token_layers: list[int], settings: dict) -> str:
    """A hash of everything the forward pass's features depend on: model, data content, layers, settings."""
    model_path = Path(model)
    parts = {
        "version": FEATURES_VERSION,
        "model": _file_stamp(model_path) if model_path.is_file() else model,
        "data": examples.fingerprint(),
        "layers": list(layers),
        "token_layers": sorted(token_layers),
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def save_features(features: FeatureSet, directory: Path) -> None:
    """Write the forward pass's features into a temporary folder, then rename it: a killed run never
    leaves a half cache entry. SAE latents and tracker statistics are derived, never cached."""
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.savez(tmp / "arrays.npz", resid_mean=features.resid_mean, resid_last=features.resid_last,
             answer_logprob=features.answer_logprob, answer_tokens=features.answer_tokens,
             resid_prompt=features.resid_prompt, token_rows=features.token_rows)
    (tmp / "meta.json").write_text(json.dumps({"layers": features.layers, "token_layers": features.token_layers,
                                               "info": features.info}))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def load_features(directory: Path) -> FeatureSet | None:
    """The cached FeatureSet, or None when there is no complete entry."""
    if not (directory / "meta.json").is_file():
        return None
    meta = json.loads((directory / "meta.json").read_text())
    with np.load(directory / "arrays.npz") as arrays:
        data = {name: arrays[name] for name in arrays.files}
    return FeatureSet(layers=meta["layers"], resid_mean=data["resid_mean"], resid_last=data["resid_last"],
                      answer_logprob=data["answer_logprob"], answer_tokens=data["answer_tokens"],
                      resid_prompt=data["resid_prompt"], token_layers=meta["token_layers"], token_rows=data["token_rows"], info=meta["info"])
