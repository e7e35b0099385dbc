from __future__ import annotations

import os

# 2-core machines: keep each test process to its share of threads.
os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY_SWIN = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4)
