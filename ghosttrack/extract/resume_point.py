"""Where in the corpus an interrupted extraction resumes, so that `--resume` does not tokenize the
committed prefix again (hours of text for a big store) just to skip it.

After each commit the writer thread records, beside the store's chunks, the committed row count
and the corpus position (document, token offset) of the first sequence not yet committed. A
resume that finds a record matching the store's commit, sequence length and corpus packs from
that position; any other record (stale after a kill, another corpus) is ignored and the prefix is
tokenized again, which gives the same sequences, only slower. A complete store drops the record:
it is a resume aid, not part of the store (whose bytes do not depend on how it was written).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ghosttrack.corpus.packing import PackPosition

RESUME_FILE = "corpus_position.json"
PARTIAL_SUFFIX = ".partial"
"""Temporary files of the store end so: a resume removes leftovers of a killed write."""


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def write_resume_point(store: Path, committed_tokens: int, seq_len: int, corpus: dict,
                       position: PackPosition) -> None:
    """Record (atomically: temporary file, then rename) where the next uncommitted sequence starts."""
    doc = {"committed_tokens": int(committed_tokens), "seq_len": int(seq_len), "corpus": corpus,
           "doc": int(position.doc), "offset": int(position.offset)}
    final = Path(store) / RESUME_FILE
    tmp = final.with_name(final.name + PARTIAL_SUFFIX)
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


def read_resume_point(store: Path, committed_tokens: int, seq_len: int, corpus: dict) -> PackPosition | None:
    """The recorded position when it belongs to exactly this commit, sequence length and corpus; else None."""
    try:
        doc = json.loads((Path(store) / RESUME_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    if (doc.get("committed_tokens"), doc.get("seq_len")) != (committed_tokens, seq_len) \
            or doc.get("corpus") != _canonical(corpus):
        return None
    if not (isinstance(doc.get("doc"), int) and isinstance(doc.get("offset"), int)
            and doc["doc"] >= 0 and doc["offset"] >= 0):
        return None
    return PackPosition(doc["doc"], doc["offset"])


def drop_resume_point(store: Path) -> None:
    """Remove the record (the store is complete: nothing is left to resume)."""
    (Path(store) / RESUME_FILE).unlink(missing_ok=True)
