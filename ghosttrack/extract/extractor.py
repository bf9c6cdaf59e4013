"""Stream a corpus through a model and write the residual stream of every requested layer to a store.

One forward pass per batch captures all requested layers and stops after the deepest one.
Device-to-host copies go into pinned buffers drained by a writer thread (`AsyncStoreWriter`),
so the accelerator never waits for the disk. Rows are laid out sequence-major, and with
several processes (`accelerate launch`) each process owns whole chunks: chunk c belongs
to process c % world_size, so every process writes its own chunk-aligned rows.
"""
from __future__ import annotations

import errno
import itertools
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ghosttrack.extract.async_writer import AsyncStoreWriter
from ghosttrack.extract.config import MAX_CHUNK_TOKENS
from ghosttrack.errors import GhostTrackError
from ghosttrack.interrupts import Interrupted, StopRequest
from ghosttrack.extract.hooks import HOOK_POINTS, capture_residuals, check_layers, forward_until
from ghosttrack.extract.models import LoadedModel
from ghosttrack.corpus.packing import batched, pack_with_positions
from ghosttrack.extract.resume_point import drop_resume_point, read_resume_point, write_resume_point
from ghosttrack.store.location import as_location, is_remote, upload_folder
from ghosttrack.store.background import in_background
from ghosttrack.store.format import budget_problem
from ghosttrack.store.writer import StoreWriter

