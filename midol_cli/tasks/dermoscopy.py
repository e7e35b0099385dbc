"""Dermoscopy tasks (and PAD-UFES-20's smartphone photographs of skin lesions)."""

from __future__ import annotations

from midol_cli.tasks import TaskSpec

TASKS = [
    TaskSpec(
        "ham10000",
        "dermoscopy",
        "ham10000",
        "multiclass",
        ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),
        "accuracy",
        "Tschandl, Rosendahl, Kittler, Sci. Data 5, 180161 (2018)",
        "derived: grouped by lesion_id, label-stratified 70/15/15",
        license="CC BY-NC 4.0",
        notes="dx_type is never used (it leaks the label)",
        subgroups=("sex", "age", "localization", "source"),
        group_unit="lesion",
    ),
    TaskSpec(
        "isic2018",
        "dermoscopy",
        "isic2018",
        "multiclass",
        ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"),
        "balanced_accuracy",
        "Codella et al., Skin Lesion Analysis Toward Melanoma Detection 2018 (ISIC), arXiv:1902.03368; "
        "Tschandl et al., Sci. Data 5, 180161 (2018)",
        "derived from the training set, label-stratified 70/15/15; the released Validation/Test "
        "ground truth is used as the official val/test when it sits beside it",
        license="CC BY-NC 4.0",
        notes="task 3 (7-way diagnosis); metric = the challenge's balanced multiclass accuracy; the "
        "training images are HAM10000's: group = lesion_id when "
        "ISIC2018_Task3_Training_LesionGroupings.csv is present, else each image alone",
        group_unit="lesion",
    ),
    TaskSpec(
        "pad-ufes-20",
        "dermoscopy",
        "pad-ufes-20",
        "multiclass",
        ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK"),
        "balanced_accuracy",
        "Pacheco et al., PAD-UFES-20, Data in Brief 32:106221 (2020); Mendeley Data doi:10.17632/zr7vgbcyr2",
        "derived: grouped by patient_id, label-stratified 70/15/15",
        license="CC BY 4.0",
        notes="smartphone clinical photographs, not dermoscopy; clinical metadata columns (biopsed, "
        "fitspatrick, ...) are never used as inputs; fitzpatrick, region, age and sex are "
        "reported as subgroups",
        subgroups=("fitzpatrick", "region", "sex", "age"),
        group_unit="patient",
    ),
]
