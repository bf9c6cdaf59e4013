"""Activation store: zarr v3 format, writer with commit protocol, memory-mapped reader and loader."""
