"""How a user writes a run's settings (layer specs, token counts) and how a run saves them back
(a resolved config that `--config` reproduces exactly). Library code; no command-line parsing."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ghosttrack.errors import GhostTrackError

CONFIG_FILENAME = "config.json"
MODEL_DTYPES = ("fp32", "fp16", "bf16")
"""Dtypes a model's forward pass runs in (precision.py resolves `auto` where a command offers it)."""


@dataclass
class ModelSource:
    """The model a command reads (shared by extract, run, interpret, evaluate, track and detect; a
    command redeclares `model` where its default or meaning differs)."""

    model: str | None = None
    """HF hub id, local model directory, or a .gguf file."""
    gguf: str | None = None
    """GGUF file name inside --model's directory (or a path to one)."""


def check_device_name(device: str | None) -> None:
    """The check of every `--device` field: a device name (precision.check_device_name, imported when
    used: it needs torch); whether this machine has it is checked where the run starts."""
    from ghosttrack.precision import check_device_name as check

    check(device)


DEVICE = {"check": check_device_name}
"""Metadata of every `device` field (a command that redeclares the field keeps the check)."""


@dataclass
class DevicePlacement:
    """Where a command computes (shared by every command that runs on one device)."""

    device: str | None = field(default=None, metadata=DEVICE)
    """Device: cpu, cuda or cuda:N (default: cuda if present, else cpu)."""


@dataclass
class ModelDtype:
    """The dtype of a model's forward pass (shared by evaluate, track and detect; extract adds auto)."""

    dtype: str = field(default="fp32", metadata={"choices": MODEL_DTYPES})
    """Model dtype."""


def layer_dir(root: str | Path, layer: int) -> Path:
    """Where a run keeps what belongs to one layer (an SAE, an interpretation): ROOT/layer_<i>."""
    return Path(root) / f"layer_{layer}"


def parse_token_count(text: str | int) -> int:
    """'10M' -> 10_000_000, '200k' -> 200_000, '1.5m' -> 1_500_000, '4096' -> 4096."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGbB]?)\s*", str(text))
    if not match:
        raise GhostTrackError(f"'{text}' is not a token count; write e.g. 200k, 10M or 1500000")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}[match.group(2).lower()]
    value = int(float(match.group(1)) * scale)
    if value < 1:
        raise GhostTrackError(f"'{text}' must be at least 1 token")
    return value


def parse_layers(spec: str | list[int], n_layers: int | None = None) -> list[int] | str:
    """'0-11' -> [0..11], '0,6,11' -> [0, 6, 11], 'all' -> every layer (needs n_layers, else returned as 'all')."""
    if isinstance(spec, list):
        return sorted(set(int(x) for x in spec))
    spec = str(spec).strip().lower()
    if spec == "all":
        return list(range(n_layers)) if n_layers is not None else "all"
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise GhostTrackError(f"'{spec}' is not a layer spec; write e.g. 0-11, 0,6,11 or all")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) else lo
        if hi < lo:
            raise GhostTrackError(f"layer range '{part}' is reversed; write {hi}-{lo}")
        layers.update(range(lo, hi + 1))
    return sorted(layers)


@dataclass
class StoreArgument:
    """`ghosttrack info STORE` and `ghosttrack verify STORE`: the store, named by its path or URL."""

    store: str | None = field(default=None, metadata={"argument": True, "required": True})
    """Activation store: a directory, or s3://BUCKET/RUN, gs://BUCKET/RUN, memory://RUN."""

    def __post_init__(self) -> None:
        from ghosttrack.config_fields import ConfigError, check_fields

        check_fields(self)
        if self.store is not None and not self.store.strip():
            raise ConfigError("STORE is empty; pass the --out of ghosttrack extract")


@dataclass
class StoreAccess:
    """How a command reads its activation store."""

    trust_store: bool = False
    """Read chunks without checking their checksums (a store you vouch for; also reads stores written
    before bound checksums without ghosttrack verify --upgrade)."""
    allow_partial_store: bool = False
    """Read the committed rows of a store that is still being written or whose extraction stopped early."""


@dataclass
class VerifyRun(StoreArgument):
    """`ghosttrack verify STORE`."""

    progress: bool = field(default=True, metadata={"negatable": True})
    """Show a progress bar."""
    upgrade: bool = False
    """Store written before bound checksums (format 1/2): check every chunk, then bind each to its array,
    index, dtype and shape so that reads accept it."""


def check_local_output(flag: str, value: str | None) -> None:
    """Outputs written to a local folder (SAEs, reports): a store URL there would otherwise become a
    local folder named 's3:'. One line, exit 2, before any work."""
    # Judged from the text alone (any scheme://, and s3:/bucket without its //), so that neither a
    # missing s3fs nor an unknown scheme gets in the way of the refusal.
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?", str(value)) if value is not None else None
    if m is not None and not (len(m.group(1)) == 1 and not m.group(2)):  # not C:\ on Windows
        raise GhostTrackError(f"{flag} {value}: this output is written to a local folder, not to object storage "
                              "(only activation stores go there: extract --out, --store); pass a local path")


def save_resolved_config(directory: str | Path, command: str, options: dict[str, Any]) -> Path:
    """Write {command, options} so that `--config` on that file reproduces the run exactly."""
    from ghosttrack.store.files import write_json
    from ghosttrack.store.location import as_location

    directory = as_location(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in options.items() if k != "config"}
    path = directory / CONFIG_FILENAME
    write_json(path, {"command": command, "options": clean}, default=str, newline=True)
    return path
