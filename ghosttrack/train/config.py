"""How an SAE is trained: one dataclass, saved in every checkpoint and compared on --resume."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ghosttrack.config_fields import ConfigError, check_fields, skip_positions_setting
from ghosttrack.run_config import DEVICE, StoreAccess
from ghosttrack.train.schedule import SCHEDULES
from ghosttrack.store.rows import MAX_NORM_RATIO, parse_positions  # noqa: F401 - re-exported

DTYPES = ("auto", "float32", "bfloat16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16"}


@dataclass
class TrainerConfig:
    """Optimisation, schedule, data and bookkeeping settings of one SAE training run."""

    lr: float = field(default=1e-3, metadata={"above": 0})
    """Peak Adam learning rate."""
    epochs: float = field(default=1.0, metadata={"above": 0})
    """Passes over the layer's training rows (fractions allowed: 2.5 stops half-way through the third)."""
    batch_size: int = field(default=4096, metadata={"min": 1})
    """Rows per optimisation step and process (W data-parallel processes train like one with W x this)."""
    lr_schedule: str = field(default="constant-decay", metadata={"choices": SCHEDULES})
    """After the warm-up: constant-decay (constant, then a linear decay over the last decay_fraction of
    the steps) or cosine (a cosine decay over all of them)."""
    warmup_fraction: float = field(default=0.02, metadata={"min": 0, "max": 1, "flag": "--warmup"})
    """Share of the steps with a linear learning-rate warm-up from 0."""
    decay_fraction: float = field(default=0.2, metadata={"min": 0, "max": 1})
    """constant-decay: share of the steps, at the end, over which the rate falls linearly to lr * min_lr_ratio."""
    min_lr_ratio: float = field(default=0.0, metadata={"min": 0, "max": 1})
    """The decay ends at lr * min_lr_ratio."""
    target_l0: float | None = field(default=None, metadata={"above": 0})
    """relu / jumprelu: steer the sparsity coefficient (--l1 / --l0, then its starting value) during
    training so that the mean L0 reaches this and stays there; the coefficient it ends with is saved
    with the SAE (cfg.json, history.json). topk sets its L0 with --k."""
    sparsity_warmup_fraction: float = field(default=0.05, metadata={"min": 0, "max": 1, "flag": "--sparsity-warmup"})
    """Share of the steps over which the sparsity / AuxK coefficient ramps up linearly from 0 (with
    --target-l0 the controller steers it instead)."""
    grad_clip: float = field(default=1.0, metadata={"min": 0})
    """Clip the global gradient norm to this (0: no clipping)."""
    pre_encoder_bias: bool = False
    """Train with the encoder seeing x - b_dec (OpenAI's TopK SAEs, sparsify); folded into b_enc on save."""
    beta1: float = field(default=0.9, metadata={"min": 0, "below": 1})
    """Adam beta1."""
    beta2: float = field(default=0.999, metadata={"min": 0, "below": 1})
    """Adam beta2."""
    dtype: str = field(default="auto", metadata={"choices": DTYPES, "aliases": DTYPE_ALIASES})
    """Compute dtype: float32, or bfloat16 autocast (weights and optimizer state stay float32); auto:
    bfloat16 on a GPU that supports it, float32 on the CPU (resolved here, so checkpoints hold the choice)."""
    device: str = field(default="auto", metadata=DEVICE)
    """auto (what accelerate picks: cuda when present), cpu, cuda or cuda:N."""
    seed: int = field(default=0, metadata={"min": 0})
    """Seeds the loader's split and order (the same held-out tokens at every layer) and, mixed with the
    layer (`layer_seed`), the SAE's initialisation: each layer's SAE starts from its own random
    dictionary, so matches between layers cannot find a shared starting point."""
    fused: bool = False
    """Use the fused Triton kernel (relu / jumprelu) instead of the PyTorch reference path."""
    log_every: int = field(default=20, metadata={"min": 1})
    """Steps between progress updates / history entries (the only host syncs of the loop)."""
    checkpoint_every: int = field(default=500, metadata={"min": 1})
    """Steps between resumable checkpoints (trainer_state.pt)."""
    dead_window_tokens: int = field(default=1_000_000, metadata={"min": 1})
    """A latent that fired in none of the last this-many training tokens counts as dead."""
    dense_threshold: float = field(default=0.1, metadata={"above": 0, "max": 1})
    """A latent firing on more than this fraction of validation rows counts as dense."""
    scale_rows: int = field(default=65_536, metadata={"min": 1})
    """Training rows used (once, before step 0) to estimate the input scale and the data mean."""
    val_fraction: float = field(default=0.05, metadata={"min": 0, "below": 1})
    """Share of the store's chunks held out for validation (split by chunk)."""
    buffer_batches: int = field(default=8, metadata={"min": 8})
    """The loader mixes rows in a buffer of this many batches (>= 8)."""
    skip_flagged: bool = field(default=True, metadata={"flag": "--keep-flagged", "invert": True})
    """Skip position-0 rows (attention sinks) in training and metrics (--keep-flagged trains on them too)."""
    max_norm_ratio: float | None = field(default=MAX_NORM_RATIO, metadata={"min": 0})
    """Skip rows whose norm exceeds this multiple of the median norm of the training rows (attention
    sinks); 0 or None keeps all. Skipped rows are counted in history.json, never removed from the store."""
    skip_positions: str | tuple[int, ...] = ""
    """Sequence positions skipped besides position 0, e.g. 1 or 0,1 (a token after the sink that is the top
    example of many features: ghosttrack interpret reports it). Saved with the SAE; interpret and
    evaluate apply the same rule by default."""
    device_resident: str = field(default="auto", metadata={"choices": ("auto", "yes", "no")})
    """Hold the whole layer on the device (yes / no / auto: on CUDA when it fits in half the free
    memory, on the CPU when it fits in a quarter of the free RAM)."""

    def __post_init__(self) -> None:
        check_fields(self)  # types, finiteness and the bounds in each field's metadata
        if self.dtype == "auto":
            from ghosttrack.precision import resolve_dtype

            self.dtype = DTYPE_ALIASES[resolve_dtype("auto", self.device)[0]]
        if self.max_norm_ratio == 0:
            self.max_norm_ratio = None  # the command line's "0 keeps every row"
        self.skip_positions = ",".join(map(str, skip_positions_setting(self.skip_positions)))
        # Checkpoints fall on log boundaries, where the loop has synced and checked the loss.
        self.checkpoint_every = -(-self.checkpoint_every // self.log_every) * self.log_every

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainerConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _default_arch() -> str:
    from ghosttrack.sae import ARCHITECTURES

    return next(iter(ARCHITECTURES))


def _arch_names() -> tuple[str, ...]:
    from ghosttrack.sae import ARCHITECTURES

    return tuple(ARCHITECTURES)


@dataclass
class SAEShape:
    """Which architecture `ghosttrack train` builds, and how many latents (its own settings are in
    its config dataclass, ghosttrack.sae.architectures)."""

    arch: str = field(default_factory=_default_arch, metadata={"choices": _arch_names()})
    """The SAE architecture (the first registered one by default)."""
    expansion: float = field(default=16.0, metadata={"above": 0})
    """Latents = expansion x d_model (ignored with --d-hidden)."""
    d_hidden: int | None = field(default=None, metadata={"min": 1})
    """Number of latents (overrides --expansion)."""

    def __post_init__(self) -> None:
        check_fields(self)

    def d_sae(self, d_model: int) -> int:
        """The number of latents for activations of width d_model."""
        if self.d_hidden is not None:
            return self.d_hidden
        d_sae = int(round(self.expansion * d_model))
        if d_sae < 1:
            raise ConfigError(f"--expansion {self.expansion} gives {d_sae} latents for d_model={d_model}; "
                              f"pass --expansion {1 / d_model:.3g} or more, or --d-hidden")
        return d_sae


@dataclass
class TrainRun(StoreAccess):
    """Where `ghosttrack train` reads and writes, and what it does with runs already there."""

    store: str | None = field(default=None, metadata={"required": True})
    """Activation store (ghosttrack extract --out)."""
    layer: int | None = field(default=None, metadata={"min": 0})
    """One layer to train (same as --layers N)."""
    layers: str | None = None
    """Layers to train: 6, 0-11, 0,6,11 or all [default: all]."""
    out: str | None = field(default=None, metadata={"required": True})
    """Output folder; each layer goes to OUT/layer_<i>/ (best SAE, final/, trainer_state.pt, history.json)."""
    resume: bool = False
    """Continue interrupted runs in OUT (same options required)."""
    overwrite: bool = False
    """Replace existing runs in OUT."""

    def __post_init__(self) -> None:
        from ghosttrack.run_config import check_local_output, parse_layers

        check_fields(self)
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other; pass one")
        if self.layer is not None and self.layers not in (None, str(self.layer)):
            raise ConfigError("--layer and --layers disagree; pass one of them")
        if self.layer is not None:
            self.layers = str(self.layer)
        parse_layers(self.layers or "all")  # its syntax, before the store is opened
        check_local_output("--out", self.out)


# Settings that change where or how fast a run goes, not what it computes: free to differ on --resume.
RESUME_FREE = ("device", "log_every", "checkpoint_every", "device_resident")


def check_target_l0(cfg: TrainerConfig, sae_cfg) -> None:
    """ValueError unless --target-l0 fits the SAE: an architecture with a steerable coefficient, and
    fewer latents asked for than it has."""
    if cfg.target_l0 is None:
        return
    from ghosttrack.sae.config import architecture

    arch = architecture(sae_cfg.architecture)
    if arch.sparsity_coeff is None:
        raise ValueError(f"target_l0 steers a sparsity coefficient, which {arch.name} has not; "
                         f"set its L0 with its own option (topk: --k)")
    if cfg.target_l0 >= sae_cfg.d_sae:
        raise ValueError(f"target_l0 {cfg.target_l0:g} must be below the number of latents {sae_cfg.d_sae}")


def layer_seed(seed: int, layer: int) -> int:
    """The initialisation seed of `layer`'s SAE in a run seeded `seed`: a hash of both (NumPy's
    SeedSequence), so different layers (and runs) start from unrelated random dictionaries."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(layer)]).generate_state(1, np.uint32)[0])
