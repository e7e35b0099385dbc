"""midol's Python API: one function per command, taking the same settings as the CLI.

    from midol_cli import api

    summary = api.ingest(raw_dir="raw/fundus", modality="fundus", out="manifests/fundus.parquet")
    index = api.shard(manifests=["manifests/fundus.parquet"], out="shards")
    run = api.pretrain("recipes/smoke.yaml", out="runs/smoke", overrides=["data.shards=shards"])
    result = api.probe(task="auto", weights="runs/smoke", data="manifests/fundus.parquet")
    encoder, transform, meta = api.load_encoder("runs/smoke")

Each function takes a settings object (``midol_cli.api.settings``; for ``pretrain`` and ``finetune``
their recipe, ``midol_cli.recipes``) or the same keys as keyword arguments, validates them the way
the CLI does (every problem at once, one ``UsageError``), runs the stage and returns what the CLI
prints from. The CLI is a shell over these functions: parsing, then printing. Every stage writes its
resolved settings beside its output. docs/api.md has the examples (run by tests/test_api_docs.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from midol_cli.api.settings import (
    EmbedSettings,
    ExportSettings,
    FinetuneSettings,
    IngestSettings,
    ProbeSettings,
    QuickstartSettings,
    ReportSettings,
    ShardSettings,
    StudySettings,
    validate_settings,
    write_settings,
)
from midol_cli.paths import existing_dir, writable_out

S = TypeVar("S", bound=BaseModel)

__all__ = ["ingest", "shard", "pretrain", "embed", "probe", "finetune", "export", "report", "study",
           "quickstart", "load_encoder"]


def _settings(schema: type[S], settings: S | dict[str, Any] | None, kw: dict[str, Any], command: str) -> S:
    """``settings`` (a model or a mapping) with keyword arguments over it, validated as the CLI does."""
    if settings is not None and not isinstance(settings, schema | dict):
        raise TypeError(f"{command} settings must be a {schema.__name__} or a dict, not {type(settings).__name__}")
    base = settings.model_dump() if isinstance(settings, BaseModel) else dict(settings or {})
    return validate_settings(schema, {**base, **kw}, f"{command} settings")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data plane


def ingest(settings: IngestSettings | dict | None = None, /, *, progress: Callable[[int, int], None] | None = None,
           log: Callable[[str], None] | None = _stderr, **kw: Any) -> dict[str, Any]:
    """Raw folder -> Parquet manifest (``midol ingest``); the summary dict the CLI tabulates."""
    from midol_cli.data.ingest import ingest_folder
    from midol_cli.data.layouts import LayoutOptions
    from midol_cli.data.readers import DEFAULT_MAX_PIXELS
    from midol_cli.errors import UsageError

    s = _settings(IngestSettings, settings, kw, "ingest")
    csv_keys = {"labels": s.labels, "path_col": s.path_col, "label_col": s.label_col, "group_col": s.group_col,
                "split_col": s.split_col, "label_sep": s.label_sep, "meta_cols": s.meta_cols or None}
    given = [k for k, v in csv_keys.items() if v is not None]
    layout = s.layout
    if given and layout.strip().lower() == "auto":
        layout = "csv"  # a labels CSV given means the csv layout
    if given and layout.strip().lower() != "csv":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UsageError(f"{flags} only apply to --layout csv (got --layout {layout})")
    labels = s.labels
    if labels is not None and not labels.is_file() and (s.raw_dir / labels).is_file():
        labels = s.raw_dir / labels  # a CSV named relative to the raw folder
    if labels is not None and not labels.is_file():
        raise UsageError(f"labels file '{labels}' does not exist")
    opts = LayoutOptions(labels=labels, path_col=s.path_col, label_col=s.label_col, group_col=s.group_col,
                         split_col=s.split_col, label_sep=s.label_sep, meta_cols=tuple(s.meta_cols))
    writable_out(s.out, "--out", folder=False)
    summary = ingest_folder(
        s.raw_dir, s.modality, layout=layout, out=s.out, workers=s.workers, seed=s.seed,
        max_pixels=DEFAULT_MAX_PIXELS if s.max_pixels is None else s.max_pixels, new_modality=s.new_modality,
        layout_options=opts, dataset=s.dataset, progress=progress, log=None if progress is not None else log)
    summary["settings"] = str(write_settings(s, summary["manifest"], "ingest", folder=False))
    return summary


def shard(settings: ShardSettings | dict | None = None, /, *, on_progress: Callable[[int, int], None] | None = None,
          log: Callable[[str], None] | None = _stderr, **kw: Any) -> dict[str, Any]:
    """Manifests -> WebDataset shards + index.json (``midol shard``); the index."""
    import os

    from midol_cli.data.shards import ShardParams, parse_size, write_shards
    from midol_cli.errors import UsageError

    s = _settings(ShardSettings, settings, kw, "shard")
    writable_out(s.out)
    for m in s.manifests:
        if not m.is_file():
            raise UsageError(f"manifest '{m}' does not exist; create it with `midol ingest`")
    params = ShardParams(max_size=parse_size(s.max_size), split=s.split, modalities=tuple(s.modalities),
                         max_side=s.max_side, max_count=s.max_count, seed=s.seed, min_shards=s.min_shards,
                         jpeg_quality=s.jpeg_quality)
    workers = s.workers if s.workers is not None else max(1, min(8, os.cpu_count() or 1))
    index = write_shards(list(s.manifests), s.out, params, workers=workers, on_progress=on_progress,
                         log=log or (lambda _m: None))
    write_settings(s, s.out, "shard", folder=True)
    return index


# --------------------------------------------------------------------------- pre-training


def pretrain(recipe: Any, out: str | Path | None = None, *, overrides: list[str] | tuple[str, ...] = (),
             resume: str | None = None, max_steps: int | None = None, init: str | None = None,
             reporter: Any = None, overwrite: bool = False, allow_recipe_change: bool = False) -> dict[str, Any]:
    """M-IDoL pre-training (``midol pretrain``): ``recipe`` is a ``PretrainRecipe``, a YAML path or a dict;
    ``out`` the run dir (default runs/<recipe name>). Resolved recipe, run.json, metrics.jsonl and
    checkpoints go there; the run's summary is returned (rank 0; other ranks get theirs too).
    ``overwrite``: move a run already in ``out`` aside; ``allow_recipe_change``: a resume may change the
    recipe (recorded as a new segment in run.json)."""
    from midol_cli.recipes import PretrainRecipe, load_recipe, validate
    from midol_cli.train.pretrain import run_pretrain

    if isinstance(recipe, PretrainRecipe):
        r = validate(PretrainRecipe, _apply(recipe.model_dump(), overrides), "recipe") if overrides else recipe
    elif isinstance(recipe, dict):
        r = validate(PretrainRecipe, _apply(recipe, overrides), "recipe")
    else:
        r = load_recipe(PretrainRecipe, recipe, list(overrides))
    if init:
        r.model.weights = init
    run_dir = Path(out) if out is not None else Path("runs") / r.name
    writable_out(run_dir, "--out" if out is not None else "the run dir")
    return run_pretrain(r, run_dir, resume=resume, max_steps=max_steps, reporter=reporter, overwrite=overwrite,
                        allow_recipe_change=allow_recipe_change)


def _apply(base: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``key.sub=value`` overrides merged into a recipe mapping (nested keys change one entry)."""
    from midol_cli.recipes import _merge, parse_overrides

    return _merge(base, parse_overrides(list(overrides)))


