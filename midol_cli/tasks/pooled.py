"""The pooled cross-modality task (issue 28.6): one classifier over every modality's classes.

Every single-label image of a multi-modality collection (a shard dir or manifest with several
labelled modalities, such as ``midol synth``'s five) keeps its split and gets the class
``<modality>:<label>`` (``oct:CNV``, ``fundus:2``); multi-label rows (an X-ray with two findings)
are left out. One linear probe (or k-NN, or retrieval) then has to tell every modality's classes
apart at once, so a representation that mixes modalities is penalised here, and nowhere else: inside
one modality the modality is never in doubt. This is the setting where M-IDoL's claim (modality
specificity without losing intra-modality diversity) predicts a gain.

The task is not a registry entry (``tasks.TASKS``): its classes come from the data. ``midol study``
runs it with ``--tasks pooled``; ``pooled_frame`` turns any embeddings table into its rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from midol_cli.errors import UsageError
from midol_cli.tasks import TaskSpec

if TYPE_CHECKING:
    import pandas as pd

POOLED = "pooled"
SEP = ":"


def pooled_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The pooled task's rows of a table with ``modality`` and ``label`` columns (embeddings or labels):
    single-label rows only, ``label`` -> ``<modality>:<label>``, ``modality`` -> ``pooled`` (the image's
    own modality kept as ``source_modality``)."""
    labels = df["label"].fillna("").astype(str)
    keep = (labels != "") & ~labels.str.contains("|", regex=False)
    out = df[keep].copy()
    out["source_modality"] = out["modality"].astype(str)
    out["label"] = out["source_modality"] + SEP + labels[keep]
    out["modality"] = POOLED
    return out.reset_index(drop=True)


def pooled_spec(labels_table: pd.DataFrame, source: str) -> TaskSpec:
    """The pooled task of ``labels_table`` (``read_labels_table`` of the data): its classes are every
    ``modality:label`` pair present. ``UsageError`` with fewer than two labelled modalities."""
    rows = pooled_frame(labels_table)
    mods = sorted(set(rows["source_modality"]))
    if len(mods) < 2:
        raise UsageError(f"task '{POOLED}' pools the classes of several modalities, but '{source}' has "
                         f"single-label images of {len(mods)} ({', '.join(mods) or 'none'})")
    return TaskSpec(
        POOLED, POOLED, "", "multiclass", tuple(sorted(set(rows["label"]))), "accuracy",
        f"every single-label image of {source}, pooled over {len(mods)} modalities ({', '.join(mods)})",
        "the data's own splits", notes="classes are modality:label pairs", origin=POOLED)
