"""Case-level protocols on the same cases and seeds: ``abmil`` (``eval.mil``, N runs) and two baselines.

- ``abmil``: gated attention MIL, ``runs`` runs (seeds ``seed0 .. seed0 + runs - 1``, default 5);
- ``mean``: the linear probe (``eval.linear``) on each case's mean-pooled embedding;
- ``max``: the linear probe on instances (each instance carries its case's label; at most
  ``MAX_TRAIN_INSTANCES`` instances a training case, seeded, so a 2,000-tile slide does not outweigh the
  rest), then per case the maximum over its instances of each class's probability, renormalised (binary:
  the case's positive probability is its most positive instance's).

The linear probe is deterministic (L-BFGS from zero), so ``mean`` and ``max`` are one fit each, the same
for every run: their ``runs`` block has one value and SD 0.

Each protocol's block is the one scorer's (``eval.scoring.score_test``: metrics with a case-level
bootstrap CI over patients, calibration, operating points chosen on validation cases, subgroups) on the
predictions of its reference run (the first seed), plus ``runs``: ``{"metrics": {name: {"mean", "std",
"values"}}, "seeds"}`` over all runs. For ``abmil``, ``metrics[name]["value"]`` is the mean over runs
and its CI the percentile bootstrap of that mean (every run scored on the same resamples of patients);
calibration and operating points are those of the reference run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from midol_cli.eval.mil import MILRecipe

if TYPE_CHECKING:
    from midol_cli.eval.cases import CaseData
    from midol_cli.eval.results import Task

CASE_PROTOCOLS = ("abmil", "mean", "max")
MAX_TRAIN_INSTANCES = 64
ATTENTION_NAME = "attention.parquet"


@dataclass
class CaseRun:
    """What ``run_case_protocols`` returns: ``summary`` (the ``protocols`` entries and ``case_level``),
    ``pred_rows`` (``(protocol, seed, probs [n_test, C])`` for ``write_case_predictions``) and, per abmil
    seed, the test cases' attention (``attention[seed][j]``: ``[K]`` of test case ``j``)."""

    summary: dict[str, Any]
    pred_rows: list[tuple[str, int | None, np.ndarray]] = field(default_factory=list)
    attention: dict[int, list[np.ndarray]] = field(default_factory=dict)
    test_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _mean_pool(cd: CaseData, mask: np.ndarray) -> np.ndarray:
    return np.stack([cd.bags.bag(int(i)).mean(0) for i in np.flatnonzero(mask)]).astype(np.float32)


