"""Dermoscopy tasks."""

from __future__ import annotations

from midol_cli.tasks import TaskSpec

TASKS = [
    TaskSpec("ham10000", "dermoscopy", "ham10000", "multiclass", ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),
             "accuracy", "Tschandl, Rosendahl, Kittler, Sci. Data 5, 180161 (2018)",
             "derived: grouped by lesion_id, label-stratified 70/15/15", license="CC BY-NC 4.0",
             notes="dx_type is never used (it leaks the label)"),
]
