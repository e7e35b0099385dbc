"""Pathology tasks: breast (BreakHis), lymph node (PCam), colorectal (NCT-CRC, MHIST) histology."""

from __future__ import annotations

from midol_cli.tasks import TaskSpec

# As the breakhis layout emits them (tests check they agree; not imported, so that listing
# tasks does not load every layout module).
_BINARY = ("benign", "malignant")
_SUBTYPES = (
    "adenosis",
    "fibroadenoma",
    "phyllodes_tumor",
    "tubular_adenoma",
    "ductal_carcinoma",
    "lobular_carcinoma",
    "mucinous_carcinoma",
    "papillary_carcinoma",
)

_BREAKHIS_SRC = (
    "Spanhol et al., A Dataset for Breast Cancer Histopathological Image Classification, "
    "IEEE TBME 63(7):1455-1462 (2016)"
)
_BREAKHIS_SPLIT = "derived: grouped by patient (82 patients), label-stratified 70/15/15"
_BREAKHIS_LICENSE = "research use; request/terms on the UFPR VRI BreakHis page"
_BREAKHIS_NOTES = (
    "magnification=all pools 40X/100X/200X/400X; --task-option magnification=40X (or 100X, 200X, 400X) "
    "keeps one magnification (the others become rejected rows)"
)

TASKS = [
    TaskSpec(
        "breakhis-binary",
        "pathology",
        "breakhis",
        "binary",
        _BINARY,
        "accuracy",
        _BREAKHIS_SRC,
        _BREAKHIS_SPLIT,
        license=_BREAKHIS_LICENSE,
        notes=_BREAKHIS_NOTES,
        layout_options=(("label", "binary"), ("magnification", "all")),
        user_options=("magnification",),
        group_unit="patient",
    ),
    TaskSpec(
        "breakhis-8class",
        "pathology",
        "breakhis",
        "multiclass",
        _SUBTYPES,
        "accuracy",
        _BREAKHIS_SRC,
        _BREAKHIS_SPLIT,
        license=_BREAKHIS_LICENSE,
        notes=_BREAKHIS_NOTES,
        layout_options=(("label", "subtype"), ("magnification", "all")),
        user_options=("magnification",),
        group_unit="patient",
    ),
    TaskSpec(
        "pcam",
        "pathology",
        "pcam",
        "binary",
        ("normal", "tumor"),
        "auroc",
        "Veeling et al., Rotation Equivariant CNNs for Digital Pathology, MICCAI 2018; "
        "patches from Camelyon16 (Ehteshami Bejnordi et al., JAMA 318(22), 2017)",
        "official train/valid/test HDF5 files (262,144 / 32,768 / 32,768 patches)",
        license="CC0",
        notes="label = tumour in the centre 32x32 region (y.h5); needs h5py (pip install 'midol[hdf5]'); "
        "group = wsi from the meta CSVs when present",
        group_unit="slide",
    ),
    TaskSpec(
        "nct-crc",
        "pathology",
        "nct-crc",
        "multiclass",
        ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"),
        "accuracy",
        "Kather et al., PLoS Med 16(1):e1002730 (2019); data: Zenodo doi:10.5281/zenodo.1214456",
        "official test = CRC-VAL-HE-7K (when beside NCT-CRC-HE-100K); train/val derived from "
        "NCT-CRC-HE-100K, label-stratified",
        license="CC BY 4.0",
        notes="tile names carry no patient id, so train/val groups are single tiles; the external "
        "test set comes from other patients",
    ),
    TaskSpec(
        "mhist",
        "pathology",
        "mhist",
        "binary",
        ("HP", "SSA"),
        "auroc",
        "Wei et al., A Petri Dish for Histopathology Image Analysis, AIME 2021 (arXiv:2101.12355)",
        "official Partition column (train 2,175 / test 977); val carved from train",
        license="MHIST dataset use agreement (access by request form)",
        notes="positive class SSA (sessile serrated adenoma); label = majority vote of 7 pathologists",
    ),
]