def _instances(cd: CaseData, mask: np.ndarray, cap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X, y = [], []
    for i in np.flatnonzero(mask):
        b = cd.bags.bag(int(i))
        if cap and len(b) > cap:
            b = b[np.sort(rng.choice(len(b), cap, replace=False))]
        X.append(b)
        y.append(np.full(len(b), cd.y[i]))
    return np.concatenate(X), np.concatenate(y)


def _max_pool(probe: Any, cd: CaseData, mask: np.ndarray) -> np.ndarray:
    """Per case the maximum over its instances of each class's probability, renormalised to sum 1."""
    out = []
    for i in np.flatnonzero(mask):
        p = probe.predict_proba(cd.bags.bag(int(i))).max(0)
        out.append(p / p.sum())
    return np.asarray(out, np.float64)


def _baseline(name: str, cd: CaseData, task: Task) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(test probs, val probs, extra block keys)`` of the ``mean`` or ``max`` baseline."""
    from midol_cli.eval.linear import fit_linear_probe

    tr, va, te = cd.mask("train"), cd.mask("val"), cd.mask("test")
    C = len(task.classes)
    if name == "mean":
        X_va = _mean_pool(cd, va)
        probe = fit_linear_probe(_mean_pool(cd, tr), cd.y[tr], X_va, cd.y[va], task.label_type, C)
        p_te, p_va = probe.predict_proba(_mean_pool(cd, te)), probe.predict_proba(X_va)
        return p_te, p_va, {"C": probe.C, "c_boundary": probe.boundary,
                            "pooling": "mean of instance embeddings"}
    Xtr, ytr = _instances(cd, tr, MAX_TRAIN_INSTANCES, 0)
    Xva, yva = _instances(cd, va, MAX_TRAIN_INSTANCES, 0)
    probe = fit_linear_probe(Xtr, ytr, Xva, yva, task.label_type, C)
    return _max_pool(probe, cd, te), _max_pool(probe, cd, va), {
        "C": probe.C, "c_boundary": probe.boundary, "pooling": "max over instance probabilities",
        "train_instances_per_case": MAX_TRAIN_INSTANCES}


def _abmil_runs(cd: CaseData, task: Task, seeds: Sequence[int], recipe: MILRecipe,
                say: Callable[[str], None]) -> tuple[list[np.ndarray], list[np.ndarray], CaseRun, list[dict]]:
    from midol_cli.eval.mil import fit_abmil

    tr, va, te = cd.mask("train"), cd.mask("val"), cd.mask("test")
    train, val, test = cd.subset(tr), cd.subset(va), cd.subset(te)
    run = CaseRun({}, test_index=np.flatnonzero(te))
    p_tes, p_vas, fits = [], [], []
    for s in seeds:
        model = fit_abmil(train, cd.y[tr], val, cd.y[va], task.label_type, len(task.classes), recipe=recipe,
                          seed=int(s), log=say)
        p_te, att = model.predict(test)
        p_tes.append(p_te)
        p_vas.append(model.predict(val)[0])
        run.attention[int(s)] = att
        fits.append({"seed": int(s), "best_epoch": model.best_epoch, "epochs": len(model.history),
                     "val_loss": min(h["val_loss"] for h in model.history), "precision": model.precision})
    return p_tes, p_vas, run, fits


def _mean_ci(y: np.ndarray, probs: list[np.ndarray], task: Task, groups: np.ndarray, n_boot: int,
             seed: int) -> dict[str, dict[str, float | None]]:
    """Per metric: the mean over runs and the percentile 95% CI of that mean over patient resamples (the
    same resamples for every run)."""
    from midol_cli.eval.bootstrap import iter_resample_weights
    from midol_cli.eval.cis import _num
    from midol_cli.eval.metrics import PreparedScores, metric_names

    names = metric_names(task.label_type)
    preps = [PreparedScores(y, p, task.label_type, task.classes) for p in probs]
    ones = np.ones((1, len(y)))
    point = {k: float(np.mean([pr.compute(ones, [k])[k][0] for pr in preps])) for k in names}
    vals: dict[str, list[np.ndarray]] = {k: [] for k in names}
    bad = []
    for W in iter_resample_weights(len(y), n_boot, seed, groups):
        bad.append(preps[0].degenerate(W))
        per = [pr.compute(W, names) for pr in preps]
        for k in names:
            vals[k].append(np.mean([v[k] for v in per], axis=0))
    ok = ~np.concatenate(bad)
    out = {}
    for k in names:
        v = np.concatenate(vals[k])
        v = v[ok & np.isfinite(v)]
        lo, hi = np.quantile(v, [0.025, 0.975]) if v.size else (np.nan, np.nan)
        out[k] = {"value": _num(point[k]), "ci_low": _num(lo), "ci_high": _num(hi)}
    return out


def _block(cd: CaseData, task: Task, p_tes: list[np.ndarray], p_vas: list[np.ndarray], seeds: Sequence[int],
           *, n_boot: int, score_kw: dict[str, Any]) -> dict[str, Any]:
    """The scorer's block of the reference run plus ``runs`` (and, with several runs, the mean's CI)."""
    from midol_cli.eval.metrics import classification_metrics, degenerate_prediction, metric_names
    from midol_cli.eval.results import seeds_block
    from midol_cli.eval.scoring import score_test

    te, va = cd.mask("test"), cd.mask("val")
    boot_seed = int(seeds[0])
    block = score_test(cd.df, cd.y, cd.groups, te, p_tes[0], task, val=(cd.y[va], p_vas[0]), n_boot=n_boot,
                       seed=boot_seed, **score_kw)
    names = metric_names(task.label_type)
    per_run = [{k: classification_metrics(cd.y[te], p, task.label_type, task.classes)[k] for k in names}
               for p in p_tes]
    block["runs"] = seeds_block(per_run, seeds[: len(p_tes)])
    if len(p_tes) > 1:
        block["metrics"] = _mean_ci(cd.y[te], p_tes, task, cd.groups[te], n_boot, boot_seed)
        block["metrics_of"] = f"mean over {len(p_tes)} runs; CI: bootstrap of that mean over patients"
    block["reference_run"] = boot_seed
    block["degenerate"] = degenerate_prediction(p_tes[0], task.label_type, task.classes)
    block["seeds"] = [int(s) for s in seeds[: len(p_tes)]]
    return block


def run_case_protocols(cd: CaseData, task: Task, *, protocols: Sequence[str] = CASE_PROTOCOLS, runs: int = 5,
                       seed: int = 0, recipe: MILRecipe = MILRecipe(), n_boot: int = 1000,
                       subgroups: Sequence[str] = (), group_unit: str = "", aggregation: str = "mean",
                       min_positives: int | None = None, log: Callable[[str], None] | None = None) -> CaseRun:
    """Run ``protocols`` (of ``CASE_PROTOCOLS``) on the cases ``cd`` (``eval.cases.case_data``).

    ``runs`` abmil runs with seeds ``seed .. seed + runs - 1``; ``subgroups`` / ``group_unit`` /
    ``aggregation`` / ``min_positives`` go to the scorer (``eval.scoring.score_test``). Returns a
    ``CaseRun`` whose ``summary`` holds ``protocols`` (one block each, shaped as the other protocols') and
    ``case_level`` (unit, case counts, skipped cases, the abmil recipe and its runs' epochs)."""
    from midol_cli.eval.cis import _num
    from midol_cli.eval.metrics import chance_metrics

    unknown = [p for p in protocols if p not in CASE_PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(f"case-level protocols are {', '.join(CASE_PROTOCOLS)}, "
                         f"not {', '.join(unknown) or 'none'}")
    if runs < 1:
        raise ValueError("runs must be at least 1")
    say = log or (lambda _m: None)
    seeds = [int(seed) + i for i in range(runs)]
    score_kw = {"subgroups": subgroups, "group_unit": group_unit, "aggregation": aggregation,
                "min_positives": min_positives}
    out = CaseRun({}, test_index=np.flatnonzero(cd.mask("test")))
    blocks: dict[str, Any] = {}
    fits: list[dict[str, Any]] = []
    for name in protocols:
        say(f"{task.name}: {name} on {int(cd.mask('train').sum())} train / {int(cd.mask('val').sum())} val "
            f"{cd.unit}s")
        if name == "abmil":
            p_tes, p_vas, run, fits = _abmil_runs(cd, task, seeds, recipe, say)
            out.attention = run.attention
            blocks[name] = _block(cd, task, p_tes, p_vas, seeds, n_boot=n_boot, score_kw=score_kw)
            blocks[name]["recipe"] = recipe.record()
            blocks[name]["fits"] = fits
            out.pred_rows += [(name, s, p) for s, p in zip(seeds, p_tes, strict=True)]
        else:
            p_te, p_va, extra = _baseline(name, cd, task)
            blocks[name] = {**_block(cd, task, [p_te], [p_va], seeds[:1], n_boot=n_boot, score_kw=score_kw),
                            **extra, "deterministic": True}
            out.pred_rows.append((name, None, p_te))
    tr, va, te = cd.mask("train"), cd.mask("val"), cd.mask("test")
    chance = chance_metrics(cd.y[tr], cd.y[te], task.label_type, task.classes)
    out.summary = {
        "protocols": blocks,
        "chance": {k: _num(v) for k, v in chance.items()},
        "n": {"train": int(tr.sum()), "val": int(va.sum()), "test": int(te.sum())},
        "val_source": cd.val_source,
        "notes": list(cd.notes),
        "case_level": {
            "unit": cd.unit, "runs": runs, "seeds": seeds,
            "n_instances": {s: int(cd.bags.sizes()[cd.mask(s)].sum()) for s in ("train", "val", "test")},
            "n_skipped": len(cd.skipped), "skipped": cd.skipped[:20],
        },
    }
    return out


def write_case_predictions(path: str | Path, cd: CaseData, task: Task, run: CaseRun,
                           model_info: dict[str, Any]) -> None:
    """``predictions.parquet`` of the case protocols (one row per test case, protocol and abmil seed;
    ``sample_id`` is the case id, ``group`` its patient), so ``report --compare`` pairs models on cases."""
    from midol_cli.eval.scoring import write_predictions

    write_predictions(Path(path), cd, cd.mask("test"), task, run.pred_rows, model_info)


def write_attention(path: str | Path, cd: CaseData, run: CaseRun) -> None:
    """``attention.parquet`` (atomic): one row per test instance and abmil seed: ``case``, ``sample_id``,
    ``seed``, ``attention`` (sums to 1 over a case's instances) and the instance's ``meta`` (slide, x, y,
    tile geometry; volume, frame): what ``report.heatmaps`` draws from, without the embeddings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from midol_cli.artifacts import atomic_path

    cols: dict[str, list[Any]] = {"case": [], "sample_id": [], "seed": [], "attention": [], "meta": []}
    for s, atts in sorted(run.attention.items()):
        for j, i in enumerate(run.test_index):
            rows = cd.instance_rows(int(i))
            cols["case"] += rows["case"].astype(str).tolist()
            cols["sample_id"] += rows["sample_id"].astype(str).tolist()
            cols["meta"] += rows["meta"].astype(str).tolist()
            cols["seed"] += [int(s)] * len(rows)
            cols["attention"] += [float(a) for a in atts[j]]
    types = {"seed": pa.int32(), "attention": pa.float32()}
    table = pa.table({k: pa.array(v, type=types.get(k, pa.string())) for k, v in cols.items()})
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp)


def case_summary(run: CaseRun, task: Task, model_info: dict[str, Any], data_hash: str,
                 split_source: str = "", data_root: str = "") -> dict[str, Any]:
    """A whole ``summary.json`` (the schema ``report`` reads) of the case protocols of ``run``;
    ``data_root``: the folder the slides' and volumes' paths are relative to (the manifest's root), for
    heatmaps drawn later from the run dir alone."""
    from midol_cli.artifacts import SUMMARY_SCHEMA, model_block, provenance

    return {
        "schema": SUMMARY_SCHEMA,
        "model": model_block(model_info),
        "task": {**task.to_dict(), "data_hash": data_hash, "split_source": split_source or task.split_source},
        "primary_metric": task.metric,
        **run.summary,
        "provenance": provenance(stage="probe", case_level=run.summary["case_level"]["unit"],
                                 data_root=str(data_root)),
    }


def write_case_results(out_dir: str | Path, cd: CaseData, task: Task, run: CaseRun,
                       model_info: dict[str, Any], data_hash: str, data_root: str = "") -> dict[str, Any]:
    """``summary.json``, ``predictions.parquet`` and ``attention.parquet`` (when abmil ran) into ``out_dir``
    (``results/<model>/<task>/``); returns the summary."""
    from midol_cli.artifacts import PREDICTIONS_NAME, SUMMARY_NAME, write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = case_summary(run, task, model_info, data_hash, data_root=data_root)
    write_case_predictions(out / PREDICTIONS_NAME, cd, task, run, model_info)
    if run.attention:
        write_attention(out / ATTENTION_NAME, cd, run)
    write_json_atomic(out / SUMMARY_NAME, summary)
    return summary
