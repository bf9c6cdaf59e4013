"""`ghosttrack extract --resume --repair`: re-extract the chunks `verify_store` found damaged, in place.

Extraction is deterministic: a chunk's sequences are run in the same batches as an uninterrupted
run made them (batch b holds sequences b*batch_size ...), so the rewritten files are byte-identical
to undamaged ones.
"""
from __future__ import annotations

import itertools

import numpy as np
from tqdm.auto import tqdm

from ghosttrack.corpus.packing import batched, pack_sequences
from ghosttrack.errors import GhostTrackError
from ghosttrack.extract.extractor import STORE_DTYPE_NAMES, ExtractionPlan, check_finite, store_attrs
from ghosttrack.extract.hooks import check_layers
from ghosttrack.store.writer import StoreWriter


def repair_chunks(extractor, plan: ExtractionPlan, chunks: list[int], *, batch_size: int = 8,
                  progress: bool = True) -> int:
    """Re-extract committed `chunks` of `extractor`'s store (as `verify_store` lists them) and rewrite
    them in place; returns the number of chunks rewritten."""
    check_layers(plan.layers, extractor.loaded.n_layers)
    if extractor._process_layout()[1] > 1:
        raise GhostTrackError("--repair runs in one process; start it without accelerate launch")
    writer = StoreWriter.open(
        extractor.out, layers=plan.layers, d_model=extractor.loaded.d_model, target_tokens=plan.target_tokens,
        chunk_tokens=plan.chunk_tokens, attrs=store_attrs(extractor.loaded, plan, extractor.corpus.describe()),
        mode="resume", dtype=STORE_DTYPE_NAMES[plan.store_dtype], shard_chunks=plan.shard_chunks,
    )
    spc, committed = plan.sequences_per_chunk, writer.committed_tokens
    n_total = committed // plan.seq_len
    try:
        pending = set(chunks)
        outside = sorted(c for c in pending if not 0 <= c * spc < n_total)
        if outside:
            raise GhostTrackError(f"chunk(s) {outside} are not committed in {extractor.out}; only committed chunks "
                                  "are repaired")
        # The batches of an uninterrupted run that hold any sequence of a chunk to repair.
        needed = {s // batch_size for c in pending for s in range(c * spc, min((c + 1) * spc, n_total))}
        last_sequence = {c: min((c + 1) * spc, n_total) - 1 for c in pending}
        sequences = pack_sequences(extractor.corpus.get_texts(), extractor.loaded.tokenizer, plan.seq_len)
        batches = batched(enumerate(itertools.islice(sequences, n_total)), batch_size)
        rows: dict[int, _Collected] = {}
        for index, batch in enumerate(tqdm(batches, total=max(needed) + 1 if needed else 0, desc="repair",
                                           unit="batch", disable=not progress)):
            if index in needed:
                collect = _Collected()
                extractor._forward_batch(batch, plan, collect)
                check_finite(collect.counts, plan)
                for c in {seq // spc for seq, _ in batch} & pending:
                    rows[c] = rows.get(c, _Collected()).extend(collect.rows_of(c, spc))
            for c in [c for c in rows if last_sequence[c] <= batch[-1][0]]:
                part = rows.pop(c)
                writer.rewrite_chunk(c, part.acts, part.tokens, part.positions, part.sequence_ids)
                pending.discard(c)
            if not pending:
                break
        if pending:
            raise GhostTrackError(f"the corpus ran out before chunk(s) {sorted(pending)} of {extractor.out}: it is not "
                                  "the corpus the store was extracted from; pass the original --corpus")
    finally:
        writer.close(complete=False)
    return len(set(chunks))


class _Collected:
    """Stands in for the writer thread during a repair: keeps each batch's host rows."""

    def __init__(self):
        self.acts: dict[int, np.ndarray] = {}
        self.tokens = self.positions = self.sequence_ids = None
        self.counts = None

    def submit(self, acts, *, tokens, positions, sequence_ids, counts) -> None:
        self.acts = {layer: a.cpu().numpy() for layer, a in acts.items()}
        self.tokens, self.positions, self.sequence_ids = tokens, positions, sequence_ids
        self.counts = counts.cpu().numpy()

    def rows_of(self, c: int, sequences_per_chunk: int) -> "_Collected":
        """The rows of this batch that belong to chunk c."""
        keep = self.sequence_ids // sequences_per_chunk == c
        part = _Collected()
        part.acts = {layer: a[keep] for layer, a in self.acts.items()}
        part.tokens, part.positions, part.sequence_ids = self.tokens[keep], self.positions[keep], self.sequence_ids[keep]
        return part

    def extend(self, other: "_Collected") -> "_Collected":
        if self.tokens is None:
            return other
        self.acts = {layer: np.concatenate([a, other.acts[layer]]) for layer, a in self.acts.items()}
        self.tokens = np.concatenate([self.tokens, other.tokens])
        self.positions = np.concatenate([self.positions, other.positions])
        self.sequence_ids = np.concatenate([self.sequence_ids, other.sequence_ids])
        return self
