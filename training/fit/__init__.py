"""Fitting: the training loop, its configuration, losses, checkpoints, distributed runs and logs."""
