"""Training: the trial loop, optimizers, schedulers, early stopping and metric reporting."""
