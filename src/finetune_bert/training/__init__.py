"""Training: `train`, its job, loop, steps, checkpoints, run folder and launcher."""
