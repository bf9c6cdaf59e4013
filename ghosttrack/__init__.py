"""GhostTrack: residual-stream activations to interpretable sparse-autoencoder features."""

__version__ = "0.1.0"
