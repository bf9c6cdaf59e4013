"""The sparse autoencoder: one module, three architectures chosen by its config.

Parameters (SAELens names and shapes): W_enc (D, H), b_enc (H,), W_dec (H, D), b_dec (D,),
and for JumpReLU a per-latent threshold (H,), kept >= 0 after every optimiser step. (It is not
log-parametrised: Adam moves a log-threshold by about lr per step in log space, far too slowly
for thresholds that must grow from ~0.01 to ~1 in a few thousand steps.)

    pre  = x @ W_enc + b_enc
    acts = relu(pre)                  (relu)
         = pre * 1{pre > threshold}   (jumprelu)
         = the k largest relu(pre)    (topk; the rest are 0)
    x_hat = acts @ W_dec + b_dec

The architecture-specific parts (activation, sparsity penalty, auxiliary loss) live in
small `_Arch` classes picked from the config's `architecture`, so the trainer calls the
same `training_loss` whatever the SAE is.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ghosttrack.kernels import reference
from ghosttrack.sae.config import JumpReluSAEConfig, ReluSAEConfig, SAEConfig, TopKSAEConfig
from ghosttrack.kernels.topk_sparse import select_topk, sparse_decode, sparse_topk_encode


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


def _dense_forward(fused: bool, x_BD: Tensor, params: list[Tensor], l1_coeff: float, **kwargs):
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


class _ReluArch:
    """ReLU activations, L1 penalty weighted by the decoder row norms."""

    def __init__(self, cfg: ReluSAEConfig):
        self.cfg = cfg

    def extra_parameters(self) -> dict[str, nn.Parameter]:
        return {}

    def constrain_(self, sae) -> None:
        pass

    def encode(self, sae: "SparseAutoencoder", x_BD: Tensor) -> Tensor:
        return torch.relu(x_BD @ sae.W_enc + sae.b_enc)

    def training_loss(self, sae, x_BD, tokens_since_fired_H, sparsity_scale, fused) -> TrainStep:
        out = _dense_forward(fused, x_BD, [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec],
                             self.cfg.l1_coeff * sparsity_scale)
        return _dense_step(out, {"l1": out.l1.detach()})


class _JumpReluArch:
    """JumpReLU activations with a learned threshold; L0 penalty through the STE."""

    def __init__(self, cfg: JumpReluSAEConfig):
        self.cfg = cfg

    def extra_parameters(self) -> dict[str, nn.Parameter]:
        return {"threshold": nn.Parameter(torch.full((self.cfg.d_sae,), float(self.cfg.init_threshold)))}

    @torch.no_grad()
    def constrain_(self, sae) -> None:
        sae.threshold.clamp_(min=0.0)  # a negative threshold would let negative activations through

    def encode(self, sae, x_BD: Tensor) -> Tensor:
        pre_BH = x_BD @ sae.W_enc + sae.b_enc
        return pre_BH * (pre_BH > sae.threshold)

    def training_loss(self, sae, x_BD, tokens_since_fired_H, sparsity_scale, fused) -> TrainStep:
        out = _dense_forward(fused, x_BD, [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec], 0.0,
                             threshold=sae.threshold, l0_coeff=self.cfg.l0_coeff * sparsity_scale,
                             bandwidth=self.cfg.bandwidth)
        return _dense_step(out, {"l0": out.l0.detach()})


def _dense_step(out: reference.SAEOutput, terms: dict[str, Tensor]) -> TrainStep:
    active_BH = out.acts.detach() > 0
    return TrainStep(out.loss, out.mse, out.x_hat.detach(), active_BH.sum(1), active_BH.sum(0), terms)


class _TopKArch:
    """The k largest ReLU activations per row; AuxK reconstructs the residual with dead latents."""

    def __init__(self, cfg: TopKSAEConfig):
        self.cfg = cfg

    def extra_parameters(self) -> dict[str, nn.Parameter]:
        return {}

    def constrain_(self, sae) -> None:
        pass

    def encode(self, sae, x_BD: Tensor) -> Tensor:
        pre_BH = torch.relu(x_BD @ sae.W_enc + sae.b_enc)
        top_BK, idx_BK = pre_BH.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre_BH).scatter_(-1, idx_BK, top_BK)

    def training_loss(self, sae, x_BD, tokens_since_fired_H, sparsity_scale, fused) -> TrainStep:
        if fused:
            raise ValueError("the fused kernel covers relu and jumprelu SAEs; train topk without --fused")
        acts_BK, idx_BK, pre_BH = sparse_topk_encode(x_BD, sae.W_enc, sae.b_enc, self.cfg.k)
        x_hat_BD = sparse_decode(acts_BK, idx_BK, sae.W_dec) + sae.b_dec
        acc = reference.loss_dtype(x_BD.dtype)
        mse = (x_BD.to(acc) - x_hat_BD.to(acc)).pow(2).sum(-1).mean()
        loss, terms = mse, {}
        if tokens_since_fired_H is not None and self.cfg.aux_coeff > 0:
            dead_H = tokens_since_fired_H >= self.cfg.dead_tokens
            # One host sync per step (as sparsify does): AuxK's top-k and sparse products cost
            # nothing when no latent is dead, which is most of a healthy run.
            n_dead = int(dead_H.sum())
            auxk = torch.zeros((), dtype=mse.dtype, device=x_BD.device)
            if n_dead:
                auxk = self._auxk(sae, x_BD, x_hat_BD, pre_BH, dead_H, n_dead)
                loss = loss + self.cfg.aux_coeff * sparsity_scale * auxk
            terms["auxk"] = auxk.detach()
        active_BK = acts_BK.detach() > 0
        fired_H = torch.zeros(sae.cfg.d_sae, dtype=torch.int64, device=x_BD.device)
        fired_H.index_add_(0, idx_BK.reshape(-1), active_BK.reshape(-1).to(torch.int64))
        return TrainStep(loss, mse, x_hat_BD.detach(), active_BK.sum(1), fired_H, terms)

    def _auxk(self, sae, x_BD, x_hat_BD, pre_BH, dead_H, n_dead: int) -> Tensor:
        """AuxK (Gao et al. 2024, appendix A.2): reconstruct the residual x - x_hat with the
        min(aux_k, n_dead) largest dead latents; mean over rows of sum over D of squared error,
        scaled down by min(n_dead / aux_k, 1)."""
        k_aux = min(self.cfg.aux_k, n_dead)
        aux_acts_BK, aux_idx_BK = select_topk(x_BD, sae.W_enc, sae.b_enc, pre_BH, k_aux, dead_H)
        residual_BD = (x_BD - x_hat_BD).detach()
        e_hat_BD = sparse_decode(aux_acts_BK, aux_idx_BK, sae.W_dec)
        acc = reference.loss_dtype(x_BD.dtype)
        err = (residual_BD.to(acc) - e_hat_BD.to(acc)).pow(2).sum(-1).mean()
        return err * min(n_dead / self.cfg.aux_k, 1.0)


_ARCHS = {"relu": _ReluArch, "jumprelu": _JumpReluArch, "topk": _TopKArch}


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder whose behaviour (activation, losses) comes from `cfg`."""

    def __init__(self, cfg: SAEConfig, metadata: dict[str, Any] | None = None, *, init: bool = True):
        """init=False leaves the weights uninitialised (and the global RNG untouched): for loading."""
        super().__init__()
        self.cfg = cfg
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._arch = _ARCHS[cfg.architecture](cfg)
        D, H = cfg.d_in, cfg.d_sae
        # Unit-norm random decoder rows and the encoder tied to them at init (Gao et al. 2024).
        W_dec = torch.randn(H, D) if init else torch.ones(H, D)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.t().clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(H))
        self.b_dec = nn.Parameter(torch.zeros(D))
        for name, param in self._arch.extra_parameters().items():
            self.register_parameter(name, param)

    def encode(self, x_BD: Tensor) -> Tensor:
        """(B, D) activations -> (B, H) dense latent activations (>= 0)."""
        return self._arch.encode(self, x_BD)

    def decode(self, acts_BH: Tensor) -> Tensor:
        """(B, H) latent activations -> (B, D) reconstruction."""
        return acts_BH @ self.W_dec + self.b_dec

    def forward(self, x_BD: Tensor) -> Tensor:
        """(B, D) -> (B, D) reconstruction."""
        return self.decode(self.encode(x_BD))

    def training_loss(self, x_BD: Tensor, *, tokens_since_fired_H: Tensor | None = None,
                      sparsity_scale: float = 1.0, fused: bool = False) -> TrainStep:
        """Loss and detached metrics of one batch.

        tokens_since_fired_H: training tokens since each latent last fired (TopK's AuxK uses it;
        others ignore it). sparsity_scale multiplies the sparsity / auxiliary coefficients (warm-up).
        fused: use the fused Triton kernel (relu / jumprelu) instead of the reference path.
        """
        return self._arch.training_loss(self, x_BD, tokens_since_fired_H, sparsity_scale, fused)

    # --- constraints, applied after every optimiser step -------------------------------------
    @torch.no_grad()
    def constrain_(self) -> None:
        """Unit-norm decoder rows, plus the architecture's own constraints (e.g. threshold >= 0)."""
        self.normalize_decoder_()
        self._arch.constrain_(self)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit L2 norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the component of W_dec.grad along each (unit-norm) decoder row: the part that
        only changes the row's norm, which the renormalisation after the step would undo."""
        if self.W_dec.grad is None:
            return
        W_HD, g_HD = self.W_dec, self.W_dec.grad
        parallel_H = torch.linalg.vecdot(g_HD, W_HD) / torch.linalg.vecdot(W_HD, W_HD).clamp_min(1e-16)
        g_HD.addcmul_(W_HD, parallel_H.unsqueeze(1), value=-1.0)

    @torch.no_grad()
    def init_from_data_(self, mean_D: Tensor) -> None:
        """b_dec := the data mean, and b_enc := -mean @ W_enc so that the encoder starts on centred
        inputs (pre = (x - mean) @ W_enc)."""
        self.b_dec.copy_(mean_D)
        self.b_enc.copy_(-(mean_D.to(self.W_enc.dtype) @ self.W_enc))

    @torch.no_grad()
    def folded(self, input_scale: float) -> "SparseAutoencoder":
        """A copy that takes raw activations x where this one takes scaled ones (x * input_scale).

        acts' = acts / s, so W_enc' = W_enc, b_enc' = b_enc / s, threshold' = threshold / s,
        W_dec' = W_dec (rows stay unit norm), b_dec' = b_dec / s; then x_hat' = x_hat / s exactly
        (relu, the jump and the top-k selection all commute with a positive scale).
        """
        s = float(input_scale)
        out = SparseAutoencoder(self.cfg, {**self.metadata, "input_scale_folded": s}, init=False)
        out.load_state_dict(self.state_dict())
        out.b_enc.div_(s)
        out.b_dec.div_(s)
        if "threshold" in out._parameters:
            out.threshold.div_(s)
        return out.to(self.W_enc.device)

    def save(self, directory, metadata: dict[str, Any] | None = None) -> None:
        """Write sae_weights.safetensors + cfg.json (SAELens layout) into `directory`."""
        from ghosttrack.sae.files import save_sae

        save_sae(self, directory, {**self.metadata, **(metadata or {})})


def load_sae(directory, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """The SAE saved in `directory` (sae_weights.safetensors + cfg.json); metadata in `.metadata`."""
    from ghosttrack.sae.files import load_sae as _load

    return _load(directory, device)
