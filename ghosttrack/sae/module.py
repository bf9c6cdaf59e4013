"""The sparse autoencoder: one module, three architectures chosen by its config.

Parameters (SAELens names and shapes): W_enc (D, H), b_enc (H,), W_dec (H, D), b_dec (D,),
and the architecture's own (JumpReLU: a per-latent threshold (H,), kept >= 0).

    pre  = x @ W_enc + b_enc
    acts = relu(pre)                  (relu)
         = pre * 1{pre > threshold}   (jumprelu)
         = the k largest relu(pre)    (topk; the rest are 0)
    x_hat = acts @ W_dec + b_dec

With `pre_encoder_bias` (a training-time form, as in OpenAI's TopK SAEs and sparsify) the
encoder sees x - b_dec instead of x. The architectures then get x - b_dec and a zero decoder
bias (`_CentredView`): their loss ||(x - b_dec) - acts @ W_dec||^2 is exactly ||x - x_hat||^2,
and b_dec learns through their input, on the reference and the fused path alike. Saving folds
it into b_enc (b_enc - b_dec @ W_enc), so a saved SAE always has the plain form above.

The architecture-specific parts (activation, extra parameters, sparsity penalty, auxiliary
loss) live in one module per architecture (architectures/relu.py, jumprelu.py, topk.py),
found through the registry by the config's `architecture`, so the trainer calls the same
`training_loss` whatever the SAE is.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ghosttrack.sae.base import TrainStep
from ghosttrack.sae.config import SAEConfig, architecture
from ghosttrack.sae.files import read_sae, save_sae


class _CentredView:
    """The SAE as an architecture sees it under a pre-encoder bias (given x - b_dec as its input):
    every attribute of the SAE, except a decoder bias of zeros."""

    def __init__(self, sae: "SparseAutoencoder"):
        self._sae = sae
        self.b_dec = torch.zeros_like(sae.b_dec)

    def __getattr__(self, name: str):
        return getattr(self._sae, name)


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder whose behaviour (activation, losses) comes from `cfg`."""

    def __init__(self, cfg: SAEConfig, metadata: dict[str, Any] | None = None, *, init: bool = True,
                 pre_encoder_bias: bool = False):
        """init=False leaves the weights uninitialised (and the global RNG untouched): for loading.
        pre_encoder_bias: the encoder sees x - b_dec (module docstring)."""
        super().__init__()
        self.cfg = cfg
        self.pre_encoder_bias = pre_encoder_bias
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._arch = architecture(cfg.architecture)(cfg)
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
        return self._arch.encode(self, x_BD - self.b_dec if self.pre_encoder_bias else x_BD)

    def decode(self, acts_BH: Tensor) -> Tensor:
        """(B, H) latent activations -> (B, D) reconstruction."""
        return acts_BH @ self.W_dec + self.b_dec

    def forward(self, x_BD: Tensor) -> Tensor:
        """(B, D) -> (B, D) reconstruction."""
        return self.decode(self.encode(x_BD))

    def training_loss(self, x_BD: Tensor, *, tokens_since_fired_H: Tensor | None = None,
                      sparsity_scale: float = 1.0, fused: bool = False, max_dead: int | None = None) -> TrainStep:
        """Loss and detached metrics of one batch.

        tokens_since_fired_H: training tokens since each latent last fired (TopK's AuxK uses it;
        others ignore it). sparsity_scale multiplies the sparsity / auxiliary coefficients (warm-up).
        fused: use the fused Triton kernel (relu / jumprelu) instead of the reference path.
        max_dead: an upper bound on the latents dead now, known to the caller without reading the
        device back (the trainer derives it at log steps); TopK's AuxK then works on min(aux_k, max_dead)
        latents instead of aux_k, with the same result. None: no bound.
        """
        if not self.pre_encoder_bias:
            return self._arch.training_loss(self, x_BD, tokens_since_fired_H, sparsity_scale, fused, max_dead)
        step = self._arch.training_loss(_CentredView(self), x_BD - self.b_dec, tokens_since_fired_H,
                                        sparsity_scale, fused, max_dead)
        return step._replace(x_hat_BD=step.x_hat_BD + self.b_dec.detach())

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups: every parameter at lr, except those the architecture scales
        (JumpReLU's thresholds) at lr times their scale."""
        scales = self._arch.lr_scales()
        groups = [{"params": [p for n, p in self.named_parameters() if n not in scales], "lr": lr}]
        groups += [{"params": [getattr(self, n)], "lr": lr * s} for n, s in scales.items()]
        return groups

    @torch.no_grad()
    def start_at_l0_(self, x_BD: Tensor, target_l0: float) -> bool:
        """Start the architecture's own parameters at about target_l0 active latents on rows like
        x_BD (after init_from_data_); False where the architecture has nothing to set."""
        return self._arch.start_at_l0_(self, x_BD - self.b_dec if self.pre_encoder_bias else x_BD, target_l0)

    @property
    def sparsity_coeff(self) -> str | None:
        """The config field of the coefficient `--target-l0` steers (None: the architecture fixes L0)."""
        return self._arch.sparsity_coeff

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
        """b_dec := the data mean, and the encoder starts on centred inputs, pre = (x - mean) @ W_enc:
        b_enc := -mean @ W_enc, or 0 with a pre-encoder bias (which subtracts b_dec itself)."""
        self.b_dec.copy_(mean_D)
        if self.pre_encoder_bias:
            self.b_enc.zero_()
        else:
            self.b_enc.copy_(-(mean_D.to(self.W_enc.dtype) @ self.W_enc))

    @torch.no_grad()
    def folded(self, input_scale: float) -> "SparseAutoencoder":
        """A copy that takes raw activations x where this one takes scaled ones (x * input_scale).

        acts' = acts / s, so W_enc' = W_enc, b_enc' = b_enc / s, threshold' = threshold / s,
        W_dec' = W_dec (rows stay unit norm), b_dec' = b_dec / s; then x_hat' = x_hat / s exactly
        (relu, the jump and the top-k selection all commute with a positive scale). A pre-encoder
        bias is folded first: (x - b_dec) @ W_enc + b_enc = x @ W_enc + (b_enc - b_dec @ W_enc).
        The copy has the plain form (no pre-encoder bias).
        """
        s = float(input_scale)
        out = SparseAutoencoder(self.cfg, {**self.metadata, "input_scale_folded": s}, init=False)
        out.load_state_dict(self.state_dict())
        if self.pre_encoder_bias:
            out.b_enc.sub_(out.b_dec.double() @ out.W_enc.double())
        out.b_enc.div_(s)
        out.b_dec.div_(s)
        if "threshold" in out._parameters:
            out.threshold.div_(s)
        return out.to(self.W_enc.device)

    def save(self, directory, metadata: dict[str, Any] | None = None) -> None:
        """Write sae_weights.safetensors + cfg.json (SAELens layout) into `directory`."""
        save_sae(self, directory, {**self.metadata, **(metadata or {})})


def load_sae(directory, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """The SAE saved in `directory` (sae_weights.safetensors + cfg.json, ours or SAELens's);
    its cfg.json metadata in `.metadata`."""
    cfg, metadata, state = read_sae(directory)
    sae = SparseAutoencoder(cfg, metadata, init=False)
    sae.load_state_dict(state)
    return sae.to(device)
