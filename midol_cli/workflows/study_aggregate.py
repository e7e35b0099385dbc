"""The study record (``aggregate``): per-variant numbers over seeds for every protocol the study compares,
the pooled paired bootstrap for reference, the held-out representation metrics, fine-tuning and the
degenerate probes. ``report/study.py`` adds the seed-level comparison and the honest means (issue 28.1,
28.4); no mean across tasks is taken here, since the tasks' metrics may differ (AUROC and accuracy)."""

from __future__ import annotations

from typing import Any

from midol_cli.eval.seeds import mean_std

BASELINE = "midol"
# ``cfg`` below is a ``workflows.study.StudyConfig`` (not imported: study.py imports this module).
StudyConfig = Any


def model_id(variant: str, seed: int) -> str:
    """A study model's id: ``<variant>-s<seed>`` (its run dir and results folder name)."""
    return f"{variant}-s{seed}"


def protocol_metric(block: dict[str, Any], task_metric: str) -> str:
    """The metric a protocol's block is compared on: the task's primary metric where the block has it
    (linear, k-NN), else the block's own ``primary`` or its first metric (retrieval's mAP@10)."""
    metrics = block.get("metrics") or {}
    if task_metric in metrics:
        return task_metric
    return str(block.get("primary_metric") or block.get("primary") or next(iter(metrics), task_metric))


def _value(summary: dict[str, Any], protocol: str, metric: str) -> float | None:
    return ((summary["protocols"][protocol].get("metrics") or {}).get(metric) or {}).get("value")


def _task_row(cfg: StudyConfig, summaries, task) -> dict[str, Any]:
    """One task's numbers: the first protocol's metric per variant (``variants``: what the paired
    statistics compare), linear accuracy, and every chosen protocol under ``protocols``."""
    variants = [v.name for v in cfg.variants]
    t, m = task.spec.name, task.spec.metric
    first = summaries[(variants[0], cfg.seeds[0])][t]
    protocols: dict[str, Any] = {}
    for p in cfg.protocols:
        pm = protocol_metric(first["protocols"][p], m)
        protocols[p] = {"metric": pm, "variants": {
            v: mean_std([_value(summaries[(v, s)][t], p, pm) for s in cfg.seeds]) for v in variants}}
    main = protocols[cfg.protocols[0]]
    return {
        "metric": main["metric"],
        "modality": first["task"]["modality"],
        "chance": (first.get("chance") or {}).get(main["metric"]),
        "n_test": first["n"]["test"],
        "pooled": bool(getattr(task, "pooled", False)),
        "variants": main["variants"],
        "accuracy": {v: mean_std([_value(summaries[(v, s)][t], "linear", "accuracy") for s in cfg.seeds])
                     for v in variants},
        "protocols": protocols,
    }


def _mean_accuracy(cfg: StudyConfig, per_task: dict[str, Any]) -> dict[str, Any]:
    """Per variant, the per-seed mean of every task's linear accuracy (one metric, so a mean is honest);
    the pooled task, which sees every task's images again, is left out."""
    out = {}
    for v in (v.name for v in cfg.variants):
        per_seed = []
        for i, _ in enumerate(cfg.seeds):
            vals = [row["accuracy"][v]["values"][i] for row in per_task.values() if not row["pooled"]]
            per_seed.append(None if not vals or any(x is None for x in vals) else sum(vals) / len(vals))
        out[v] = mean_std(per_seed)
    return out


def _pooled_paired(cfg: StudyConfig) -> dict[str, dict[str, Any]]:
    """The pooled bootstrap of the first protocol per task (patients and seeds resampled together), kept
    for reference beside the seed-level answer, with Holm over the tasks and DeLong per seed on binary
    AUROC tasks. Its old cross-task "mean" (primary metrics averaged, AUROC with accuracy) is dropped.
    A retrieval protocol resamples its per-query values (``study_protocols.pooled_query_differences``)."""
    from midol_cli.eval.paired import delong_by_seed, holm, load_task_scores, paired_differences
    from midol_cli.eval.retrieval import PROTOCOLS
    from midol_cli.workflows.study_protocols import pooled_query_differences

    variants = [v.name for v in cfg.variants]
    tasks = [t.spec.name for t in cfg.tasks]
    ids = {v: {s: model_id(v, s) for s in cfg.seeds} for v in variants}
    first = cfg.protocols[0]
    if first in PROTOCOLS:  # per-query values, not class probabilities (issue 29)
        scores = []
        diffs = pooled_query_differences(cfg.out / "results", tasks, ids, BASELINE, first, n_boot=cfg.n_boot)
    else:
        scores = [load_task_scores(cfg.out / "results", t, ids, protocol=first) for t in tasks]
        diffs = paired_differences(scores, BASELINE, [v for v in variants if v != BASELINE],
                                   n_boot=cfg.n_boot)
    paired = {v: {k: d.to_dict() for k, d in per.items() if k != "mean"} for v, per in diffs.items()}
    by_task = {ts.task: ts for ts in scores}
    for v, per in paired.items():
        names = [t for t in tasks if t in per]
        for t, adj in zip(names, holm([per[t]["p_value"] for t in names]), strict=True):
            per[t]["p_holm"] = adj
            dl = delong_by_seed(by_task[t], v, BASELINE, per[t]["seeds"]) if t in by_task else {}
            if dl:
                per[t]["delong"] = dl
    return paired


