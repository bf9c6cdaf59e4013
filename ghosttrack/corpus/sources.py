"""Text sources: documents from Wikipedia, another HF dataset, or local files, filtered alike.

Every source has the same small interface (`get_texts`, `get_text_batches`, `describe`);
`open_corpus(spec)` picks one from a `--corpus` string. Documents are stripped and those
shorter than `min_chars` are dropped; a source that yields no document at all is an error
the user can fix. Each call to `get_texts` starts again from the first document, and the
order is fixed, so the packed token stream is reproducible and an extraction can resume.
"""

from __future__ import annotations

import bz2
import codecs
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ghosttrack.errors import GhostTrackError
from ghosttrack.corpus.mediawiki import STRIPPER_VERSION, iter_dump_texts

APPROX_CHARS_PER_TOKEN = 4
"""`max_tokens` is a budget on estimated tokens, ceil(chars / 4) per document (the usual
rule of thumb for English BPE vocabularies): the corpus does not know the model's tokenizer.
The exact token count is the packer's business."""

TEXT_SUFFIXES = (".txt", ".text", ".cor")
SUPPORTED = ".txt/.text/.cor (or no extension), .jsonl, .parquet, MediaWiki .xml or .bz2 dumps"
_HF_ID = re.compile(r"[\w.-]+/[\w.-]+(?::[\w.-]+)?")
_PATH_HINT = re.compile(r"^(?:/|\./|\.\./|~)|\.(?:txt|text|cor|jsonl|parquet|xml|bz2)$", re.I)
_SNIFF_BYTES = 1 << 16


def _one_line(exc: BaseException) -> str:
    """An exception as a short single line, for one-line error messages."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class TextSource(ABC):
    """Documents from somewhere, stripped and filtered by length, in a fixed order."""

    def __init__(self, *, min_chars: int = 200, max_tokens: int | None = None):
        if min_chars < 0:
            raise GhostTrackError(f"min_chars must be >= 0, got {min_chars}; pass --min-chars 0 or more")
        if max_tokens is not None and max_tokens <= 0:
            raise GhostTrackError(f"max_tokens must be positive, got {max_tokens}; omit it for no limit")
        self.min_chars = min_chars
        self.max_tokens = max_tokens

    @property
    @abstractmethod
    def name(self) -> str:
        """What the user passed, for messages."""

    @abstractmethod
    def _raw_texts(self) -> Iterator[str]:
        """Every document of the source, unfiltered, in order."""

    @abstractmethod
    def _spec(self) -> dict[str, Any]:
        """What identifies the source (JSON); `describe` adds the filter settings."""

    def load(self) -> TextSource:
        """Open the source (sources that need no opening do nothing); returns self."""
        return self

    def get_texts(self, max_texts: int | None = None) -> Iterator[str]:
        """Filtered documents, from the first one on each call; at most `max_texts`, and
        none after the estimated `max_tokens` budget is spent."""
        if max_texts is not None and max_texts <= 0:
            return
        count = tokens = 0
        for raw in self._raw_texts():
            doc = raw.strip()
            if not doc or len(doc) < self.min_chars:
                continue
            yield doc
            count += 1
            tokens += -(-len(doc) // APPROX_CHARS_PER_TOKEN)
            if max_texts is not None and count >= max_texts:
                return
            if self.max_tokens is not None and tokens >= self.max_tokens:
                return
        if count == 0:
            raise GhostTrackError(
                f"corpus {self.name} has no document of at least {self.min_chars} characters;"
                " lower --min-chars or pass a bigger corpus"
            )

    def get_text_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[list[str]]:
        """`get_texts` in lists of `batch_size` documents (the last one may be shorter)."""
        if batch_size <= 0:
            raise GhostTrackError(f"batch_size must be positive, got {batch_size}")
        if max_batches is not None and max_batches <= 0:
            return
        batch: list[str] = []
        done = 0
        for doc in self.get_texts():
            batch.append(doc)
            if len(batch) == batch_size:
                yield batch
                batch, done = [], done + 1
                if max_batches is not None and done >= max_batches:
                    return
        if batch:
            yield batch

    def describe(self) -> dict[str, Any]:
        """The JSON spec stored in the activation store's attributes: same spec, same documents."""
        return {**self._spec(), "min_chars": self.min_chars, "max_tokens": self.max_tokens}


