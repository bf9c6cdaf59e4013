"""`--dtype auto`: the compute dtype that is fast where the run happens.

bf16 halves memory traffic on GPUs that support it; on a CPU without native bf16 instructions
(AVX512_BF16 or AMX on x86, the BF16 extension on Arm) every bf16 operation is emulated and runs
~6x slower than fp32 (SmolLM2-135M, 10 layers, AVX2: 241 vs 1,557 tok/s), so there fp32 is the choice.
"""
from __future__ import annotations

from pathlib import Path

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""/proc/cpuinfo flags of native bf16 arithmetic (x86 AVX512-BF16 and AMX; Arm's "bf16" feature)."""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU computes in bf16 natively (from /proc/cpuinfo's flags; False where unknown)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve_dtype(requested: str, device: torch.device | str) -> tuple[str, str | None]:
    """(dtype to use, warning or None) for `requested` (auto, fp32, fp16, bf16) on `device` (or "auto":
    CUDA when present).

    auto: bf16 on a CUDA device that supports it, else fp32. bf16 asked for on a CPU without
    native bf16 is kept (the user may want it), with a warning naming the cost and the fix.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if requested == "auto":
        if device.type == "cuda":
            return ("bf16" if torch.cuda.is_bf16_supported() else "fp32"), None
        return "fp32", None
    if requested == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return requested, ("warning: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag): bf16 runs "
                           "about 6x slower than fp32 here; pass --dtype fp32 or auto")
    return requested, None


def resolve_device(device: str | None) -> str:
    """None or 'auto': cuda when present, else cpu; anything else as given (the one default device rule
    of the commands that run on one device: interpret, evaluate, match, track)."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)  # one line, before any work, when this machine lacks it
    return device


def check_device_name(device: str | None) -> None:
    """--device is a device name (auto, cpu, cuda or cuda:N); GhostTrackError otherwise. Whether this
    machine has it is checked where the run starts (check_device), so a config may name another machine's."""
    from ghosttrack.errors import GhostTrackError

    if device in (None, "auto", "cpu"):
        return
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError):
        raise GhostTrackError(f"--device {device} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if wanted.type not in ("cpu", "cuda"):
        raise GhostTrackError(f"--device {device} is not supported; use auto, cpu or cuda[:N]")


def check_device(device: str | None) -> None:
    """--device names a device this machine has (auto, cpu, cuda or cuda:N); GhostTrackError otherwise."""
    from ghosttrack.errors import GhostTrackError

    check_device_name(device)
    if device in (None, "auto", "cpu"):
        return
    wanted = torch.device(device)
    if wanted.type == "cuda":
        if not torch.cuda.is_available():
            raise GhostTrackError(f"--device {device} was asked for but no CUDA device is visible; use --device cpu")
        if wanted.index is not None and wanted.index >= torch.cuda.device_count():
            raise GhostTrackError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                  f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
