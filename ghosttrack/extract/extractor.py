"""Stream a corpus through a model and write the residual stream of every requested layer to a store.

One forward pass per batch captures all requested layers and stops after the deepest one.
Device-to-host copies go into pinned buffers drained by a writer thread (`AsyncStoreWriter`),
so the accelerator never waits for the disk. Rows are laid out sequence-major, and with
several processes (`accelerate launch`) each process owns whole chunks: chunk c belongs
to process c % world_size, so every process writes its own chunk-aligned rows.
"""
from __future__ import annotations

import itertools
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ghosttrack.extract.async_writer import AsyncStoreWriter
from ghosttrack.errors import GhostTrackError
from ghosttrack.extract.hooks import HOOK_POINTS, capture_residuals, check_layers, forward_until
from ghosttrack.extract.models import LoadedModel
from ghosttrack.corpus.packing import pack_sequences
from ghosttrack.store.writer import StoreWriter

MAX_CHUNK_TOKENS = 65_536
TOKENIZER_DIR = "tokenizer"


@dataclass
class ExtractionPlan:
    """What one extraction writes; everything here is part of the store's identity."""

    layers: list[int]
    """Block indices whose residual stream is stored."""
    target_tokens: int
    """Rows to write (a whole number of sequences)."""
    seq_len: int
    """Tokens per packed sequence (the context length of every row's sequence)."""
    hook: str = "resid_post"
    """`resid_post` (output of block i) or `resid_pre` (its input)."""
    chunk_tokens: int | None = None
    """Rows per store chunk (a multiple of seq_len); None picks one (>= 32 chunks, <= 65,536 rows)."""
    compute_dtype: str = "fp32"
    """The model's dtype during the forward pass; stored rows are always float16."""
    extra_attrs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hook not in HOOK_POINTS:
            raise GhostTrackError(f"unknown --hook '{self.hook}'; choose one of {', '.join(HOOK_POINTS)}")
        if self.seq_len < 2:
            raise GhostTrackError(f"--seq-len must be at least 2, got {self.seq_len}")
        if not self.layers:
            raise GhostTrackError("no layers requested; pass --layers, e.g. 0-11, 0,6,11 or all")
        n_sequences = max(1, self.target_tokens // self.seq_len)
        self.target_tokens = n_sequences * self.seq_len
        if self.chunk_tokens is None:
            per_chunk = min(max(1, MAX_CHUNK_TOKENS // self.seq_len), max(1, n_sequences // 32))
            self.chunk_tokens = per_chunk * self.seq_len
        if self.chunk_tokens % self.seq_len:
            raise GhostTrackError(
                f"--chunk-tokens {self.chunk_tokens} is not a multiple of --seq-len {self.seq_len}; "
                f"use {max(1, self.chunk_tokens // self.seq_len) * self.seq_len}"
            )

    @property
    def sequences_per_chunk(self) -> int:
        return self.chunk_tokens // self.seq_len


def store_attrs(loaded: LoadedModel, plan: ExtractionPlan, corpus_spec: dict) -> dict:
    """Group attributes that identify the store: a resume must match them exactly."""
    tokenizer = loaded.tokenizer
    return {
        "model": loaded.name,
        "revision": loaded.revision,
        "hook": plan.hook,
        "context_length": plan.seq_len,
        "tokenizer": getattr(tokenizer, "name_or_path", None) or loaded.name,
        "vocab_size": len(tokenizer),
        "corpus": corpus_spec,
        "compute_dtype": plan.compute_dtype,
        "skipped": "nothing: position-0 rows are kept and flagged (positions == 0); no padding",
        **plan.extra_attrs,
    }


def _owned_sequences(
    sequences: Iterator[np.ndarray], plan: ExtractionPlan, rank: int, world_size: int, skip_rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(global sequence index, ids) of the sequences this process writes, after those already committed.

    Process `rank` owns chunks rank, rank + W, ...; `skip_rows` counts this process's committed rows.
    """
    spc = plan.sequences_per_chunk
    n_total = plan.target_tokens // plan.seq_len
    skip_own = skip_rows // plan.seq_len
    own_seen = 0
    for index, ids in enumerate(itertools.islice(sequences, n_total)):
        if (index // spc) % world_size != rank:
            continue
        own_seen += 1
        if own_seen > skip_own:
            yield index, ids


def _batched(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(itertools.islice(items, size)):
        yield batch


class HiddenStateExtractor:
    """Writes residual-stream activations of `model_wrapper` on `corpus` into one activation store.

    `model_wrapper` is a `LoadedModel` (see ghosttrack.extract.models.load_model); `corpus` is any text source
    with `get_texts()` and `describe()` (WikipediaCorpus, a local file or folder, an HF dataset).
    """

    def __init__(self, model_wrapper: LoadedModel, corpus, cache_dir: str | Path = "runs/store", *, accelerator=None):
        self.loaded = model_wrapper
        self.corpus = corpus
        self.out = Path(cache_dir)
        self.accelerator = accelerator

    # The seed's API: one store holds every layer, so these return the layers' array folders.
    def extract_for_layer(self, layer_idx: int, num_tokens: int, batch_size: int = 8, seq_len: int = 128) -> Path:
        self.extract(ExtractionPlan([layer_idx], num_tokens, seq_len), batch_size=batch_size, mode="resume")
        return self.out / "layers" / str(layer_idx)

    def extract_all_layers(self, num_tokens: int, batch_size: int = 8, seq_len: int = 128) -> list[Path]:
        layers = list(range(self.loaded.n_layers))
        self.extract(ExtractionPlan(layers, num_tokens, seq_len), batch_size=batch_size, mode="resume")
        return [self.out / "layers" / str(layer) for layer in layers]

    def extract(self, plan: ExtractionPlan, *, batch_size: int = 8, mode: str = "create", progress: bool = True) -> Path:
        """Run the extraction; returns the store path. KeyboardInterrupt leaves the store at its last commit."""
        check_layers(plan.layers, self.loaded.n_layers)
        if batch_size < 1:
            raise GhostTrackError(f"--batch-size must be at least 1, got {batch_size}")
        rank, world_size = self._process_layout()
        attrs = store_attrs(self.loaded, plan, self.corpus.describe())
        def open_writer() -> StoreWriter:
            return StoreWriter.open(
                self.out, layers=plan.layers, d_model=self.loaded.d_model, target_tokens=plan.target_tokens,
                chunk_tokens=plan.chunk_tokens, attrs=attrs, mode=mode, rank=rank, world_size=world_size,
            )

        # Rank 0 creates (or checks) the store before the other ranks open their part of it.
        if rank == 0:
            writer = open_writer()
            self._save_tokenizer()
        self._wait_for_everyone(world_size)
        if rank != 0:
            writer = open_writer()
        committed = writer.committed_tokens
        own_target = writer.capacity
        sequences = pack_sequences(self.corpus.get_texts(), self.loaded.tokenizer, plan.seq_len)
        owned = _owned_sequences(sequences, plan, rank, world_size, committed)
        bar = tqdm(total=own_target, initial=min(committed, own_target), unit="tok", unit_scale=True,
                   desc=f"extract {len(plan.layers)} layer(s)", disable=not progress, dynamic_ncols=True)
        sink = AsyncStoreWriter(writer, pinned=self.loaded.device.type == "cuda")
        written = committed
        complete = False
        try:
            for batch in _batched(owned, batch_size):
                self._forward_batch(batch, plan, sink)
                rows = len(batch) * plan.seq_len
                written += rows
                bar.update(rows)
            complete = True
        finally:
            bar.close()
            sink.close(complete=complete)
        if written < own_target:
            tqdm.write(f"corpus ran out: wrote {written:,} of {own_target:,} tokens")
        self._wait_for_everyone(world_size)
        if world_size > 1 and rank == 0:
            StoreWriter.finalize(self.out, world_size)
        return self.out

    def _save_tokenizer(self) -> None:
        """Interpretation rebuilds contexts from token ids without the model: keep the tokenizer beside them."""
        final = self.out / TOKENIZER_DIR
        if final.exists():
            return
        partial = self.out / (TOKENIZER_DIR + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.loaded.tokenizer.save_pretrained(partial)
        partial.rename(final)  # atomic: a killed run never leaves half a tokenizer

    def _wait_for_everyone(self, world_size: int) -> None:
        if world_size > 1:
            self.accelerator.wait_for_everyone()

    def _process_layout(self) -> tuple[int, int]:
        if self.accelerator is None:
            return 0, 1
        return self.accelerator.process_index, self.accelerator.num_processes

    @torch.inference_mode()
    def _forward_batch(self, batch: list[tuple[int, np.ndarray]], plan: ExtractionPlan, sink: AsyncStoreWriter) -> None:
        seq_index = np.array([index for index, _ in batch], dtype=np.int64)
        ids_BT = np.stack([ids for _, ids in batch]).astype(np.int32)
        captured: dict[int, torch.Tensor] = {}

        def keep(layer: int, hidden_BTD: torch.Tensor) -> None:
            # Cast on the device: half the bytes cross the bus.
            captured[layer] = hidden_BTD.reshape(-1, hidden_BTD.shape[-1]).to(torch.float16)

        input_ids = torch.from_numpy(ids_BT).to(self.loaded.device, dtype=torch.long, non_blocking=True)
        with capture_residuals(self.loaded.model, plan.layers, plan.hook, keep):
            forward_until(self.loaded.model, input_ids)
        B, T = ids_BT.shape
        sink.submit(
            captured,
            tokens=ids_BT.reshape(-1),
            positions=np.tile(np.arange(T, dtype=np.int32), B),
            sequence_ids=np.repeat(seq_index, T),
        )


def plan_to_dict(plan: ExtractionPlan) -> dict:
    return asdict(plan)
