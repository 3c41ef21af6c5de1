"""Tuning: `tune`, a hyperparameter search with Optuna."""
