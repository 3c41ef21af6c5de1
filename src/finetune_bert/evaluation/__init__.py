"""Evaluation: metrics, calibration, the report page, and `evaluate`."""
