"""Built-in downstream tasks: which data, which labels, which metric.

A task names a modality, an ingest layout (how its raw download looks on disk),
the label type and ordered classes, and the primary metric the literature reports.
``--data`` may be a manifest (from ``midol ingest``), a shard dir, or the raw
download folder itself, which is then ingested with the task's layout into a
cached manifest (re-ingest is incremental, so a second probe costs nothing).

This issue carries the five ``synth-*`` tasks (one per modality of ``midol
synth``) and HAM10000; the public benchmark datasets are added in the same form.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from midol_cli.errors import UsageError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    modality: str
    layout: str  # ingest layout of the raw download
    label_type: str  # binary | multiclass | ordinal | multilabel | segmentation
    classes: tuple[str, ...]
    metric: str  # primary metric (eval.metrics.metric_names)
    source: str
    split: str  # where the split comes from
    license: str = ""
    notes: str = ""
    # Layout switches this task fixes (e.g. {"magnification": "40X"}); users may override the
    # keys listed in ``user_options`` with --task-option KEY=VALUE (e.g. CheXpert's uncertainty).
    layout_options: tuple[tuple[str, str], ...] = ()
    user_options: tuple[str, ...] = ()
    # User-defined tasks (task files): the ``csv`` layout's fields for ingesting a raw folder
    # (labels, path_col, label_col or label_cols, group_col, split_col, label_sep), and where the
    # task came from ("" for built-ins, the task file's path, or "auto").
    ingest_options: tuple[tuple[str, str], ...] = ()
    origin: str = ""
    # Evaluation breakdowns (eval/subgroups.py): the metadata columns reported per subgroup unless
    # `--subgroups` says otherwise, what a group of images is (patient, lesion, exam, slide; "" when
    # each image stands alone) and how image predictions aggregate per group (mean; max for "any
    # finding" tasks).
    subgroups: tuple[str, ...] = ()
    group_unit: str = ""
    aggregation: str = "mean"
    # Case-level tasks (issue 27): the label belongs to a ``slide``, ``volume`` or ``patient`` and a case
    # is the bag of its tiles / B-scans (eval/cases.py); "" for an image-level task.
    case: str = ""

    def eval_task(self, split_source: str = ""):
        from midol_cli.eval.results import Task

        return Task(self.name, self.modality, self.label_type, self.classes, self.metric, split_source)


# One module per group of datasets, each exposing ``TASKS: list[TaskSpec]``. Adding a dataset
# is a TaskSpec in one of them (plus its ingest layout in data/layouts/).
_MODULES: tuple[str, ...] = ("synth", "dermoscopy", "xray", "fundus", "segmentation", "oct", "pathology")


def _load() -> dict[str, TaskSpec]:
    import importlib

    out: dict[str, TaskSpec] = {}
    for mod in _MODULES:
        for spec in importlib.import_module(f"midol_cli.tasks.{mod}").TASKS:
            if spec.name in out:
                raise RuntimeError(f"task '{spec.name}' is defined twice")
            out[spec.name] = spec
    return out


TASKS: dict[str, TaskSpec] = _load()

SYNTH_TASKS = tuple(n for n in TASKS if n.startswith("synth-"))


def get_task(name: str) -> TaskSpec:
    """A built-in task by name (a close name gets a suggestion). See ``resolve_task`` for task files
    and ``auto``."""
    if name in TASKS:
        return TASKS[name]
    import difflib

    close = difflib.get_close_matches(name, list(TASKS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(TASKS)}; see `midol tasks`)"
    raise UsageError(f"unknown task '{name}'{hint}")


def resolve_task(arg: str, data: str | Path | None = None) -> TaskSpec:
    """``--task`` in its three forms: a built-in name, a task file (``.yaml``), or ``auto``.

    ``auto`` derives the task from the labels of ``data`` (a manifest or shard dir holding one
    labelled modality). A task file's classes may be left to the data: they are filled in once its
    data is read (``custom.complete_classes``).
    """
    from midol_cli.tasks import custom

    if arg == "auto":
        if data is None:
            raise UsageError("--task auto needs --data: a manifest or shard dir with labels")
        p = Path(data)
        if not p.exists():
            raise UsageError(f"data '{p}' does not exist")
        if p.is_dir() and not (p / "index.json").is_file():
            raise UsageError(f"--task auto reads labels from a manifest or shard dir; '{p}' is neither "
                             "(ingest the folder first: `midol ingest`)")
        specs = custom.auto_tasks(custom.read_labels_table(p), str(p))
        if len(specs) > 1:
            mods = ", ".join(s.modality for s in specs)
            raise UsageError(
                f"'{p}' holds labelled images of several modalities ({mods}); --task auto needs one "
                "(give one manifest per modality, or a task file)"
            )
        return specs[0]
    if custom.is_task_file(arg):
        if not Path(arg).is_file():
            raise UsageError(f"task file '{arg}' does not exist")
        return custom.load_task_file(arg)
    return get_task(arg)


def layout_description(spec: TaskSpec) -> str:
    from midol_cli.data.layouts import get_layout

    return get_layout(spec.layout).description


def task_options(spec: TaskSpec, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The task's layout options with ``KEY=VALUE`` user overrides applied (only declared keys)."""
    opts = dict(spec.layout_options)
    for tok in overrides:
        if "=" not in tok:
            raise UsageError(f"--task-option '{tok}' must look like KEY=VALUE")
        k, v = (s.strip() for s in tok.split("=", 1))
        if k not in spec.user_options:
            allowed = ", ".join(spec.user_options) or "none"
            raise UsageError(f"task {spec.name} has no option '{k}' (options: {allowed})")
        opts[k] = v
    return opts


