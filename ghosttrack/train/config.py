"""How an SAE is trained: one dataclass, saved in every checkpoint and compared on --resume."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ghosttrack.train.schedule import SCHEDULES
from ghosttrack.store.stats import MAX_NORM_RATIO

DTYPES = ("auto", "float32", "bfloat16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16"}


@dataclass
class TrainerConfig:
    """Optimisation, schedule, data and bookkeeping settings of one SAE training run."""

    lr: float = 1e-3
    """Peak Adam learning rate."""
    epochs: float = 1.0
    """Passes over the layer's training rows (fractions allowed: 2.5 stops half-way through the third)."""
    batch_size: int = 4096
    """Rows per optimisation step and process (W data-parallel processes train like one with W x this)."""
    lr_schedule: str = field(default="constant-decay", metadata={"choices": SCHEDULES})
    """After the warm-up: constant-decay (constant, then a linear decay over the last decay_fraction of
    the steps) or cosine (a cosine decay over all of them)."""
    warmup_fraction: float = field(default=0.02, metadata={"flag": "--warmup"})
    """Share of the steps with a linear learning-rate warm-up from 0."""
    decay_fraction: float = 0.2
    """constant-decay: share of the steps, at the end, over which the rate falls linearly to lr * min_lr_ratio."""
    min_lr_ratio: float = 0.0
    """The decay ends at lr * min_lr_ratio."""
    sparsity_warmup_fraction: float = field(default=0.05, metadata={"flag": "--sparsity-warmup"})
    """Share of the steps over which the sparsity / AuxK coefficient ramps up linearly from 0."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    pre_encoder_bias: bool = False
    """Train with the encoder seeing x - b_dec (OpenAI's TopK SAEs, sparsify); folded into b_enc on save."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    dtype: str = field(default="auto", metadata={"choices": DTYPES, "aliases": DTYPE_ALIASES})
    """Compute dtype: float32, or bfloat16 autocast (weights and optimizer state stay float32); auto:
    bfloat16 on a GPU that supports it, float32 on the CPU (resolved here, so checkpoints hold the choice)."""
    device: str = "auto"
    """auto (what accelerate picks: cuda when present), cpu, cuda or cuda:N."""
    seed: int = 0
    """Seeds the loader's split and order (the same held-out tokens at every layer) and, mixed with the
    layer (`layer_seed`), the SAE's initialisation: each layer's SAE starts from its own random
    dictionary, so matches between layers cannot find a shared starting point."""
    fused: bool = False
    """Use the fused Triton kernel (relu / jumprelu) instead of the PyTorch reference path."""
    log_every: int = 20
    """Steps between progress updates / history entries (the only host syncs of the loop)."""
    checkpoint_every: int = 500
    """Steps between resumable checkpoints (trainer_state.pt)."""
    dead_window_tokens: int = 1_000_000
    """A latent that fired in none of the last this-many training tokens counts as dead."""
    dense_threshold: float = 0.1
    """A latent firing on more than this fraction of validation rows counts as dense."""
    scale_rows: int = 65_536
    """Training rows used (once, before step 0) to estimate the input scale and the data mean."""
    val_fraction: float = 0.05
    """Share of the store's chunks held out for validation (split by chunk)."""
    buffer_batches: int = 8
    """The loader mixes rows in a buffer of this many batches (>= 8)."""
    skip_flagged: bool = field(default=True, metadata={"flag": "--keep-flagged", "invert": True})
    """Skip position-0 rows (attention sinks) in training and metrics (--keep-flagged trains on them too)."""
    max_norm_ratio: float | None = MAX_NORM_RATIO
    """Skip rows whose norm exceeds this multiple of the median norm of the training rows (attention
    sinks); 0 or None keeps all. Skipped rows are counted in history.json, never removed from the store."""
    skip_positions: str = ""
    """Sequence positions skipped besides position 0, e.g. 1 or 0,1 (a token after the sink that is the top
    example of many features: ghosttrack interpret reports it). Saved with the SAE; interpret and
    evaluate apply the same rule by default."""
    device_resident: str = field(default="auto", metadata={"choices": ("auto", "yes", "no")})
    """Hold the whole layer on the device (yes / no / auto: on CUDA when it fits in half the free
    memory, on the CPU when it fits in a quarter of the free RAM)."""

    def __post_init__(self) -> None:
        self.dtype = DTYPE_ALIASES.get(self.dtype, self.dtype)
        if self.dtype == "auto":
            from ghosttrack.precision import resolve_dtype

            self.dtype = DTYPE_ALIASES[resolve_dtype("auto", self.device)[0]]
        if self.max_norm_ratio == 0:
            self.max_norm_ratio = None  # the command line's "0 keeps every row"
        self.skip_positions = ",".join(map(str, parse_positions(self.skip_positions)))
        if self.lr <= 0 or self.epochs <= 0 or self.batch_size < 1:
            raise ValueError(f"lr, epochs and batch_size must be > 0, got {self.lr}, {self.epochs}, {self.batch_size}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        for name in ("warmup_fraction", "decay_fraction", "sparsity_warmup_fraction", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError(f"log_every and checkpoint_every must be >= 1, "
                             f"got {self.log_every}, {self.checkpoint_every}")
        if self.dead_window_tokens < 1 or self.scale_rows < 1:
            raise ValueError("dead_window_tokens and scale_rows must be >= 1")
        # Checkpoints fall on log boundaries, where the loop has synced and checked the loss.
        self.checkpoint_every = -(-self.checkpoint_every // self.log_every) * self.log_every

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainerConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def parse_positions(value: str | list[int] | tuple[int, ...] | None) -> tuple[int, ...]:
    """'0,1' / [0, 1] / '' / None -> sorted unique positions (0, 1) / () ; ValueError for anything else."""
    if value is None or isinstance(value, (list, tuple)):
        items = list(value or ())
    else:
        items = [p for p in str(value).replace(" ", "").strip("[]()").split(",") if p and p.lower() != "none"]
    try:
        positions = tuple(sorted({int(p) for p in items}))
    except ValueError:
        raise ValueError(f"skip_positions must be positions like 1 or 0,1, got {value!r}") from None
    if any(p < 0 for p in positions):
        raise ValueError(f"skip_positions must be >= 0, got {value!r}")
    return positions


# Settings that change where or how fast a run goes, not what it computes: free to differ on --resume.
RESUME_FREE = ("device", "log_every", "checkpoint_every", "device_resident")


def layer_seed(seed: int, layer: int) -> int:
    """The initialisation seed of `layer`'s SAE in a run seeded `seed`: a hash of both (NumPy's
    SeedSequence), so different layers (and runs) start from unrelated random dictionaries."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(layer)]).generate_state(1, np.uint32)[0])
