"""Training engine: distributed setup, schedules, EMA, checkpoints, the generic loop."""
