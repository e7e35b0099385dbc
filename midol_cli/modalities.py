"""Modalities are data, not code (ARCHITECTURE.md).

A modality is a lowercase name. The paper's five are built in; any other name
is accepted once the user declares it (listed in a recipe, or ``--new-modality``
on ``ingest``). A name close to a known one is refused with a suggestion.
"""

from __future__ import annotations

import difflib
import re

from midol_cli.errors import UsageError

BUILTIN_MODALITIES: tuple[str, ...] = ("xray", "fundus", "oct", "dermoscopy", "pathology")

_ALIASES = {
    "x-ray": "xray",
    "x_ray": "xray",
    "cxr": "xray",
    "radiograph": "xray",
    "retina": "fundus",
    "cfp": "fundus",
    "derm": "dermoscopy",
    "dermatology": "dermoscopy",
    "histology": "pathology",
    "histopathology": "pathology",
    "path": "pathology",
}

_NAME = re.compile(r"^[a-z][a-z0-9_]{1,31}$")


def check_modality(name: str, declared: tuple[str, ...] | list[str] = (), allow_new: bool = False) -> str:
    """Return the canonical modality name or raise a one-line ``UsageError``.

    ``declared`` are extra names the user listed (recipe); ``allow_new`` accepts
    any well-formed name that is not a near-miss of a known one.
    """
    raw = name
    name = name.strip().lower()
    known = tuple(dict.fromkeys([*BUILTIN_MODALITIES, *[d.lower() for d in declared]]))
    if name in known:
        return name
    if name in _ALIASES:
        raise UsageError(
            f"modality '{raw}' is spelled '{_ALIASES[name]}' in midol; use --modality {_ALIASES[name]}"
        )
    if not _NAME.match(name):
        raise UsageError(
            f"modality '{raw}' is not a valid name: use lowercase letters, digits and '_' (e.g. 'ultrasound')"
        )
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    if close:
        raise UsageError(f"unknown modality '{raw}': did you mean '{close[0]}'?")
    if allow_new:
        return name
    raise UsageError(
        f"unknown modality '{raw}' (known: {', '.join(known)}); "
        "declare a new one with --new-modality or list it in the recipe's modalities"
    )
