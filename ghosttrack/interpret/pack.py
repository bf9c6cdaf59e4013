"""The compact encoding of the browser's data: one token table, shared windows, uint8 activations.

A feature page shows ~35 context windows of ~17 tokens, each with the feature's activation on
every token. Written as JSON strings and floats that is ~20 KB per feature (0.5 GB at 24k
features); packed as below it is a few KB:

- **one token table** for the whole layer: every token piece the pages show, stored once
  (`TokenTable`); windows and lists refer to pieces by their index in it;
- **windows shared between features**: the features of one data file draw their windows from
  one stream of store rows (`WindowPacker`): each distinct row's token is stored once, and an
  example is (offset, length) into that stream, so overlapping or repeated windows cost nothing;
  the stream is base64 of the table indices as unsigned LEB128 varints (`varints`: 1 byte below
  128, 2 below 16,384; the table numbers pieces as they first appear, so common ones are small);
- **uint8 activations with a per-feature scale** (`quantise`): q = round(254 a / scale), any
  positive activation at least 1, 255 for "no value" (a row the pass skipped); leading and
  trailing zeros are left out (`trimmed_codes`). Dequantised,
  q * scale / 254 is within scale / 508 of the activation (within scale / 254 for activations
  below scale / 508, which show as the smallest step instead of 0).
"""
from __future__ import annotations

import base64
import math
from typing import Any, Sequence

import numpy as np

LEVELS = 254
"""Quantisation steps from 0 to the feature's scale."""
MISSING = 255
"""The uint8 code of a token without an activation (a row the pass skipped)."""


def quantise(acts: Sequence[float | None], scale: float) -> np.ndarray:
    """uint8 codes of non-negative activations (None or NaN -> MISSING) relative to `scale` > 0."""
    a = np.array(acts, dtype=np.float64)  # None -> NaN
    missing = np.isnan(a)
    a = np.clip(np.where(missing, 0.0, a), 0.0, scale)
    q = np.rint(a * (LEVELS / scale))
    q = np.where(a > 0, np.maximum(q, 1), q)  # a firing token never reads as zero
    return np.where(missing, MISSING, q).astype(np.uint8)


def trimmed_codes(codes: np.ndarray) -> bytes:
    """uint8 codes as written: a varint count of leading zeros, then the codes up to the last
    nonzero one (the trailing zeros are implied by the window's length); most tokens of a window
    do not fire, so this is a few bytes instead of one per token."""
    nonzero = np.flatnonzero(codes)
    if len(nonzero) == 0:
        return _varint(len(codes))
    return _varint(int(nonzero[0])) + codes[nonzero[0]:nonzero[-1] + 1].astype(np.uint8).tobytes()


def _varint(n: int) -> bytes:
    """One non-negative integer as `varints` writes it."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def untrimmed_codes(raw: bytes, length: int) -> np.ndarray:
    """The inverse of `trimmed_codes` for a window of `length` tokens (what the page's script does)."""
    lead, at = 0, 0
    for shift in range(0, 64, 7):
        lead |= (raw[at] & 0x7F) << shift
        at += 1
        if not raw[at - 1] & 0x80:
            break
    out = np.zeros(length, dtype=np.uint8)
    body = np.frombuffer(raw[at:], dtype=np.uint8)
    out[lead:lead + len(body)] = body
    return out


def dequantise(codes: np.ndarray, scale: float) -> np.ndarray:
    """The activations the page shows for uint8 `codes` (NaN for MISSING); the inverse of `quantise`."""
    codes = np.asarray(codes, dtype=np.uint8)
    return np.where(codes == MISSING, np.nan, codes.astype(np.float64) * (scale / LEVELS))


def b64(data: np.ndarray | bytes) -> str:
    raw = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
    return base64.b64encode(raw).decode("ascii")


def varints(values: np.ndarray) -> bytes:
    """Non-negative integers as unsigned LEB128: 7 bits a byte, low bits first, high bit = more follows."""
    v = np.asarray(values, dtype=np.uint64)
    n_bytes = np.ones(len(v), dtype=np.int64)
    for k in range(1, 10):
        n_bytes += v >= (np.uint64(1) << np.uint64(7 * k))
    out = np.zeros(int(n_bytes.sum()), dtype=np.uint8)
    at = np.concatenate([[0], np.cumsum(n_bytes)[:-1]]).astype(np.int64)
    for k in range(int(n_bytes.max(initial=0))):
        live = n_bytes > k
        byte = (v[live] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (n_bytes[live] > k + 1).astype(np.uint64) << np.uint64(7)
        out[at[live] + k] = (byte | more).astype(np.uint8)
    return out.tobytes()


def read_varints(raw: bytes) -> np.ndarray:
    """The inverse of `varints` (what the page's script does)."""
    out, value, shift = [], 0, 0
    for b in raw:
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            out.append(value)
            value, shift = 0, 0
    return np.array(out, dtype=np.int64)


def round4(x: float) -> float:
    """4 significant digits (what the page shows)."""
    return float(f"{x:.4g}")


def feature_scale(examples: list[dict[str, Any]]) -> float:
    """The largest activation on any token the feature's pages show, rounded up to 4 significant
    digits (1.0 when there is none)."""
    top = 0.0
    for ex in examples:
        for v in ex.get("acts") or ():
            if v is not None and v == v and v > top:
                top = float(v)
        top = max(top, float(ex["activation"]))
    if top <= 0:
        return 1.0
    step = 10.0 ** (math.floor(math.log10(top)) - 3)
    return round4(math.ceil(top / step * (1 - 1e-12)) * step)


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
        if first < 0:
            raise ValueError(f"the window of store row {row} starts before row 0 (token_index {ex.get('token_index')})")
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
        self.ids = np.array(ids, dtype=np.int64)

    def locate(self, key: tuple[int, int] | int) -> tuple[int, int]:
        """(offset, length) in the stream of a key from `add` (after `finish`)."""
        if isinstance(key, tuple):
            first, length = key
            return int(np.searchsorted(self._rows, first)), length
        return self._loose_at[key], len(self._loose[key])

    def payload(self) -> dict[str, Any]:
        """`tokens`: the stream (base64 varints); `spans`: flat [gap, length, ...], where gap is the
        span's first store row minus the previous span's end (its first row for the first span),
        and -1 for a window without a store row."""
        flat, end = [], 0
        for first, length in self.spans:
            flat += [-1 if first is None else first - end, length]
            end = end if first is None else first + length
        return {"spans": flat, "tokens": b64(varints(self.ids))}
