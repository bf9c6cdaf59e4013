"""Stage 3, the sparse autoencoder: one module per architecture (architectures/, registered in
base.py), the module they share, and its files in SAELens's layout."""
from ghosttrack.sae.base import ARCHITECTURES
from ghosttrack.sae.config import JumpReluSAEConfig, ReluSAEConfig, SAEConfig, TopKSAEConfig, make_sae_config
from ghosttrack.sae.module import SparseAutoencoder, load_sae

__all__ = ["ARCHITECTURES", "JumpReluSAEConfig", "ReluSAEConfig", "SAEConfig", "SparseAutoencoder", "TopKSAEConfig",
           "load_sae", "make_sae_config"]
