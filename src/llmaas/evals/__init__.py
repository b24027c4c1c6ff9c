"""Evaluation: metric computation for eval runs."""
