"""The learning-rate schedules, as the factor of the peak rate at each optimisation step.

    constant-decay: linear warm-up from 0, constant, then a linear decay to lr * min_lr_ratio over
                    the last `decay_fraction` of the steps (Anthropic's and OpenAI's SAE recipes)
    cosine:         linear warm-up from 0, then a cosine from lr down to lr * min_lr_ratio

`step` counts optimisation steps already taken: the factor of step 0 applies to the first update.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant-decay", "cosine")


def lr_factor(step: int, total_steps: int, schedule: str, *, warmup_fraction: float,
              decay_fraction: float = 0.2, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the peak learning rate for update number `step` (0-based) of `total_steps`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    warm = int(warmup_fraction * total_steps)
    if step < warm:
        return (step + 1) / warm
    floor = min_lr_ratio
    if schedule == "cosine":
        progress = (step - warm) / max(1, total_steps - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay = int(round(decay_fraction * total_steps))
    decay_start = max(warm, total_steps - decay)
    if step < decay_start or decay == 0:
        return 1.0
    # The last update (step total_steps - 1) runs at floor + (1 - floor) / decay, not at the floor:
    # every decay step still learns something.
    remaining = (total_steps - step) / max(1, total_steps - decay_start)
    return floor + (1 - floor) * min(1.0, remaining)
