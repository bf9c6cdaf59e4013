"""One pass over a layer: row norms, the median norm, and which rows training keeps.

Rows are skipped for training, never removed from the store: flagged rows (position 0, the
attention sink, whose norm dwarfs the rest), rows at the positions in ``skip_positions`` (e.g. 1,
the token after the sink, when it peaks many features) and outliers whose L2 norm exceeds
``max_norm_ratio`` times the median norm of the other rows. Rows holding NaN/inf stop
training with an error: a model that produced them, or a damaged store, needs a re-extraction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .errors import StoreError
from .reader import ActivationStore
from .rows import MAX_NORM_RATIO  # noqa: F401 - the rule's default, re-exported

_BLOCK_ROWS = 8192  # float32 copies of this many rows stay small and cache-friendly


def row_norms(x_ND: np.ndarray) -> np.ndarray:
    """L2 norm of each row, accumulated in float32 (NaN/inf rows give a non-finite norm)."""
    out = np.empty(len(x_ND), np.float32)
    for i in range(0, len(x_ND), _BLOCK_ROWS):
        xb = np.asarray(x_ND[i:i + _BLOCK_ROWS], dtype=np.float32)
        out[i:i + len(xb)] = np.sqrt(np.einsum("nd,nd->n", xb, xb))
    return out


@dataclass
class LayerStats:
    """What a scan of one layer found, and the per-row keep mask the loader streams by."""

    layer: int
    skip_flagged: bool
    max_norm_ratio: float | None
    median_norm: float
    """Median L2 norm of the finite, unflagged rows of the chunks the median was taken over (0.0 when
    there are none), or the median the caller gave."""
    n_rows: int
    """Committed rows scanned."""
    n_flagged_skipped: int
    """Position-0 rows left out (0 when skip_flagged is False)."""
    n_outliers_skipped: int
    """Unflagged rows left out for a norm above max_norm_ratio * median_norm."""
    n_nonfinite: int
    """Rows with NaN/inf (only non-zero when the scan was told to allow them; they are left out)."""
    chunk_rows: list[int] = field(repr=False)
    """Rows in each chunk."""
    kept_per_chunk: np.ndarray = field(repr=False)
    """(n_chunks,) int64: rows of each chunk that training uses."""
    keep_packed: list[np.ndarray] = field(repr=False)
    """Per chunk, the keep mask packed with np.packbits (one bit per row)."""
    skip_positions: tuple[int, ...] = ()
    """Positions left out besides the flagged position 0."""
    n_positions_skipped: int = 0
    """Rows left out for their position in skip_positions (flagged rows not counted again)."""

    @property
    def n_kept(self) -> int:
        """Rows training uses."""
        return int(self.kept_per_chunk.sum())

    def keep(self, c: int) -> np.ndarray:
        """Boolean keep mask of chunk ``c``'s rows."""
        return np.unpackbits(self.keep_packed[c], count=self.chunk_rows[c]).astype(bool)


_SCAN_AHEAD = 4
"""Chunks whose fetch starts ahead of the one being scanned (object stores only)."""


def scan_layer(store: ActivationStore, layer: int, *, skip_flagged: bool = True,
               max_norm_ratio: float | None = MAX_NORM_RATIO, skip_positions: tuple[int, ...] = (),
               allow_nonfinite: bool = False, progress: bool = True, median_chunks=None,
               median_norm: float | None = None) -> LayerStats:
    """Read every committed chunk of ``layer`` once and decide which rows training keeps.

    The median norm comes from the usable rows of ``median_chunks`` only (training passes its
    training chunks, so that held-out rows never shape the rule; None: every chunk), or is given
    as ``median_norm`` (the rule an SAE was trained with, applied to other rows).

    Raises StoreError if any row holds NaN/inf, unless ``allow_nonfinite`` (diagnostics only):
    then they are counted and left out.
    """
    store.require_layer(layer)
    skip_positions = tuple(sorted({int(p) for p in skip_positions}))
    norms, flagged, at_skipped = [], [], []
    name = store.require_layer(layer)
    for c in tqdm(range(store.n_chunks), desc=f"scan layer {layer}", unit="chunk", disable=not progress):
        for ahead in range(c, min(c + _SCAN_AHEAD, store.n_chunks)):  # object stores: GETs in flight
            store.fetch_ahead(name, ahead)
            store.fetch_ahead("positions", ahead)
        start, stop = store.chunk_bounds(c)
        norms.append(row_norms(store.read_chunk(layer, c)))
        pos = store.positions(start, stop)
        flagged.append(pos == 0 if skip_flagged else np.zeros(stop - start, bool))
        at_skipped.append(np.isin(pos, skip_positions) & ~flagged[-1])
    rows = [len(n) for n in norms]
    norm = np.concatenate(norms) if norms else np.empty(0, np.float32)
    flag = np.concatenate(flagged) if flagged else np.empty(0, bool)
    by_position = np.concatenate(at_skipped) if at_skipped else np.empty(0, bool)
    bad = ~np.isfinite(norm)
    n_bad = int(bad.sum())
    if n_bad and not allow_nonfinite:
        where = np.flatnonzero(bad)[:5]
        chunks = sorted({int(r) // store.chunk_tokens for r in where})
        raise StoreError(f"layer {layer} has {n_bad} rows with NaN/inf (first at rows "
                         f"{', '.join(map(str, where))}, chunks {', '.join(map(str, chunks))}) in store "
                         f"{store.path}; re-extract with --overwrite")
    usable = ~flag & ~by_position & ~bad
    bounds = np.cumsum([0] + rows)
    in_median = usable
    if median_chunks is not None:
        chosen = np.zeros(len(norm), bool)
        for c in median_chunks:
            chosen[bounds[c]:bounds[c + 1]] = True
        in_median = usable & chosen
    if median_norm is not None:
        median = float(median_norm)
    else:
        median = float(np.median(norm[in_median])) if in_median.any() else 0.0
    outlier = np.zeros_like(usable)
    if max_norm_ratio is not None and usable.any():
        outlier = usable & (norm > max_norm_ratio * median)
    keep = usable & ~outlier
    return LayerStats(
        layer=layer, skip_flagged=skip_flagged, max_norm_ratio=max_norm_ratio, median_norm=median,
        n_rows=len(norm), n_flagged_skipped=int((flag & ~bad).sum()),
        n_outliers_skipped=int(outlier.sum()), n_nonfinite=n_bad, chunk_rows=rows,
        kept_per_chunk=np.array([keep[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])], np.int64),
        keep_packed=[np.packbits(keep[a:b]) for a, b in zip(bounds[:-1], bounds[1:])],
        skip_positions=skip_positions, n_positions_skipped=int((by_position & ~bad).sum()),
    )