# --------------------------------------------------------------------------- evaluation


def load_encoder(path_or_name: str | Path, *, device: str = "cpu", lenient: bool = False):
    """``(encoder, transform, metadata)`` for people who only want the features.

    ``path_or_name`` is what ``--weights`` takes: a run dir, an exported .safetensors, NAME=FILE of a
    registry model, timm:NAME=FILE or random:NAME. ``encoder`` is the timm model in eval mode on
    ``device``, returning pooled features; ``transform`` maps a PIL image to the normalised tensor
    the encoder expects (resize + centre crop at its input size); ``metadata`` holds the model id,
    architecture, input size, mean/std, weights hash, load report and, for midol models, modalities."""
    from midol_cli.data.transforms import EvalTransform
    from midol_cli.eval.models import load_eval_model

    m = load_eval_model(str(path_or_name), lenient=lenient)
    meta = {**m.info(), "modalities": list(m.modalities), "num_features": int(m.encoder.num_features)}
    return m.encoder.to(device), EvalTransform(m.spec.img_size, m.spec.mean, m.spec.std), meta


def embed(settings: EmbedSettings | dict | None = None, /, *, progress: bool = False, **kw: Any) -> dict[str, Any]:
    """Embeddings of a manifest or shard dir (``midol embed``): writes the Parquet, its metrics JSON and
    (with ``plot``) t-SNE maps; returns ``{"embeddings", "metrics", "model", "plots", "out"}``."""
    from midol_cli.artifacts import write_json_atomic
    from midol_cli.eval.embed import embed as embed_images
    from midol_cli.eval.embed import write_embeddings
    from midol_cli.eval.models import load_eval_model
    from midol_cli.eval.representation import representation_metrics

    s = _settings(EmbedSettings, settings, kw, "embed")
    writable_out(s.out, "--out", folder=False)
    writable_out(s.plot, "--plot")
    if s.plot is not None:
        from midol_cli.extras import require

        require("matplotlib", "plots", "embed --plot")
    model = load_eval_model(s.weights, s.model_id, lenient=s.weights_lenient)
    df = embed_images(model, s.data, batch_size=s.batch_size, workers=s.workers, device=s.device,
                      use_cache=s.cache, progress=progress)
    write_embeddings(df, s.out, model.info(), model.modalities)
    rep = representation_metrics(df, model.modalities or None)
    write_json_atomic(s.out.with_suffix(".metrics.json"), rep)
    write_settings(s, s.out, "embed", folder=False)
    plots = []
    if s.plot is not None:
        from midol_cli.report.plots import embedding_maps

        plots = embedding_maps(df, s.plot, title=model.id)
    return {"embeddings": df, "metrics": rep, "model": model, "plots": plots, "out": s.out}


