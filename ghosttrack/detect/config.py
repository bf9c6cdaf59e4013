"""What `ghosttrack detect` is asked to do: the data, the model and its features, the evaluation
settings (DetectConfig) and where the results go."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ghosttrack.config_fields import ConfigError
from ghosttrack.detect.pipeline import DetectConfig
from ghosttrack.run_config import check_local_output


@dataclass
class DetectRun(DetectConfig):
    """`ghosttrack detect`: the evaluation settings, plus its inputs and outputs."""

    data: str | None = field(default=None, metadata={"required": True})
    """Examples: a .jsonl/.csv/.parquet file with question, answer, label (1 correct, 0 false) and optional
    group columns, or sae-probes:truthqa_tf / sae-probes:sciq_tf."""
    test_data: str | None = None
    """A second source: train on --data, test on this (transfer)."""
    model: str | None = field(default=None, metadata={"required": True})
    """HF hub id, local model directory, or a .gguf file."""
    gguf: str | None = None
    """GGUF file name inside --model's directory."""
    sae_path: str | None = field(default=None, metadata={"flag": "--sae", "param": "sae_path"})
    """SAE folder, or a folder of layer_<i>/ SAE folders (the sparse SAE probe; the tracker's layers)."""
    matches: str | None = None
    """Edge lists from `ghosttrack match` (the tracker's statistics, method 'tracks')."""
    out: str | None = field(default=None, metadata={"required": True})
    """Output folder: results.json, results.md, cache/ (features per model, data and layers)."""
    cache: str | None = None
    """Feature cache folder, shareable between runs [default: OUT/cache]."""
    probe_layers: list[int] | str | None = "all"
    """Layers the residual probe chooses among (inside the training folds): 0-29, 0,6,11 or all."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for flag, value in (("--out", self.out), ("--cache", self.cache)):
            check_local_output(flag, value)
        for flag, value in (("--sae", self.sae_path), ("--matches", self.matches)):
            if value is not None and not Path(value).is_dir():
                raise ConfigError(f"{flag} {value}: no such folder")
        for flag, value in (("--data", self.data), ("--model", self.model)):
            if value is not None and not str(value).strip():
                raise ConfigError(f"{flag} is empty; pass a file or name")
