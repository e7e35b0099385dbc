"""Training: the shared engine (engine.py), optimiser set-up (optim.py), distributed helpers, checkpoints, pre-training and the fine-tuning tasks."""