class HFDatasetCorpus(TextSource):
    """A Hugging Face dataset, streamed (nothing is downloaded up front), one field as text."""

    def __init__(self, dataset: str, config: str | None = None, *, split: str = "train",
                 text_field: str = "text", min_chars: int = 200, max_tokens: int | None = None,
                 cache_dir: str | Path | None = None):
        super().__init__(min_chars=min_chars, max_tokens=max_tokens)
        self.dataset, self.config, self.split = dataset, config, split
        self.text_field = text_field
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self._stream = None

    @property
    def name(self) -> str:
        return self.dataset if self.config is None else f"{self.dataset}:{self.config}"

    def load(self) -> HFDatasetCorpus:
        """Open the stream now, so that an unreachable hub fails here and not mid-run."""
        if self._stream is None:
            import datasets  # slow to import: only when a hub dataset is used

            try:
                self._stream = datasets.load_dataset(
                    self.dataset, self.config, split=self.split, streaming=True, cache_dir=self.cache_dir
                )
            except Exception as exc:  # any failure here means the same thing to the user
                raise GhostTrackError(
                    f"cannot open HF dataset '{self.name}' ({_one_line(exc)}); offline or unreachable:"
                    " pass a local file or folder with --corpus, e.g. a Wikipedia XML dump (*-pages-articles*.xml.bz2)"
                ) from exc
        return self

    def _raw_texts(self) -> Iterator[str]:
        rows = iter(self.load()._stream)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as exc:
                raise GhostTrackError(
                    f"reading HF dataset '{self.name}' failed ({_one_line(exc)}); check the network,"
                    " or pass a local file or folder with --corpus, e.g. a Wikipedia XML dump"
                ) from exc
            if self.text_field not in row:
                raise GhostTrackError(
                    f"HF dataset '{self.name}' has no field '{self.text_field}' (fields: {', '.join(row)});"
                    " pass --text-field NAME"
                )
            value = row[self.text_field]
            if isinstance(value, str):
                yield value

    def _spec(self) -> dict[str, Any]:
        return {"source": "huggingface", "dataset": self.dataset, "config": self.config,
                "split": self.split, "text_field": self.text_field}


class WikipediaCorpus(HFDatasetCorpus):
    """Wikipedia from the hub (`wikimedia/wikipedia`, config "<date>.<language>"), streamed.

    Offline, pass a dump file to `open_corpus` instead (a `*-pages-articles*.xml.bz2`).
    """

    DATASET = "wikimedia/wikipedia"

    def __init__(self, language: str = "en", date: str = "20231101", max_tokens: int | None = 100_000_000,
                 min_chars: int = 200, cache_dir: str | Path | None = None):
        super().__init__(self.DATASET, f"{date}.{language}", min_chars=min_chars,
                         max_tokens=max_tokens, cache_dir=cache_dir)
        self.language, self.date = language, date


