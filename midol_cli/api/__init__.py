"""midol's Python API: one function per command, taking the same settings as the CLI.

    from midol_cli import api

    summary = api.ingest(raw_dir="raw/fundus", modality="fundus", out="manifests/fundus.parquet")
    index = api.shard(manifests=["manifests/fundus.parquet"], out="shards")
    run = api.pretrain("recipes/smoke.yaml", out="runs/smoke", overrides=["data.shards=shards"])
    result = api.probe(task="auto", weights="runs/smoke", data="manifests/fundus.parquet")
    encoder, transform, meta = api.load_encoder("runs/smoke")

Each function takes a settings object (``midol_cli.api.settings``; for ``pretrain`` and ``finetune``
their recipe too, ``midol_cli.recipes``) or the same keys as keyword arguments, validates them once
the way the CLI does (every problem at once, one ``UsageError``) and hands them whole to the stage's
one ``run(settings, reporter)`` (``midol_cli.workflows.<stage>``), which the CLI calls too; it returns
what the CLI prints from. ``reporter`` (``midol_cli.progress.Reporter``) receives progress and
messages: plain lines on stderr by default, ``Silent()`` for none. Every stage writes its resolved
settings beside its output. docs/api.md has the examples (run by tests/test_api_docs.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from midol_cli.progress import Reporter
from midol_cli.workflows.settings import (
    EmbedSettings,
    ExportSettings,
    FinetuneSettings,
    IngestSettings,
    PretrainSettings,
    ProbeSettings,
    QuickstartSettings,
    ReportSettings,
    ShardSettings,
    StudySettings,
    validate_settings,
)

S = TypeVar("S", bound=BaseModel)

__all__ = ["ingest", "shard", "pretrain", "embed", "probe", "finetune", "export", "report", "study",
           "quickstart", "load_encoder"]


def _settings(schema: type[S], settings: S | dict[str, Any] | None, kw: dict[str, Any], command: str) -> S:
    """``settings`` (a model or a mapping) with keyword arguments over it, validated once as the CLI does."""
    if settings is not None and not isinstance(settings, schema | dict):
        raise TypeError(f"{command} settings must be a {schema.__name__} or a dict, not "
                        f"{type(settings).__name__}")
    if isinstance(settings, schema) and not kw:
        return settings  # validated when it was made
    base = settings.model_dump() if isinstance(settings, BaseModel) else dict(settings or {})
    return validate_settings(schema, {**base, **kw}, f"{command} settings")


def ingest(settings: IngestSettings | dict | None = None, /, *, reporter: Reporter | None = None,
           **kw: Any) -> dict[str, Any]:
    """Raw folder -> Parquet manifest (``midol ingest``); the summary dict the CLI tabulates."""
    from midol_cli.workflows import ingest as stage

    return stage.run(_settings(IngestSettings, settings, kw, "ingest"), reporter or Reporter())


def shard(settings: ShardSettings | dict | None = None, /, *, reporter: Reporter | None = None,
          **kw: Any) -> dict[str, Any]:
    """Manifests -> WebDataset shards + index.json (``midol shard``); the index."""
    from midol_cli.workflows import shard as stage

    return stage.run(_settings(ShardSettings, settings, kw, "shard"), reporter or Reporter())


def pretrain(recipe: Any, settings: PretrainSettings | dict | None = None, /, *,
             overrides: list[str] | tuple[str, ...] = (), reporter: Reporter | None = None,
             **kw: Any) -> dict[str, Any]:
    """M-IDoL pre-training (``midol pretrain``): ``recipe`` is a ``PretrainRecipe``, a YAML path or a dict
    (``overrides`` apply to it); ``settings`` (or keywords: out, resume, max_steps, init, overwrite,
    allow_recipe_change) the command's keys. Resolved recipe, run.json, metrics.jsonl and checkpoints
    go to the run dir (``out``, default runs/<recipe name>); the run's summary is returned."""
    from midol_cli.recipes import PretrainRecipe
    from midol_cli.workflows import pretrain as stage

    if isinstance(settings, str | Path):  # pretrain(recipe, "runs/x"): the run dir, as before
        settings = {"out": settings}
    r = _recipe(PretrainRecipe, recipe, overrides)
    return stage.run(r, _settings(PretrainSettings, settings, kw, "pretrain"), reporter or Reporter())


