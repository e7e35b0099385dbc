"""User-defined tasks: a task file (YAML), or ``--task auto`` derived from a labelled manifest.

A task file says what a built-in ``TaskSpec`` says, for a user's own labelled data::

    name: hospital-dr            # results go to results/<model>/<name>/
    modality: fundus
    label_type: ordinal          # binary | multiclass | ordinal | multilabel
    classes: ["0", "1", "2", "3", "4"]   # order matters: grades (ordinal), (negative, positive) (binary)
    metric: qwk                  # optional: default auroc (binary, multilabel), balanced_accuracy
    # Only needed when --data is the raw image folder (ingested with the `csv` layout):
    labels: labels.csv           # relative to this file
    path_column: image
    label_column: grade          # multilabel: one column with label_sep, or a list of 0/1 columns
    label_sep: "|"
    group_column: patient_id     # patients / lesions / slides: splits and CIs keep them together
    split_column: split          # train / val / test; without it a grouped stratified 70/15/15 split
    subgroup_columns: [sex, age, site]   # optional: metadata columns reported per subgroup
    group_unit: patient          # optional: also report metrics per patient (lesion, exam, slide)
    aggregation: mean            # how image predictions combine per group: mean, or max ("any finding")

Labels of whole slides or volumes: ``label_level: slide`` (or ``volume``) says the labels CSV's rows
name slides (volumes), and every tile (B-scan) of one inherits its label, its group the CSV's patient
(else the slide or volume); the folder is ingested with the ``slides`` (``volumes``) layout::

    label_level: slide           # image (default) | slide | volume
    labels: slides.csv           # path_column default 'slide' ('volume'): a path, file name or stem
    label_column: diagnosis      # default: label, class or diagnosis
    group_column: patient        # default: patient, patient_id, case_id or group
    layout_options: {mpp: 0.5, tile: 224, min_tissue: 0.5}   # slides; volumes: {frames: central:9}

Without ``labels`` a slide or volume takes the name of its class folder. Splits are derived per patient
over the whole archive (a split column is not read); ``--task-option KEY=VALUE`` overrides a layout option.

``classes`` may be left out for multiclass and multilabel tasks: they are then the sorted labels
found in the data. ``--data`` may also be a manifest that already carries the labels (``midol ingest
--layout csv --labels ...``); the column keys are then unused.

``--task auto`` reads the labels of a manifest (or shard dir): one task per labelled modality, its
label type from the data (multilabel when any image has several labels; binary with two classes),
its classes sorted, its split the manifest's, its name ``auto-<dataset>`` (``-<modality>`` added when two
modalities share a layout).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from midol_cli.errors import UsageError
from midol_cli.recipes import Strict, read_yaml, validate

TASK_FILE_SUFFIXES = (".yaml", ".yml")
DEFAULT_METRIC = {
    "binary": "auroc",
    "multiclass": "balanced_accuracy",
    "ordinal": "qwk",
    "multilabel": "auroc",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TaskFile(Strict):
    name: str = Field(..., description="task id; letters, digits, '.', '_' and '-'")
    modality: str
    label_type: Literal["binary", "multiclass", "ordinal", "multilabel"]
    classes: list[str] | None = Field(None, description="ordered classes; default: sorted labels of the data")
    metric: str | None = Field(None, description="primary metric; default by label type")
    labels: str | None = Field(None, description="labels CSV for a raw folder (relative to the task file)")
    path_column: str | None = None
    label_column: str | list[str] | None = None
    label_sep: str | None = None
    group_column: str | None = None
    split_column: str | None = None
    split: str | None = Field(None, description="how the split was made (shown in reports)")
    subgroup_columns: list[str] = Field(
        default_factory=list, description="metadata columns reported per subgroup (read from the labels CSV)"
    )
    group_unit: str = Field(
        "", description="what a group is (patient, lesion, exam, slide): adds group-level metrics"
    )
    aggregation: Literal["mean", "max"] = "mean"
    label_level: Literal["image", "slide", "volume"] = Field(
        "image", description="what a labels row names: an image, or a slide / volume whose tiles inherit it")
    layout_options: dict[str, str | int | float] = Field(
        default_factory=dict, description="slide tiling (mpp, tile, ...) or volume frames (frames)")
    case: Literal["slide", "volume", "patient"] | None = Field(
        None, description="case-level task: the label belongs to a slide, volume or patient, a case is the "
        "bag of its tiles / B-scans (probe --protocol abmil)")
    source: str = ""
    license: str = ""
    notes: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it names a results folder)")
        return v

    @field_validator("modality")
    @classmethod
    def _modality(cls, v: str) -> str:
        from midol_cli.modalities import check_modality

        try:
            return check_modality(v, allow_new=True)
        except UsageError as e:
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _consistent(self) -> TaskFile:
        from midol_cli.eval.metrics import metric_names

        if self.classes is not None:
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
                raise ValueError("classes must list at least two distinct names")
        if self.label_type == "binary" and self.classes is not None and len(self.classes) != 2:
            raise ValueError("a binary task needs exactly two classes, (negative, positive)")
        if self.label_type == "ordinal" and self.classes is None:
            raise ValueError("an ordinal task must list its classes in grade order")
        if self.label_type == "binary" and self.classes is None:
            raise ValueError("a binary task must list its classes as (negative, positive)")
        if self.metric is not None and self.metric not in metric_names(self.label_type):
            raise ValueError(
                f"metric '{self.metric}' is not one of {', '.join(metric_names(self.label_type))}"
            )
        if isinstance(self.label_column, list) and self.label_type != "multilabel":
            raise ValueError("a list of label columns (0/1 indicators) needs label_type multilabel")
        if self.case is not None and self.label_type == "multilabel":
            raise ValueError("a case-level task (case) takes one label per case: binary, multiclass or "
                             "ordinal")
        if self.label_level != "image":
            return self._whole_file_labels()
        if self.layout_options:
            raise ValueError("layout_options need label_level slide or volume")
        if self.labels is not None and (not self.path_column or not self.label_column):
            raise ValueError("labels needs path_column and label_column")
        return self

    def _whole_file_labels(self) -> TaskFile:
        """The keys a slide or volume labels CSV can take (the slides/volumes layouts read no others)."""
        level = self.label_level
        unread = [k for k in ("split_column", "label_sep") if getattr(self, k) is not None]
        unread += ["subgroup_columns"] * bool(self.subgroup_columns)
        if unread:
            raise ValueError(f"{unread[0]} is not read with label_level {level} (its labels CSV gives a "
                             "label and a patient per file; splits are derived per patient)")
        if isinstance(self.label_column, list):
            raise ValueError(f"label_level {level} takes one label_column, not a list")
        allowed = _layout_keys(level)
        bad = sorted(k for k in self.layout_options if k not in allowed)
        if bad:
            raise ValueError(f"layout_options of a {level} task take {', '.join(allowed)}, not '{bad[0]}'")
        return self


def is_task_file(arg: str) -> bool:
    return arg.lower().endswith(TASK_FILE_SUFFIXES) or Path(arg).is_file()


def load_task_file(path: str | Path):
    """A ``TaskSpec`` from a task file; ``classes`` is empty when the file leaves them to the data."""
    from midol_cli.tasks import TaskSpec

    path = Path(path)
    data = read_yaml(path)
    tf = validate(TaskFile, data, f"task file '{path}'")
    ingest: dict[str, str] = {}
    layout = ""
    if tf.label_level != "image":
        layout, ingest = _whole_file_ingest(tf, path)
    elif tf.labels is not None:
        csv = Path(tf.labels)
        csv = csv if csv.is_absolute() else (path.parent / csv)
        if not csv.is_file():
            raise UsageError(
                f"task file '{path}': "
                f"labels '{tf.labels}' does not exist (paths are relative to the task file)"
            )
        layout = "csv"
        ingest = {"labels": str(csv.resolve()), "path_col": str(tf.path_column)}
        if isinstance(tf.label_column, list):
            ingest["label_cols"] = ",".join(tf.label_column)
        else:
            ingest["label_col"] = str(tf.label_column)
        for key, val in (
            ("group_col", tf.group_column),
            ("split_col", tf.split_column),
            ("label_sep", tf.label_sep),
        ):
            if val is not None:
                ingest[key] = val
        if tf.subgroup_columns:
            ingest["meta_cols"] = ",".join(tf.subgroup_columns)
    split = tf.split or (
        f"column '{tf.split_column}' of the labels" if tf.split_column else "the manifest's split (ingest)"
    )
    return TaskSpec(
        tf.name,
        tf.modality,
        layout,
        tf.label_type,
        tuple(tf.classes or ()),
        tf.metric or DEFAULT_METRIC[tf.label_type],
        tf.source or f"task file {path.resolve()}",
        split,
        license=tf.license,
        notes=tf.notes,
        ingest_options=tuple(sorted(ingest.items())),
        layout_options=tuple(sorted((k, str(v)) for k, v in tf.layout_options.items())),
        user_options=_layout_keys(tf.label_level) if tf.label_level != "image" else (),
        origin=str(path.resolve()),
        subgroups=tuple(tf.subgroup_columns),
        group_unit=tf.group_unit,
        aggregation=tf.aggregation,
        case=tf.case or "",
    )


def _layout_keys(level: str) -> tuple[str, ...]:
    """The options of the slides or volumes layout a task may fix (not ``part``: a task ingests whole)."""
    if level == "slide":
        from midol_cli.data.layouts.slides import _SPEC
    else:
        from midol_cli.data.layouts.volumes import _SPEC
    return tuple(k for k in _SPEC if k != "part")


def _labels_csv(tf: TaskFile, path: Path) -> Path:
    csv = Path(str(tf.labels))
    csv = csv if csv.is_absolute() else (path.parent / csv)
    if not csv.is_file():
        raise UsageError(
            f"task file '{path}': labels '{tf.labels}' does not exist (paths are relative to the task file)")
    return csv


def _whole_file_ingest(tf: TaskFile, path: Path) -> tuple[str, dict[str, str]]:
    """(layout, ingest fields) of a task whose labels name slides or volumes: every tile or B-scan of a
    file inherits its label, and its group is the CSV's patient (else the file)."""
    layout = "slides" if tf.label_level == "slide" else "volumes"
    if tf.labels is None:
        return layout, {}  # each file takes its class folder's name
    ingest = {"labels": str(_labels_csv(tf, path).resolve())}
    cols = (("path_col", tf.path_column), ("label_col", tf.label_column), ("group_col", tf.group_column))
    for key, val in cols:
        if val is not None:
            ingest[key] = str(val)
    return layout, ingest


