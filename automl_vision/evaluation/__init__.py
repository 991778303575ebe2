"""Evaluation: the metrics of each task, and scoring a predictions file against labelled data."""