def resolve_data(
    spec: TaskSpec, data: str | Path, cache_root: Path, options: dict[str, str] | None = None
) -> Path:
    """A manifest or shard dir for ``spec``: ``data`` itself, or the raw folder ingested into the cache.

    A manifest's labels are checked against the task before anything is embedded or trained
    (``custom.check_labels``: labels outside the classes, a one-class test split)."""
    from midol_cli.eval.embed import shard_urls
    from midol_cli.tasks import custom

    if shard_urls(data) is not None:  # shard URLs as data.shards takes them (issue 25.19): read as shards
        return data  # type: ignore[return-value]
    p = Path(data)
    if not p.exists():
        raise UsageError(f"data '{p}' for task {spec.name} does not exist; `midol tasks show {spec.name}` "
                         "shows the expected layout")
    if p.is_file():
        from midol_cli.data.manifest import read_manifest

        df, _ = read_manifest(p)
        mods = set(df["modality"].unique())
        if spec.modality not in mods:
            raise UsageError(
                f"manifest '{p}' holds {sorted(mods)}, not {spec.modality} images for task {spec.name}"
            )
        custom.check_labels(spec, df, f"manifest '{p}'")
        return p
    if (p / "index.json").is_file():
        return p
    from midol_cli.data.ingest import ingest_folder
    from midol_cli.data.layouts import LayoutOptions

    opts = dict(spec.layout_options) if options is None else options
    fields = dict(spec.ingest_options)
    key = hashlib.sha1(
        repr((str(p.resolve()), sorted(opts.items()), sorted(fields.items()))).encode()
    ).hexdigest()[:12]
    out = cache_root / "manifests" / f"{spec.name}-{key}.parquet"
    layout_opts = LayoutOptions(
        labels=Path(fields["labels"]) if "labels" in fields else None,
        path_col=fields.get("path_col"),
        label_col=fields.get("label_col"),
        label_cols=tuple(c for c in fields.get("label_cols", "").split(",") if c),
        group_col=fields.get("group_col"),
        split_col=fields.get("split_col"),
        label_sep=fields.get("label_sep"),
        meta_cols=tuple(c for c in fields.get("meta_cols", "").split(",") if c),
        extra=opts,
    )
    # A user task without a labels CSV reads a folder in any layout ingest detects.
    ingest_folder(p, spec.modality, layout=spec.layout or "auto", out=out, layout_options=layout_opts,
                  new_modality=bool(spec.origin), lock_wait=float("inf"))  # runs share the cached manifest
    from midol_cli.data.manifest import read_manifest

    custom.check_labels(spec, read_manifest(out, only_ok=True)[0], f"'{p}'")
    return out