STORE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
"""--store-dtype: how rows are stored (zarr has no standard bfloat16 data type, so no bf16)."""
STORE_DTYPE_NAMES = {"fp16": "float16", "fp32": "float32"}
"""--store-dtype -> the store's `dtype` attribute (numpy's name)."""
TOKENIZER_DIR = "tokenizer"
HOST_BUFFER_BYTES = 2 << 30
"""Default cap of the host (pinned) memory that holds batches on their way to the disk."""
MAX_PENDING = 2
"""Batches waiting for the writer thread at most (more only adds memory: the disk sets the pace)."""
TOKENIZED_AHEAD = 4
"""Batches tokenized and packed ahead of the forward pass."""
TOKENIZER_DONE = ".uploaded"
"""Marker object written after the tokenizer's files on an object store (which has no rename)."""


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
    """The model's dtype during the forward pass."""
    store_dtype: str = "fp16"
    """The stored rows' dtype: fp16 (half the disk) or fp32 (for activations beyond fp16's +-65504)."""
    shard_chunks: int = 1
    """> 1: zarr v3 shards of that many chunks, one object each (object stores: far fewer objects).
    After construction ``chunk_tokens`` is then the rows of a shard, the store's unit of commit."""
    extra_attrs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hook not in HOOK_POINTS:
            raise GhostTrackError(f"unknown --hook '{self.hook}'; choose one of {', '.join(HOOK_POINTS)}")
        if self.seq_len < 2:
            raise GhostTrackError(f"--seq-len must be at least 2, got {self.seq_len}")
        if not self.layers:
            raise GhostTrackError("no layers requested; pass --layers, e.g. 0-11, 0,6,11 or all")
        if self.store_dtype not in STORE_DTYPES:
            raise GhostTrackError(f"unknown --store-dtype '{self.store_dtype}'; choose one of {', '.join(STORE_DTYPES)}")
        if self.target_tokens < self.seq_len:
            raise GhostTrackError(f"--tokens {self.target_tokens} is less than one sequence of --seq-len {self.seq_len} "
                                  f"tokens; pass --tokens {self.seq_len} or more")
        n_sequences = self.target_tokens // self.seq_len
        self.target_tokens = n_sequences * self.seq_len
        if self.chunk_tokens is None:
            per_chunk = min(max(1, MAX_CHUNK_TOKENS // self.seq_len), max(1, n_sequences // 32))
            self.chunk_tokens = per_chunk * self.seq_len
        if self.chunk_tokens % self.seq_len:
            raise GhostTrackError(
                f"--chunk-tokens {self.chunk_tokens} is not a multiple of --seq-len {self.seq_len}; "
                f"use {max(1, self.chunk_tokens // self.seq_len) * self.seq_len}"
            )
        if self.shard_chunks < 1:
            raise GhostTrackError(f"--shard-chunks must be at least 1, got {self.shard_chunks}")
        self.chunk_tokens *= self.shard_chunks  # the store's chunk (commit unit) is the shard
        if (problem := budget_problem(self.target_tokens, self.chunk_tokens)) is not None:
            raise GhostTrackError(problem)

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
    numbered: Iterator[tuple[int, np.ndarray]], plan: ExtractionPlan, rank: int, world_size: int, skip_rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(global sequence index, ids) of the sequences this process writes, after those already committed.

    Process `rank` owns chunks rank, rank + W, ...; `skip_rows` counts this process's committed rows
    among `numbered` (which may start past sequence 0, at a recorded resume point).
    """
    spc = plan.sequences_per_chunk
    n_total = plan.target_tokens // plan.seq_len
    skip_own = skip_rows // plan.seq_len
    own_seen = 0
    for index, ids in itertools.takewhile(lambda item: item[0] < n_total, numbered):
        if (index // spc) % world_size != rank:
            continue
        own_seen += 1
        if own_seen > skip_own:
            yield index, ids


class HiddenStateExtractor:
    """Writes residual-stream activations of `model_wrapper` on `corpus` into one activation store.

    `model_wrapper` is a `LoadedModel` (see ghosttrack.extract.models.load_model); `corpus` is any text source
    with `get_texts()` and `describe()` (WikipediaCorpus, a local file or folder, an HF dataset).
    """

    def __init__(self, model_wrapper: LoadedModel, corpus, cache_dir: str | Path = "runs/store", *, accelerator=None):
        self.loaded = model_wrapper
        self.corpus = corpus
        self.out = as_location(cache_dir)  # a local folder, or an object-store prefix (s3://, gs:// ...)
        self.accelerator = accelerator

    # The seed's API: one store holds every layer, so these return the layers' array folders.
    def extract_for_layer(self, layer_idx: int, num_tokens: int, batch_size: int = 8, seq_len: int = 128) -> Path:
        self.extract(ExtractionPlan([layer_idx], num_tokens, seq_len), batch_size=batch_size, mode="resume")
        return self.out / "layers" / str(layer_idx)

    def extract_all_layers(self, num_tokens: int, batch_size: int = 8, seq_len: int = 128) -> list[Path]:
        layers = list(range(self.loaded.n_layers))
        self.extract(ExtractionPlan(layers, num_tokens, seq_len), batch_size=batch_size, mode="resume")
        return [self.out / "layers" / str(layer) for layer in layers]

    def extract(self, plan: ExtractionPlan, *, batch_size: int = 8, mode: str = "create", progress: bool = True,
                stop: StopRequest | None = None, break_lock: bool = False,
                host_buffer_bytes: int = HOST_BUFFER_BYTES) -> Path:
        """Run the extraction; returns the store path.

        Ctrl-C / SIGTERM (or `stop.request()`) stop it between batches with `Interrupted`, the store
        at its last commit. A corpus without a single sequence fails before any store is created.
        `break_lock` takes over a lock another host recorded (see store/lock.py); `host_buffer_bytes`
        caps the host memory of batches between the forward pass and the disk (see pending_batches).
        """
        with stop or StopRequest() as stop:
            return self._extract(plan, batch_size, mode, progress, stop, break_lock, host_buffer_bytes)

    def _extract(self, plan: ExtractionPlan, batch_size: int, mode: str, progress: bool, stop: StopRequest,
                 break_lock: bool, host_buffer_bytes: int) -> Path:
        check_layers(plan.layers, self.loaded.n_layers)
        if batch_size < 1:
            raise GhostTrackError(f"--batch-size must be at least 1, got {batch_size}")
        rank, world_size = self._process_layout()
        attrs = store_attrs(self.loaded, plan, self.corpus.describe())
        sequences = pack_with_positions(self.corpus.get_texts(), self.loaded.tokenizer, plan.seq_len)
        first = next(sequences, None)
        if first is None:
            raise GhostTrackError(f"corpus {getattr(self.corpus, 'name', '')} gave too little text for even one sequence of "
                                  f"{plan.seq_len} tokens; pass a bigger --corpus, a lower --min-chars or a smaller --seq-len")
        stop.check()  # each set-up step honours Ctrl-C / SIGTERM when it ends, before the next one starts

        def open_writer() -> StoreWriter:
            return StoreWriter.open(
                self.out, layers=plan.layers, d_model=self.loaded.d_model, target_tokens=plan.target_tokens,
                chunk_tokens=plan.chunk_tokens, shard_chunks=plan.shard_chunks, attrs=attrs, mode=mode, rank=rank,
                world_size=world_size,
                dtype=STORE_DTYPE_NAMES[plan.store_dtype], break_lock=break_lock,
            )

        # Rank 0 creates (or checks) the store before the other ranks open their part of it.
        if rank == 0:
            writer = open_writer()
            try:
                stop.check()
                self._save_tokenizer()
                stop.check()
            except BaseException:
                writer.close(complete=False)
                raise
        self._wait_for_everyone(world_size)
        if rank != 0:
            writer = open_writer()
            try:
                stop.check()
            except BaseException:
                writer.close(complete=False)
                raise
        committed = writer.committed_tokens
        own_target = writer.capacity
        # A complete store (resumed to add nothing) is not tokenized again just to skip its text, nor
        # is the committed prefix of an interrupted one when its resume point was recorded.
        spec, base, positions, lock = self.corpus.describe(), 0, {}, threading.Lock()
        start = None if world_size > 1 or is_remote(self.out) else \
            read_resume_point(self.out, committed, plan.seq_len, spec)
        if start is not None and committed > 0:
            base = committed // plan.seq_len
            packed = pack_with_positions(self.corpus.get_texts(), self.loaded.tokenizer, plan.seq_len, start=start)
        else:
            packed = itertools.chain([first], sequences)

        def numbered() -> Iterator[tuple[int, np.ndarray]]:
            for index, (ids, position) in enumerate(packed, start=base):
                with lock:
                    positions[index] = position
                yield index, ids

        owned = iter(()) if writer.complete else \
            _owned_sequences(numbered(), plan, rank, world_size, committed - base * plan.seq_len)

        def record(now_committed: int) -> None:
            """Writer thread, after each batch: where the first uncommitted sequence starts."""
            with lock:
                position = positions.get(now_committed // plan.seq_len)
                for index in [i for i in positions if i < now_committed // plan.seq_len]:
                    del positions[index]
            if position is not None and world_size == 1 and not is_remote(self.out):
                write_resume_point(self.out, now_committed, plan.seq_len, spec, position)
        bar = tqdm(total=own_target, initial=min(committed, own_target), unit="tok", unit_scale=True,
                   desc=f"extract {len(plan.layers)} layer(s)", disable=not progress, dynamic_ncols=True)
        written = committed
        complete = False
        pending = pending_batches(batch_size * plan.seq_len * self.loaded.d_model * len(plan.layers)
                                  * STORE_DTYPES[plan.store_dtype].itemsize, host_buffer_bytes)
        sink = AsyncStoreWriter(writer, pinned=self.loaded.device.type == "cuda", should_stop=lambda: stop.requested,
                                check_batch=lambda counts: check_finite(counts, plan), max_pending=pending,
                                device=self.loaded.device, after_append=record)
        # Tokenizing and packing run on a thread, a few batches ahead of the forward passes.
        batches = in_background(lambda: batched(owned, batch_size), depth=TOKENIZED_AHEAD, name="ghosttrack-tokenize")
        try:
            for batch in batches:
                if stop.requested:
                    raise Interrupted(stop.signal_name)
                self._forward_batch(batch, plan, sink)
                rows = len(batch) * plan.seq_len
                written += rows
                bar.update(rows)
            complete = True
        finally:
            batches.close()
            bar.close()
            sink.close(complete=complete)
        if not is_remote(self.out):
            drop_resume_point(self.out)
        # A corpus that ran out before target_tokens leaves a complete store with fewer committed
        # rows: the store records it that way (ActivationStore.corpus_ran_out), the CLI reports it.
        self._wait_for_everyone(world_size)
        if world_size > 1 and rank == 0:
            StoreWriter.finalize(self.out, world_size)
        return self.out

    def _save_tokenizer(self) -> None:
        """Interpretation rebuilds contexts from token ids without the model: keep the tokenizer beside them."""
        final = self.out / TOKENIZER_DIR
        if is_remote(self.out):
            self._upload_tokenizer(final)
            return
        if final.exists():
            return
        partial = self.out / (TOKENIZER_DIR + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            self.loaded.tokenizer.save_pretrained(partial)
            partial.rename(final)  # atomic: a killed run never leaves half a tokenizer
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            full = exc.errno == errno.ENOSPC or shutil.disk_usage(self.out).free < (1 << 20)
            why = "disk full" if full else (exc.strerror or str(exc))
            raise GhostTrackError(f"{why} while saving the tokenizer into {final}; "
                                  f"{'free space' if full else 'fix that'} and rerun with --resume") from exc

    def _upload_tokenizer(self, final) -> None:
        """Object store: no rename, so the files go up first and a marker object last; a folder
        without its marker (a killed upload) is uploaded again."""
        import tempfile
        if (final / TOKENIZER_DONE).is_file():
            return
        with tempfile.TemporaryDirectory() as tmp:
            self.loaded.tokenizer.save_pretrained(tmp)
            upload_folder(Path(tmp), final)
        (final / TOKENIZER_DONE).write_bytes(b"")

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
        nonfinite: dict[int, torch.Tensor] = {}
        store_dtype = STORE_DTYPES[plan.store_dtype]

        def keep(layer: int, hidden_BTD: torch.Tensor) -> None:
            # Cast on the device (fp16: half the bytes cross the bus); count values that are not
            # finite before and after the cast there too, without a host sync.
            hidden_ND = hidden_BTD.reshape(-1, hidden_BTD.shape[-1])
            captured[layer] = hidden_ND.to(store_dtype)
            nonfinite[layer] = torch.stack([(~torch.isfinite(hidden_ND)).sum(),
                                            (~torch.isfinite(captured[layer])).sum()])

        input_ids = torch.from_numpy(ids_BT).to(self.loaded.device, dtype=torch.long, non_blocking=True)
        with capture_residuals(self.loaded.model, plan.layers, plan.hook, keep):
            forward_until(self.loaded.model, input_ids)
        B, T = ids_BT.shape
        sink.submit(
            captured,
            tokens=ids_BT.reshape(-1),
            positions=np.tile(np.arange(T, dtype=np.int32), B),
            sequence_ids=np.repeat(seq_index, T),
            counts=torch.stack([nonfinite[layer] for layer in plan.layers]),
        )


def pending_batches(batch_bytes: int, host_buffer_bytes: int) -> int:
    """Batches that may wait for the writer: the ring holds them plus one being written and one being
    filled, and stays within host_buffer_bytes (at least one waits, or the GPU would wait on the disk)."""
    return max(1, min(MAX_PENDING, host_buffer_bytes // max(1, batch_bytes) - 2))


def check_finite(counts_L2: np.ndarray, plan: ExtractionPlan) -> None:
    """Refuse a batch whose activations are not finite: per layer, counts_L2 holds the NaN/inf values
    in the model's output and in the rows cast to the store's dtype (overflow)."""
    for layer, (from_model, after_cast) in zip(plan.layers, counts_L2.tolist()):
        if from_model:
            raise GhostTrackError(
                f"the model produced {from_model:,} NaN/inf activation values at layer {layer}; the store keeps its "
                f"last commit; rerun with --dtype fp32 (a {plan.compute_dtype} forward can overflow)")
        if after_cast:
            limit = float(torch.finfo(STORE_DTYPES[plan.store_dtype]).max)
            raise GhostTrackError(
                f"{after_cast:,} activation values of layer {layer} exceed {plan.store_dtype}'s range (+-{limit:.6g}) "
                f"and would be stored as inf; the store keeps its last commit; re-extract with --store-dtype fp32 "
                f"--overwrite (or into another --out)")
