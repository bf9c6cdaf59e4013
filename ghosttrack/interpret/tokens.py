"""Token ids back to text for interpretation: the store's own tokenizer, one decode per distinct id."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def load_store_tokenizer(store):
    """The tokenizer saved beside the store by the extractor, else the one named in its attrs, else None."""
    from transformers import AutoTokenizer

    from ghosttrack.store.location import as_location, download_folder, is_remote

    saved = as_location(store.path) / "tokenizer"
    candidates = [saved] if saved.is_dir() else []
    if store.attrs.get("tokenizer"):
        candidates.append(str(store.attrs["tokenizer"]))
    for source in candidates:
        try:
            if is_remote(source):  # transformers reads local files: copy the few small ones
                with tempfile.TemporaryDirectory() as tmp:
                    download_folder(source, Path(tmp))
                    return AutoTokenizer.from_pretrained(tmp)
            return AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError):
            continue
    return None


class TokenDecoder:
    """Token ids -> text, one decode per distinct id; without a tokenizer ids show as `<id>`."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._pieces: dict[int, str] = {}

    def pieces(self, ids: np.ndarray) -> list[str]:
        """One string per id (byte-level pieces of a split character show as U+FFFD)."""
        try:
            return [self._pieces[int(i)] for i in ids]
        except KeyError:
            pass
        missing = [i for i in {int(i) for i in ids} if i not in self._pieces]
        if missing:
            if self.tokenizer is None:
                decoded = [f"<{i}>" for i in missing]
            else:
                decoded = self.tokenizer.batch_decode([[i] for i in missing], clean_up_tokenization_spaces=False)
            self._pieces.update(zip(missing, decoded))
        return [self._pieces[int(i)] for i in ids]

    def texts(self, windows: list[np.ndarray]) -> list[str]:
        """Each window of ids decoded as one string (a character split across tokens decodes whole)."""
        if self.tokenizer is None:
            return ["".join(self.pieces(ids)) for ids in windows]
        return self.tokenizer.batch_decode([w.tolist() for w in windows], clean_up_tokenization_spaces=False)
