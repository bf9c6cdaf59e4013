"""Keep our top-level folders from shadowing PyPI packages of the same name.

`kernels/` and `store/` install as `ghosttrack.kernels` and `ghosttrack.store`. Run from the repo
root (`python -m ...`, `python -m pytest`), the root is on sys.path, so Python also finds them as
the top-level `kernels` and `store`: names of PyPI packages (transformers imports `kernels`). Under
such a name a folder of ours hands the import on to the installed package, or fails as if it were
absent. No other module of ours imports anything here; only the two `__init__` files call it.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from importlib.machinery import PathFinder


def yield_to_installed(name: str, init_file: str) -> None:
    """Replace the module being imported as `name` by the installed distribution of that name.

    Call it from a package's `__init__` when `__name__` is not its `ghosttrack.` name. Returns after
    sys.modules[name] holds the installed package (the import system then hands that to the
    importer); raises ModuleNotFoundError, as a missing package would, when none is installed.
    """
    our_folder = os.path.dirname(os.path.abspath(init_file))
    our_root = os.path.dirname(our_folder)
    # Submodules loaded under the borrowed name (this one, when called from kernels/) go too.
    for loaded in [m for m in sys.modules if m.startswith(name + ".")]:
        if os.path.abspath(getattr(sys.modules[loaded], "__file__", None) or "").startswith(our_folder + os.sep):
            del sys.modules[loaded]
    elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != our_root]
    spec = PathFinder.find_spec(name, elsewhere)
    if spec is None or spec.loader is None:
        sys.modules.pop(name, None)
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    installed = importlib.util.module_from_spec(spec)
    sys.modules[name] = installed
    try:
        spec.loader.exec_module(installed)
    except BaseException:
        sys.modules.pop(name, None)
        raise
