"""TopK SAE (Gao et al. 2024): the k largest ReLU activations per row, plus AuxK for dead latents.

Training runs the sparse paths of `ghosttrack.kernels.topk_sparse` (the encoder's top-k and a
decoder that touches only the k active rows); `encode` is the plain dense form.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ghosttrack.kernels import reference
from ghosttrack.kernels.topk_sparse import select_topk, sparse_decode, sparse_topk_encode
from ghosttrack.sae.base import Architecture, ConfigBase, TrainStep, check_dims, register


@dataclass
class TopKSAEConfig(ConfigBase):
    """TopK SAE (Gao et al. 2024): the k largest ReLU activations per row, plus AuxK for dead latents."""

    d_in: int
    """Width of the activations (the model's d_model)."""
    d_sae: int
    """Number of latents."""
    k: int = 32
    """topk: active latents per row."""
    aux_k: int | None = None
    """topk: dead latents the AuxK loss reconstructs the residual with (None: min(d_in // 2, 512))."""
    aux_coeff: float = 1 / 32
    """topk: weight of the AuxK loss (mean over rows of the residual's summed squared reconstruction
    error, times min(dead latents / aux_k, 1))."""
    dead_tokens: int = 200_000
    """topk: a latent that has not fired in this many training tokens counts as dead for AuxK."""
    architecture: ClassVar[str] = "topk"

    def __post_init__(self) -> None:
        check_dims(self.d_in, self.d_sae)
        if self.aux_k is None:
            self.aux_k = max(1, min(self.d_in // 2, 512))
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
        if not 0 < self.aux_k <= self.d_sae:
            raise ValueError(f"aux_k must be in [1, d_sae={self.d_sae}], got {self.aux_k}")
        if self.aux_coeff < 0 or self.dead_tokens < 1:
            raise ValueError(f"aux_coeff must be >= 0 and dead_tokens >= 1, got {self.aux_coeff}, {self.dead_tokens}")


@register
class TopKArch(Architecture):
    """The k largest ReLU activations per row; AuxK reconstructs the residual with dead latents."""

    name = "topk"
    config_class = TopKSAEConfig
    saelens_name = "topk"
    fused = False
    summary = "k largest latents per token, AuxK for dead ones"
    listing_order = 2

    def encode(self, sae, x_BD: Tensor) -> Tensor:
        pre_BH = torch.relu(x_BD @ sae.W_enc + sae.b_enc)
        top_BK, idx_BK = pre_BH.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre_BH).scatter_(-1, idx_BK, top_BK)

    def training_loss(self, sae, x_BD, tokens_since_fired_H, sparsity_scale, fused, max_dead=None) -> TrainStep:
        if fused:
            raise ValueError("the fused kernel covers relu and jumprelu SAEs; train topk without --fused")
        acts_BK, idx_BK, pre_BH = sparse_topk_encode(x_BD, sae.W_enc, sae.b_enc, self.cfg.k)
        x_hat_BD = sparse_decode(acts_BK, idx_BK, sae.W_dec) + sae.b_dec
        acc = reference.loss_dtype(x_BD.dtype)
        mse = (x_BD.to(acc) - x_hat_BD.to(acc)).pow(2).sum(-1).mean()
        loss, terms = mse, {}
        if tokens_since_fired_H is not None and self.cfg.aux_coeff > 0:
            # Never branched on the device's count of dead latents (a host sync); a bound known on
            # the host (max_dead) narrows the work, 0 skips it: AuxK is then exactly 0.
            k_aux = self.cfg.aux_k if max_dead is None else min(self.cfg.aux_k, max_dead)
            auxk = torch.zeros((), dtype=mse.dtype, device=x_BD.device)
            if k_aux > 0:
                auxk = self._auxk(sae, x_BD, x_hat_BD, pre_BH, tokens_since_fired_H >= self.cfg.dead_tokens, k_aux)
                loss = loss + self.cfg.aux_coeff * sparsity_scale * auxk
            terms["auxk"] = auxk.detach()
        active_BK = acts_BK.detach() > 0
        fired_H = torch.zeros(sae.cfg.d_sae, dtype=torch.int64, device=x_BD.device)
        fired_H.index_add_(0, idx_BK.reshape(-1), active_BK.reshape(-1).to(torch.int64))
        return TrainStep(loss, mse, x_hat_BD.detach(), active_BK.sum(1), fired_H, terms)

    def _auxk(self, sae, x_BD, x_hat_BD, pre_BH, dead_H, k_aux: int) -> Tensor:
        """AuxK (Gao et al. 2024, appendix A.2): reconstruct the residual x - x_hat with the
        min(aux_k, n_dead) largest dead latents; mean over rows of sum over D of squared error,
        scaled down by min(n_dead / aux_k, 1).

        With no host sync: k_aux (aux_k, or fewer when at most that many can be dead) latents are picked
        from scores masked to the dead ones; when fewer are dead, the live picks get activation 0 and
        add nothing, and the scale (0 when none is dead) is computed on the device.
        """
        aux_acts_BK, aux_idx_BK = select_topk(x_BD, sae.W_enc, sae.b_enc, pre_BH, k_aux, dead_H)
        residual_BD = (x_BD - x_hat_BD).detach()
        e_hat_BD = sparse_decode(aux_acts_BK, aux_idx_BK, sae.W_dec)
        acc = reference.loss_dtype(x_BD.dtype)
        err = (residual_BD.to(acc) - e_hat_BD.to(acc)).pow(2).sum(-1).mean()
        return err * (dead_H.sum(dtype=acc) / self.cfg.aux_k).clamp(max=1.0)

    def saelens_fields(self) -> dict[str, Any]:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}

    @staticmethod
    def options_from_saelens(cfg_json: dict[str, Any]) -> dict[str, Any]:
        return {"k": cfg_json["k"]}
