"""midol: M-IDoL medical foundation models from raw folders to benchmark tables.

Importing this package is cheap on purpose: torch, timm and pandas are only
imported inside the functions that need them, so ``midol --help`` answers fast.
"""

__version__ = "0.1.0"
