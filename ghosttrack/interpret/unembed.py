"""What a feature does to the output: the tokens its decoder direction promotes and suppresses.

The effect of adding direction d to the last residual stream, through the final norm and the
unembedding, is (up to the norm's positive per-token scale, which does not change the ranking
within one feature) logits = W_U (g * d'), with g the final norm's weight and d' = d for an
RMSNorm and d minus its mean over D for a LayerNorm (it centres its input). Gemma's RMSNorm
multiplies by (1 + weight). The norm's bias adds the same vector to every feature's logits, so
it is left out. Only the few tensors needed are read from the model files: the model never runs
and its other weights are never loaded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ghosttrack.errors import GhostTrackError

# Tensor names (after an optional prefix such as "transformer." or "model.") per family.
UNEMBED_NAMES = ("lm_head.weight", "embed_out.weight")
EMBED_NAMES = ("wte.weight", "embed_tokens.weight", "embed_in.weight", "word_embeddings.weight")
FINAL_NORM_NAMES = ("ln_f", "norm", "final_layer_norm", "final_layernorm", "norm_f")
LAYERNORM_TYPES = {"gpt2", "gpt_neox", "gptj", "opt", "phi", "bloom", "falcon", "codegen", "gpt_bigcode"}
GGUF_LAYERNORM_ARCHS = {"gpt2", "gptneox", "gptj", "bloom", "falcon", "phi2", "starcoder", "refact"}


@dataclass
class Unembedding:
    """W_U (V, D) with the final norm's scale folded in, and whether the norm centres its input."""

    W_U_VD: torch.Tensor
    center: bool
    source: str

    @property
    def d_model(self) -> int:
        return int(self.W_U_VD.shape[1])


def _find(names: list[str], suffixes: tuple[str, ...]) -> str | None:
    """The first name equal to a suffix or ending in '.' + suffix, the shortest (outermost) one first."""
    for suffix in suffixes:
        hits = sorted((n for n in names if n == suffix or n.endswith("." + suffix)), key=lambda n: n.count("."))
        if hits:
            return hits[0]
    return None


def _final_norm_name(names: list[str]) -> str | None:
    # Only a top-level norm counts (e.g. model.norm.weight), never one inside the blocks.
    outer = [n for n in names if n.count(".") <= 2 and not any(ch.isdigit() for ch in n)]
    return _find(outer, tuple(f"{n}.weight" for n in FINAL_NORM_NAMES))


def _hf_unembedding(directory: Path) -> Unembedding:
    from safetensors import safe_open

    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else {}
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise GhostTrackError(f"--model {directory} has no .safetensors weights; pass a directory saved with "
                              "save_pretrained (safetensors) or a .gguf file")
    where: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            where.update({k: f for k in fh.keys()})

    def load(name: str) -> torch.Tensor:
        with safe_open(str(where[name]), framework="pt") as fh:
            return fh.get_tensor(name).float()

    names = list(where)
    unembed = None if config.get("tie_word_embeddings") else _find(names, UNEMBED_NAMES)
    unembed = unembed or _find(names, UNEMBED_NAMES + EMBED_NAMES)
    norm = _final_norm_name(names)
    if unembed is None or norm is None:
        raise GhostTrackError(f"--model {directory}: found no {'unembedding' if unembed is None else 'final norm'} "
                              "tensor in its safetensors files; pass the model the store was extracted from")
    model_type = str(config.get("model_type", ""))
    scale = load(norm)
    if model_type.startswith("gemma"):
        scale = 1.0 + scale  # Gemma's RMSNorm multiplies by (1 + weight)
    center = model_type in LAYERNORM_TYPES or norm.replace(".weight", ".bias") in where
    return Unembedding(load(unembed) * scale, center, f"{directory} ({unembed}, {norm})")


def _gguf_unembedding(path: Path) -> Unembedding:
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}

    def load(name: str) -> torch.Tensor:
        t = tensors[name]
        return torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))

    unembed = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    if unembed not in tensors or "output_norm.weight" not in tensors:
        raise GhostTrackError(f"--model {path}: the GGUF file has no output/token_embd or output_norm tensor")
    field = reader.fields.get("general.architecture")
    arch = str(field.contents()) if field is not None else ""
    # llama.cpp's converter already stores Gemma's norm weights as (1 + weight).
    center = arch in GGUF_LAYERNORM_ARCHS or "output_norm.bias" in tensors
    return Unembedding(load(unembed) * load("output_norm.weight"), center, f"{path} ({unembed}, output_norm)")


