"""Judging SAEs: held-out metrics, reports, plots, features, steering, ground truth."""
