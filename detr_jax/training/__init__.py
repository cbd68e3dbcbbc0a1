"""Training: matching, losses (and, as they land, optimizer, loop, checkpoints)."""
