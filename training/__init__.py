"""training: synthetic data, datasets, the joint training loop, evaluation and export."""
