"""A fixed results tree for the report tests: 2 models x 3 tasks over 2 modalities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def summary(
    model: str, task: str, modality: str, metric: str, value: float, lo: float, hi: float,
    data_hash: str = "h-common", fraction: tuple[float, ...] = (0.5, 0.6, 0.7),
) -> dict[str, Any]:
    mean = sum(fraction) / len(fraction)
    std = (sum((v - mean) ** 2 for v in fraction) / (len(fraction) - 1)) ** 0.5
    return {
        "schema": 1,
        "model": {
            "id": model,
            "weights": f"{model}.safetensors",
            "weights_hash": "0" * 64,
            "arch": "swin_base",
        },
        "task": {
            "name": task,
            "modality": modality,
            "label_type": "multiclass",
            "classes": ["a", "b", "c"],
            "metric": metric,
            "data_hash": data_hash,
            "split_source": "official",
        },
        "protocols": {
            "linear": {
                "metrics": {
                    metric: {"value": value, "ci_low": lo, "ci_high": hi},
                    "auroc": {"value": value + 0.05, "ci_low": lo, "ci_high": hi + 0.05},
                },
                "C": 0.1,
                "seeds": [0],
            },
            "fraction_0.01": {
                "metrics": {metric: {"mean": mean, "std": std, "values": list(fraction)}},
                "seeds": [0, 1, 2],
            },
        },
        "primary_metric": metric,
        "n": {"train": 100, "val": 20, "test": 30},
        "provenance": {"midol_version": "0.1.0", "command": "midol probe"},
    }


def write_tree(root: Path) -> Path:
    """results/<model>/<task>/summary.json: one malformed file, one data-hash mismatch (aptos)."""
    entries = [
        summary("m-a", "ham10000", "dermoscopy", "accuracy", 0.80, 0.78, 0.82),
        summary("m-b", "ham10000", "dermoscopy", "accuracy", 0.85, 0.83, 0.87, fraction=(0.6, 0.6, 0.9)),
        summary("m-a", "aptos", "fundus", "qwk", 0.70, 0.65, 0.75, data_hash="h-one"),
        summary("m-b", "aptos", "fundus", "qwk", 0.72, 0.66, 0.78, data_hash="h-two"),
        summary("m-a", "retina", "fundus", "accuracy", 0.90, 0.88, 0.92),
        summary("m-b", "retina", "fundus", "accuracy", 0.90, 0.87, 0.93),
    ]
    results = root / "results"
    for s in entries:
        path = results / s["model"]["id"] / s["task"]["name"] / "summary.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(s))
    broken = summary("m-b", "oct2017", "oct", "accuracy", 0.99, 0.98, 1.0)
    del broken["task"]["data_hash"]
    (results / "m-b" / "oct2017").mkdir()
    (results / "m-b" / "oct2017" / "summary.json").write_text(json.dumps(broken))
    return results