def _recipe(schema: type[S], recipe: Any, overrides: list[str] | tuple[str, ...]) -> S:
    """A recipe object, mapping or YAML path (None: the defaults) with ``key.sub=value`` overrides,
    validated."""
    from midol_cli.recipes import _merge, load_recipe, parse_overrides, validate

    if isinstance(recipe, schema) and not overrides:
        return recipe
    if isinstance(recipe, BaseModel | dict):
        base = recipe.model_dump() if isinstance(recipe, BaseModel) else recipe
        return validate(schema, _merge(base, parse_overrides(list(overrides))), "recipe")
    return load_recipe(schema, recipe, list(overrides))


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


def embed(settings: EmbedSettings | dict | None = None, /, *, reporter: Reporter | None = None,
          **kw: Any) -> dict[str, Any]:
    """Embeddings of a manifest or shard dir (``midol embed``): writes the Parquet, its metrics JSON and
    (with ``plot``) t-SNE maps; returns ``{"embeddings", "metrics", "model", "plots", "out"}``."""
    from midol_cli.workflows import embed as stage

    return stage.run(_settings(EmbedSettings, settings, kw, "embed"), reporter or Reporter())


def probe(settings: ProbeSettings | dict | None = None, /, *, reporter: Reporter | None = None,
          **kw: Any) -> dict[str, Any]:
    """Frozen-encoder evaluation on a task (``midol probe``); the summary also in OUT/<model>/<task>/."""
    from midol_cli.workflows import probe as stage

    return stage.run(_settings(ProbeSettings, settings, kw, "probe"), reporter or Reporter())


def finetune(settings: FinetuneSettings | dict | None = None, /, recipe: Any = None, *,
             overrides: list[str] | tuple[str, ...] = (), reporter: Reporter | None = None,
             **kw: Any) -> dict[str, Any]:
    """Fine-tune an encoder + head on a task (``midol finetune``). ``recipe``: a fine-tuning recipe
    object, a YAML path, a dict or None (the defaults); ``overrides`` apply to it."""
    from midol_cli.recipes import finetune_schema
    from midol_cli.tasks import resolve_task
    from midol_cli.workflows import finetune as stage

    s = _settings(FinetuneSettings, settings, kw, "finetune")
    r = _recipe(finetune_schema(resolve_task(s.task, s.data).label_type), recipe, overrides)
    return stage.run(s, r, reporter or Reporter())


def export(settings: ExportSettings | dict | None = None, /, *, reporter: Reporter | None = None,
           **kw: Any) -> dict[str, Any]:
    """A run's encoder as safetensors + projector, a model folder, or ONNX (``midol export``)."""
    from midol_cli.workflows import export as stage

    return stage.run(_settings(ExportSettings, settings, kw, "export"), reporter or Reporter())


def report(settings: ReportSettings | dict | None = None, /, *, reporter: Reporter | None = None,
           command: str | None = None, **kw: Any) -> str:
    """Benchmark tables from every summary.json below a folder (``midol report``); the report text
    (also written to ``out`` when given, with its settings beside it)."""
    from midol_cli.workflows import report as stage

    return stage.run(_settings(ReportSettings, settings, kw, "report"), reporter or Reporter(), command)


def study(recipe: str | Path, settings: StudySettings | dict | None = None, /, *,
          overrides: list[str] | tuple[str, ...] = (), data: str | Path | None = None,
          reporter: Reporter | None = None, **kw: Any) -> dict[str, Any]:
    """Every variant x seed pre-trained, probed and compared with paired CIs (``midol study``).
    ``recipe``: the pre-training recipe every variant starts from; ``data``: the shard dir (else the
    recipe's data.shards). Returns the study record; OUT/study.md, study.json, study.png are written."""
    from midol_cli.workflows import study_setup as stage

    return stage.run(Path(recipe), _settings(StudySettings, settings, kw, "study"), reporter or Reporter(),
                     overrides, data)


def quickstart(settings: QuickstartSettings | dict | None = None, /, *, reporter: Reporter | None = None,
               **kw: Any) -> dict[str, Any]:
    """Raw folders (one per modality) -> manifests -> shards -> pre-trained model -> probes -> report,
    every stage the normal command with its normal files (``midol quickstart``); where each output is."""
    from midol_cli.workflows import quickstart as stage

    return stage.run(_settings(QuickstartSettings, settings, kw, "quickstart"), reporter or Reporter())
