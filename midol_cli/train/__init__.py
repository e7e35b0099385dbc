"""Training: the one engine (engine.py), its tasks (pre-training, the supervised driver and its
classification and segmentation tasks), optimiser set-up (optim.py), FSDP, trackers."""
