"""Tasks on the data ``midol synth`` draws: one per modality, in the layout of a real dataset.

The tasks that test the mechanism (issue 28.6) are not registry entries here, since ``SYNTH_TASKS`` (every
``synth-*`` name) is what the demo and its check probe on the five-modality demo data:

- the pooled cross-modality task, ``pooled`` in ``midol study --tasks`` (``tasks/pooled.py``): every
  modality's classes as ``modality:class`` in one task, with cross-modality retrieval (mAP@10);
- the look-alike modality ``slo`` (``midol synth --lookalike``): its images are probed with
  ``--task auto`` on its manifest, or pooled with fundus, whose classes it shares;
- the imbalanced mix (``midol synth --mix oct=5`` beside ``--per-class 50``) changes the data, not the
  tasks: the synth-* tasks apply unchanged.
"""

from __future__ import annotations

from midol_cli.tasks import TaskSpec

_SRC = "midol synth (procedural demo data, generated locally; no licence restrictions)"

TASKS = [
    TaskSpec(
        "synth-xray",
        "xray",
        "chestxray14",
        "multilabel",
        ("Cardiomegaly", "Effusion", "Nodule"),
        "auroc",
        _SRC,
        "official lists train_val_list.txt/test_list.txt; val carved by patient",
        notes="'No Finding' is the all-negative label set; accuracy is exact-match",
        subgroups=("sex", "age", "view"),
        group_unit="patient",
        aggregation="max",
    ),
    TaskSpec(
        "synth-fundus",
        "fundus",
        "aptos2019",
        "ordinal",
        ("0", "1", "2", "3"),
        "accuracy",
        _SRC,
        "derived: seeded, label-stratified 70/15/15",
    ),
    TaskSpec(
        "synth-oct",
        "oct",
        "oct2017",
        "multiclass",
        ("CNV", "DME", "DRUSEN", "NORMAL"),
        "accuracy",
        _SRC,
        "official train/test folders; val carved from train by patient",
    ),
    TaskSpec(
        "synth-dermoscopy",
        "dermoscopy",
        "ham10000",
        "multiclass",
        ("bkl", "mel", "nv", "vasc"),
        "accuracy",
        _SRC,
        "derived: grouped by lesion_id, label-stratified 70/15/15",
        subgroups=("sex", "age", "localization"),
        group_unit="lesion",
    ),
    TaskSpec(
        "synth-pathology",
        "pathology",
        "nct-crc",
        "multiclass",
        ("ADI", "LYM", "STR", "TUM"),
        "accuracy",
        _SRC,
        "derived: seeded, label-stratified 70/15/15",
    ),
]
