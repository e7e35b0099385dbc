"""Evaluation given embeddings: metrics, bootstrap CIs, linear / k-NN / label-fraction probes,
representation metrics and the result files (``results/<model>/<task>/``).

Submodules import numpy at top level; torch, pandas and sklearn load inside the functions that need them.
"""
