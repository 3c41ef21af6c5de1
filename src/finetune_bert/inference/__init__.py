"""Inference: a trained model as a Python object, and prediction files."""
