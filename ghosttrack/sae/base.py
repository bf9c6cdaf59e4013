"""What every SAE architecture shares, and the registry that lists them.

An architecture is one module in this package: its config dataclass and an `Architecture`
subclass decorated with `@register`. The CLI's choices, checkpoint I/O and the `--fused` check
ask the registry (`ARCHITECTURES`) instead of spelling the names out.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ghosttrack.kernels import reference


class TrainStep(NamedTuple):
    """What `SparseAutoencoder.training_loss` returns; every field stays on the device."""

    loss: Tensor
    """Scalar to back-propagate: mse + the architecture's sparsity / auxiliary terms."""
    mse: Tensor
    """Scalar: mean over rows of sum over D of (x - x_hat)^2."""
    x_hat_BD: Tensor
    """(B, D) reconstruction (detached)."""
    l0_B: Tensor
    """(B,) number of active latents in each row."""
    fired_H: Tensor
    """(H,) number of rows each latent was active in."""
    terms: dict[str, Tensor]
    """Architecture-specific scalars (detached), e.g. {"l1": ...} or {"auxk": ...}."""


def check_dims(d_in: int, d_sae: int) -> None:
    if d_in < 1 or d_sae < 1:
        raise ValueError(f"d_in and d_sae must be >= 1, got d_in={d_in}, d_sae={d_sae}")


class ConfigBase:
    """Mixin of the architecture config dataclasses: `architecture` is the registry key."""

    architecture: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **asdict(self)}


class Architecture:
    """The architecture-specific parts of an SAE: activation, parameters beyond the four shared
    ones, constraints after each step, the training loss, and how SAELens names it."""

    name: ClassVar[str]
    """Registry key, the `--arch` choice and `cfg.architecture`."""
    config_class: ClassVar[type]
    """The config dataclass (fields besides d_in / d_sae become `ghosttrack train` options)."""
    saelens_name: ClassVar[str]
    """`architecture` in SAELens's cfg.json."""
    fused: ClassVar[bool] = False
    """Whether the fused Triton kernel (`--fused`) covers this architecture."""
    summary: ClassVar[str] = ""
    """One line for `--arch`'s help."""
    listing_order: ClassVar[int] = 100
    """Where it stands in listings (`--arch` choices, messages); the first is the default."""
    sparsity_coeff: ClassVar[str | None] = None
    """The config field of the sparsity coefficient that `--target-l0` steers (None: the architecture
    fixes its L0 itself, as TopK's k does)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def extra_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters beyond W_enc, b_enc, W_dec, b_dec (saved and loaded under these names)."""
        return {}

    def lr_scales(self) -> dict[str, float]:
        """{parameter name: its learning rate as a multiple of the trainer's} for parameters that
        live on another scale than the weights (the rest train at the trainer's rate)."""
        return {}

    def start_at_l0_(self, sae, x_BD: Tensor, target_l0: float) -> bool:
        """Set the architecture's own parameters so that rows like x_BD (scaled) start with about
        target_l0 active latents; False where nothing sets the start (the sparsity term does)."""
        return False

    def constrain_(self, sae) -> None:
        """Applied after every optimiser step, after the decoder rows are renormalised."""

    def encode(self, sae, x_BD: Tensor) -> Tensor:
        raise NotImplementedError

    def training_loss(self, sae, x_BD: Tensor, tokens_since_fired_H: Tensor | None, sparsity_scale: float | Tensor,
                      fused: bool, max_dead: int | None = None) -> TrainStep:
        """See SparseAutoencoder.training_loss."""
        raise NotImplementedError

    def saelens_fields(self) -> dict[str, Any]:
        """Extra top-level cfg.json fields SAELens needs for this architecture."""
        return {}

    @staticmethod
    def options_from_saelens(cfg_json: dict[str, Any]) -> dict[str, Any]:
        """Our config options read from a plain SAELens cfg.json."""
        return {}


ARCHITECTURES: dict[str, type[Architecture]] = {}


def register(arch: type[Architecture]) -> type[Architecture]:
    """Class decorator: make `arch` known by its name (and its config by the same key)."""
    if arch.name in ARCHITECTURES and ARCHITECTURES[arch.name] is not arch:
        raise ValueError(f"SAE architecture {arch.name!r} is registered twice")
    if arch.config_class.architecture != arch.name:
        raise ValueError(f"{arch.__name__}: its config says {arch.config_class.architecture!r}, not {arch.name!r}")
    ARCHITECTURES[arch.name] = arch
    return arch


def dense_forward(fused: bool, x_BD: Tensor, params: list[Tensor], l1_coeff: float, **kwargs):
    """The relu/jumprelu forward: the plain reference, or the fused Triton path.

    The fused kernel is an autograd.Function that autocast does not reach, so under autocast
    its inputs are cast here (the casts are differentiable: gradients reach the fp32 weights).
    """
    if not fused:
        return reference.sae_forward(x_BD, *params, l1_coeff, **kwargs)
    from ghosttrack.kernels import fused as fused_kernels

    if torch.is_autocast_enabled(x_BD.device.type):
        dtype = torch.get_autocast_dtype(x_BD.device.type)
        x_BD, params = x_BD.to(dtype), [p.to(dtype) for p in params]
        if kwargs.get("threshold") is not None:
            kwargs["threshold"] = kwargs["threshold"].to(dtype)
    with torch.autocast(x_BD.device.type, enabled=False):
        return fused_kernels.sae_forward(x_BD, *params, l1_coeff, **kwargs)


def dense_step(out: reference.SAEOutput, terms: dict[str, Tensor]) -> TrainStep:
    active_BH = out.acts.detach() > 0
    return TrainStep(out.loss, out.mse, out.x_hat.detach(), active_BH.sum(1), active_BH.sum(0), terms)
