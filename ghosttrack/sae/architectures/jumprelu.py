"""JumpReLU SAE: a learned per-latent threshold (straight-through estimator) and an L0 penalty.

The threshold is a direct parameter kept >= 0 after every step, not log-parametrised: Adam moves
a log-threshold by about lr per step in log space, far too slowly for thresholds that must grow
from ~0.01 to ~1 in a few thousand steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from ghosttrack.sae.base import Architecture, ConfigBase, TrainStep, check_dims, dense_forward, dense_step, register


@dataclass
class JumpReluSAEConfig(ConfigBase):
    """JumpReLU SAE: a learned per-latent threshold (straight-through estimator) and an L0 penalty."""

    d_in: int
    """Width of the activations (the model's d_model)."""
    d_sae: int
    """Number of latents."""
    l0_coeff: float = field(default=1.0, metadata={"flag": "--l0"})
    """jumprelu: weight of the L0 penalty relative to the summed squared error (scaled units); higher
    gives a lower L0."""
    bandwidth: float = 0.05
    """jumprelu: width eps of the rectangle kernel of the threshold's pseudo-derivative (scaled units)."""
    init_threshold: float = 0.01
    """jumprelu: starting threshold of every latent (scaled units); must be > 0."""
    threshold_lr_scale: float = 10.0
    """jumprelu: the thresholds' learning rate as a multiple of --lr. Adam moves a parameter by about
    lr per step: enough for encoder weights of size ~1/sqrt(d_in), too slow for thresholds of size ~1
    (at 1x they travel lr x steps whatever the L0 coefficient asks)."""
    architecture: ClassVar[str] = "jumprelu"

    def __post_init__(self) -> None:
        check_dims(self.d_in, self.d_sae)
        if self.l0_coeff < 0:
            raise ValueError(f"l0_coeff must be >= 0, got {self.l0_coeff}")
        if not self.threshold_lr_scale > 0:
            raise ValueError(f"threshold_lr_scale must be > 0, got {self.threshold_lr_scale}")
        if self.bandwidth <= 0 or self.init_threshold <= 0:
            raise ValueError(f"bandwidth and init_threshold must be > 0, got {self.bandwidth}, {self.init_threshold}")


@register
class JumpReluArch(Architecture):
    """acts = pre * 1{pre > threshold}; loss = mse + l0_coeff * L0 (threshold gradient through the STE)."""

    name = "jumprelu"
    config_class = JumpReluSAEConfig
    saelens_name = "jumprelu"
    fused = True
    summary = "learned thresholds + L0"
    listing_order = 1
    sparsity_coeff = "l0_coeff"

    def extra_parameters(self) -> dict[str, nn.Parameter]:
        return {"threshold": nn.Parameter(torch.full((self.cfg.d_sae,), float(self.cfg.init_threshold)))}

    def lr_scales(self) -> dict[str, float]:
        return {"threshold": self.cfg.threshold_lr_scale}

    @torch.no_grad()
    def start_at_l0_(self, sae, x_BD: Tensor, target_l0: float) -> bool:
        """Each threshold at the (1 - target_l0 / d_sae) quantile of its latent's pre-activations on
        x_BD, so that every latent fires on that share of the rows and the mean L0 starts near the
        target (at init_threshold everywhere about half of the latents fire on every row). Never
        below init_threshold: a latent whose quantile is <= 0 starts there."""
        pre_BH = x_BD.float() @ sae.W_enc.float() + sae.b_enc.float()
        quantile_H = torch.quantile(pre_BH, 1.0 - target_l0 / self.cfg.d_sae, dim=0)
        sae.threshold.copy_(quantile_H.clamp_min(self.cfg.init_threshold))
        return True

    @torch.no_grad()
    def constrain_(self, sae) -> None:
        sae.threshold.clamp_(min=0.0)  # a negative threshold would let negative activations through

    def encode(self, sae, x_BD: Tensor) -> Tensor:
        pre_BH = x_BD @ sae.W_enc + sae.b_enc
        return pre_BH * (pre_BH > sae.threshold)

    def training_loss(self, sae, x_BD, tokens_since_fired_H, sparsity_scale, fused, max_dead=None) -> TrainStep:
        out = dense_forward(fused, x_BD, [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec], 0.0,
                            threshold=sae.threshold, l0_coeff=self.cfg.l0_coeff * sparsity_scale,
                            bandwidth=self.cfg.bandwidth)
        return dense_step(out, {"l0": out.l0.detach()})
