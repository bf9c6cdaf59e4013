"""Which rows of a layer count: one rule for training, interpretation, evaluation and matching.

Rows are skipped, never removed from the store: position 0 (the attention sink, whose norm dwarfs
the rest) unless kept on purpose, the positions in ``skip_positions`` (e.g. 1, the token after the
sink, when it peaks many features), and outliers whose L2 norm exceeds ``max_norm_ratio`` times
the median norm of the training rows. An SAE records the rule it was trained with (ratio, median,
positions) and the later stages read it back, so that they skip exactly the rows training skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_NORM_RATIO = 3.0
"""The default outlier rule: attention sinks (EOS separators and the tokens after them) have norms
60-130x the median; ordinary rows stay well under 3x. Training, interpretation and evaluation share it."""


def parse_positions(value: str | list[int] | tuple[int, ...] | None) -> tuple[int, ...]:
    """'0,1' / [0, 1] / '' / 'none' / None -> sorted unique positions (0, 1) / (); ValueError otherwise.
    The one parser of every `--skip-positions` and of the positions saved with an SAE."""
    if value is None or isinstance(value, (list, tuple)):
        items = list(value or ())
    else:
        items = [p for p in str(value).replace(" ", "").strip("[]()").split(",") if p and p.lower() != "none"]
    try:
        positions = tuple(sorted({int(p) for p in items}))
    except (TypeError, ValueError):
        raise ValueError(f"skip_positions must be positions like 1 or 0,1, got {value!r}") from None
    if any(p < 0 for p in positions):
        raise ValueError(f"skip_positions must be >= 0, got {value!r}")
    return positions


def norm_ratio(value: float | None) -> float | None:
    """A max_norm_ratio as the rule holds it: 0 or None keeps every row (None); ValueError below 0."""
    if value is None or value == 0:
        return None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"max_norm_ratio must be a finite number >= 0 (0: keep every row), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RowRule:
    """Which rows count: position 0 (unless ``skip_flagged`` is off), ``skip_positions``, and rows
    whose norm exceeds ``max_norm_ratio`` x ``median_norm`` (None: the median of the rows at hand)."""

    skip_flagged: bool = True
    skip_positions: tuple[int, ...] = ()
    max_norm_ratio: float | None = MAX_NORM_RATIO
    median_norm: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip_positions", parse_positions(self.skip_positions))
        object.__setattr__(self, "max_norm_ratio", norm_ratio(self.max_norm_ratio))

    @classmethod
    def from_sae_metadata(cls, meta: dict[str, Any]) -> "RowRule | None":
        """The rule an SAE was trained with, from its cfg.json metadata (the trainer saves the ratio,
        its median over the training rows and the positions); None when the SAE does not record it."""
        ghosttrack = (meta or {}).get("ghosttrack") or {}
        skipped = ghosttrack.get("skipped") or {}
        trainer = ghosttrack.get("trainer_config") or {}
        if "max_norm_ratio" not in skipped or not skipped.get("median_norm"):
            return None
        return cls(skip_flagged=bool(trainer.get("skip_flagged", True)),
                   skip_positions=parse_positions(trainer.get("skip_positions")),
                   max_norm_ratio=skipped["max_norm_ratio"] or None, median_norm=float(skipped["median_norm"]))
