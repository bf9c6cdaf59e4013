"""SAE math: the plain PyTorch reference path and the fused Triton path, same signature.

Importing this package never imports triton; `ghosttrack.kernels.fused` does, lazily.
From the repo root Python also finds this folder as a top-level `kernels`, a PyPI package that
transformers imports: under that name it steps aside for the installed one (shadowing.py).
"""
if __name__ != "ghosttrack.kernels":
    from .shadowing import yield_to_installed

    yield_to_installed(__name__, __file__)
else:
    from .reference import SAEOutput, sae_forward
    from .topk import TopKOutput, topk_decode, topk_forward

__all__ = ["SAEOutput", "sae_forward", "TopKOutput", "topk_decode", "topk_forward"]
