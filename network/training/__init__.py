"""training: one training run in any layout: the Trainer, its collaborators, checkpoints, callbacks, metrics."""
