"""Stage 6, hypothesis tracking: SAE latents matched across consecutive layers (match.py, coact.py,
edges.py) and followed token by token from layer to layer (tracker.py)."""
