"""``midol study``: the paper's claim as one command, on the user's own data.

For every variant x seed it pre-trains a normal run dir (``OUT/runs/<variant>-s<seed>``; a completed
run is reused, a killed one resumed), probes every task with the frozen encoder (linear probe, k-NN)
into ``OUT/results/<variant>-s<seed>/<task>/``, embeds the evaluation data for the representation
metrics, optionally fine-tunes, and returns the study record (``report.study`` renders it as
``OUT/study.json``, ``OUT/study.md`` and ``OUT/study.png``):

- per task and on average, each variant's primary metric as mean +- std over seeds;
- the paired difference of each variant against ``midol`` (``eval/paired.py``: the same test
  images, patients and seeds resampled together) with a 95% CI, a bootstrap p-value and its Holm
  adjustment over the tasks (``p_holm``), plus DeLong's test per seed on binary AUROC tasks
  (``delong``: one test per pre-training seed, each seed being one pair of fixed models);
- modality silhouette, router accuracy, per-modality effective rank and k-NN accuracy, on the
  held-out (val, test) images only: never the pre-training images (issue 28.5);
- the probes flagged degenerate, and each task's chance level.

Tasks are built-in names, task files, ``auto``, or ``pooled`` (``tasks/pooled.py``: every modality's
classes in one task, issue 28.6). ``protocols`` picks which of each summary.json's protocols the study
compares (the first drives the paired statistics; default ``linear``).

Variants are recipe switches (METHOD.md, "Ablations"): ``midol`` is the recipe as given, ``no_moe``
one shared expert, ``no_inter`` / ``no_intra`` one term off, ``distill`` / ``contrastive`` the other
reading of the intra term, ``random`` no pre-training at all (the seed's own initialisation, see
``train.pretrain.export_initial``), ``random_bn`` that initialisation with its BatchNorm statistics
re-estimated on the pre-training images (``eval/floor.py``, the fair floor). A custom variant is
``NAME:KEY=VALUE[,KEY=VALUE...]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError
from midol_cli.progress import Reporter
from midol_cli.workflows.study_aggregate import BASELINE, model_id
from midol_cli.workflows.study_finetune import finetune_arm
from midol_cli.workflows.study_protocols import check_finetune_methods, check_protocols, protocol_switches

RANDOM = "random"
RANDOM_BN = "random_bn"
# name -> recipe overrides; None: no pre-training.
BUILTIN_VARIANTS: dict[str, list[str] | None] = {
    "midol": [],
    # The matched no_moe (issue 28.2): only the expert count changes; the old form is no_moe_confounded.
    "no_moe": ["projector.shared_expert=true", "projector.match_params=true",
               "projector.modality_router=true", "loss.negatives=modality"],
    # negatives left at their default (all, for a shared expert): old no_moe runs keep their recipe hash
    "no_moe_confounded": ["projector.shared_expert=true"],
    "negatives_all": ["loss.negatives=all"],
    "route_detach": ["loss.route_detach=true"],
    "experts2": ["projector.experts_per_modality=2"],
    "no_inter": ["loss.w_inter=0"],
    "no_intra": ["loss.w_intra=0"],
    "distill": ["loss.intra=distill"],
    "contrastive": ["loss.intra=contrastive"],
    "random": None,
    "random_bn": None,
}
# What each built-in variant changes against midol (the study table prints it); a custom variant's
# change is its overrides.
VARIANT_CHANGES: dict[str, str] = {
    "midol": "the recipe as given",
    "no_moe": "one shared expert (projector size, negatives and router term matched to midol)",
    "no_moe_confounded": "one shared expert of the same width (1/K of the projector), negatives from every "
                         "modality, no router term",
    "no_inter": "no inter-modality term",
    "no_intra": "no intra-modality term",
    "distill": "the distill reading of the intra term",
    "contrastive": "the contrastive reading of the intra term",
    "negatives_all": "intra-term negatives (or centre) from every modality",
    "route_detach": "the router's loss does not reach the encoder",
    "experts2": "two experts per modality, learned top-1 gate, load balancing",
    "random": "floor: no pre-training (the seed's own initialisation, BatchNorm statistics untouched)",
    "random_bn": "floor: no pre-training (the seed's own initialisation), BatchNorm statistics "
                 "re-estimated on the pre-training images without labels",
}
STUDY_SCHEMA = 2  # 2: finetune is {task: {protocol: {variant: {seed: value}}}}


@dataclass
class Variant:
    name: str
    overrides: list[str] | None  # None: the random-init baseline

    @property
    def pretrained(self) -> bool:
        return self.overrides is not None


@dataclass
class StudyTask:
    spec: Any  # tasks.TaskSpec
    data: Path  # manifest or shard dir the task is probed on
    pooled: bool = False  # tasks/pooled.py: every modality's single-label images, modality:label classes


@dataclass
class StudyConfig:
    recipe_path: Path
    overrides: list[str]
    data: Path
    tasks: list[StudyTask]
    variants: list[Variant]
    seeds: list[int]
    out: Path
    n_boot: int = 2000
    probe_boot: int = 200
    finetune_recipe: Path | None = None
    finetune_variants: list[str] = field(default_factory=lambda: [RANDOM, BASELINE])
    finetune_seeds: int = 1
    workers: int = 1
    device: str | None = None
    protocols: list[str] = field(default_factory=lambda: ["linear"])
    finetune_methods: list[str] = field(default_factory=lambda: ["full"])
    # Fine-tuned only, never probed: the segmentation tasks of a study with --finetune (issue 29.4)
    finetune_tasks: list[StudyTask] = field(default_factory=list)

    def __post_init__(self) -> None:  # before any pre-training (issue 29)
        check_protocols(self.protocols)
        if self.finetune_recipe is not None:
            check_finetune_methods(self.finetune_methods, [*self.tasks, *self.finetune_tasks])


# --------------------------------------------------------------------------- parsing


def parse_variants(names: Sequence[str], custom: Sequence[str], recipe_intra: str) -> list[Variant]:
    """Built-in names (``other_reading`` = the intra reading the recipe does not use) plus custom
    ``NAME:KEY=VALUE,...`` variants; ``midol`` is always first (it is the baseline of every comparison)."""
    out: dict[str, Variant] = {}
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name == "other_reading":
            name = "contrastive" if recipe_intra == "distill" else "distill"
        if name not in BUILTIN_VARIANTS:
            import difflib

            valid = sorted({*BUILTIN_VARIANTS, "other_reading"})
            close = difflib.get_close_matches(name, valid, n=1)
            hint = (f"; did you mean '{close[0]}'?" if close else "") + f" (built-in: {', '.join(valid)})"
            raise UsageError(f"unknown variant '{name}'{hint}; custom ones are --variant NAME:KEY=VALUE,...")
        if name == recipe_intra:
            raise UsageError(f"variant '{name}' is the recipe itself (its loss.intra is already "
                             f"{recipe_intra})")
        ov = BUILTIN_VARIANTS[name]
        out[name] = Variant(name, None if ov is None else list(ov))
    for spec in custom:
        if ":" not in spec:
            raise UsageError(f"--variant '{spec}' must look like NAME:KEY=VALUE[,KEY=VALUE...]")
        name, body = spec.split(":", 1)
        name = name.strip()
        if not name or not all(c.isalnum() or c in "_-." for c in name):
            raise UsageError(f"--variant '{spec}': the name must be letters, digits, '_', '-' or '.'")
        if name in out or name in BUILTIN_VARIANTS:
            raise UsageError(f"--variant '{spec}': the name '{name}' is taken (a built-in or an earlier "
                             "variant)")
        ovs = [t.strip() for t in body.split(",") if t.strip()]
        if not ovs or any("=" not in t for t in ovs):
            raise UsageError(f"--variant '{spec}': list KEY=VALUE overrides after the colon")
        out[name] = Variant(name, ovs)
    if BASELINE not in out:
        out = {BASELINE: Variant(BASELINE, []), **out}
    ordered = [out[BASELINE]] + [v for k, v in out.items() if k != BASELINE]
    if len(ordered) < 2:
        raise UsageError("a study needs at least one variant besides midol (e.g. --variants midol,no_moe)")
    return ordered


# --------------------------------------------------------------------------- running


def _recipe_for(cfg: StudyConfig, variant: Variant, seed: int):
    from midol_cli.recipes import PretrainRecipe, load_recipe

    extra = [] if variant.overrides is None else list(variant.overrides)
    return load_recipe(
        PretrainRecipe,
        cfg.recipe_path,
        [*cfg.overrides, f"data.shards={cfg.data}", *extra, f"train.seed={seed}"],
    )


def _run_complete(run_dir: Path, steps: int) -> bool:
    from midol_cli.checkpoint import CKPT_RE, list_checkpoints
    from midol_cli.models.export import ENCODER_FILE

    found = list_checkpoints(run_dir)
    if not found or not (run_dir / "export" / ENCODER_FILE).is_file():
        return False
    return int(CKPT_RE.match(found[-1].name)[1]) >= steps


def _recorded_hash(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("recipe_hash")
    except (OSError, ValueError):
        return None


def ensure_run(cfg: StudyConfig, variant: Variant, seed: int, reporter: Reporter) -> tuple[Path, float]:
    """The run dir of ``variant`` at ``seed``: pre-trained (or resumed) unless already complete.

    Returns ``(run_dir, seconds spent here)``. A run dir made with another recipe is an error, never
    silently reused: the study would compare something else than it says.
    """
    from midol_cli.artifacts import write_json_atomic
    from midol_cli.recipes import recipe_hash
    from midol_cli.train.outputs import export_initial
    from midol_cli.train.pretrain import run_pretrain

    recipe = _recipe_for(cfg, variant if variant.pretrained else Variant(BASELINE, []), seed)
    run_dir = cfg.out / "runs" / model_id(variant.name, seed)
    t0 = time.perf_counter()
    if not variant.pretrained:
        floor = None
        if variant.name == RANDOM_BN:
            floor = {"bn_data": str(cfg.data.resolve()), "bn_split": "train"}
        if ((run_dir / "export").is_dir() and _recorded_hash(run_dir) == recipe_hash(recipe)
                and _floor_marker(run_dir) == floor):
            return run_dir, 0.0
        reporter.line(f"{model_id(variant.name, seed)}: exporting the initial (random) encoder"
                      + (", BatchNorm statistics re-estimated on the shard images" if floor else ""))
        (run_dir / FLOOR_MARKER).unlink(missing_ok=True)
        export_initial(recipe, run_dir)
        if floor is not None:
            floor["batches"] = bn_floor_export(run_dir, cfg.data, cfg.workers)
            write_json_atomic(run_dir / FLOOR_MARKER, floor)
        return run_dir, time.perf_counter() - t0
    recorded = _recorded_hash(run_dir)
    if recorded is not None and recorded != recipe_hash(recipe):
        raise UsageError(
            f"run dir '{run_dir}' was pre-trained with another recipe (hash {recorded}, now "
            f"{recipe_hash(recipe)}); "
            "remove it, or give the study another --out"
        )
    if _run_complete(run_dir, recipe.train.steps):
        reporter.line(f"{model_id(variant.name, seed)}: reusing the completed run in {run_dir}")
        return run_dir, 0.0
    reporter.line(f"{model_id(variant.name, seed)}: pre-training {recipe.train.steps} steps into {run_dir}")
    run_pretrain(recipe, run_dir, resume="auto", reporter=reporter)
    return run_dir, time.perf_counter() - t0


FLOOR_MARKER = "bn_floor.json"


def _floor_marker(run_dir: Path) -> dict[str, Any] | None:
    """What ``random_bn``'s re-estimation used (``bn_data``, ``bn_split``), None where it did not run."""
    try:
        rec = json.loads((run_dir / FLOOR_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {"bn_data": rec.get("bn_data"), "bn_split": rec.get("bn_split")}


def bn_floor_export(run_dir: Path, data: Path, workers: int = 0) -> int:
    """Rewrite ``run_dir``'s exported encoder with its BatchNorm statistics re-estimated on ``data``'s
    train split, the pre-training images (``eval/floor.py``; no label read), so every stage that reads
    the run (probe, embed, the representation metrics) sees the fair floor. Returns the batches used (0:
    no BatchNorm layer)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from midol_cli.artifacts import atomic_path
    from midol_cli.eval.floor import batchnorm_layers, reestimate_batchnorm
    from midol_cli.models.export import ENCODER_FILE, load_exported_encoder

    path = run_dir / "export" / ENCODER_FILE
    enc, spec, _ = load_exported_encoder(path)
    if not batchnorm_layers(enc):
        return 0
    used = reestimate_batchnorm(enc, _train_batches(data, spec, workers), 50)
    state = enc.state_dict()
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: (state[k] if k in state else f.get_tensor(k)).detach().contiguous().cpu()
                   for k in f.keys()}
    meta["bn_reestimated"] = json.dumps({"data": str(data), "batches": used})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return used


def _train_batches(data: Path, spec: Any, workers: int, batch_size: int = 64):
    """The evaluation views of ``data``'s pre-training (train split) images, ``[B, 3, S, S]`` per batch:
    the images pre-training reads, never a val or test image (labels are not read)."""
    from midol_cli.data.transforms import EvalTransform
    from midol_cli.eval.embed import _rows, data_source

    kind, _ = data_source(data)
    transform = EvalTransform(spec.img_size, spec.mean, spec.std)
    for x, rows, _bad in _rows(Path(data), kind, transform, batch_size, workers):
        keep = [i for i, r in enumerate(rows) if str(r.get("split")) == "train"]
        if x is not None and keep:
            yield x[keep]


def _probe(cfg: StudyConfig, task: StudyTask, run_dir: Path, mid: str, reporter: Reporter) -> dict[str, Any]:
    """The task's summary for model ``mid``: reused when it was made from the same weights and data and
    holds every protocol the study compares."""
    from midol_cli.artifacts import sha256_file, write_json_atomic
    from midol_cli.eval.results import load_summary, summary_path
    from midol_cli.models.export import ENCODER_FILE
    from midol_cli.workflows.probe import WarningsOnly, probe_task
    from midol_cli.workflows.settings import ProbeSettings

    path = summary_path(cfg.out / "results", mid, task.spec.name)
    # What the summary was computed from: the same weights on the same data, or it is recomputed.
    source = {
        "weights_hash": sha256_file(run_dir / "export" / ENCODER_FILE)[:16],
        "data": str(task.data.resolve()),
    }
    marker = path.parent / "study_source.json"
    if path.is_file() and marker.is_file():
        try:
            old = load_summary(path)
            if (json.loads(marker.read_text(encoding="utf-8")) == source
                    and all(p in old["protocols"] for p in cfg.protocols)):
                return old
        except ValueError:
            pass
    if task.pooled:
        summary = _probe_pooled(cfg, task, run_dir, mid, reporter)
    else:
        s = ProbeSettings(task=task.spec.name, weights=str(run_dir), data=task.data, out=cfg.out / "results",
                          model_id=mid, fractions=[1.0], seeds=1, n_boot=cfg.probe_boot, workers=cfg.workers,
                          device=cfg.device, **protocol_switches(cfg.protocols))
        summary = probe_task(task.spec, s, WarningsOnly(reporter))
    missing = [p for p in cfg.protocols if p not in summary["protocols"]]
    if missing:
        raise UsageError(f"--protocols {', '.join(missing)}: not in {mid}'s summary of {task.spec.name} "
                         f"(it has {', '.join(summary['protocols'])})")
    write_json_atomic(marker, source)
    return summary


def _probe_pooled(cfg: StudyConfig, task: StudyTask, run_dir: Path, mid: str,
                  reporter: Reporter) -> dict[str, Any]:
    """The pooled task of the study's model ``mid`` (``probe_pooled``)."""
    from midol_cli.eval.models import load_eval_model
    from midol_cli.workflows.probe import WarningsOnly, probe_log

    return probe_pooled(load_eval_model(str(run_dir), mid), task.spec, task.data,
                        cfg.out / "results" / mid / task.spec.name, cfg.probe_boot, workers=cfg.workers,
                        device=cfg.device, log=probe_log(mid, task.spec, WarningsOnly(reporter)))


def probe_pooled(model, spec, data: Path, out_dir: Path, n_boot: int, *, workers: int = 1,
                 device: str | None = None, log=None) -> dict[str, Any]:
    """The pooled task (``tasks/pooled.py``) of ``model`` (an ``EvalModel``) on ``data``: the probe suite
    ``midol probe`` runs (linear, k-NN) on the rows ``pooled_frame`` makes of the data's embeddings
    (cached, shared with the other tasks), plus cross-modality retrieval (``pooled_retrieval``) unless
    the suite already has it; summary.json and predictions written under ``out_dir``."""
    from midol_cli.artifacts import write_json_atomic
    from midol_cli.eval.embed import embed
    from midol_cli.eval.results import SUMMARY_NAME, run_probe_suite
    from midol_cli.tasks.pooled import pooled_frame

    df = embed(model, data, workers=workers, device=device)
    frame = pooled_frame(df)
    summary = run_probe_suite(
        frame, spec.eval_task(spec.split), out_dir, model_info=model.info(),
        data_hash=df.attrs.get("data_hash", ""), fractions=(1.0,), seeds=(0,), n_boot=n_boot,
        split_source=spec.split, log=log)
    if "retrieval" not in summary["protocols"]:
        summary["protocols"]["retrieval"] = pooled_retrieval(frame, spec, n_boot)
        write_json_atomic(out_dir / SUMMARY_NAME, summary)
    summary["out_dir"] = str(out_dir)
    return summary


def pooled_retrieval(frame, spec, n_boot: int) -> dict[str, Any]:
    """Cross-modality retrieval on the pooled task (issue 28.6), with ``eval/retrieval.py``: each test
    image queries the pooled training gallery (every modality) by cosine similarity; mAP@k, precision@k
    and the share of the top k from another modality (``cross_modality_k``), with CIs over groups."""
    from midol_cli.eval.results import task_data
    from midol_cli.eval.retrieval import DEFAULT_KS, cross_modality, neighbours, per_query, retrieval_block

    td = task_data(frame, spec.eval_task(spec.split))
    tr, te = td.mask("train"), td.mask("test")
    idx = neighbours(td.X[tr], td.X[te], max(DEFAULT_KS))
    values = per_query(td.y[te], td.y[tr], idx, "multiclass", len(spec.classes), DEFAULT_KS)
    mods = td.df["source_modality"].astype(str).to_numpy()
    values.update(cross_modality(mods[te], mods[tr], idx, DEFAULT_KS))
    return retrieval_block(values, gallery="train", n_gallery=int(tr.sum()), groups=td.groups[te],
                           n_boot=n_boot, seed=0, ks=DEFAULT_KS)


def _representation(cfg: StudyConfig, run_dir: Path, mid: str) -> dict[str, Any]:
    """Representation metrics of model ``mid`` on the study data's held-out (val, test) images, never
    the pre-training (train) images (its embeddings are cached)."""
    from midol_cli.artifacts import write_json_atomic
    from midol_cli.eval.embed import embed
    from midol_cli.eval.models import load_eval_model
    from midol_cli.eval.representation import representation_metrics

    model = load_eval_model(str(run_dir), mid)
    df = embed(model, cfg.data, workers=cfg.workers, device=cfg.device)
    order = model.modalities if model.projector is not None and model.projector.n_experts > 1 else None
    rep = representation_metrics(df, order)
    write_json_atomic(cfg.out / "results" / mid / "representation.json", rep)
    return rep


def run_study(cfg: StudyConfig, reporter: Reporter) -> dict[str, Any]:
    """Everything of the module docstring; returns the study record, which ``run`` writes
    (``report.study.write_outputs``: study.json, study.md, study.png)."""
    say = reporter.line
    t_start = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    runs: dict[tuple[str, int], Path] = {}
    for v in cfg.variants:
        for s in cfg.seeds:
            runs[(v.name, s)], timings[model_id(v.name, s)] = ensure_run(cfg, v, s, reporter)

    summaries: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    reps: dict[tuple[str, int], dict[str, Any]] = {}
    finetunes: dict[tuple[str, int], dict[str, Any]] = {}
    for (vname, s), run_dir in runs.items():
        mid = model_id(vname, s)
        say(f"{mid}: probing {len(cfg.tasks)} task(s)")
        summaries[(vname, s)] = {t.spec.name: _probe(cfg, t, run_dir, mid, reporter) for t in cfg.tasks}
        reps[(vname, s)] = _representation(cfg, run_dir, mid)
        if (
            cfg.finetune_recipe is not None
            and vname in cfg.finetune_variants
            and s in cfg.seeds[: cfg.finetune_seeds]
        ):
            for t in [*cfg.tasks, *cfg.finetune_tasks]:
                if not t.pooled:
                    say(f"{mid}: fine-tuning on {t.spec.name} ({', '.join(cfg.finetune_methods)})")
                blocks = finetune_arm(cfg, t, run_dir, mid)
                if blocks:
                    finetunes.setdefault((vname, s), {})[t.spec.name] = blocks

    record = aggregate(cfg, summaries, reps, finetunes)
    record["seconds"] = {"total": round(time.perf_counter() - t_start, 1),
                         "pretrain": {k: round(v, 1) for k, v in timings.items()}}
    return record


# --------------------------------------------------------------------------- aggregation


def aggregate(cfg: StudyConfig, summaries, reps, finetunes) -> dict[str, Any]:
    """The study record: what was run (recipe, variants and what each changes, seeds, protocols), then
    ``study_aggregate.aggregate``'s numbers."""
    from midol_cli.artifacts import provenance
    from midol_cli.workflows.study_aggregate import aggregate as numbers

    return {
        "schema": STUDY_SCHEMA,
        "recipe": str(cfg.recipe_path),
        "overrides": list(cfg.overrides),
        "data": str(cfg.data.resolve()),
        "baseline": BASELINE,
        "variants": {v.name: v.overrides for v in cfg.variants},
        "variant_changes": {v.name: VARIANT_CHANGES.get(v.name, ", ".join(v.overrides or []))
                            for v in cfg.variants},
        "seeds": list(cfg.seeds),
        "protocols": list(cfg.protocols),
        "finetune_methods": list(cfg.finetune_methods) if cfg.finetune_recipe is not None else [],
        **numbers(cfg, summaries, reps, finetunes),
        "n_boot": cfg.n_boot,
        "provenance": provenance(stage="study"),
    }
