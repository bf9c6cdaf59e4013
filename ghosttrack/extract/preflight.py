"""Checks an extraction can make before the model's weights load (45-175 s for a real model).

Everything here reads only small files: the model's config (config.json, or a GGUF file's
header), the store's zarr.json and lock, the corpus's first document. A run refused here has
written nothing. The extractor and the store check the same things again when they act (the
store under its lock): these checks only move the refusal before the slow part.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ghosttrack.precision import check_device  # noqa: F401 - the one device check, used here
from ghosttrack.errors import GhostTrackError
from ghosttrack.extract.hooks import check_layers
from ghosttrack.extract.models import _source, model_name  # noqa: F401 - model_name re-exported
from ghosttrack.store import format as store_format
from ghosttrack.store.location import as_location, check_reachable
from ghosttrack.store.lock import StoreLock
from ghosttrack.store.modes import check_commit_record


@dataclass
class ModelShape:
    """What a model's config says about its size, read without its weights or tokenizer."""

    n_layers: int
    d_model: int
    context_length: int | None


def read_model_shape(model: str, *, gguf: str | None = None, revision: str | None = None) -> ModelShape:
    """Blocks, width and context length of `model`: from a GGUF file's header, or from its config."""
    source, extra = _source(model, gguf)
    if "gguf_file" in extra:
        meta = read_gguf_metadata(Path(source) / extra["gguf_file"])
        arch = meta.get("general.architecture")
        n_layers, d_model = meta.get(f"{arch}.block_count"), meta.get(f"{arch}.embedding_length")
        if not (arch and n_layers and d_model):
            raise GhostTrackError(f"GGUF file {Path(source) / extra['gguf_file']} lacks general.architecture, "
                                  "block_count or embedding_length; is it a transformer's GGUF export?")
        context = meta.get(f"{arch}.context_length")
        return ModelShape(int(n_layers), int(d_model), int(context) if context else None)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, **({"revision": revision} if revision else {}))
    except (OSError, ValueError) as exc:
        if Path(source).exists():
            raise GhostTrackError(f"cannot load a model from {source}: {str(exc).splitlines()[0]}") from exc
        raise GhostTrackError(
            f"model '{model}' cannot be found offline (not in the HF cache, hub unreachable); "
            "pass a local directory with --model PATH or a GGUF file with --model FILE.gguf") from exc
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    d_model = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    context = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    return ModelShape(int(n_layers or 0), int(d_model or 0), int(context) if context else None)


# GGUF value types (ggml's gguf.h): fixed-size scalars by struct format; 8 = string, 9 = array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_metadata(path: Path) -> dict:
    """The scalar and string key/values of a GGUF file's header (arrays, such as the tokenizer's
    vocabulary, are skipped). Reads only the header, never the tensors."""
    try:
        with open(path, "rb") as f:
            return _read_gguf_header(f, path)
    except OSError as exc:
        raise GhostTrackError(f"cannot read GGUF file {path}: {exc.strerror}; check the path") from exc
    except (struct.error, UnicodeDecodeError, KeyError) as exc:
        raise GhostTrackError(f"GGUF file {path} is damaged or not GGUF ({type(exc).__name__}); "
                              "download it again") from exc


def _read_gguf_header(f, path: Path) -> dict:
    def unpack(fmt: str):
        size = struct.calcsize("<" + fmt)
        data = f.read(size)
        if len(data) != size:
            raise struct.error("truncated header")
        return struct.unpack("<" + fmt, data)[0]

    def string() -> str:
        return f.read(unpack("Q")).decode("utf-8")

    def value(kind: int):
        if kind == _GGUF_STRING:
            return string()
        if kind == _GGUF_ARRAY:
            item_kind, count = unpack("I"), unpack("Q")
            if item_kind == _GGUF_STRING:
                for _ in range(count):
                    f.seek(unpack("Q"), 1)
            else:
                f.seek(struct.calcsize("<" + _GGUF_SCALARS[item_kind]) * count, 1)
            return None
        return unpack(_GGUF_SCALARS[kind])

    if f.read(4) != b"GGUF":
        raise GhostTrackError(f"{path} is not a GGUF file (no GGUF magic); pass a .gguf model file")
    version = unpack("I")
    if version < 2:
        raise GhostTrackError(f"GGUF file {path} has version {version}; convert it with a current llama.cpp")
    unpack("Q")  # tensor count
    meta = {}
    for _ in range(unpack("Q")):
        key = string()
        found = value(unpack("I"))
        if found is not None:
            meta[key] = found
    return meta


def check_model_fits(shape: ModelShape, layers: list[int], seq_len: int, model: str) -> None:
    """Requested layers exist, and a sequence fits the model's context."""
    if shape.n_layers:
        check_layers(layers, shape.n_layers)
    if shape.context_length and seq_len > shape.context_length:
        raise GhostTrackError(f"--seq-len {seq_len} exceeds the context of {model} ({shape.context_length} positions); "
                              f"pass --seq-len {shape.context_length} or less")


def check_corpus(corpus) -> None:
    """The corpus is reachable and has at least one document (sources raise GhostTrackError otherwise)."""
    for _ in corpus.get_texts(max_texts=1):
        return
    raise GhostTrackError(f"corpus {getattr(corpus, 'name', '')} has no document; pass a corpus with text")


def check_store_state(out: Path, mode: str, expected: dict, *, break_lock: bool = False) -> str | None:
    """What `mode` would do with what is at `out`, without changing anything.

    Returns a message when there is nothing to do (`--resume` on a complete store); raises
    GhostTrackError/StoreError for a refusal. `expected` holds identity attributes known before the
    model loads (layers, hook, context length ...); those present in the store must match.
    """
    check_reachable(as_location(out), for_writing=True)  # a wrong bucket or missing credentials: one line
    occupied = bool(store_format.content_entries(out))
    if not occupied or mode == "overwrite":
        _check_lock(out, break_lock)
        return None
    attrs = store_format.read_store_attrs(out)  # StoreError on a damaged zarr.json
    if attrs is None:
        raise GhostTrackError(f"{out} is not empty and is not a GhostTrack store; choose another --out")
    described = f"model {attrs.get('model')}, layers {attrs.get('layers')}"
    if mode == "create":
        raise GhostTrackError(f"store already exists at {out} ({described}); pass --resume to continue it "
                              "or --overwrite to replace it")
    check_commit_record(out, attrs)
    diffs = [f"{k}: stored {attrs.get(k)!r} vs requested {v!r}" for k, v in expected.items() if attrs.get(k) != v]
    if diffs:
        raise GhostTrackError(f"cannot resume store {out}: it was written with different settings ({'; '.join(diffs)}); "
                              "pass --overwrite to replace it or choose another --out")
    if attrs.get("complete"):
        return (f"store {out} is already complete ({attrs['committed_tokens']:,} tokens); nothing to do "
                "(pass --overwrite to extract it again)")
    _check_lock(out, break_lock)
    return None


def _check_lock(out: Path, break_lock: bool) -> None:
    """Refuse early a store another writer holds (taking and releasing the lock changes nothing else)."""
    lock_file = as_location(out) / store_format.LOCK_PREFIX
    if lock_file.exists():
        StoreLock.acquire(lock_file, as_location(out), break_lock=break_lock).release()
