"""One config dataclass per SAE architecture; `sae_config_from_dict` reads any of them back.

Every coefficient is in *scaled* units: the trainer multiplies activations by one input
scale so that E||x||^2 = d_in before the SAE sees them (the scale is folded into the
weights at save time), so the same defaults fit GPT-2 and SmolLM-sized layers alike.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar


def _check_dims(d_in: int, d_sae: int) -> None:
    if d_in < 1 or d_sae < 1:
        raise ValueError(f"d_in and d_sae must be >= 1, got d_in={d_in}, d_sae={d_sae}")


@dataclass
class ReluSAEConfig:
    """ReLU SAE with an L1 penalty weighted by decoder row norms (the seed's default)."""

    d_in: int
    """Width of the activations (the model's d_model)."""
    d_sae: int
    """Number of latents."""
    l1_coeff: float = 1.0
    """Weight of l1 = mean_rows sum_h acts_h * ||W_dec[h]||; higher gives a lower L0. In scaled units
    1.0 gave L0 81 on SmolLM2-135M layer 15 (3.0 gave 16): the seed's 50-100 range."""
    architecture: ClassVar[str] = "relu"

    def __post_init__(self) -> None:
        _check_dims(self.d_in, self.d_sae)
        if self.l1_coeff < 0:
            raise ValueError(f"l1_coeff must be >= 0, got {self.l1_coeff}")

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **asdict(self)}


@dataclass
class JumpReluSAEConfig:
    """JumpReLU SAE: a learned per-latent threshold (straight-through estimator) and an L0 penalty."""

    d_in: int
    """Width of the activations (the model's d_model)."""
    d_sae: int
    """Number of latents."""
    l0_coeff: float = 1.0
    """Weight of the L0 penalty relative to the summed squared error (scaled units)."""
    bandwidth: float = 0.05
    """Width eps of the rectangle kernel of the threshold's pseudo-derivative (scaled units)."""
    init_threshold: float = 0.01
    """Starting threshold of every latent (scaled units); must be > 0 (the threshold is log-parametrised)."""
    architecture: ClassVar[str] = "jumprelu"

    def __post_init__(self) -> None:
        _check_dims(self.d_in, self.d_sae)
        if self.l0_coeff < 0:
            raise ValueError(f"l0_coeff must be >= 0, got {self.l0_coeff}")
        if self.bandwidth <= 0 or self.init_threshold <= 0:
            raise ValueError(f"bandwidth and init_threshold must be > 0, got {self.bandwidth}, {self.init_threshold}")

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **asdict(self)}


@dataclass
class TopKSAEConfig:
    """TopK SAE (Gao et al. 2024): the k largest ReLU activations per row, plus AuxK for dead latents."""

    d_in: int
    """Width of the activations (the model's d_model)."""
    d_sae: int
    """Number of latents."""
    k: int = 32
    """Active latents per row."""
    aux_k: int | None = None
    """Dead latents the AuxK loss reconstructs the residual with; None: min(d_in // 2, 512)."""
    aux_coeff: float = 1 / 32
    """Weight of the AuxK loss (normalised by the residual's variance, as in the paper)."""
    dead_tokens: int = 200_000
    """A latent that has not fired in this many training tokens counts as dead for AuxK."""
    architecture: ClassVar[str] = "topk"

    def __post_init__(self) -> None:
        _check_dims(self.d_in, self.d_sae)
        if self.aux_k is None:
            self.aux_k = max(1, min(self.d_in // 2, 512))
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
        if not 0 < self.aux_k <= self.d_sae:
            raise ValueError(f"aux_k must be in [1, d_sae={self.d_sae}], got {self.aux_k}")
        if self.aux_coeff < 0 or self.dead_tokens < 1:
            raise ValueError(f"aux_coeff must be >= 0 and dead_tokens >= 1, got {self.aux_coeff}, {self.dead_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **asdict(self)}


SAEConfig = ReluSAEConfig | JumpReluSAEConfig | TopKSAEConfig
CONFIG_CLASSES: dict[str, type] = {cls.architecture: cls for cls in (ReluSAEConfig, JumpReluSAEConfig, TopKSAEConfig)}


def sae_config_from_dict(data: dict[str, Any]) -> SAEConfig:
    """The config whose `to_dict()` gave `data` (unknown keys are an error, not ignored)."""
    data = dict(data)
    arch = data.pop("architecture", None)
    if arch not in CONFIG_CLASSES:
        raise ValueError(f"unknown SAE architecture {arch!r}; expected one of {', '.join(CONFIG_CLASSES)}")
    cls = CONFIG_CLASSES[arch]
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{arch} SAE config has unknown key(s) {', '.join(unknown)}")
    return cls(**data)


def make_sae_config(arch: str, d_in: int, d_sae: int, **options: Any) -> SAEConfig:
    """Build the config of `arch`, passing only the options that architecture has (None: its default)."""
    if arch not in CONFIG_CLASSES:
        raise ValueError(f"unknown SAE architecture {arch!r}; expected one of {', '.join(CONFIG_CLASSES)}")
    cls = CONFIG_CLASSES[arch]
    names = {f.name for f in fields(cls)}
    chosen = {key: val for key, val in options.items() if key in names and val is not None}
    return cls(d_in=d_in, d_sae=d_sae, **chosen)
