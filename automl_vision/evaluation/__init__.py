"""Evaluation: metrics per task, plots."""
