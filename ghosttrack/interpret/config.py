"""How one layer is interpreted: the settings of `ghosttrack interpret`'s pass and pages
(InterpretConfig), and what the command adds around them (InterpretRun)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ghosttrack.config_fields import ConfigError, check_fields, skip_positions_setting
from ghosttrack.run_config import DEVICE, DevicePlacement, ModelSource, StoreAccess, check_local_output
from ghosttrack.store.rows import MAX_NORM_RATIO, norm_ratio

FORMATS = ("auto", "json", "jsonl")
SKIP_POSITIONS_HELP = ("Sequence positions left out besides position 0, e.g. 1 or 0,1 (tokens after an attention "
                       "sink that peak many features); 'none' keeps them. Default: the positions the SAE was "
                       "trained without (saved with it), so training, interpretation and evaluation agree.")


@dataclass
class InterpretConfig(DevicePlacement, ModelSource):
    """How one layer is interpreted."""

    top_k: int = field(default=20, metadata={"min": 1})
    """Top-activating examples kept per feature."""
    batch_size: int = field(default=4096, metadata={"min": 1})
    """Rows per encoder call."""
    context_before: int = field(default=12, metadata={"min": 0})
    """Tokens of context shown before the activating token (never crossing into another sequence)."""
    context_after: int = field(default=4, metadata={"min": 0})
    """Tokens of context shown after it."""
    skip_flagged: bool = field(default=True, metadata={"flag": "--keep-flagged", "invert": True,
                                                        "old_flags": {"--include-flagged": "include_flagged"}})
    """Skip position-0 rows (attention sinks), as training does (--keep-flagged scans them too; the
    same flag as train's)."""
    max_norm_ratio: float | None = field(default=MAX_NORM_RATIO, metadata={"min": 0})
    """Skip rows whose norm exceeds this x the layer's median norm (attention sinks), as training does;
    0 or None keeps all."""
    skip_positions: tuple[int, ...] | str | None = None
    """Sequence positions left out besides position 0; None: those the SAE was trained without."""
    dense_threshold: float = field(default=0.1, metadata={"above": 0, "max": 1})
    """A feature active on more than this fraction of rows is listed as dense."""
    quantile_bands: int = field(default=5, metadata={"min": 0})
    """Bands of equal share of each feature's activations shown with examples (0: none)."""
    examples_per_band: int = field(default=3, metadata={"min": 1})
    """Examples shown per quantile band."""
    sample_size: int = field(default=32, metadata={"min": 0, "hidden": True})
    """Activations per feature sampled uniformly during the pass to fill the bands."""
    neighbors: int = field(default=10, metadata={"min": 0})
    """Features with the nearest decoder directions listed per feature (0: none)."""
    model: str | None = None
    """Model directory (safetensors) or .gguf file: adds the tokens each feature promotes and suppresses
    (W_dec through the final norm scale and W_U, read from the files; the model is not run). Absent:
    that section is omitted."""
    logit_tokens: int = field(default=10, metadata={"min": 1, "hidden": True})
    """Promoted and suppressed tokens listed per feature."""
    device: str | None = field(default="cpu", metadata=DEVICE)
    """Device of the encoder pass and the top-k merge (None or auto: cuda if present, else cpu)."""
    output_format: str = field(default="auto", metadata={"flag": "--format", "param": "output_format", "choices": FORMATS})
    """'json' (one list), 'jsonl' (one feature per line), or 'auto': jsonl above `jsonl_above` features."""
    jsonl_above: int = field(default=16_384, metadata={"min": 0, "hidden": True})
    """Dictionaries larger than this are written as JSON Lines with output_format='auto'."""
    html: bool = field(default=True, metadata={"flag": "--no-html", "invert": True})
    """Write the static HTML feature browser next to the JSON (--no-html skips it)."""
    progress: bool = field(default=True, metadata={"hidden": True})
    """Show a tqdm progress bar during the pass."""

    def __post_init__(self) -> None:
        from ghosttrack.precision import resolve_device

        check_fields(self)
        self.device = resolve_device(self.device)
        self.max_norm_ratio = norm_ratio(self.max_norm_ratio)
        if self.skip_positions is not None:
            self.skip_positions = skip_positions_setting(self.skip_positions)
        if self.quantile_bands and self.sample_size < self.quantile_bands:
            raise ConfigError(f"sample_size {self.sample_size} cannot fill {self.quantile_bands} quantile bands; "
                              "raise it (32 fills 5 bands) or pass 0 bands")


@dataclass
class InterpretRun(InterpretConfig, StoreAccess):
    """`ghosttrack interpret`: which SAE(s) over which store, written where."""

    store: str | None = field(default=None, metadata={"required": True})
    """Activation store (ghosttrack extract --out)."""
    sae_path: str | None = field(default=None, metadata={"flag": "--sae", "param": "sae_path", "required": True})
    """SAE folder (cfg.json + sae_weights.safetensors), or a folder of layer_<i>/ SAE folders."""
    layer: int | None = field(default=None, metadata={"min": 0})
    """Store layer to read (default: the SAE's hook_layer)."""
    out: str = "runs/interp"
    """Output folder; each layer goes to OUT/layer_<i>/."""
    device: str | None = field(default=None, metadata=DEVICE)
    """Device for the pass (default: cuda if present, else cpu)."""
    show: str = ""
    """Feature ids to print in the terminal, e.g. 0,17,42."""
    allow_layer_mismatch: bool = False
    """Read --layer (or a store hook) other than the one the SAE was trained on, on purpose."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_local_output("--out", self.out)
        if self.sae_path is not None and not Path(self.sae_path).is_dir():
            raise ConfigError(f"--sae {self.sae_path}: no such folder; pass the folder ghosttrack train wrote")
        self.feature_ids  # noqa: B018 - its syntax, checked before any work

    @property
    def feature_ids(self) -> list[int]:
        try:
            return [int(s) for s in self.show.replace(" ", "").split(",") if s]
        except ValueError:
            raise ConfigError(f"--show '{self.show}' is not a list of feature ids; write e.g. 0,17,42") from None
