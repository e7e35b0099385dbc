"""`midol quickstart`: raw folders (one per modality) to a pre-trained, evaluated model.

Every stage is the normal command with its normal files, so a re-run resumes where the last one
stopped (ingest reuses unchanged files, shard completes its set, pre-training resumes from the newest
checkpoint and skips a finished run, embeddings come from the cache) and a user can take over from any
stage by hand::

    OUT/quickstart.yaml            the resolved settings (give it back: midol quickstart OUT/quickstart.yaml)
    OUT/manifests/<modality>.parquet  (+ .ingest.yaml)
    OUT/shards/                    (+ shard.yaml)
    OUT/runs/<recipe name>/        pre-training run dir (recipe.yaml, run.json, checkpoints, export/)
    OUT/results/<model>/<task>/    probes (+ probe.yaml)
    OUT/report.md                  (+ report.report.yaml)

All settings of all stages are checked before the first stage starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError
from midol_cli.progress import Reporter
from midol_cli.workflows.settings import QuickstartSettings


def folder_modalities(raw_root: Path, mapping: dict[str, str]) -> dict[str, str]:
    """``{sub-folder: modality}``: a folder named after its modality (or an alias of one: cxr, retina,
    derm, histology, ...), or mapped in ``mapping``; any other folder is a one-line error naming it."""
    from midol_cli.modalities import _ALIASES, BUILTIN_MODALITIES, check_modality

    if not raw_root.is_dir():
        raise UsageError(f"RAW_ROOT '{raw_root}' is not a folder")
    folders = sorted(p.name for p in raw_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UsageError(f"RAW_ROOT '{raw_root}' has no sub-folders: put each modality's images in its own "
                         "folder "
                         f"named after it ({', '.join(BUILTIN_MODALITIES)})")
    unknown = sorted(set(mapping) - set(folders))
    if unknown:
        raise UsageError(f"modalities.{unknown[0]}: '{raw_root / unknown[0]}' is not a sub-folder of "
                         "RAW_ROOT")
    out: dict[str, str] = {}
    for name in folders:
        if name in mapping:
            out[name] = check_modality(mapping[name], allow_new=True)
            continue
        key = name.strip().lower()
        mod = key if key in BUILTIN_MODALITIES else _ALIASES.get(key)
        if mod is None:
            raise UsageError(
                f"cannot tell the modality of folder '{raw_root / name}': name it after its modality "
                f"({', '.join(BUILTIN_MODALITIES)}) or map it with modalities.{name}=MODALITY")
        out[name] = mod
    dup = [m for m in set(out.values()) if list(out.values()).count(m) > 1]
    if dup:
        both = [f for f, m in out.items() if m == dup[0]]
        raise UsageError(f"folders {', '.join(repr(str(raw_root / f)) for f in both)} are both {dup[0]}: "
                         "give each modality one folder")
    return out


def plan_quickstart(s: QuickstartSettings) -> dict[str, Any]:
    """Every stage's settings, validated at once; nothing runs."""
    from midol_cli.modalities import BUILTIN_MODALITIES
    from midol_cli.recipes import PretrainRecipe, _merge, validate
    from midol_cli.workflows.settings import IngestSettings, ProbeSettings, ShardSettings, validate_settings

    out = s.out
    folders = folder_modalities(s.raw_root, dict(s.modalities))
    mods = list(folders.values())
    problems: list[str] = []

    def check(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except UsageError as e:
            problems.append(str(e))
            return None

    fixed = {"raw_dir", "modality", "out"}
    own = (("ingest", fixed), ("shard", {"manifests", "out"}), ("probe", {"weights", "data", "out"}))
    for section, keys in own:
        clash = sorted(set(getattr(s, section)) & keys)
        if clash:
            problems.append(f"{section}.{clash[0]}: set by quickstart itself; leave it out")
    ingest = {m: check(lambda f=f, m=m: validate_settings(IngestSettings, {
        **s.ingest, "raw_dir": s.raw_root / f, "modality": m, "out": out / "manifests" / f"{m}.parquet",
        "new_modality": m not in BUILTIN_MODALITIES}, "quickstart ingest settings"))
        for f, m in folders.items()}
    shard = check(lambda: validate_settings(ShardSettings, {
        **s.shard, "manifests": [out / "manifests" / f"{m}.parquet" for m in mods], "out": out / "shards"},
        "quickstart shard settings"))
    base, note = _base_recipe(s.recipe)
    data = _merge(_merge(base, {"data": {"modalities": mods}}), s.pretrain)
    data = _merge(data, {"data": {"shards": str(out / "shards")}})
    recipe = check(lambda: validate(PretrainRecipe, data, "quickstart pre-training recipe"))
    probe = {w: check(lambda w=w: validate_settings(ProbeSettings, {
        **s.probe, "task": "auto", "weights": w, "data": "d", "out": out / "results"}, "quickstart probe "
                                                                                       "settings"))
        for w in weights_of(s, recipe)}
    if problems:
        raise UsageError("; ".join(problems))
    return {"folders": folders, "ingest": ingest, "shard": shard, "recipe": recipe, "probe": probe,
            "note": note}


def gpu_present() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _base_recipe(recipe: Path | None) -> tuple[dict[str, Any], str]:
    """The pre-training recipe's keys: ``recipe``'s; without one, the built-in Swin-B recipe on a GPU, and
    on a machine without one the CPU-sized smoke recipe (with the line that says so)."""
    from midol_cli.recipe_files import resolve_recipe
    from midol_cli.recipes import read_yaml

    if recipe is not None:
        return read_yaml(recipe), ""
    if gpu_present():
        return {}, ""
    return read_yaml(resolve_recipe("smoke")), (
        "quickstart: no GPU here, so the CPU-sized recipe smoke is used (the default Swin-B recipe is paper "
        "scale); pass --recipe to choose another")


def weights_of(s: QuickstartSettings, recipe: Any) -> list[str]:
    """The models quickstart probes: its run, and (``baseline``) the same encoder at random init."""
    run_dir = s.out / "runs" / (recipe.name if recipe is not None else "run")
    return [str(run_dir)] + ([f"random:{run_dir}"] if s.baseline else [])


def run(s: QuickstartSettings, reporter: Reporter) -> dict[str, Any]:
    """Run every stage of ``plan_quickstart(s)``, each through its own ``run``; where each output is."""
    from midol_cli.paths import writable_out
    from midol_cli.workflows import ingest, report, shard
    from midol_cli.workflows.probe import WarningsOnly
    from midol_cli.workflows.settings import write_settings

    plan = plan_quickstart(s)
    out = s.out
    writable_out(out)
    out.mkdir(parents=True, exist_ok=True)
    write_settings(s, out, "quickstart", folder=True)
    if plan["note"]:
        reporter.line(plan["note"])
    res: dict[str, Any] = {"out": str(out), "manifests": {}, "probes": [], "not_probed": {}}
    log = reporter.line

    log(f"quickstart 1/5 ingest: {len(plan['ingest'])} folder(s) -> {out / 'manifests'}")
    for m, ing in plan["ingest"].items():
        summ = ingest.run(ing, reporter)
        res["manifests"][m] = summ["manifest"]
        log(f"  {m}: {summ['ok']} ok, {summ['rejected']} rejected, {summ['reused']} reused -> "
            f"{summ['manifest']}")

    log(f"quickstart 2/5 shard -> {out / 'shards'}")
    index = shard.run(plan["shard"], WarningsOnly(reporter))  # its other lines repeat what we say
    log(f"  {index['totals']['shards']} shards, {index['totals']['samples']} samples")
    res["run"] = _pretrain(plan["recipe"], out, reporter)
    _probes(plan, res, reporter)
    if res["probes"]:
        from midol_cli.workflows.settings import ReportSettings

        log(f"quickstart 5/5 report -> {out / 'report.md'}")
        report.run(ReportSettings(results_dir=out / "results", out=out / "report.md"), reporter)
        res["report"] = str(out / "report.md")
    else:
        log("quickstart 5/5 report: skipped, no modality has labels to probe")
    return res


def _pretrain(recipe: Any, out: Path, reporter: Reporter) -> str:
    """Stage 3: pre-train (resumed), or reuse a complete run."""
    from midol_cli.workflows import pretrain
    from midol_cli.workflows.settings import PretrainSettings
    from midol_cli.workflows.study import _run_complete as run_complete

    run_dir = out / "runs" / recipe.name
    if run_complete(run_dir, recipe.train.steps):
        reporter.line(f"quickstart 3/5 pretrain: {run_dir} is complete ({recipe.train.steps} steps); reused")
    else:
        reporter.line(f"quickstart 3/5 pretrain: {recipe.model.arch}, {recipe.train.steps} steps "
                      f"-> {run_dir}")
        pretrain.run(recipe, PretrainSettings(out=run_dir, resume="auto"), reporter)
    return str(run_dir)


def _probes(plan: dict[str, Any], res: dict[str, Any], reporter: Reporter) -> None:
    """Stage 4: every labelled modality probed (--task auto) with each model of ``plan['probe']``."""
    from midol_cli.tasks.custom import auto_tasks, read_labels_table
    from midol_cli.workflows import probe

    log = reporter.line
    log("quickstart 4/5 embed + probe (--task auto) on every labelled modality")
    for m, manifest in res["manifests"].items():
        try:
            auto_tasks(read_labels_table(Path(manifest)), manifest)
        except UsageError as e:
            res["not_probed"][m] = str(e)
            log(f"  {m}: not probed ({e})")
            continue
        for ps in plan["probe"].values():
            summ = probe.run(ps.model_copy(update={"data": Path(manifest)}), probe.WarningsOnly(reporter))
            v = summ["protocols"]["linear"]["metrics"][summ["primary_metric"]]
            log(f"  {summ['task']['name']} / {summ['model']['id']}: linear {summ['primary_metric']} "
                f"{_num(v['value'])} [{_num(v['ci_low'])}, {_num(v['ci_high'])}]")
            res["probes"].append(summ["out_dir"])


def _num(x: float | None) -> str:
    """A metric for the log: four decimals, 'n/a' where it is undefined (None, e.g. one class on test)."""
    return "n/a" if x is None else f"{x:.4f}"
