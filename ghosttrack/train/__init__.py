"""Stage 4, training: the trainer with its resumable state, its runtime (devices, interrupts), multi-layer runs."""
from ghosttrack.train.config import TrainerConfig
from ghosttrack.train.layers import train_sae_for_layer
from ghosttrack.train.trainer import SAETrainer

__all__ = ["SAETrainer", "TrainerConfig", "train_sae_for_layer"]
