"""Stage 1, text: corpus sources (HF streams, local files, MediaWiki dumps) and packing into sequences."""
from ghosttrack.corpus.sources import HFDatasetCorpus, LocalCorpus, TextSource, WikipediaCorpus, open_corpus

__all__ = ["HFDatasetCorpus", "LocalCorpus", "TextSource", "WikipediaCorpus", "open_corpus"]