def _sniff_text(path: Path) -> None:
    """Refuse binary files: NUL bytes or invalid UTF-8 in the first 64 KiB."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    nul = head.find(b"\x00")
    problem = f"NUL byte at byte {nul}" if nul >= 0 else None
    if problem is None:
        try:  # final=False: a multi-byte character cut at the 64 KiB boundary is fine
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError as exc:
            problem = f"{exc.reason} at byte {exc.start}"
    if problem is not None:
        raise GhostTrackError(
            f"{path} is not a UTF-8 text file ({problem}); --corpus takes {SUPPORTED}, or a folder of them"
        )


def _is_mediawiki(path: Path) -> bool:
    """Whether a file (.bz2: decompressed) starts like a MediaWiki XML dump."""
    opener = bz2.open if path.name.lower().endswith(".bz2") else open
    try:
        with opener(path, "rb") as f:
            return b"<mediawiki" in f.read(_SNIFF_BYTES)
    except (OSError, EOFError):
        return False


def _file_format(path: Path) -> str:
    """'text' | 'jsonl' | 'parquet' | 'mediawiki', or a GhostTrackError for anything else."""
    lower = path.name.lower()
    # Wikimedia names dump parts "...-pages-articles1.xml-p10p30302.bz2": sniff any .bz2.
    if lower.endswith((".xml", ".bz2")) and _is_mediawiki(path):
        return "mediawiki"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".jsonl"):
        _sniff_text(path)
        return "jsonl"
    if path.suffix == "" or lower.endswith(TEXT_SUFFIXES):
        _sniff_text(path)
        return "text"
    raise GhostTrackError(f"unsupported corpus file {path}; --corpus takes {SUPPORTED}, or a folder of them")


def _utf8_lines(path: Path) -> Iterator[str]:
    """Lines without their line ending; a bad byte anywhere is a one-line error."""
    try:
        with open(path, encoding="utf-8-sig", newline=None) as f:
            for line in f:
                yield line.rstrip("\n")
    except UnicodeDecodeError as exc:
        raise GhostTrackError(f"{path} is not UTF-8 text ({exc.reason}); convert it to UTF-8") from None


def _has_paragraph_break(path: Path) -> bool:
    """Whether a blank line separates two non-blank lines (one pass, stops at the first)."""
    seen_text = blank_after_text = False
    for line in _utf8_lines(path):
        if not line.strip():
            blank_after_text = seen_text
        elif blank_after_text:
            return True
        else:
            seen_text = True
    return False


def _read_text(path: Path, text_field: str) -> Iterator[str]:
    """Documents separated by blank lines; without any blank line, one document per line."""
    if not _has_paragraph_break(path):
        yield from _utf8_lines(path)
        return
    paragraph: list[str] = []
    for line in _utf8_lines(path):
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    """One JSON object per line, its `text_field` string is the document (null: skipped)."""
    for lineno, line in enumerate(_utf8_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GhostTrackError(f"line {lineno} of {path} is not valid JSON ({exc.msg}); fix or remove it") from None
        if not isinstance(row, dict) or text_field not in row:
            raise GhostTrackError(f"line {lineno} of {path} has no field '{text_field}'; pass --text-field NAME")
        value = row[text_field]
        if value is None:
            continue
        if not isinstance(value, str):
            raise GhostTrackError(
                f"field '{text_field}' on line {lineno} of {path} is {type(value).__name__}, not text;"
                " pass --text-field NAME"
            )
        yield value


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    """The `text_field` column, read in record batches (nulls skipped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise GhostTrackError(f"{path} is not a readable parquet file ({_one_line(exc)}); re-export it") from None
    schema = table.schema_arrow
    if text_field not in schema.names:
        raise GhostTrackError(
            f"{path} has no column '{text_field}' (columns: {', '.join(schema.names)}); pass --text-field NAME"
        )
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise GhostTrackError(f"column '{text_field}' of {path} is {kind}, not text; pass --text-field NAME")
    for batch in table.iter_batches(batch_size=1024, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield value


def _read_mediawiki(path: Path, text_field: str) -> Iterator[str]:
    return iter_dump_texts(path)


_READERS = {"text": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet, "mediawiki": _read_mediawiki}


class LocalCorpus(TextSource):
    """A local file, or a folder of files (recursively, in sorted path order, hidden ones
    skipped): plain text, JSON lines, parquet or MediaWiki XML dumps, mixed freely."""

    def __init__(self, path: str | Path, *, text_field: str = "text", min_chars: int = 200,
                 max_tokens: int | None = None):
        super().__init__(min_chars=min_chars, max_tokens=max_tokens)
        self.path = Path(path).expanduser().resolve()
        self.text_field = text_field
        if not self.path.exists():
            raise GhostTrackError(f"no such corpus file or folder: {self.path}; check the --corpus path")
        if self.path.is_dir():
            found = [p for p in self.path.rglob("*")
                     if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.path).parts)]
            found.sort(key=lambda p: p.relative_to(self.path).parts)
            if not found:
                raise GhostTrackError(f"folder {self.path} holds no corpus file; --corpus takes {SUPPORTED}")
        else:
            found = [self.path]
        # Checked up front: a bad file deep in a folder fails now, not hours into a run.
        self.files = [(p, _file_format(p)) for p in found]

    @property
    def name(self) -> str:
        return str(self.path)

    def _raw_texts(self) -> Iterator[str]:
        for path, fmt in self.files:
            yield from _READERS[fmt](path, self.text_field)

    def _spec(self) -> dict[str, Any]:
        formats = sorted({fmt for _, fmt in self.files})
        spec: dict[str, Any] = {
            "source": "local", "path": str(self.path), "formats": formats, "files": len(self.files),
            # Size as a cheap fingerprint: resuming onto an edited corpus is caught.
            "bytes": sum(p.stat().st_size for p, _ in self.files),
        }
        if {"jsonl", "parquet"} & set(formats):
            spec["text_field"] = self.text_field
        if "mediawiki" in formats:
            spec["stripper_version"] = STRIPPER_VERSION
        return spec


def open_corpus(spec: str, *, min_chars: int = 200, wiki_language: str = "en", wiki_date: str = "20231101",
                text_field: str = "text", max_tokens: int | None = None) -> TextSource:
    """A `--corpus` string to a source: "wikipedia" -> WikipediaCorpus (hub); an existing
    file or folder -> LocalCorpus; "owner/name" or "owner/name:config" -> HFDatasetCorpus."""
    if spec == "wikipedia":
        return WikipediaCorpus(language=wiki_language, date=wiki_date, max_tokens=max_tokens, min_chars=min_chars)
    path = Path(spec).expanduser()
    if path.exists():
        return LocalCorpus(path, text_field=text_field, min_chars=min_chars, max_tokens=max_tokens)
    if _HF_ID.fullmatch(spec) and not _PATH_HINT.search(spec):
        dataset, _, config = spec.partition(":")
        return HFDatasetCorpus(dataset, config or None, text_field=text_field, min_chars=min_chars,
                               max_tokens=max_tokens)
    raise GhostTrackError(
        f"--corpus {spec}: no such file or folder, and not 'wikipedia' or a HF dataset id"
        " (owner/name or owner/name:config); check the path"
    )