def _labels_of(df) -> list[list[str]]:
    """One list of label names per row (the manifest's ``labels`` list, else its ``label`` string)."""
    out = []
    labels_col = df["labels"].tolist() if "labels" in df.columns else [None] * len(df)
    for lab, labs in zip(df["label"].fillna("").astype(str).tolist(), labels_col, strict=True):
        names = [str(x) for x in labs] if labs is not None and len(labs) else ([lab] if lab else [])
        out.append([n for n in names if n])
    return out


def complete_classes(spec, df, where: str):
    """``spec`` with its classes filled from the labels of ``df`` (the task's modality rows) if empty."""
    from dataclasses import replace

    if spec.classes:
        return spec
    rows = df[df["modality"].astype(str) == spec.modality] if "modality" in df.columns else df
    found = sorted({n for names in _labels_of(rows) for n in names})
    if len(found) < 2:
        what = f"only the class '{found[0]}'" if found else "no labels"
        raise UsageError(f"task {spec.name}: {where} has {what}; a task needs at least two classes")
    return replace(spec, classes=tuple(found))


def _usable(df, modality: str):
    """The rows a probe keeps: ok, not a duplicate, of ``modality`` (when the table has several)."""
    if "status" in df.columns:
        df = df[df["status"].astype(str) == "ok"]
    if "duplicate_of" in df.columns:
        df = df[df["duplicate_of"].fillna("").astype(str) == ""]
    if "modality" in df.columns and df["modality"].astype(str).nunique() > 1:
        df = df[df["modality"].astype(str) == modality]
    return df


