"""Colour fundus tasks: diabetic-retinopathy grading (APTOS, IDRiD, Messidor-2, EyePACS) and Retina."""

from __future__ import annotations

from midol_cli.tasks import TaskSpec

DR_GRADES: tuple[str, ...] = ("0", "1", "2", "3", "4")
_DR_NOTES = "ICDR grade 0 none, 1 mild, 2 moderate, 3 severe NPDR, 4 proliferative DR; metric QWK"

TASKS = [
    TaskSpec(
        "aptos2019", "fundus", "aptos2019", "ordinal", DR_GRADES, "qwk",
        "APTOS 2019 Blindness Detection, Kaggle (Asia Pacific Tele-Ophthalmology Society)",
        "derived: seeded, label-stratified 70/15/15 (one image per id_code)",
        license="Kaggle competition rules (non-commercial research)",
        notes=_DR_NOTES + "; foundation-model papers also report AUROC",
    ),
    TaskSpec(
        "idrid", "fundus", "idrid", "ordinal", DR_GRADES, "qwk",
        "Porwal et al., IDRiD, Data 3(3):25 (2018); IEEE DataPort",
        "official 413 training / 103 testing images; val carved from training",
        license="CC BY 4.0",
        notes=_DR_NOTES,
    ),
    TaskSpec(
        "messidor2", "fundus", "messidor2", "ordinal", DR_GRADES, "qwk",
        "Decencière et al., Image Anal. Stereol. 33(3) 2014; Abràmoff et al., JAMA Ophthalmol. 2013; "
        "adjudicated grades: Krause et al., Ophthalmology 125(8) 2018",
        "derived: grouped by exam (both eyes), label-stratified 70/15/15",
        license="ADCIS Messidor-2 terms (research and teaching); grades: see the Kaggle google-brain listing",
        notes=_DR_NOTES + "; ungradable images (adjudicated_gradable = 0) are left out",
        subgroups=("eye",),
    ),
    TaskSpec(
        "eyepacs", "fundus", "eyepacs", "ordinal", DR_GRADES, "qwk",
        "Kaggle Diabetic Retinopathy Detection (2015), images from EyePACS",
        "derived: grouped by patient id (both eyes), label-stratified 70/15/15; official train/test when "
        "retinopathy_solution.csv is present",
        license="Kaggle competition rules (non-commercial research)",
        notes=_DR_NOTES,
        subgroups=("eye",),
    ),
    TaskSpec(
        "retina", "fundus", "retina-cataract", "multiclass",
        ("normal", "cataract", "glaucoma", "retina_disease"),
        "accuracy",
        "Cataract dataset (Kaggle jr2ngb/cataractdataset), 4 classes; reported as 'Retina' in M-IDoL",
        "derived: seeded, label-stratified 70/15/15 (no patient ids: one group per image)",
        license="see the Kaggle listing (jr2ngb/cataractdataset)",
        notes="class = folder name without its 'N_' prefix",
    ),
]
