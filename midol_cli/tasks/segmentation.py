"""Segmentation tasks: a mask per image, trained by ``midol finetune`` (no linear probe)."""

from __future__ import annotations

from midol_cli.tasks import TaskSpec

TASKS = [
    TaskSpec("isic2018-seg", "dermoscopy", "isic2018-seg", "segmentation", ("background", "lesion"),
             "dice", "Codella et al., ISIC 2018 challenge task 1, arXiv:1902.03368 (2019)",
             "official train/val/test folders where present; else derived, grouped by image id",
             license="CC BY-NC 4.0",
             notes="fine-tuning only (encoder + FPN decoder); Dice/Jaccard per image at the mask's own "
                   "resolution, mean with 95% bootstrap CIs over images"),
]
