"""What a training run needs from its surroundings: the accelerate runtime, the fused kernel's
availability, and a Ctrl-C that stops at a step boundary instead of mid-update."""
from __future__ import annotations

import os
import warnings

import torch

from ghosttrack.errors import GhostTrackError
from ghosttrack.interrupts import StopRequest
from ghosttrack.sae.config import SAEConfig
from ghosttrack.train.config import TrainerConfig


def make_accelerator(cfg: TrainerConfig):
    """An accelerate.Accelerator for cfg.device (one process, or data parallel under `accelerate launch` / torchrun)."""
    from accelerate import Accelerator

    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise GhostTrackError(f"--device {cfg.device} is not supported; use auto, cpu or cuda")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise GhostTrackError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    if ":" in cfg.device:
        torch.cuda.set_device(torch.device(cfg.device))
    if cfg.dtype == "bfloat16" and (cfg.device == "cpu" or not torch.cuda.is_available()):
        from ghosttrack.precision import resolve_dtype

        warning = resolve_dtype("bf16", "cpu")[1]
        if warning:
            warnings.warn(warning.removeprefix("warning: "), stacklevel=2)
    # Autocast is ours (torch.autocast around the loss), not accelerate's: its mixed-precision
    # setting is process-global and could not differ between two runs in one process.
    return Accelerator(cpu=cfg.device == "cpu")


def make_adam(params, device: torch.device, **kwargs) -> torch.optim.Adam:
    """Adam with its single-kernel ("fused") update where torch has one: on the CPU it is ~8x
    faster than the default per-tensor loop, which is a real share of a small-batch step."""
    return torch.optim.Adam(params, fused=device.type in ("cpu", "cuda"), **kwargs)


def resolve_resident(mode: str, device: torch.device, store) -> str:
    """The loader's device_resident setting. "auto" on the CPU means "yes" when the layer takes
    under a quarter of the free RAM: there the streaming loader's prefetch thread would compete
    with the compute threads for the cores (-20% steps/s measured on 2 cores), while a resident
    copy is gathered on the training thread. Elsewhere "auto" is the loader's own rule."""
    if mode != "auto" or device.type != "cpu":
        return mode
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: stream
        return "no"
    return "yes" if store.n_tokens * store.d_model * 2 < free / 4 else "no"


def check_fused(sae_cfg: SAEConfig) -> None:
    from ghosttrack.kernels import fused
    from ghosttrack.sae import ARCHITECTURES

    if not ARCHITECTURES[sae_cfg.architecture].fused:
        covered = [name for name, arch in ARCHITECTURES.items() if arch.fused]
        raise GhostTrackError(f"--fused covers the {' and '.join(covered)} SAEs; "
                              f"train {sae_cfg.architecture} without --fused")
    if not fused.is_available():
        raise GhostTrackError(fused.UNAVAILABLE)


# Ctrl-C or SIGTERM stops at a step boundary (after a checkpoint); a second one raises at once.
GracefulInterrupt = StopRequest
