"""Which text a command reads: the corpus settings `extract`, `run` and `evaluate` share."""
from __future__ import annotations

from dataclasses import dataclass, field

from ghosttrack.config_fields import ConfigError, check_fields


@dataclass
class CorpusConfig:
    """A corpus: a named source and how its documents are filtered."""

    corpus: str = "wikipedia"
    """'wikipedia' (HF wikimedia/wikipedia), another HF dataset id[:config], or a local file/folder: .txt,
    .jsonl, .parquet, MediaWiki .xml/.xml.bz2 dump."""
    wiki_language: str = "en"
    """Wikipedia language (with --corpus wikipedia)."""
    wiki_date: str = "20231101"
    """Wikipedia dump date (with --corpus wikipedia)."""
    text_field: str = "text"
    """Text field of .jsonl/.parquet/HF rows."""
    min_chars: int = field(default=200, metadata={"min": 0})
    """Skip documents shorter than this."""

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.corpus.strip():
            raise ConfigError("--corpus is empty; pass wikipedia, an HF dataset id or a local file")

    def open(self):
        """The text source these settings name (ghosttrack.corpus.sources.open_corpus)."""
        from ghosttrack.corpus.sources import open_corpus

        return open_corpus(self.corpus, min_chars=self.min_chars, wiki_language=self.wiki_language,
                           wiki_date=self.wiki_date, text_field=self.text_field)
