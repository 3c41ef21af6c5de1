"""Smaller models from fine-tuned ones: knowledge distillation (distill) and dropped layers (prune)."""
