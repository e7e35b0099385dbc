"""Workflows: the commands that chain the stages below them.

``probe.run_task`` resolves a task's data (``tasks``), embeds it and runs the probe suite (``eval``);
``study.run_study`` pre-trains variants (``train``), probes and fine-tunes them, and aggregates paired
differences. This layer may import every package below it (data, models, losses, tasks, train, eval);
none of those imports it, so the packages stay acyclic.
"""
