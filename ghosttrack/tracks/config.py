"""What `ghosttrack match` and `ghosttrack track` are asked to do (their options, checked here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ghosttrack.config_fields import ConfigError, check_fields
from ghosttrack.run_config import DEVICE, DevicePlacement, ModelDtype, ModelSource, StoreAccess, check_local_output

DEFAULT_MIN_SCORE = 0.3
"""Edges scoring below this link nothing (the tracker's default)."""


def _check_folder(flag: str, value: str | None) -> None:
    if value is not None and not Path(value).is_dir():
        raise ConfigError(f"{flag} {value}: no such folder")


@dataclass
class MatchRun(DevicePlacement, StoreAccess):
    """`ghosttrack match`: the SAEs of consecutive layers, matched latent to latent."""

    sae_dir: str | None = field(default=None, metadata={"flag": "--sae", "param": "sae_dir", "required": True})
    """Folder of per-layer SAE folders layer_<i>/ (the --out of ghosttrack train)."""
    out: str | None = field(default=None, metadata={"required": True})
    """Output folder: layer_<i>_to_<j>.parquet per consecutive pair, and summary.json."""
    store: str | None = None
    """Activation store the SAEs were trained on: score by co-activation over its held-out rows."""
    top: int = field(default=8, metadata={"min": 1})
    """Candidates kept per latent."""
    device: str | None = field(default=None, metadata=DEVICE)
    """Device of the blocked computation (default: cuda if present, else cpu)."""
    src_block: int = field(default=2048, metadata={"min": 1})
    """Source latents per tile of the data-free matching."""
    dst_block: int = field(default=8192, metadata={"min": 1})
    """Candidate latents per tile of the data-free matching."""

    def __post_init__(self) -> None:
        check_fields(self)
        _check_folder("--sae", self.sae_dir)
        check_local_output("--out", self.out)


@dataclass
class TrackRun(ModelDtype, DevicePlacement, ModelSource):
    """`ghosttrack track`: one text through the model, its latents linked from layer to layer."""

    model: str | None = field(default=None, metadata={"required": True})
    """HF hub id, local model directory, or a .gguf file (the SAEs' model)."""
    gguf: str | None = None
    """GGUF file name inside --model's directory."""
    sae_dir: str | None = field(default=None, metadata={"flag": "--sae", "param": "sae_dir", "required": True})
    """Folder of per-layer SAE folders layer_<i>/."""
    matches: str | None = field(default=None, metadata={"required": True})
    """The --out folder of ghosttrack match."""
    text: str | None = None
    """Text to track."""
    input_file: str | None = field(default=None, metadata={"flag": "--input", "param": "input_file"})
    """File whose text to track (instead of --text)."""
    out: str | None = field(default=None, metadata={"required": True})
    """Output folder: tracks.json, token_stats.parquet, index.html."""
    interp: str | None = None
    """The --out folder of ghosttrack interpret: latents link to their feature-browser pages."""
    min_score: float = field(default=DEFAULT_MIN_SCORE, metadata={"min": -1, "max": 1})
    """Edges scoring below this link nothing."""
    min_activation: float = field(default=0.0, metadata={"min": 0})
    """Latents at or below this activation count as silent."""
    shown: int = field(default=8, metadata={"min": 1})
    """Strongest tracks drawn per token in the HTML view."""

    def __post_init__(self) -> None:
        check_fields(self)
        if (self.text is None) == (self.input_file is None):
            raise ConfigError("pass the text with exactly one of --text \"...\" or --input FILE")
        _check_folder("--sae", self.sae_dir)
        _check_folder("--matches", self.matches)
        check_local_output("--out", self.out)

    def read_text(self) -> str:
        """The text to track (from --text or --input), refused when empty or unreadable."""
        text = self.text
        if self.input_file is not None:
            try:
                text = Path(self.input_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read --input {self.input_file} ({exc}); pass a UTF-8 text file") from None
        if not text.strip():
            raise ConfigError("the text to track is empty; pass some text")
        return text
