"""Chest X-ray tasks: ChestX-ray14, CheXpert, RSNA Pneumonia, COVIDx."""

from __future__ import annotations

from midol_cli.tasks import TaskSpec

CXR14_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
# The CheXpert competition findings, as the CSV header spells them.
CHEXPERT_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

TASKS = [
    TaskSpec(
        "chestxray14", "xray", "chestxray14", "multilabel", CXR14_FINDINGS, "auroc",
        "Wang et al., ChestX-ray8, CVPR 2017 (NIH Clinical Center)",
        "official train_val_list.txt/test_list.txt; val carved from train_val by Patient ID",
        license="NIH Clinical Center: unrestricted use, cite the paper and acknowledge the NIH CC",
        notes="mean AUROC over the 14 findings; 'No Finding' is the all-negative label set, not a class; "
              "Data_Entry_2017_v2020.csv ('Patient Sex') is accepted",
        subgroups=("sex", "age", "view"), group_unit="patient", aggregation="max",
    ),
    TaskSpec(
        "chexpert", "xray", "chexpert", "multilabel", CHEXPERT_FINDINGS, "auroc",
        "Irvin et al., CheXpert, AAAI 2019 (Stanford AIMI)",
        "official: train.csv -> train (val carved by patient), valid.csv -> test",
        license="Stanford University CheXpert Dataset Research Use Agreement (non-commercial research)",
        notes="mean AUROC over the five competition findings; option uncertainty=u-ones|u-zeros|ignore "
              "(-1 labels read as positive / negative / the image is left out); frontal_only=true|false; "
              "'No Finding' marks images with none of the five positive",
        layout_options=(("uncertainty", "u-ones"), ("frontal_only", "true")),
        user_options=("uncertainty", "frontal_only"),
        subgroups=("sex", "age", "view"), group_unit="patient", aggregation="max",
    ),
    TaskSpec(
        "rsna-pneumonia", "xray", "rsna-pneumonia", "binary", ("0", "1"), "accuracy",
        "Shih et al., Radiology: AI 1(1) e180041 (2019); RSNA Pneumonia Detection Challenge (Kaggle 2018)",
        "derived: grouped by patientId, label-stratified 70/15/15",
        license="RSNA challenge data terms (research, non-commercial); images from NIH ChestX-ray14",
        notes="Target 1 = lung opacity suggestive of pneumonia; box rows deduplicated per patientId; "
              "accuracy is the published M-IDoL figure, AUROC is reported as well",
        group_unit="patient",
    ),
    TaskSpec(
        "covidx", "xray", "covidx", "multiclass", ("negative", "positive", "normal", "pneumonia", "COVID-19"),
        "accuracy",
        "Wang, Lin, Wong, COVID-Net, Sci. Rep. 10, 19549 (2020)",
        "official train.txt/test.txt (val.txt when present, else val carved from train by patient_id)",
        license="mixed: each source keeps its own licence (see data_source and the COVID-Net repo)",
        notes="a release holds either positive/negative (v9 and later) or normal/pneumonia/COVID-19 (older): "
              "the other release's classes never occur and are left out of AUROC",
    ),
]
