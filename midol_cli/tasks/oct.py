"""OCT tasks: retinal B-scan classification."""

from __future__ import annotations

from midol_cli.tasks import TaskSpec

TASKS = [
    TaskSpec("oct2017", "oct", "oct2017", "multiclass", ("CNV", "DME", "DRUSEN", "NORMAL"), "accuracy",
             "Kermany et al., Cell 172(5):1122-1131 (2018); data: Mendeley Data doi:10.17632/rscbjbr9sj",
             "official train/test folders (test: 250 scans per class); val carved from train by patient",
             license="CC BY 4.0",
             notes="group = patient id (second '-' token of the file name); the Kaggle copy's 'OCT2017 ' "
                   "folder (trailing space) is accepted"),
    TaskSpec("octid", "oct", "octid", "multiclass", ("normal", "AMD", "CSR", "DR", "MH"), "accuracy",
             "Gholami et al., OCTID: Optical coherence tomography image database, Computers & Electrical "
             "Engineering 81:106532 (2020)",
             "derived: seeded, label-stratified 70/15/15 (no official split)",
             license="see the OCTID site (University of Waterloo) for its terms of use",
             notes="no patient ids are published, so each image is its own group: scans of one eye may "
                   "sit in different splits"),
]
