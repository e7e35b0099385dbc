"""Which protocols ``midol study --protocols`` can compare, and the pooled paired bootstrap of the first one
when it is scored per query (issue 29).

The study probes every model with ``midol probe``'s suite, so it compares the protocols that suite writes:
``linear``, ``knn_k10``, ``knn_k20``, ``simpleshot_<n>`` (class probabilities in ``predictions.parquet``)
and ``retrieval`` / ``retrieval_loo`` (per-query values in ``retrieval.parquet``). Any of them may come
first and drive the paired statistics. The seed-level t-interval (``eval/seeds.py``) takes the per-seed
differences of the block's value, which for retrieval is the mean of its per-query values; the pooled
bootstrap kept for reference resamples those values here. Protocols that ``midol finetune`` writes
(``finetune``, ``linear_ft``, ``lora_ft``, ``dense_probe``) never appear in a probe's summary, so
``--protocols`` refuses them before any pre-training instead of failing after it: the study runs them
with ``--finetune RECIPE.yaml --finetune-methods full,linear,lora`` (``finetune_protocol`` names the
protocol each method writes on a task), segmentation tasks included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from midol_cli.errors import UsageError

FINETUNE_MADE = ("finetune", "linear_ft", "lora_ft", "dense_probe")
PROBE_MADE = "linear, knn_k10, knn_k20, simpleshot_<n>, retrieval, retrieval_loo"


def check_protocols(protocols: Sequence[str]) -> None:
    """UsageError (one line) when ``protocols`` names one the study's probe never writes."""
    made = [p for p in protocols if p in FINETUNE_MADE]
    if made:
        raise UsageError(
            f"--protocols {', '.join(made)}: written by `midol finetune`, not by the probe midol study runs; "
            f"--protocols takes the probe's ({PROBE_MADE}), any of which may come first and drive the "
            "paired statistics (e.g. --protocols linear,retrieval); fine-tuning's are --finetune RECIPE.yaml "
            "--finetune-methods full,linear,lora")


METHOD_PROTOCOL = {"full": "finetune", "linear": "linear_ft", "lora": "lora_ft"}


def finetune_protocol(method: str, label_type: str) -> str | None:
    """The protocol ``midol finetune --method METHOD`` writes on a task of ``label_type``: full ->
    ``finetune``, linear -> ``linear_ft`` (``dense_probe`` on a segmentation task), lora -> ``lora_ft``;
    None where the method does not apply (lora on a segmentation task: the study skips that pair)."""
    if label_type == "segmentation":
        return {"full": "finetune", "linear": "dense_probe"}.get(method)
    return METHOD_PROTOCOL[method]


def check_finetune_methods(methods: Sequence[str], tasks: Sequence[Any]) -> None:
    """UsageError (one line) when a task (``StudyTask``) would take none of ``methods``."""
    for t in tasks:
        if not t.pooled and not any(finetune_protocol(m, t.spec.label_type) for m in methods):
            raise UsageError(f"--finetune-methods {','.join(methods)}: none applies to {t.spec.name}, a "
                             f"{t.spec.label_type} task (lora fine-tunes classification tasks; full and "
                             "linear fine-tune every task)")


def protocol_switches(protocols: Sequence[str]) -> dict[str, Any]:
    """The probe settings that make ``protocols`` appear in summary.json: ``simpleshot_<n>`` turns on
    SimpleShot with those shot counts, ``retrieval``/``retrieval_loo`` retrieval (issue 29.1, 29.2); the
    suite's own protocols (linear, knn_k10, knn_k20) need nothing."""
    shots = sorted({int(p.split("_", 1)[1]) for p in protocols
                    if p.startswith("simpleshot_") and p.split("_", 1)[1].isdigit()})
    out: dict[str, Any] = {"simpleshot": True, "shots": shots} if shots else {}
    if any(p in ("retrieval", "retrieval_loo") for p in protocols):
        out["retrieval"] = True
    return out


def query_values(root: Path, task: str, ids: Mapping[str, Mapping[int, str]],
                 protocol: str) -> tuple[np.ndarray, dict[str, dict[int, np.ndarray]]] | None:
    """``(groups [Q], {arm: {seed: per-query values [Q]}})`` of ``protocol``'s primary metric on ``task``
    (``ids``: arm -> seed -> model id), rows aligned by sample id; None when a model has no per-query
    values there (the pooled task keeps none); UsageError when two models queried other test images."""
    from midol_cli.eval.results import SUMMARY_NAME, load_summary
    from midol_cli.eval.retrieval import PRIMARY, load_retrieval

    ref: tuple[np.ndarray, np.ndarray] | None = None
    out: dict[str, dict[int, np.ndarray]] = {}
    metric = PRIMARY
    for arm, seeds in ids.items():
        for s, mid in seeds.items():
            folder = root / mid / task
            try:
                if ref is None:
                    block = load_summary(folder / SUMMARY_NAME)["protocols"].get(protocol) or {}
                    metric = str(block.get("primary_metric") or PRIMARY)
                df = load_retrieval(folder, protocol)
            except (FileNotFoundError, OSError):
                return None
            if df.empty or metric not in df.columns:
                return None
            key = (df["sample_id"].astype(str).to_numpy(), df["group"].astype(str).to_numpy())
            if ref is None:
                ref = key
            elif not np.array_equal(ref[0], key[0]):
                raise UsageError(f"task {task}: '{mid}' ran '{protocol}' on other test queries than the "
                                 "first model; paired comparisons need the same ones")
            out.setdefault(arm, {})[int(s)] = df[metric].to_numpy(np.float64)
    return (ref[1], out) if ref is not None else None


def pooled_query_differences(root: Path, tasks: Sequence[str], ids: Mapping[str, Mapping[int, str]],
                             baseline: str, protocol: str, *, n_boot: int = 2000, alpha: float = 0.05,
                             seed: int = 0) -> dict[str, dict[str, Any]]:
    """``{variant: {task: eval.paired.Difference}}`` of ``variant - baseline`` on a per-query protocol:
    ``eval.paired.paired_differences``' pooled bootstrap on per-query values. A replicate draws the task's
    query groups (shared by every arm and seed) and the seeds (shared by the tasks and both arms); the
    replicate's difference is the mean over the drawn seeds of the weighted mean per-query difference.
    Tasks without per-query values are left out."""
    from midol_cli.eval.bootstrap import resample_weights
    from midol_cli.eval.paired import _summarise

    rng = np.random.default_rng(seed)
    loaded = {}
    for i, t in enumerate(tasks):
        got = query_values(root, t, ids, protocol)
        if got is not None:
            groups, vals = got
            W = resample_weights(len(groups), n_boot, seed=seed * 1_000_003 + i, groups=groups)  # [B, Q]
            loaded[t] = (W, vals)
    out: dict[str, dict[str, Any]] = {}
    for v in (a for a in ids if a != baseline):
        shared = [set(vals.get(v, {})) & set(vals.get(baseline, {})) for _, vals in loaded.values()]
        seeds = sorted(set.intersection(*shared)) if shared else []
        out[v] = {}
        if not seeds:
            continue
        pick = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
        for t, (W, vals) in loaded.items():
            D = np.stack([vals[v][s] - vals[baseline][s] for s in seeds])  # [S, Q]
            per_seed = (W @ D.T) / W.sum(1, keepdims=True)  # [n_boot, S]
            drawn = np.take_along_axis(per_seed, pick, axis=1).mean(1)
            out[v][t] = _summarise(float(D.mean(1).mean()), drawn, alpha, n_boot, seeds)
    return out