def probe(settings: ProbeSettings | dict | None = None, /, *, quiet: bool = False, **kw: Any) -> dict[str, Any]:
    """Frozen-encoder evaluation on a task (``midol probe``); the summary also in OUT/<model>/<task>/."""
    from midol_cli.tasks import resolve_task, task_options
    from midol_cli.workflows.probe import run_task

    s = _settings(ProbeSettings, settings, kw, "probe")
    spec = resolve_task(s.task, s.data)
    opts = task_options(spec, [f"{k}={v}" for k, v in s.task_options.items()])
    writable_out(s.out)
    summary = run_task(spec, s.weights, s.data, s.out, name=s.model_id, fractions=tuple(s.fractions),
                       seeds=tuple(range(s.seeds)), n_boot=s.n_boot, batch_size=s.batch_size, workers=s.workers,
                       device=s.device, options=opts, lenient=s.weights_lenient,
                       subgroups=None if s.subgroups is None else tuple(s.subgroups),
                       min_positives=s.min_subgroup, quiet=quiet)
    write_settings(s, summary["out_dir"], "probe", folder=True)
    return summary


def finetune(settings: FinetuneSettings | dict | None = None, /, recipe: Any = None, *,
             overrides: list[str] | tuple[str, ...] = (), reporter: Any = None, **kw: Any) -> dict[str, Any]:
    """Fine-tune an encoder + head on a task (``midol finetune``). ``recipe``: a fine-tuning recipe
    object, a YAML path, a dict or None (the defaults); ``overrides`` apply to it."""
    from midol_cli.errors import UsageError
    from midol_cli.recipes import finetune_schema, load_recipe, validate
    from midol_cli.tasks import resolve_task, task_options
    from midol_cli.train.finetune import run_finetune

    s = _settings(FinetuneSettings, settings, kw, "finetune")
    spec = resolve_task(s.task, s.data)
    opts = task_options(spec, [f"{k}={v}" for k, v in s.task_options.items()])
    schema = finetune_schema(spec.label_type)
    if isinstance(recipe, BaseModel | dict):
        base = recipe.model_dump() if isinstance(recipe, BaseModel) else recipe
        r = validate(schema, _apply(base, overrides), "finetune recipe")
    else:
        r = load_recipe(schema, recipe, list(overrides))
    if not s.data.exists():
        raise UsageError(f"data '{s.data}' for task {spec.name} does not exist; `midol tasks show {spec.name}` "
                         "shows the expected layout")
    writable_out(s.out)
    writable_out(s.run_dir, "--run-dir")
    summary = run_finetune(spec, s.weights, s.data, r, out_root=s.out, name=s.model_id, run_dir=s.run_dir,
                           resume=s.resume, linear=s.linear, reporter=reporter, options=opts,
                           lenient=s.weights_lenient, subgroups=None if s.subgroups is None else tuple(s.subgroups),
                           min_positives=s.min_subgroup)
    if summary:  # rank 0
        write_settings({**s.model_dump(mode="json"), **r.model_dump(mode="json")}, summary["out_dir"],
                       "finetune", folder=True)
    return summary