def _listing(names, most: int = 6) -> str:
    names = [str(n) for n in names]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(f"'{n}'" for n in names[:most]) + more


def check_labels(spec, df, where: str) -> None:
    """Refuse, in one line and before any embedding, labels a probe or fine-tune cannot score.

    ``df``: the manifest (or embeddings table) rows of the data, with ``label``/``labels`` and ``split``.
    Errors: single-label data whose labels are not among the task's ``classes`` (``classes: [a, b]``
    on labels 0-3); declared classes of which fewer than two appear in the data; a single-label test
    split holding one class, on which AUROC, balanced accuracy and the rest are undefined.
    Segmentation tasks are not checked."""
    if spec.label_type == "segmentation":
        return
    df = _usable(df, spec.modality)
    labels = _labels_of(df)
    found = sorted({n for names in labels for n in names})
    if not found:
        return  # no labels at all: complete_classes / task_data say so with the modality
    classes = list(spec.classes) or found
    unknown = [n for n in found if n not in classes]
    if spec.classes and unknown and spec.label_type != "multilabel":  # multi-label ignores other names
        raise UsageError(
            f"task {spec.name}: {where} has label(s) {_listing(unknown)} that are not among its classes "
            f"({_listing(classes)}); list every label of the data under classes: (or leave classes out "
            "to take them from the data)")
    present = [c for c in classes if c in found]
    if spec.classes and len(present) < 2:
        raise UsageError(
            f"task {spec.name}: {'none' if not present else 'only ' + _listing(present)} of its classes "
            f"({_listing(classes)}) appear in {where}, whose labels are {_listing(found)}; make the task's "
            "classes: name the data's labels")
    if "split" in df.columns:
        splits = df["split"].astype(str)
        test = [names for names, sp in zip(labels, splits, strict=True) if sp == "test" and names]
        _check_test_split(spec, test, classes, where)


