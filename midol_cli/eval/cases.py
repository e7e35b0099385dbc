"""Case-level data: per-instance embedding rows (slide tiles, volume B-scans) grouped into cases (bags).

A case is the bag of all the rows that share a key (``CASE_UNITS``): the slide (``meta["slide"]``), the
volume (``meta["volume"]``), or the row's ``group`` column (``patient`` or ``group``: the patient when the
data knows it, else the slide or volume). The label belongs to the case, so it must be the same on every
row of a case; a case whose rows disagree is a ``UsageError`` naming the first such case.

Splits come from the rows, as for every other protocol: ingest assigns them by group (the patient when
known, else the slide or volume), so a case's rows share one. Should they not, the stricter split wins
(test over val over train, as ``data.splits``), for the case and for every case of its patient, so no
patient crosses splits. Without val cases, ``data.splits.carve_val`` carves them from the training
patients (seeded). Rows whose embedding is missing or not finite are unreadable instances: left out, and a
case left with none is skipped and counted (``CaseData.skipped``), as is an ``expected`` case with no row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from midol_cli.errors import UsageError
from midol_cli.eval.mil import Bags

if TYPE_CHECKING:
    import pandas as pd

    from midol_cli.eval.results import Task

CASE_UNITS = ("slide", "volume", "patient", "group")
_PRIORITY = {"test": 0, "val": 1, "train": 2}
# Per-instance meta keys: left out of a case's meta (what is left, e.g. vendor or eye, is a subgroup).
_INSTANCE_KEYS = frozenset({"x", "y", "tissue", "frame", "phash"})


@dataclass
class CaseData:
    """Cases of one task: ``df`` one row per case (``sample_id`` = case id, ``label``, ``group`` = patient,
    ``split``, ``meta``, ``dataset``), ``y``/``groups``/``split`` aligned with it, and the instances."""

    df: pd.DataFrame
    y: np.ndarray  # [n_cases] class indices
    groups: np.ndarray  # [n_cases] patient (the bootstrap unit)
    split: np.ndarray  # [n_cases] train | val | test
    bags: Bags  # instances of case i: bags.bag(i)
    instances: pd.DataFrame  # one row per instance, in bag order: case, sample_id, meta
    unit: str
    skipped: list[str] = field(default_factory=list)
    val_source: str = "split"
    notes: list[str] = field(default_factory=list)

    def mask(self, split: str) -> np.ndarray:
        return self.split == split

    def subset(self, mask: np.ndarray) -> Bags:
        """The bags of the cases selected by ``mask``."""
        return Bags.from_list([self.bags.bag(int(i)) for i in np.flatnonzero(mask)])

    def instance_rows(self, case_index: int) -> pd.DataFrame:
        a, b = self.bags.offsets[case_index], self.bags.offsets[case_index + 1]
        return self.instances.iloc[int(a) : int(b)]


def _meta(cell: Any) -> dict[str, str]:
    from midol_cli.eval.subgroups import parse_meta

    return parse_meta([cell])[0]


def case_keys(df: pd.DataFrame, unit: str) -> np.ndarray:
    """The case id of every row: ``meta[unit]`` for slide/volume, the ``group`` column for patient/group.
    A row without one is a ``UsageError`` naming the fix."""
    if unit not in CASE_UNITS:
        raise UsageError(f"case unit '{unit}' is not one of {', '.join(CASE_UNITS)}")
    if unit in ("patient", "group"):
        keys = df["group"].fillna("").astype(str).to_numpy()
    else:
        cells = df["meta"].to_numpy() if "meta" in df.columns else [""] * len(df)
        keys = np.asarray([_meta(c).get(unit, "") for c in cells], dtype=object).astype(str)
    missing = np.flatnonzero(keys == "")
    if len(missing):
        sid = str(df["sample_id"].iloc[int(missing[0])])
        hint = ("ingest slides with --layout slides or volumes with --layout volumes"
                if unit in ("slide", "volume") else "give the rows a group (patient) in the manifest")
        raise UsageError(f"{len(missing)} row(s) have no {unit} (first: '{sid}'), so they belong to no case: "
                         f"{hint}, or choose another case unit ({', '.join(CASE_UNITS)})")
    return keys


def _readable(df: pd.DataFrame) -> np.ndarray:
    ok = np.zeros(len(df), bool)
    for i, e in enumerate(df["embedding"].to_numpy()):
        if e is not None:
            a = np.asarray(e, dtype=np.float32)
            ok[i] = a.ndim == 1 and a.size > 0 and bool(np.isfinite(a).all())
    return ok


def _check_labels(keys: np.ndarray, labels: np.ndarray, task: Task, unit: str) -> None:
    first: dict[str, str] = {}
    for k, lab in zip(keys, labels, strict=True):
        if first.setdefault(k, lab) != lab:
            raise UsageError(
                f"task '{task.name}': labels vary within {unit} '{k}' ('{first[k]}' and '{lab}'); a "
                f"case-level task needs one label per {unit}: fix the labels (one per {unit}, e.g. a labels "
                f"CSV with a {unit} column) or evaluate per image (an instance-level task)")


def _case_splits(splits: np.ndarray, keys: np.ndarray, patients: dict[str, str]) -> dict[str, str]:
    """One split per case: the strictest of its rows', then of its patient's cases."""
    per_case: dict[str, str] = {}
    for k, s in zip(keys, splits, strict=True):
        if s not in _PRIORITY:
            raise UsageError(f"unknown split value '{s}' in the embeddings table; expected train, val, test")
        if k not in per_case or _PRIORITY[s] < _PRIORITY[per_case[k]]:
            per_case[k] = s
    per_patient: dict[str, str] = {}
    for k, s in per_case.items():
        p = patients[k]
        if p not in per_patient or _PRIORITY[s] < _PRIORITY[per_patient[p]]:
            per_patient[p] = s
    return {k: per_patient[patients[k]] for k in per_case}


def case_data(emb_df: pd.DataFrame, task: Task, unit: str, *, expected: list[str] | None = None,
              carve_seed: int = 0) -> CaseData:
    """Group the labelled rows of ``emb_df`` (the embeddings table) of ``task`` into cases by ``unit``.

    ``expected``: every case id the data should hold (e.g. ``manifest_cases``: rejected slides too), so
    a case with no readable instance is counted in ``skipped``. Errors (one line each): labels varying
    within a case, a label outside the task's classes, no train or test case, a single-class test split.
    """
    import pandas as pd

    from midol_cli.eval.metrics import encode_targets

    if task.label_type not in ("binary", "multiclass", "ordinal"):
        raise UsageError(f"task '{task.name}' is {task.label_type}; case-level protocols take single-label "
                         "tasks (binary, multiclass, ordinal)")
    df = emb_df
    if task.modality and "modality" in df.columns and len(set(df["modality"].astype(str))) > 1:
        df = df[df["modality"].astype(str) == task.modality]
    df = df[df["label"].fillna("").astype(str) != ""].reset_index(drop=True)
    keys = case_keys(df, unit)
    labels = df["label"].astype(str).to_numpy()
    _check_labels(keys, labels, task, unit)
    ok = _readable(df)
    all_cases = list(dict.fromkeys([*(expected or []), *keys.tolist()]))
    df, keys = df[ok].reset_index(drop=True), keys[ok]
    order = np.argsort(keys, kind="stable")
    df, keys = df.iloc[order].reset_index(drop=True), keys[order]
    names, starts = np.unique(keys, return_index=True)
    present = set(names.tolist())
    skipped = [c for c in all_cases if c not in present]
    if len(names) == 0:
        raise UsageError(f"task '{task.name}': no case has a readable instance")
    bad = sorted(set(df["label"].astype(str)) - set(task.classes))
    if bad:
        raise UsageError(f"label(s) {', '.join(repr(b) for b in bad[:5])} are not among the classes of task "
                         f"'{task.name}' ({', '.join(task.classes)})")
    first = df.iloc[starts]
    patients = first["group"].fillna("").astype(str).to_numpy()
    patients = np.where(patients == "", names, patients)
    split_of = _case_splits(df["split"].astype(str).to_numpy(), keys, dict(zip(names, patients, strict=True)))
    split = np.asarray([split_of[k] for k in names], dtype=object)
    cells = first["meta"].to_numpy() if "meta" in first.columns else []
    metas = [{k: v for k, v in _meta(c).items() if k not in _INSTANCE_KEYS} for c in cells]
    cases = pd.DataFrame({
        "sample_id": names, "label": first["label"].astype(str).to_numpy(), "group": patients, "split": split,
        "meta": [json.dumps(m, sort_keys=True) for m in metas] if metas else ["{}"] * len(names),
        "dataset": first["dataset"].fillna("").astype(str).to_numpy() if "dataset" in df.columns else "",
    })
    X = np.stack(df["embedding"].to_numpy()).astype(np.float32)
    offsets = np.concatenate([starts, [len(df)]]).astype(np.int64)
    inst = pd.DataFrame({"case": keys, "sample_id": df["sample_id"].astype(str).to_numpy(),
                         "meta": df["meta"].astype(str).to_numpy() if "meta" in df.columns else "{}"})
    y = encode_targets(cases["label"].to_numpy(), task.label_type, task.classes)
    cd = CaseData(cases, y, patients, split, Bags(X, offsets), inst, unit, skipped)
    if skipped:
        cd.notes.append(f"{len(skipped)} {unit}(s) with no readable instance skipped (first: '{skipped[0]}')")
    _finish_splits(cd, task, carve_seed)
    return cd


def check_case_labels(manifest_df: pd.DataFrame, task: Task, unit: str) -> None:
    """The labels-vary-within-a-case refusal of ``case_data`` on a manifest's labelled rows of the task's
    modality, so ``probe --protocol abmil`` refuses before anything is embedded."""
    df = manifest_df
    if "modality" in df.columns:
        df = df[df["modality"].astype(str) == task.modality]
    df = df[df["label"].fillna("").astype(str) != ""].reset_index(drop=True)
    if len(df):
        _check_labels(case_keys(df, unit), df["label"].astype(str).to_numpy(), task, unit)


def _finish_splits(cd: CaseData, task: Task, carve_seed: int) -> None:
    """Carve val when absent; the one-line errors of a case split that cannot be evaluated."""
    for need in ("train", "test"):
        if not cd.mask(need).any():
            raise UsageError(f"task '{task.name}' has no {need} {cd.unit}; case-level evaluation needs "
                             f"{need} cases: re-split by {cd.unit} (ingest assigns splits by group)")
    if not cd.mask("val").any():
        from midol_cli.data.splits import carve_val

        try:
            carved, cd.val_source = carve_val(cd.split, cd.groups, carve_seed)
        except ValueError as e:
            msg = f"task '{task.name}' has {e}: give the data more {cd.unit}s or a val split"
            raise UsageError(msg) from None
        cd.split = np.asarray(carved, dtype=object)
        cd.df["split"] = cd.split
        cd.notes.append(f"no val cases: {cd.val_source}")
    for part, what in (("test", "evaluate"), ("train", "train on")):
        present = sorted({task.classes[int(i)] for i in cd.y[cd.mask(part)]})
        if len(present) < 2:
            raise UsageError(
                f"task '{task.name}': every {part} {cd.unit} is '{present[0]}', so there is nothing to "
                f"{what} at the case level: re-split so {part} holds cases of at least two classes (more "
                f"{cd.unit}s, or an official split with both classes)")


def manifest_cases(manifest_df: pd.DataFrame, unit: str) -> list[str]:
    """Every case id a manifest names, rejected rows included (a slide with no tissue tile is one rejected
    row whose path is the slide): the ``expected`` of ``case_data``, so such cases are counted."""
    if unit in ("patient", "group"):
        return sorted(set(manifest_df["group"].fillna("").astype(str)) - {""})
    out = set()
    metas = manifest_df["meta"].to_numpy() if "meta" in manifest_df.columns else [""] * len(manifest_df)
    for path, cell in zip(manifest_df["path"].astype(str), metas, strict=True):
        out.add(_meta(cell).get(unit) or path.split("#", 1)[0])
    return sorted(out - {""})
