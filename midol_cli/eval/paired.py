"""Paired comparisons of models on the same test images: grouped bootstrap over patients and seeds.

A study (``workflows/study.py``) scores several variants of a recipe, each pre-trained with several
seeds, on the same tasks. "Is variant A better than B?" is then a question about the *difference*
of their scores on the same images, which is far less noisy than comparing two independent
intervals (the images' difficulty cancels out).

For one task with test samples grouped by patient, a bootstrap replicate ``b``

1. draws the task's patients with replacement (``bootstrap.resample_weights``: every image of a
   drawn patient is counted as often as the patient was drawn), and
2. draws the seed indices with replacement (the same draw for every variant, so seed ``s`` of A is
   compared with seed ``s`` of B: both started from the same encoder initialisation),

then computes, per variant, the mean over the drawn seeds of the task's metric on the drawn images.
The difference ``A - B`` over replicates gives a percentile interval and a two-sided bootstrap
p-value; the mean over tasks uses the same replicate index on every task (the tasks' test sets are
disjoint, so their draws are independent). Replicates whose resample leaves the metric undefined
(a single class: AUROC) are left out and counted.

With one seed the seed draw is a no-op and the interval covers test-set variation only. With a few
seeds, resampling them is not a sound answer to "would this hold if I pre-trained again?": a
percentile interval over 3-5 resampled seeds is too narrow when the seeds' spread dominates, and too
wide when each run's own luck on the images does (docs/evaluation.md, "Seed-level inference"). The
study's answer is the t-interval over the per-seed differences (``eval/seeds.py``); this pooled
bootstrap is kept for one pair of models (``compare_models``) and, per seed, by ``per_seed_differences``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from midol_cli.eval.bootstrap import resample_weights
from midol_cli.eval.metrics import PreparedScores


@dataclass
class TaskScores:
    """Test-set predictions of every (variant, seed) on one task, rows aligned by sample.

    ``scores[variant][seed]`` is ``[N, C]`` (the probe's class probabilities, in ``classes`` order),
    ``y_true`` ``[N]`` class indices or ``[N, C]`` indicators, ``groups`` ``[N]`` patient ids.
    """

    task: str
    label_type: str
    classes: Sequence[str]
    metric: str
    y_true: np.ndarray
    groups: np.ndarray
    scores: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)


@dataclass
class Difference:
    """``variant - baseline`` of a metric: point estimate, percentile CI, two-sided p, replicates used."""

    value: float
    ci_low: float
    ci_high: float
    p_value: float
    n_boot: int
    n_degenerate: int
    seeds: list[int]

    @property
    def excludes_zero(self) -> bool:
        return bool(np.isfinite(self.ci_low) and (self.ci_low > 0 or self.ci_high < 0))

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        return {
            "value": num(self.value),
            "ci_low": num(self.ci_low),
            "ci_high": num(self.ci_high),
            "p_value": num(self.p_value),
            "excludes_zero": self.excludes_zero,
            "n_boot": self.n_boot,
            "n_degenerate": self.n_degenerate,
            "seeds": list(self.seeds),
        }


def _metric_rows(ts: TaskScores, variant: str, seed: int, W: np.ndarray) -> np.ndarray:
    """The task metric on every weight row: ``[B]`` (NaN where undefined)."""
    prep = PreparedScores(ts.y_true, ts.scores[variant][seed], ts.label_type, ts.classes)
    vals = prep.compute(W, [ts.metric])[ts.metric].astype(np.float64)
    vals[prep.degenerate(W)] = np.nan
    return vals


def _summarise(point: float, reps: np.ndarray, alpha: float, n_boot: int, seeds: list[int]) -> Difference:
    ok = np.isfinite(reps)
    vals = reps[ok]
    if vals.size == 0:
        return Difference(point, np.nan, np.nan, np.nan, n_boot, int(n_boot - ok.sum()), seeds)
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    # Two-sided bootstrap p-value for "no difference": twice the smaller tail beyond 0, floored at
    # the resolution of the bootstrap (never a p of exactly 0 from a finite number of replicates).
    tail = min(float((vals <= 0).mean()), float((vals >= 0).mean()))
    p = min(1.0, max(2.0 * tail, 1.0 / (vals.size + 1)))
    return Difference(float(point), float(lo), float(hi), p, n_boot, int(n_boot - ok.sum()), seeds)


def paired_differences(
    tasks: Sequence[TaskScores],
    baseline: str,
    variants: Sequence[str] | None = None,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict[str, Difference]]:
    """``{variant: {task name | "mean": Difference}}`` of ``variant - baseline`` on each task's metric.

    Only the seeds that both variants have on every task are paired; a variant sharing none with the
    baseline gets an empty entry.
    """
    if n_boot < 10:
        raise ValueError("n_boot must be at least 10")
    rng = np.random.default_rng(seed)
    names = (
        list(variants) if variants is not None else sorted({v for t in tasks for v in t.scores} - {baseline})
    )
    # One patient draw per task, shared by every variant (the pairing), plus the all-ones point row.
    weights = []
    for i, ts in enumerate(tasks):
        if baseline not in ts.scores:
            raise ValueError(f"task {ts.task}: no predictions of the baseline '{baseline}'")
        n = len(ts.y_true)
        W = resample_weights(n, n_boot, seed=seed * 1_000_003 + i, groups=ts.groups)
        weights.append(np.concatenate([np.ones((1, n)), W]))
    out: dict[str, dict[str, Difference]] = {}
    for v in names:
        # A seed is one pre-training run, scored on every task: the seed draw ([n_boot, S] indices)
        # is shared by the tasks, and by both arms of the comparison.
        common = [set(ts.scores.get(v, {})) & set(ts.scores[baseline]) for ts in tasks]
        seeds = sorted(set.intersection(*common)) if common else []
        if not seeds:
            out[v] = {}
            continue
        pick = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
        per_task: dict[str, Difference] = {}
        task_reps: list[np.ndarray] = []
        task_points: list[float] = []
        for ts, W in zip(tasks, weights, strict=True):
            diff_by_seed = np.stack(
                [_metric_rows(ts, v, s, W) - _metric_rows(ts, baseline, s, W) for s in seeds]
            )  # [S, 1 + n_boot]: row 0 of W is the point estimate
            point = float(np.mean(diff_by_seed[:, 0]))
            drawn = np.take_along_axis(diff_by_seed[:, 1:].T, pick, axis=1).mean(1)  # [n_boot]
            per_task[ts.task] = _summarise(point, drawn, alpha, n_boot, seeds)
            task_reps.append(drawn)
            task_points.append(point)
        mean_reps = np.mean(np.stack(task_reps), axis=0)
        per_task["mean"] = _summarise(float(np.mean(task_points)), mean_reps, alpha, n_boot, seeds)
        out[v] = per_task
    return out


def per_seed_differences(tasks: Sequence[TaskScores], baseline: str, variants: Sequence[str] | None = None,
                         *, n_boot: int = 2000, alpha: float = 0.05,
                         seed: int = 0) -> dict[str, dict[int, dict[str, Difference]]]:
    """``{variant: {seed: {task | "mean": Difference}}}``: the paired patient bootstrap of
    ``paired_differences`` for each pre-training seed on its own (two fixed models on the same test
    images: how far the test set alone could move that seed's difference). Seeds the variant does not
    share with the baseline on every task are left out."""
    names = (list(variants) if variants is not None
             else sorted({v for t in tasks for v in t.scores} - {baseline}))
    out: dict[str, dict[int, dict[str, Difference]]] = {}
    for v in names:
        shared = [set(ts.scores.get(v, {})) & set(ts.scores.get(baseline, {})) for ts in tasks]
        out[v] = {}
        for s in sorted(set.intersection(*shared)) if shared else []:
            one = [TaskScores(ts.task, ts.label_type, ts.classes, ts.metric, ts.y_true, ts.groups,
                              {baseline: {s: ts.scores[baseline][s]}, v: {s: ts.scores[v][s]}})
                   for ts in tasks]
            out[v][s] = paired_differences(one, baseline, [v], n_boot=n_boot, alpha=alpha, seed=seed)[v]
    return out


def load_task_scores(results_root: str | Path, task: str, models: Mapping[str, Mapping[int, str]],
                     protocol: str = "linear") -> TaskScores:
    """``TaskScores`` of one task from ``results/<model id>/<task>/predictions.parquet`` files.

    ``models`` maps an arm name to ``{seed: model id}``; rows are aligned by sample id, and every
    model must have scored the same test images with the same labels (else ``UsageError``: they are
    not comparable). A label-fraction or SimpleShot protocol holds one prediction per image and probe
    seed (training subset or episode, the same for every model). In an arm that names a single model
    its probe seeds become the arm's seeds, paired and resampled like pre-training seeds; in an arm
    with one model per pre-training seed (``midol study``) each seed's probe seeds are pooled: its rows
    stacked (image x probe seed, the labels and groups repeated), so the seed's metric is taken over every
    episode and the case bootstrap resamples an image with all its episodes.
    """
    import pandas as pd

    from midol_cli.errors import UsageError
    from midol_cli.eval.metrics import encode_targets
    from midol_cli.eval.results import PREDICTIONS_NAME, SUMMARY_NAME, load_summary

    root = Path(results_root)
    ref: tuple[np.ndarray, np.ndarray] | None = None
    out: TaskScores | None = None
    for arm, seeds in models.items():
        for seed, mid in seeds.items():
            folder = root / mid / task
            if not (folder / PREDICTIONS_NAME).is_file():
                raise UsageError(f"no predictions of model '{mid}' on task {task} under '{root}'")
            df = pd.read_parquet(folder / PREDICTIONS_NAME)
            df = df[df["protocol"] == protocol]
            if df.empty:
                raise UsageError(f"model '{mid}' has no '{protocol}' predictions on task {task}")
            probe_seeds = sorted({int(x) for x in df["seed"].dropna()}) if "seed" in df.columns else []
            pooled = len(probe_seeds) > 1 and len(seeds) > 1
            parts = ({s: df[df["seed"] == s] for s in probe_seeds} if len(probe_seeds) > 1 and not pooled
                     else {int(seed): df})
            order = ["seed", "sample_id"] if pooled else ["sample_id"]
            for key, part in parts.items():
                part = part.sort_values(order, kind="stable").reset_index(drop=True)
                if part.duplicated(subset=order).any():
                    raise UsageError(
                        f"model '{mid}' has several '{protocol}' predictions per image on task {task}"
                    )
                ids = part["sample_id"].astype(str) + ("#" + part["seed"].astype(str) if pooled else "")
                labels = part["label"].astype(str).to_numpy()
                if out is None:
                    t = load_summary(folder / SUMMARY_NAME)["task"]
                    classes = [str(c) for c in t["classes"]]
                    if t["label_type"] == "multilabel":
                        known = set(classes)  # names outside the classes ("No Finding") are all-negative
                        y = encode_targets([[n for n in lab.split("|") if n in known] for lab in labels],
                                           "multilabel", classes)
                    else:
                        y = encode_targets(labels, t["label_type"], classes)
                    has_groups = "group" in part.columns and (part["group"].astype(str) != "").all()
                    groups = part["group" if has_groups else "sample_id"].astype(str).to_numpy()
                    out = TaskScores(task, t["label_type"], classes, t["metric"], y, groups)
                    ref = (ids.to_numpy(), labels)
                elif not np.array_equal(ref[0], ids.to_numpy()):  # type: ignore[index]
                    raise UsageError(
                        f"task {task}: '{mid}' was scored on other test images than the first model; "
                        "paired comparisons need the same ones"
                    )
                elif not np.array_equal(ref[1], labels):  # type: ignore[index]
                    raise UsageError(
                        f"task {task}: '{mid}' has other labels for the same test images than the "
                        "first model; paired comparisons need the same ones"
                    )
                out.scores.setdefault(arm, {})[key] = np.stack(part["probs"].to_numpy()).astype(np.float64)
    if out is None:
        raise UsageError("no model to compare")
    return out


def compare_models(results_root: str | Path, a: str, b: str, tasks: Sequence[str], *, n_boot: int = 2000,
                   seed: int = 0) -> dict[str, Difference]:
    """``a - b`` on each task's primary metric and on their mean: paired, patients resampled."""
    scores = [load_task_scores(results_root, t, {a: {0: a}, b: {0: b}}) for t in tasks]
    return paired_differences(scores, b, [a], n_boot=n_boot, seed=seed)[a]


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's (1979) step-down adjusted p-values over one family, in the input order.

    With the ``m`` defined p-values sorted ascending, the ``i``-th smallest (1-based) becomes
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``: rejecting where the adjusted p is below ``alpha``
    controls the family-wise error rate at ``alpha`` under any dependence between the tests, and
    is never less powerful than Bonferroni. ``None`` / NaN entries are not part of the family and
    stay ``None``.
    """
    idx = [i for i, p in enumerate(p_values) if p is not None and np.isfinite(p)]
    if any(not 0.0 <= float(p_values[i]) <= 1.0 for i in idx):  # type: ignore[arg-type]
        raise ValueError("p-values must lie in [0, 1]")
    out: list[float | None] = [None] * len(p_values)
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda k: float(p_values[k]))):  # type: ignore[arg-type]
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def delong_by_seed(
    ts: TaskScores, variant: str, baseline: str, seeds: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """DeLong's test of ``variant`` vs ``baseline`` on a binary AUROC task, one per shared seed.

    ``{str(seed): {"diff", "z", "p_value"}}``; empty unless the task's metric is a binary AUROC.
    DeLong compares two fixed models, so it is run per pre-training seed (each seed is one model
    pair) rather than on seed-averaged scores, whose AUROC would be an ensemble's, not the mean the
    study reports. Patients with several images get Obuchowski's clustered variance.
    """
    from midol_cli.eval.delong import delong_test

    if ts.label_type != "binary" or ts.metric != "auroc":
        return {}
    y = np.asarray(ts.y_true) == 1
    groups = ts.groups if len(np.unique(ts.groups)) < len(ts.groups) else None
    out: dict[str, dict[str, Any]] = {}
    for s in seeds:
        if s not in ts.scores.get(variant, {}) or s not in ts.scores.get(baseline, {}):
            continue
        t = delong_test(y, ts.scores[variant][s][:, 1], ts.scores[baseline][s][:, 1], groups=groups)
        d = t.to_dict()
        out[str(s)] = {"diff": d["diff"], "z": d["z"], "p_value": d["p_value"]}
    return out