def _check_test_split(spec, test: list[list[str]], classes: list[str], where: str) -> None:
    """A one-line refusal when a single-label test split holds one class."""
    if not test:
        return  # no test rows: task_data names the missing split
    fix = ("put images of two or more classes in the test split (or drop the split column so midol derives a "
           "label-stratified split)")
    if spec.label_type == "multilabel":
        return  # per-label AUROC leaves out labels without both kinds; an undefined mean prints as n/a
    kinds = sorted({names[0] for names in test if names[0] in classes})
    if len(kinds) < 2:
        raise UsageError(f"task {spec.name}: the test split of {where} holds only the class "
                         f"{_listing(kinds)} ({len(test)} images), so its metrics (AUROC, balanced accuracy, "
                         f"...) are undefined: {fix}")


def auto_tasks(df, source: str) -> list:
    """One ``TaskSpec`` per labelled modality of a manifest/embeddings table ``df``."""
    from midol_cli.tasks import TaskSpec

    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    if "duplicate_of" in df.columns:
        df = df[df["duplicate_of"].fillna("").astype(str) == ""]
    labels = _labels_of(df)
    labelled = [bool(x) for x in labels]
    if not any(labelled):
        raise UsageError(
            f"'{source}' has no labels; --task auto needs a manifest ingested with labels "
            "(a known dataset layout, or --layout csv --labels FILE)"
        )
    specs = []
    mods = df["modality"].astype(str).tolist()
    datasets = df["dataset"].astype(str).tolist() if "dataset" in df.columns else [""] * len(df)
    for mod in sorted(set(m for m, ok in zip(mods, labelled, strict=True) if ok)):
        rows = [i for i, (m, ok) in enumerate(zip(mods, labelled, strict=True)) if ok and m == mod]
        names = sorted({n for i in rows for n in labels[i]})
        if len(names) < 2:
            raise UsageError(
                f"'{source}': the {mod} images carry only the class '{names[0]}'; a task needs two or more"
            )
        multi = any(len(labels[i]) > 1 for i in rows)
        label_type = "multilabel" if multi else ("binary" if len(names) == 2 else "multiclass")
        ds = sorted({datasets[i] for i in rows if datasets[i]})
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", ds[0] if len(ds) == 1 else mod).strip("-") or mod
        case = "" if multi else auto_case(df.iloc[rows], [labels[i][0] for i in rows])
        what = f"{len(rows)} labelled images" + (f", one label per {case}: case-level" if case else "")
        specs.append(
            TaskSpec(
                f"auto-{base}",
                mod,
                "",
                label_type,
                tuple(names),
                DEFAULT_METRIC[label_type],
                f"derived by --task auto from {source}",
                "the manifest's split (ingest)",
                notes=f"{what}; label type and classes read from the data",
                origin="auto",
                case=case,
            )
        )
        if label_type != "multilabel":  # a one-class test split is refused here, before any embedding
            check_labels(specs[-1], df.iloc[rows], f"'{source}'")
    return _distinct_names(specs)


def _distinct_names(specs: list) -> list:
    """Two modalities ingested in the same dataset layout (a look-alike of fundus in APTOS's) would give
    the same ``auto-<dataset>`` name: those take ``auto-<dataset>-<modality>``; a unique name is kept."""
    import dataclasses
    from collections import Counter

    seen = Counter(sp.name for sp in specs)
    return [dataclasses.replace(sp, name=f"{sp.name}-{sp.modality}") if seen[sp.name] > 1 else sp
            for sp in specs]


def auto_case(df, labels: list[str]) -> str:
    """``--task auto``'s case level: ``slide`` when every row is a slide tile (its meta names a ``slide``),
    ``volume`` when every row is a B-scan (meta ``volume``), and the label is constant within each slide or
    volume; else "" (an image-level task: a tile or B-scan labelled on its own)."""
    from midol_cli.eval.subgroups import parse_meta

    metas = parse_meta(df["meta"].tolist()) if "meta" in df.columns else [{}] * len(df)
    for unit in ("slide", "volume"):
        keys = [m.get(unit, "") for m in metas]
        if not keys or not all(keys):
            continue
        first: dict[str, str] = {}
        if all(first.setdefault(k, lab) == lab for k, lab in zip(keys, labels, strict=True)):
            return unit
        return ""
    return ""


def read_labels_table(path: Path):
    """The rows ``--task auto`` reads: a manifest's, or a shard dir's samples (metadata only)."""
    import pandas as pd

    if path.is_dir():
        from midol_cli.data.loader import iter_metadata

        return pd.DataFrame(list(iter_metadata(path)))
    from midol_cli.data.manifest import read_manifest

    df, _ = read_manifest(path, only_ok=True)
    return df
