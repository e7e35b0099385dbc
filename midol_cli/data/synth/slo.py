"""A look-alike modality (issue 28.6): ``slo``, colour fundus images from a second retinal camera (a
scanning laser ophthalmoscope; ``retina`` is already an alias of fundus) in the APTOS 2019 layout
(``train.csv`` + ``train_images/<id_code>.png``), opt-in (``midol synth --lookalike``).

Its images are drawn by ``fundus.render`` with the same anatomy, tint, nuisance and acquisition, and its
four classes carry the same lesion cues under the same names (``0`` normal, ``1`` microaneurysms, ``2``
haemorrhages, ``3`` hard exudates): per-channel means and spreads match the fundus modality's. The one
difference is the camera's mark, a small notch cut into the top of the circular field of view (about 1%
of the image). So a head shared by both modalities reads ``fundus:1`` and ``slo:1`` as one class: in
the pooled task (``tasks/pooled.py``) only a representation that keeps the two modalities apart can
tell them from each other. The stream of random numbers is keyed by ``slo``, so adding it changes no
fundus image.
"""

from __future__ import annotations

from midol_cli.data.synth import Item
from midol_cli.data.synth import fundus as _fundus

NAME = "slo"
LOOKS_LIKE = "fundus"
DATASET = _fundus.DATASET
CLASSES = _fundus.CLASSES
CLASS_NAMES = _fundus.CLASS_NAMES
plan = _fundus.plan
write_tables = _fundus.write_tables


def render(item: Item, size: int, seed: int) -> bytes:
    """PNG bytes of one look-alike photograph of class ``item.label``."""
    return _fundus.render(item, size, seed, name=NAME, notch=True)
