"""Activation store: zarr v3 format, writer with commit protocol, memory-mapped reader and loader.

From the repo root Python also finds this folder as a top-level `store`, the name of a PyPI
package: under that name it steps aside for the installed one (ghosttrack.kernels.shadowing).
"""
if __name__ != "ghosttrack.store":
    from ghosttrack.kernels.shadowing import yield_to_installed

    yield_to_installed(__name__, __file__)
