"""The M-IDoL objective, one term per file (docs/method.md explains each and cites the paper).

- intra_distill.py   L_intra, reading ``distill``: per-expert prototype self-distillation
- intra_contrastive.py L_intra, reading ``contrastive``: InfoNCE with same-modality negatives
- inter.py           L_inter: modality specificity minus marginal entropy over K*P prototypes
- route.py           L_route: router cross-entropy
"""
