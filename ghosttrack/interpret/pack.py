"""The compact encoding of the browser's data: one token table, shared windows, uint8 activations.

A feature page shows ~35 context windows of ~17 tokens, each with the feature's activation on
every token. Written as JSON strings and floats that is ~20 KB per feature (0.5 GB at 24k
features); packed as below it is a few KB:

- **one token table** for the whole layer: every token piece the pages show, stored once
  (`TokenTable`); windows and lists refer to pieces by their index in it;
- **windows shared between features**: the features of one data file draw their windows from
  one stream of store rows (`WindowPacker`): each distinct row's token is stored once, and an
  example is (offset, length) into that stream, so overlapping or repeated windows cost nothing;
  the stream is base64 of little-endian uint16 table indices (uint32 beyond 65,535 pieces);
- **uint8 activations with a per-feature scale** (`quantise`): q = round(254 a / scale), any
  positive activation at least 1, 255 for "no value" (a row the pass skipped). Dequantised,
  q * scale / 254 is within scale / 508 of the activation (within scale / 254 for activations
  below scale / 508, which show as the smallest step instead of 0).
"""
from __future__ import annotations

import base64
from typing import Any, Sequence

import numpy as np

LEVELS = 254
"""Quantisation steps from 0 to the feature's scale."""
MISSING = 255
"""The uint8 code of a token without an activation (a row the pass skipped)."""


def quantise(acts: Sequence[float | None], scale: float) -> np.ndarray:
    """uint8 codes of non-negative activations (None or NaN -> MISSING) relative to `scale` > 0."""
    a = np.array([np.nan if v is None else v for v in acts], dtype=np.float64)
    missing = np.isnan(a)
    a = np.clip(np.where(missing, 0.0, a), 0.0, scale)
    q = np.rint(a * (LEVELS / scale))
    q = np.where(a > 0, np.maximum(q, 1), q)  # a firing token never reads as zero
    return np.where(missing, MISSING, q).astype(np.uint8)


def dequantise(codes: np.ndarray, scale: float) -> np.ndarray:
    """The activations the page shows for uint8 `codes` (NaN for MISSING); the inverse of `quantise`."""
    codes = np.asarray(codes, dtype=np.uint8)
    return np.where(codes == MISSING, np.nan, codes.astype(np.float64) * (scale / LEVELS))


def b64(data: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(data).tobytes()).decode("ascii")


def feature_scale(examples: list[dict[str, Any]]) -> float:
    """The largest activation on any token the feature's pages show (1.0 when there is none)."""
    top = 0.0
    for ex in examples:
        for v in ex.get("acts") or ():
            if v is not None and v == v and v > top:
                top = float(v)
        top = max(top, float(ex["activation"]))
    return top if top > 0 else 1.0


class TokenTable:
    """Token pieces -> indices, each distinct piece stored once for the whole layer."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self._index: dict[str, int] = {}
        self.eos: set[int] = set()

    def __len__(self) -> int:
        return len(self.pieces)

    def index(self, piece: str) -> int:
        i = self._index.get(piece)
        if i is None:
            i = self._index[piece] = len(self.pieces)
            self.pieces.append(piece)
        return i

    def payload(self) -> dict[str, Any]:
        return {"pieces": self.pieces, "eos": sorted(self.eos)}


class WindowPacker:
    """The windows of one data file's features as one stream of store rows, each row stored once.

    A window covers consecutive store rows (row - token_index ...), so in the sorted stream of
    distinct rows it is a contiguous run: an example is (offset, length) into the stream. Rows
    that are not consecutive start a new span; `spans` lists [first store row, length] so the page
    can tell an example's store row. Examples without a store row get a span of their own ([None, length]).
    """

    def __init__(self, table: TokenTable):
        self.table = table
        self._row_token: dict[int, int] = {}  # store row -> token-table index
        self._loose: list[list[int]] = []  # windows without a store row

    def add(self, ex: dict[str, Any]) -> tuple[int, int] | int:
        """Register an example's window; returns a key for `locate` once all are added."""
        ids = [self.table.index(t) for t in ex.get("tokens", [ex.get("text", "")])]
        for i in ex.get("eos") or ():
            self.table.eos.add(ids[i])
        row = ex.get("row", -1)
        if row is None or row < 0:
            self._loose.append(ids)
            return len(self._loose) - 1
        first = int(row) - int(ex.get("token_index", 0))
        for r, tid in zip(range(first, first + len(ids)), ids):
            if self._row_token.setdefault(r, tid) != tid:
                raise ValueError(f"store row {r} appears with two different tokens; the records disagree")
        return first, len(ids)

    def finish(self) -> None:
        """Lay out the stream: distinct rows in order, then the loose windows."""
        rows = np.array(sorted(self._row_token), dtype=np.int64)
        self._rows = rows
        ids = [self._row_token[r] for r in rows.tolist()]
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1 if len(rows) else np.zeros(0, np.int64)
        starts = np.concatenate([[0], breaks]).astype(int) if len(rows) else np.zeros(0, int)
        ends = np.append(breaks, len(rows)).astype(int) if len(rows) else np.zeros(0, int)
        self.spans = [[int(rows[s]), int(e - s)] for s, e in zip(starts, ends)]
        self._loose_at = []
        for window in self._loose:
            self._loose_at.append(len(ids))
            self.spans.append([None, len(window)])
            ids.extend(window)
        self.ids = np.array(ids, dtype=np.uint32)

    def locate(self, key: tuple[int, int] | int) -> tuple[int, int]:
        """(offset, length) in the stream of a key from `add` (after `finish`)."""
        if isinstance(key, tuple):
            first, length = key
            return int(np.searchsorted(self._rows, first)), length
        return self._loose_at[key], len(self._loose[key])

    def payload(self) -> dict[str, Any]:
        wide = len(self.table) > 0xFFFF
        return {"spans": self.spans, "width": 4 if wide else 2,
                "tokens": b64(self.ids.astype("<u4" if wide else "<u2"))}
