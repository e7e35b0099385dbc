"""Tables and plots from result files (``results/<model>/<task>/summary.json``); no metric computation."""
