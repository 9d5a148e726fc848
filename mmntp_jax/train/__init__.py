"""Training: step, optimizer, checkpoints, loop, metrics."""