def load_unembedding(model: str | Path, gguf_file: str | None = None) -> Unembedding:
    """The unembedding of a local model directory (safetensors) or GGUF file, norm scale folded in."""
    path = Path(model)
    if gguf_file:
        path = path / gguf_file
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_unembedding(path)
    if path.is_dir():
        return _hf_unembedding(path)
    raise GhostTrackError(f"--model {model} is neither a local model directory nor a .gguf file; the logit "
                          "lists read the weights from disk (no hub download)")


class LogitEffects(NamedTuple):
    """Per feature (H rows): the top_n promoted and suppressed token ids with their logits,
    strongest first, and the excess kurtosis of the feature's logits over the vocabulary."""

    up_ids: np.ndarray
    up_values: np.ndarray
    down_ids: np.ndarray
    down_values: np.ndarray
    kurtosis: np.ndarray
    noise_kurtosis: float
    """The largest excess kurtosis of RANDOM_DIRECTIONS random directions: a feature at or below it
    has logits no more peaked than noise (its lists are then mostly arbitrary tokens)."""

    def record(self, f: int, pieces) -> dict:
        """Feature f's entry in its record; `pieces` turns token ids into text."""
        kurtosis = float(self.kurtosis[f])
        return {"promoted": [[t, round(float(v), 4)] for t, v in zip(pieces(self.up_ids[f]), self.up_values[f])],
                "suppressed": [[t, round(float(v), 4)] for t, v in zip(pieces(self.down_ids[f]), self.down_values[f])],
                "kurtosis": round(kurtosis, 3), "noise_kurtosis": round(self.noise_kurtosis, 3),
                "noise_like": kurtosis <= self.noise_kurtosis}


RANDOM_DIRECTIONS = 64
"""Random Gaussian directions whose logit kurtosis sets the noise level (seeded, so reruns agree)."""


def _excess_kurtosis(logits_BV: torch.Tensor) -> torch.Tensor:
    centred = logits_BV - logits_BV.mean(dim=1, keepdim=True)
    m2 = centred.pow(2).mean(dim=1)
    return centred.pow(4).mean(dim=1) / m2.pow(2).clamp_min(1e-30) - 3.0


@torch.no_grad()
def logit_effects(W_dec_HD: torch.Tensor, unembed: Unembedding, top_n: int, *, vocab_size: int | None = None,
                  block: int = 256) -> LogitEffects:
    """The direct effect of each decoder direction d on the logits, W_U (g * d') (see the module
    docstring): its top_n promoted and suppressed tokens, and how peaked it is (kurtosis) against
    random directions. `vocab_size` limits the lists to ids the tokenizer knows (padded
    vocabularies have more rows)."""
    W_U = unembed.W_U_VD[:vocab_size] if vocab_size else unembed.W_U_VD
    if W_dec_HD.shape[1] != W_U.shape[1]:
        raise GhostTrackError(f"the SAE has d_in={W_dec_HD.shape[1]} but the model's unembedding has "
                              f"d_model={W_U.shape[1]}; pass the model the store was extracted from")
    n = W_dec_HD.shape[0]
    top_n = min(top_n, W_U.shape[0])
    out = [np.zeros((n, top_n), np.int64), np.zeros((n, top_n), np.float32),
           np.zeros((n, top_n), np.int64), np.zeros((n, top_n), np.float32), np.zeros(n, np.float32)]

    def logits_of(d: torch.Tensor) -> torch.Tensor:
        d = d.float().cpu()
        return (d - d.mean(dim=1, keepdim=True) if unembed.center else d) @ W_U.T

    for s in range(0, n, block):
        logits = logits_of(W_dec_HD[s:s + block])
        up, down = logits.topk(top_n, dim=1), (-logits).topk(top_n, dim=1)
        out[0][s:s + block], out[1][s:s + block] = up.indices.numpy(), up.values.numpy()
        out[2][s:s + block], out[3][s:s + block] = down.indices.numpy(), -down.values.numpy()
        out[4][s:s + block] = _excess_kurtosis(logits).numpy()
    generator = torch.Generator().manual_seed(0)
    noise = _excess_kurtosis(logits_of(torch.randn(RANDOM_DIRECTIONS, W_U.shape[1], generator=generator)))
    return LogitEffects(*out, noise_kurtosis=float(noise.max()))
