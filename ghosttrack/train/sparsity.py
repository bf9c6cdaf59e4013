"""--target-l0: a controller that steers the sparsity coefficient so that the L0 of training batches
reaches a target and stays there.

The coefficient the SAE trains with is c = c0 * m, where c0 is the architecture's coefficient
(--l0 for jumprelu, --l1 for relu) and m a multiplier this controller owns. After every step it
compares the batch's mean L0 with the target T in log space and moves m by a proportional-integral
rule:

    e      = clamp(log((L0 + 1) / (T + 1)), -E_MAX, E_MAX)      (> 0: too dense)
    I     += KI * e                                              (clamped to +-LOG_M_MAX)
    log m  = clamp(I + KP * e, -LOG_M_MAX, LOG_M_MAX)

A denser code than asked raises the coefficient, a sparser one lowers it. Everything stays on the
device (no host sync inside a step); the multiplier is read back only at log steps and at the end.
The clamp on e keeps the huge error of the first steps (L0 near d_sae / 2 at init) from winding
the integral up before the SAE can respond.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

KP = 1.0
"""Proportional gain: log m moves at once by KP times the log-ratio of L0 to the target."""
KI = 0.1
"""Integral gain per step: a steady 10% excess of L0 raises the coefficient by ~0.2% per step."""
E_MAX = 1.0
"""Largest log-ratio error one step sees (a factor e of L0)."""
LOG_M_MAX = math.log(1e4)
APPROACH_RATE = 0.01
"""An error shrinking by this share of itself per step (reaching the target in ~100 steps) pauses the integral."""
SMOOTHING = 0.1
"""The error is an exponential moving average over about 1 / SMOOTHING steps (one batch's L0 is noisy)."""
"""The multiplier stays in [1e-4, 1e4] times the starting coefficient."""


class SparsityController:
    """Multiplier of the sparsity coefficient that keeps the training L0 near `target` (module docstring)."""

    def __init__(self, target: float, device: torch.device | str):
        self.target = float(target)
        zero = dict(dtype=torch.float32, device=device)
        self.integral = torch.zeros((), **zero)
        self.error = torch.zeros((), **zero)
        self.log_multiplier = torch.zeros((), **zero)

    def multiplier(self) -> Tensor:
        """m as a 0-d device tensor (the loss multiplies the coefficient by it)."""
        return self.log_multiplier.exp()

    @torch.no_grad()
    def update(self, mean_l0: Tensor) -> None:
        """One step of the rule from the batch's mean L0 (a 0-d device tensor)."""
        previous = self.error.clone()
        self.error.mul_(1 - SMOOTHING).add_(SMOOTHING * torch.log((mean_l0.float() + 1.0) / (self.target + 1.0)))
        # Conditional integration: while L0 already heads for the target fast enough (the error shrinks
        # by APPROACH_RATE of itself per step or more), the integral waits: the SAE moves at a bounded
        # speed, and integrating the whole way there is what overshoots.
        approaching = self.error * (self.error - previous) < -APPROACH_RATE * self.error.square()
        step = self.error.clamp(-E_MAX, E_MAX)
        self.integral.add_(torch.where(approaching, 0.0, KI * step)).clamp_(-LOG_M_MAX, LOG_M_MAX)
        torch.clamp(self.integral + KP * step, -LOG_M_MAX, LOG_M_MAX, out=self.log_multiplier)

    def state_dict(self) -> dict[str, Tensor]:
        return {"integral": self.integral.cpu(), "error": self.error.cpu(), "log_multiplier": self.log_multiplier.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name in ("integral", "error", "log_multiplier"):
            getattr(self, name).copy_(state[name])