def _representation(cfg: StudyConfig, reps) -> dict[str, Any]:
    """Per variant, the held-out representation metrics over seeds, with which split and how many
    images they read (issue 28.5)."""
    out: dict[str, Any] = {}
    for v in (v.name for v in cfg.variants):
        rs = [reps[(v, s)] for s in cfg.seeds]
        mods = sorted({m for r in rs for m in r.get("per_modality", {})})
        out[v] = {
            "split": rs[0].get("split", "all"),
            "n_images": rs[0].get("n_images"),
            "n_excluded": rs[0].get("n_excluded"),
            "modality_silhouette": mean_std([r.get("modality_silhouette") for r in rs]),
            "router_accuracy": mean_std([r.get("router_accuracy") for r in rs]),
            "effective_rank": {
                m: mean_std([r["per_modality"].get(m, {}).get("effective_rank") for r in rs]) for m in mods
            },
            "knn_accuracy": {
                m: mean_std([r["per_modality"].get(m, {}).get("knn_accuracy") for r in rs]) for m in mods
            },
        }
    return out


def _retrieval(cfg: StudyConfig, summaries) -> dict[str, Any]:
    """Per pooled task, the cross-modality retrieval figure (issue 28.6): each variant's mAP@10 and the
    share of the top 10 from another modality, over seeds."""
    out: dict[str, Any] = {}
    for t in (t for t in cfg.tasks if getattr(t, "pooled", False)):
        name = t.spec.name
        out[name] = {m: {v.name: mean_std([_value(summaries[(v.name, s)][name], "retrieval", m)
                                           for s in cfg.seeds]) for v in cfg.variants}
                     for m in ("map_10", "cross_modality_10")}
    return out


def _degenerate(cfg: StudyConfig, summaries) -> list[dict[str, Any]]:
    return [
        {"model": model_id(v.name, s), "task": t.spec.name, "top": blk["top"], "share": blk["share"]}
        for v in cfg.variants
        for s in cfg.seeds
        for t in cfg.tasks
        for blk in [summaries[(v.name, s)][t.spec.name]["protocols"]["linear"].get("degenerate") or {}]
        if blk.get("flag")
    ]


def _finetune(cfg: StudyConfig, finetunes) -> dict[str, Any]:
    """``{task: {protocol: {variant: {seed: primary metric on test}}}}`` of the fine-tuning arm."""
    metric_of = {t.spec.name: t.spec.metric for t in [*cfg.tasks, *cfg.finetune_tasks]}
    out: dict[str, Any] = {}
    for (v, s), per_task in finetunes.items():
        for t, blocks in per_task.items():
            for protocol, blk in blocks.items():
                val = blk.get("metrics", {}).get(metric_of[t], {}).get("value")
                out.setdefault(t, {}).setdefault(protocol, {}).setdefault(v, {})[str(s)] = val
    return out


def aggregate(cfg: StudyConfig, summaries, reps, finetunes) -> dict[str, Any]:
    """The study record's numbers: per-task rows, mean accuracy, the pooled paired bootstrap, the
    pooled task's cross-modality retrieval, representation metrics, degenerate probes and fine-tuning.
    ``summaries[(variant, seed)][task]`` are summary.json dicts, ``reps`` the held-out representation
    metrics, ``finetunes[(variant, seed)][task]`` fine-tuning blocks."""
    per_task = {t.spec.name: _task_row(cfg, summaries, t) for t in cfg.tasks}
    return {
        "tasks": per_task,
        "mean_accuracy": _mean_accuracy(cfg, per_task),
        "paired": _pooled_paired(cfg),
        "retrieval": _retrieval(cfg, summaries),
        "representation": _representation(cfg, reps),
        "degenerate": _degenerate(cfg, summaries),
        "finetune": _finetune(cfg, finetunes),
    }
