"""The GPU image's view of this venv, for `bench/gpu_suite.sh --smoke` (on PYTHONPATH there).

The device image lacks a few packages that the suite carries as wheels (GT_DEVICE_HIDDEN, import
names). Python imports this module at start-up; from then on those packages import only from
GT_CARRIED_SITE, where the suite installs the carried wheels, as on the device, never from this venv:
so a wheel missing from the carried set fails the smoke run here instead of the GPU run there.
"""
import os
import sys
from importlib.machinery import PathFinder

HIDDEN = frozenset(os.environ.get("GT_DEVICE_HIDDEN", "").split())


class OnlyCarried:
    """A meta-path finder that answers for the hidden top-level packages alone."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in HIDDEN:
            return None  # other packages, and submodules (found through their package's __path__)
        site = os.environ.get("GT_CARRIED_SITE")
        spec = PathFinder.find_spec(name, [site]) if site else None
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} (the device image lacks it and it was not carried)",
                                      name=name)
        return spec


sys.meta_path.insert(0, OnlyCarried)
