"""The architecture configs, looked up through the registry: build one, or read one back.

Every coefficient is in *scaled* units: the trainer multiplies activations by one input
scale so that E||x||^2 = d_in before the SAE sees them (the scale is folded into the
weights at save time), so the same defaults fit GPT-2 and SmolLM-sized layers alike.
"""
from __future__ import annotations

import importlib
import pkgutil
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from ghosttrack.config_fields import check_value
from ghosttrack.sae.base import ARCHITECTURES, Architecture

# Every module of the architectures package registers one architecture on import.
_FOLDER = Path(__file__).parent / "architectures"
for _info in pkgutil.iter_modules([str(_FOLDER)]):
    importlib.import_module(f"ghosttrack.sae.architectures.{_info.name}")
_ordered = sorted(ARCHITECTURES.values(), key=lambda arch: (arch.listing_order, arch.name))
ARCHITECTURES.clear()
ARCHITECTURES.update((arch.name, arch) for arch in _ordered)

from ghosttrack.sae.architectures.jumprelu import JumpReluSAEConfig  # noqa: E402 - re-exported names
from ghosttrack.sae.architectures.relu import ReluSAEConfig  # noqa: E402
from ghosttrack.sae.architectures.topk import TopKSAEConfig  # noqa: E402

SAEConfig = Any  # any registered architecture's config dataclass (they share d_in, d_sae, to_dict)
__all__ = ["JumpReluSAEConfig", "ReluSAEConfig", "SAEConfig", "TopKSAEConfig", "architecture",
           "check_sae_options", "make_sae_config", "sae_config_from_dict"]


def architecture(name: str) -> type[Architecture]:
    """The registered architecture `name` (ValueError naming the choices otherwise)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown SAE architecture {name!r}; expected one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def sae_config_from_dict(data: dict[str, Any]) -> SAEConfig:
    """The config whose `to_dict()` gave `data` (unknown keys are an error, not ignored)."""
    data = dict(data)
    cls = architecture(data.pop("architecture", None)).config_class
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{cls.architecture} SAE config has unknown key(s) {', '.join(unknown)}")
    return cls(**data)


def make_sae_config(arch: str, d_in: int, d_sae: int, **options: Any) -> SAEConfig:
    """Build the config of `arch`, passing only the options that architecture has (None: its default)."""
    cls = architecture(arch).config_class
    return cls(d_in=d_in, d_sae=d_sae, **check_sae_options(arch, options))


def check_sae_options(arch: str, options: dict[str, Any]) -> dict[str, Any]:
    """The settings of `arch` among `options` (None: its default), each checked against its type and
    finiteness (a NaN passes `< 0`) before the architecture's own checks, which need d_in and d_sae."""
    cls = architecture(arch).config_class
    hints = typing.get_type_hints(cls)
    return {f.name: check_value(f, hints[f.name], options[f.name]) for f in fields(cls)
            if f.name not in ("d_in", "d_sae") and options.get(f.name) is not None}
