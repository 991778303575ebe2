"""Hyperparameter sweeps: sampling, early termination and scheduling (spec section 7)."""