def export(settings: ExportSettings | dict | None = None, /, **kw: Any) -> dict[str, Any]:
    """A run's encoder as safetensors + projector, a model folder, or ONNX (``midol export``)."""
    from midol_cli.errors import UsageError
    from midol_cli.models.export import export_folder, export_onnx, export_run

    s = _settings(ExportSettings, settings, kw, "export")
    if s.format != "safetensors" and not s.run_dir.is_dir():
        raise UsageError(f"run dir '{s.run_dir}' does not exist")
    if s.out is not None:
        writable_out(s.out, "--out", folder=s.format == "folder")
    elif s.run_dir.is_dir():
        writable_out(s.run_dir / "export", "the run's export folder")
    if s.format == "folder":
        res = export_folder(s.run_dir, s.out, s.which, s.study)
        res["settings"] = str(write_settings(s, res["folder"], "export", folder=True))
        return res
    if s.format == "onnx":
        res = export_onnx(s.run_dir, s.out, s.which)
        res["settings"] = str(write_settings(s, res["file"], "export", folder=False))
        return res
    res = dict(export_run(s.run_dir, s.out, s.which))
    if s.out is None:  # the calibration lives beside RUN_DIR/export/encoder.safetensors
        from midol_cli.eval.calibrate import calibrate_routing

        res["routing"] = calibrate_routing(s.run_dir)
    res["settings"] = str(write_settings(s, res["encoder"], "export", folder=False))
    return res


def report(settings: ReportSettings | dict | None = None, /, *, warn: Callable[[str], None] | None = None,
           command: str | None = None, **kw: Any) -> str:
    """Benchmark tables from every summary.json below a folder (``midol report``); the report text
    (also written to ``out`` when given, with its settings beside it)."""
    from midol_cli.api._report import build_report

    s = _settings(ReportSettings, settings, kw, "report")
    existing_dir(s.results_dir, "results folder")
    text = build_report(s, warn=warn or (lambda m: _stderr(f"warning: {m}")), command=command)
    if s.out is not None:
        write_settings(s, s.out, "report", folder=False)
    return text


def study(recipe: str | Path, settings: StudySettings | dict | None = None, /, *,
          overrides: list[str] | tuple[str, ...] = (), data: str | Path | None = None,
          log: Callable[[str], None] | None = None, **kw: Any) -> dict[str, Any]:
    """Every variant x seed pre-trained, probed and compared with paired CIs (``midol study``).
    ``recipe``: the pre-training recipe every variant starts from; ``data``: the shard dir (else the
    recipe's data.shards). Returns the study record; OUT/study.md, study.json, study.png are written."""
    from midol_cli.workflows.study_setup import prepare_study

    s = _settings(StudySettings, settings, kw, "study")
    cfg, resolved = prepare_study(Path(recipe), list(overrides), s, data)
    writable_out(s.out)
    from midol_cli.report.study import write_outputs
    from midol_cli.workflows.study import run_study

    rec = run_study(cfg, log=log)
    rec["written"] = [str(p) for p in write_outputs(s.out, rec)]
    write_settings({**resolved, "study": s.model_dump(mode="json")}, s.out, "study", folder=True)
    return rec


def quickstart(settings: QuickstartSettings | dict | None = None, /, *,
               log: Callable[[str], None] | None = _stderr, reporter: Any = None, **kw: Any) -> dict[str, Any]:
    """Raw folders (one per modality) -> manifests -> shards -> pre-trained model -> probes -> report,
    every stage the normal command with its normal files (``midol quickstart``); where each output is."""
    from midol_cli.api._quickstart import run_quickstart

    s = _settings(QuickstartSettings, settings, kw, "quickstart")
    return run_quickstart(s, log=log or (lambda _m: None), reporter=reporter)
