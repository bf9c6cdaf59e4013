"""What `ghosttrack extract` (and the extraction half of `ghosttrack run`) is asked to do: one dataclass
whose fields are the command's options, checked here before the model is read."""
from __future__ import annotations

from dataclasses import dataclass, field

from ghosttrack.config_fields import ConfigError, check_fields
from ghosttrack.corpus.config import CorpusConfig
from ghosttrack.errors import GhostTrackError
from ghosttrack.run_config import DEVICE, MODEL_DTYPES, DevicePlacement, ModelDtype, ModelSource, parse_layers, \
    parse_token_count

HOOK_POINTS = ("resid_post", "resid_pre")
"""Residual stream after block i, or before it."""
STORE_DTYPE_CHOICES = ("fp16", "fp32")
MAX_CHUNK_TOKENS = 65_536
"""The most rows a chunk holds when --chunk-tokens is not given (ExtractionPlan's default chunking)."""
NOT_SAVED = ("resume", "overwrite", "repair", "break_lock", "device")
"""Options that say how to treat an existing store or where to run, not what the store is."""


@dataclass
class ExtractConfig(ModelDtype, DevicePlacement, CorpusConfig, ModelSource):
    """One extraction run: the model, the corpus, what is stored and where."""

    model: str = "gpt2"
    revision: str | None = None
    """Model revision (branch, tag or commit) on the hub."""
    hook: str = field(default="resid_post", metadata={"choices": HOOK_POINTS})
    """Residual stream after block i (resid_post) or before it (resid_pre)."""
    tokens: str | int = "10M"
    """Tokens to extract: 10M, 200k, 4096."""
    seq_len: int = field(default=128, metadata={"min": 2})
    """Tokens per packed sequence."""
    batch_size: int = field(default=32, metadata={"min": 1})
    """Sequences per forward pass."""
    chunk_tokens: int | None = field(default=None, metadata={"min": 1})
    """Rows per store chunk (multiple of --seq-len); default: >= 32 chunks, <= 65,536 rows."""
    dtype: str = field(default="auto", metadata={"choices": ("auto", *MODEL_DTYPES)})
    """Model dtype for the forward pass; auto: bf16 on a GPU that has it, else fp32."""
    store_dtype: str = field(default="fp16", metadata={"choices": STORE_DTYPE_CHOICES})
    """Dtype of the stored rows; fp32 for activations beyond fp16's range (+-65504)."""
    host_buffer_mb: int = field(default=2048, metadata={"min": 1})
    """Host (pinned) memory for batches on their way to the disk."""
    layers: str = "all"
    """Blocks to store: 0-11, 0,6,11 or all."""
    device: str | None = field(default=None, metadata=DEVICE)
    """Device (default: what accelerate picks: cuda if present)."""
    shard_chunks: int = field(default=1, metadata={"min": 1})
    """Store N chunks per zarr v3 shard (one object each: far fewer objects on s3://, gs://); a shard is then
    the unit of commit and resume."""
    out: str | None = field(default=None, metadata={"required": True})
    """Store to write: a directory, or s3://BUCKET/RUN, gs://BUCKET/RUN, memory://RUN."""
    resume: bool = False
    """Continue an interrupted store made with the same settings."""
    overwrite: bool = False
    """Replace an existing store at --out."""
    repair: bool = False
    """With --resume: re-extract the chunks `ghosttrack verify` finds damaged, then continue."""
    break_lock: bool = field(default=False, metadata={"hidden": True})
    """Take over a lock another host recorded (see store/lock.py)."""

    def __post_init__(self) -> None:
        check_fields(self)
        CorpusConfig.__post_init__(self)
        if isinstance(self.layers, list):  # a saved config may hold the resolved list
            self.layers = ",".join(map(str, self.layers))
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other; pass one")
        if self.repair and not self.resume:
            raise ConfigError("--repair mends an existing store; pass it together with --resume")
        try:
            parse_token_count(self.tokens)
        except GhostTrackError as exc:
            raise ConfigError(f"--tokens: {exc}") from None
        if self.chunk_tokens is not None and self.chunk_tokens % self.seq_len:
            raise ConfigError(f"--chunk-tokens {self.chunk_tokens} is not a multiple of --seq-len {self.seq_len}; "
                              f"use {max(1, self.chunk_tokens // self.seq_len) * self.seq_len}")
        # The store format's budget (rows, chunks per array), the one rule the writer applies too: an
        # absurd --tokens is refused here, before the model is read or anything is written. Without
        # --chunk-tokens the plan picks chunks of up to MAX_CHUNK_TOKENS rows (checked again there).
        from ghosttrack.store.format import budget_problem

        chunk = (self.chunk_tokens or MAX_CHUNK_TOKENS) * self.shard_chunks
        if (problem := budget_problem(self.target_tokens, chunk)) is not None:
            raise ConfigError(f"--tokens {self.tokens} is more than one store takes: {problem}")
        parse_layers(self.layers)  # the syntax; which layers exist is known once the model's shape is read
        if self.model is not None and not str(self.model).strip():
            raise ConfigError("--model is empty; pass a hub id, a model directory or a .gguf file")

    @property
    def target_tokens(self) -> int:
        return parse_token_count(self.tokens)

    @property
    def mode(self) -> str:
        return "resume" if self.resume else "overwrite" if self.overwrite else "create"
