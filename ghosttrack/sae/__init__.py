"""Stage 3, the sparse autoencoder: architectures, the module, and its files in SAELens's layout."""
from ghosttrack.sae.config import JumpReluSAEConfig, ReluSAEConfig, SAEConfig, TopKSAEConfig, make_sae_config
from ghosttrack.sae.module import SparseAutoencoder, load_sae

__all__ = ["JumpReluSAEConfig", "ReluSAEConfig", "SAEConfig", "SparseAutoencoder", "TopKSAEConfig", "load_sae",
           "make_sae_config"]
