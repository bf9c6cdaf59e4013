"""SAE math: the plain PyTorch reference path and the fused Triton path, same signature.

Importing this package never imports triton; `ghosttrack.kernels.fused` does, lazily.
"""

from .reference import SAEOutput, sae_forward
from .topk import TopKOutput, topk_decode, topk_forward

__all__ = ["SAEOutput", "sae_forward", "TopKOutput", "topk_decode", "topk_forward"]
