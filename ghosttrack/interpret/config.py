"""How one layer is interpreted: the settings of `ghosttrack interpret`'s pass and pages."""
from __future__ import annotations

from dataclasses import dataclass

from ghosttrack.errors import GhostTrackError
from ghosttrack.store.stats import MAX_NORM_RATIO

FORMATS = ("auto", "json", "jsonl")

@dataclass
class InterpretConfig:
    """How one layer is interpreted."""

    top_k: int = 20
    """Top-activating examples kept per feature."""
    batch_size: int = 4096
    """Rows per encoder call."""
    context_before: int = 12
    """Tokens of context shown before the activating token (never crossing into another sequence)."""
    context_after: int = 4
    """Tokens of context shown after it."""
    skip_flagged: bool = True
    """Skip rows flagged by the store (position 0: attention sinks), as training does."""
    max_norm_ratio: float | None = MAX_NORM_RATIO
    """Skip rows whose norm exceeds this x the layer's median norm (the loader's rule); None keeps all."""
    skip_positions: tuple[int, ...] | None = None
    """Sequence positions left out besides position 0; None: those the SAE was trained without."""
    dense_threshold: float = 0.1
    """A feature active on more than this fraction of rows is listed as dense."""
    quantile_bands: int = 5
    """Bands of equal share of each feature's activations shown with examples (0: none)."""
    examples_per_band: int = 3
    """Examples shown per quantile band."""
    sample_size: int = 32
    """Activations per feature sampled uniformly during the pass to fill the bands."""
    neighbors: int = 10
    """Features with the nearest decoder directions listed per feature (0: none)."""
    model: str | None = None
    """Model directory or .gguf file whose unembedding gives the promoted/suppressed tokens (None: omitted)."""
    gguf: str | None = None
    """GGUF file name inside `model`'s directory."""
    logit_tokens: int = 10
    """Promoted and suppressed tokens listed per feature."""
    device: str = "cpu"
    """Device of the encoder pass and the top-k merge."""
    output_format: str = "auto"
    """'json' (one list), 'jsonl' (one feature per line), or 'auto': jsonl above `jsonl_above` features."""
    jsonl_above: int = 16_384
    """Dictionaries larger than this are written as JSON Lines with output_format='auto'."""
    html: bool = True
    """Write the static HTML feature browser next to the JSON."""
    progress: bool = True
    """Show a tqdm progress bar during the pass."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise GhostTrackError(f"top_k must be >= 1, got {self.top_k}; pass --top-k 1 or more")
        if self.batch_size < 1 or self.context_before < 0 or self.context_after < 0:
            raise GhostTrackError("batch size must be >= 1 and context windows >= 0")
        if self.max_norm_ratio is not None and self.max_norm_ratio <= 0:
            raise GhostTrackError(f"max_norm_ratio must be > 0 (or None to keep all rows), got {self.max_norm_ratio}")
        if not 0 < self.dense_threshold <= 1:
            raise GhostTrackError(f"dense_threshold must be in (0, 1], got {self.dense_threshold}")
        if self.quantile_bands < 0 or self.examples_per_band < 1 or self.sample_size < 0 or self.neighbors < 0:
            raise GhostTrackError("quantile_bands, sample_size and neighbors must be >= 0, examples_per_band >= 1")
        if self.quantile_bands and self.sample_size < self.quantile_bands:
            raise GhostTrackError(f"sample_size {self.sample_size} cannot fill {self.quantile_bands} quantile bands; "
                                  "raise it (32 fills 5 bands) or pass 0 bands")
        if self.skip_positions is not None:
            self.skip_positions = tuple(sorted({int(p) for p in self.skip_positions}))
            if any(p < 0 for p in self.skip_positions):
                raise GhostTrackError(f"skip_positions must be >= 0, got {self.skip_positions}")
        if self.output_format not in FORMATS:
            raise GhostTrackError(f"unknown output format '{self.output_format}'; choose one of {', '.join(FORMATS)}")
