"""Load a HuggingFace model and its tokenizer from a hub id, a local directory or a GGUF file."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ghosttrack.errors import GhostTrackError
from ghosttrack.extract.hooks import find_blocks

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model ready for residual-stream hooks, with what the store records about it."""

    model: nn.Module
    tokenizer: object
    name: str
    revision: str | None
    n_layers: int
    d_model: int
    context_length: int | None
    is_causal: bool

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise GhostTrackError(f"unknown --dtype '{name}'; choose one of {', '.join(DTYPES)}") from None


def _source(model: str, gguf: str | None) -> tuple[str, dict]:
    """(from_pretrained argument, extra kwargs): a `.gguf` path becomes its folder plus gguf_file."""
    path = Path(model)
    if gguf is None and path.suffix == ".gguf":
        path, gguf = path.parent, path.name
    if gguf is not None:
        gguf_path = Path(gguf) if Path(gguf).is_absolute() else path / gguf
        if not gguf_path.is_file():
            raise GhostTrackError(f"GGUF file {gguf_path} not found; pass --model DIR --gguf FILE.gguf or --model FILE.gguf")
        return str(gguf_path.parent), {"gguf_file": gguf_path.name}
    return model, {}


@dataclass
class ModelSpec:
    """What a model's config and tokenizer say, read without its weights (cheap checks use it)."""

    source: str
    extra: dict
    config: object
    tokenizer: object
    name: str
    revision: str | None
    n_layers: int
    d_model: int
    context_length: int | None
    is_causal: bool


def model_name(model: str, gguf: str | None = None) -> str:
    """The model's name as stores and SAEs record it: a hub id as given, a local directory or GGUF
    file as an absolute path (so that it is found again from any folder)."""
    source, extra = _source(model, gguf)
    if "gguf_file" in extra:
        return str((Path(source) / extra["gguf_file"]).resolve())
    return str(Path(model).resolve()) if Path(model).exists() else model


def read_model_spec(model: str = "gpt2", *, gguf: str | None = None, revision: str | None = None) -> ModelSpec:
    """Config and tokenizer of `model` (hub id, local directory or .gguf file): config.json, or the
    GGUF file's metadata; no weights are read."""
    from transformers import AutoConfig, AutoTokenizer

    source, extra = _source(model, gguf)
    if revision:
        extra["revision"] = revision
    # GGUF loading logs a progress bar per tensor; keep the user's terminal for our own bar.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        config = AutoConfig.from_pretrained(source, **extra)
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    except (OSError, ValueError) as exc:
        if Path(source).exists():
            raise GhostTrackError(f"cannot load a model from {source}: {str(exc).splitlines()[0]}") from exc
        raise GhostTrackError(
            f"model '{model}' cannot be found offline (not in the HF cache, hub unreachable); "
            "pass a local directory with --model PATH or a GGUF file with --model FILE.gguf"
        ) from exc
    is_causal = bool(getattr(config, "is_decoder", False)) or any(
        arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel") for arch in (config.architectures or [])
    ) or config.model_type in ("gpt2", "llama", "gpt_neox", "mistral", "qwen2", "gptj", "phi3", "gemma")
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    d_model = getattr(text_config, "hidden_size", None) or getattr(text_config, "n_embd")
    context = getattr(text_config, "max_position_embeddings", None) or getattr(text_config, "n_positions", None)
    n_layers = getattr(text_config, "num_hidden_layers", None) or getattr(text_config, "n_layer", None)
    return ModelSpec(
        source=source, extra=extra, config=config, tokenizer=tokenizer,
        name=model_name(model, gguf),
        revision=revision or getattr(config, "_commit_hash", None),
        n_layers=int(n_layers) if n_layers else 0, d_model=int(d_model),
        context_length=int(context) if context else None, is_causal=is_causal,
    )


def load_model(
    model: str | ModelSpec = "gpt2",
    *,
    gguf: str | None = None,
    dtype: str = "fp32",
    device: str | torch.device = "cpu",
    revision: str | None = None,
    causal_lm: bool = True,
) -> LoadedModel:
    """Load `model` (hub id, local directory, .gguf file, or a ModelSpec already read) and its tokenizer.

    `causal_lm=False` loads the bare transformer (no LM head), which is all extraction needs.
    BERT-style encoders always load as the bare model.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    spec = model if isinstance(model, ModelSpec) else read_model_spec(model, gguf=gguf, revision=revision)
    loader = AutoModelForCausalLM if (causal_lm and spec.is_causal) else AutoModel
    torch_dtype = resolve_dtype(dtype)
    net = loader.from_pretrained(spec.source, dtype=torch_dtype, **spec.extra)
    net.to(device).eval()
    net.requires_grad_(False)
    return LoadedModel(
        model=net,
        tokenizer=spec.tokenizer,
        name=spec.name,
        revision=spec.revision,
        n_layers=len(find_blocks(net)),
        d_model=spec.d_model,
        context_length=spec.context_length,
        is_causal=spec.is_causal,
    )
