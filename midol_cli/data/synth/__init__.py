"""Synthetic demo data: five modality folders in the layouts of real public datasets.

``generate(out_dir)`` writes, under ``out_dir``:

- ``fundus/``      APTOS 2019 layout (``train.csv`` + ``train_images/<id_code>.png``)
- ``dermoscopy/``  HAM10000 layout (``HAM10000_metadata.csv`` + two image folders)
- ``oct/``         OCT2017 layout (``OCT2017/{train,test}/<CLASS>/<CLASS>-<patient>-<n>.jpeg``)
- ``xray/``        ChestX-ray14 layout with DICOM files (``Data_Entry_2017.csv``, split lists, ``images/``)
- ``pathology/``   NCT-CRC-HE-100K layout (``NCT-CRC-HE-100K/<CLASS>/<CLASS>-<8 letters>.tif``)
- ``synth.json``   what was generated (provenance, counts); outside the modality folders

Each modality has four classes with ``per_class`` images each. Class cues are
spatial structures (see each modality module's docstring): lesions, layers,
tissue architecture, a few pixels to a third of the image across, placed so
that a crop of half the image keeps them. Pose, brightness, contrast and the
acquisition (``draw.acquire``: focus blur, tone curve, correlated grain, noise,
magnification) are drawn from one class-independent distribution, so
brightness and contrast alone do not reveal the class (a test checks this).
Colour statistics partly do, as in the real data: a vascular lesion is red, a
lymphocyte-dense tile purple (per-channel mean and std give 0.40-0.48 on
fundus, dermoscopy and pathology, chance 0.25).

The demo needs both halves of this design (docs/performance.md, "The demo's
model"): cues that a small network trained with labels learns (mean accuracy
above 0.85), and acquisition nuisance strong enough that the same network at
random init cannot read the classes linearly (below 0.55), so that what
pre-training adds shows.

Every image is drawn from a random generator keyed by (seed, modality, item),
so output is byte-identical for a seed regardless of ``workers``.

Two opt-in settings test the mechanism (issue 28.6); neither changes an image of the five modalities:

- ``lookalike``: a sixth modality, ``slo`` (``slo.py``), drawn like fundus (same statistics,
  same lesion classes) but for a small camera mark, so that a shared head confuses the two;
- ``mix``: images per class for named modalities instead of ``per_class`` (``{"oct": 5}`` with
  ``per_class=50`` is a 10:1 mix between fundus and OCT).

``family="shapes"`` (issue 28.8) draws the same five modality names with other generators (``shapes/``:
outlines, dot arrangements, oriented textures, lesion colour layouts, cell textures; three classes each,
ImageFolder layout), to check that the demo's recipe was not tuned to this family's images.
"""

from __future__ import annotations

import importlib
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError

MODALITIES: tuple[str, ...] = ("xray", "fundus", "oct", "dermoscopy", "pathology")
# Procedural families (issue 28.8): the demo's generators, and a second family with other generators under
# the same five modality names (``shapes/``), to check that a recipe was not tuned to one family's images.
FAMILIES: tuple[str, ...] = ("demo", "shapes")
# Opt-in look-alike modalities (drawn only when asked for): name -> the modality it imitates.
LOOKALIKES: dict[str, str] = {"slo": "fundus"}
CORRUPT_KINDS: tuple[str, ...] = ("zero-byte", "truncated", "not-an-image")
MIN_SIZE, MAX_SIZE = 32, 1024
MAX_PER_CLASS = 100_000

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Item:
    """One file to write.

    ``rel`` is the posix path inside the modality folder; ``fields`` are the
    layout's table values for this file (CSV columns, in the layout's order).
    ``corrupt`` names the damage for a deliberately broken file, "" otherwise.
    """

    index: int  # random-stream key of the image
    rel: str
    label: str  # the class; for X-ray the primary finding
    labels: tuple[str, ...]
    group: str
    group_index: int  # random-stream key of the group's shared look
    fields: tuple[tuple[str, str], ...] = ()
    corrupt: str = ""


def group_sizes(rng, n: int, lo: int = 2, hi: int = 4) -> list[int]:
    """Split ``n`` images into groups of ``lo..hi`` (a remainder below ``lo`` joins the last group)."""
    sizes: list[int] = []
    left = n
    while left > 0:
        k = int(rng.integers(lo, hi + 1))
        sizes.append(min(k, left))
        left -= k
    if len(sizes) > 1 and sizes[-1] < lo:
        last = sizes.pop()
        sizes[-1] += last
    return sizes


def unique_values(rng, n: int, draw: Callable[[Any], str], taken: set[str] | None = None) -> list[str]:
    """``n`` distinct values from ``draw(rng)``, in draw order, avoiding ``taken``."""
    seen = set(taken or ())
    out: list[str] = []
    while len(out) < n:
        val = draw(rng)
        if val not in seen:
            seen.add(val)
            out.append(val)
    return out


def _module(name: str, family: str = "demo"):
    pkg = "midol_cli.data.synth" if family == "demo" else f"midol_cli.data.synth.{family}"
    return importlib.import_module(f"{pkg}.{name}")


def _damage(kind: str, good: bytes) -> bytes:
    if kind == "zero-byte":
        return b""
    if kind == "truncated":
        # Keep the header, cut into the pixel data: the decoder sees a plausible file that ends early.
        return good[: max(len(good) * 2 // 5, 16)]
    if kind == "not-an-image":
        return b"synthetic corrupt file: this is text, not an image\n"
    raise ValueError(f"unknown corruption kind {kind!r}")


def _render_chunk(name: str, items: Sequence[Item], size: int, seed: int, root: str,
                  family: str = "demo") -> int:
    """Draw and write ``items`` of modality ``name`` under ``root``; runs in a worker process."""
    from midol_cli.data.synth.draw import write_bytes

    mod = _module(name, family)
    base = Path(root)
    for it in items:
        if it.corrupt in ("zero-byte", "not-an-image"):
            data = _damage(it.corrupt, b"")
        else:
            data = mod.render(it, size, seed)
            if it.corrupt:
                data = _damage(it.corrupt, data)
        write_bytes(base / it.rel, data)
    return len(items)


def _check_args(per_class: int, size: int, workers: int, corrupt: int, seed: int) -> None:
    if not 1 <= per_class <= MAX_PER_CLASS:
        raise UsageError(f"--per-class {per_class} is out of range; use 1 to {MAX_PER_CLASS}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UsageError(f"--size {size} is out of range; use {MIN_SIZE} to {MAX_SIZE} pixels")
    if workers < 1:
        raise UsageError(f"--workers {workers} must be at least 1")
    if corrupt < 0:
        raise UsageError(f"--corrupt {corrupt} must be 0 or more")
    if seed < 0:
        raise UsageError(f"--seed {seed} must be 0 or more")


def _check_family(family: str, modalities: Sequence[str] | None, lookalike: bool) -> None:
    if family not in FAMILIES:
        raise UsageError(f"--family '{family}' is not a synth family; choose from {', '.join(FAMILIES)}")
    if family == "demo":
        return
    if lookalike or any(m.strip().lower() in LOOKALIKES for m in modalities or ()):
        raise UsageError(f"--lookalike draws a demo modality (slo); family '{family}' has none: "
                         "use --family demo")


def _prepare_out(out: Path, modalities: Sequence[str], force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"output '{out}' is a file; give a folder path")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UsageError(
                f"output folder '{out}' is not empty; choose a new folder or pass --force to replace "
                "the modality folders it holds"
            )
        # Only what this run rewrites is removed: stale files from an earlier run would
        # otherwise be picked up by ingest as extra images.
        for name in modalities:
            target = out / name
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
        (out / "synth.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _chosen(modalities: Sequence[str] | None, lookalike: bool = False) -> list[str]:
    """The modalities to draw, in ``MODALITIES`` order then the look-alikes (the five for None or empty;
    ``lookalike`` adds every look-alike modality)."""
    known = (*MODALITIES, *LOOKALIKES)
    if modalities is None or len(modalities) == 0:
        wanted = list(MODALITIES)
    else:
        wanted = list(dict.fromkeys(m.strip().lower() for m in modalities))
    bad = [m for m in wanted if m not in known]
    if bad:
        raise UsageError(f"synth cannot draw modality '{bad[0]}'; choose from {', '.join(known)}")
    if lookalike:
        wanted += list(LOOKALIKES)
    return [m for m in known if m in wanted]


def _per_class(chosen: list[str], per_class: int, mix: Mapping[str, int] | None) -> dict[str, int]:
    """Images per class of each drawn modality: ``mix``'s where it names one, else ``per_class``."""
    mix = dict(mix or {})
    unknown = sorted(set(mix) - set(chosen))
    if unknown:
        raise UsageError(f"--mix names modality '{unknown[0]}', which is not drawn ({', '.join(chosen)})")
    for name, n in mix.items():
        if not 1 <= int(n) <= MAX_PER_CLASS:
            raise UsageError(f"--mix {name}={n} is out of range; use 1 to {MAX_PER_CLASS} images per class")
    return {m: int(mix.get(m, per_class)) for m in chosen}


def _plans(chosen: list[str], seed: int, per_class: dict[str, int], corrupt: int,
           family: str = "demo") -> dict[str, list[Item]]:
    """Each modality's items, with ``corrupt`` damaged ones spread over the modalities."""
    from midol_cli.data.synth.draw import rng_for

    # Damaged files go round-robin over modalities and kinds, so even --corrupt 3 shows three kinds.
    kinds: dict[str, list[str]] = {m: [] for m in chosen}
    for i in range(corrupt):
        kinds[chosen[i % len(chosen)]].append(CORRUPT_KINDS[i % len(CORRUPT_KINDS)])

    plans: dict[str, list[Item]] = {}
    for name in chosen:
        keys = (name, "plan") if family == "demo" else (family, name, "plan")  # the demo's streams unchanged
        plans[name] = _module(name, family).plan(rng_for(seed, *keys), per_class[name], kinds[name])
    return plans


def _render_all(plans: dict[str, list[Item]], out: Path, size: int, seed: int, workers: int,
                progress: ProgressFn | None, family: str = "demo") -> None:
    """Draw every planned file under ``out/<modality>``, in chunks, on ``workers`` processes."""
    total = {name: len(items) for name, items in plans.items()}
    done = dict.fromkeys(plans, 0)
    chunk = 16
    jobs = [(name, items[i : i + chunk]) for name, items in plans.items()
            for i in range(0, len(items), chunk)]
    if workers == 1:
        for name, part in jobs:
            done[name] += _render_chunk(name, part, size, seed, str(out / name), family)
            if progress is not None:
                progress(name, done[name], total[name])
        return
    import multiprocessing

    # spawn, not fork: the parent may hold torch/OpenMP threads when called from a test or a stage.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futs = {pool.submit(_render_chunk, name, part, size, seed, str(out / name), family): name
                for name, part in jobs}
        for fut in as_completed(futs):
            name = futs[fut]
            done[name] += fut.result()
            if progress is not None:
                progress(name, done[name], total[name])


def _write_modality(out: Path, name: str, items: list[Item], summary: dict[str, Any]) -> dict[str, Any]:
    """Write one modality's tables; add its damaged files to ``summary["corrupt"]`` and its files to
    ``summary["paths"]``; return its entry of ``summary["modalities"]``."""
    mod = _module(name, summary["family"])
    tables = mod.write_tables(out / name, items)
    good = [it for it in items if not it.corrupt]
    classes = Counter(lab for it in good for lab in it.labels)
    summary["corrupt"] += [
        {"modality": name, "path": f"{name}/{it.rel}", "kind": it.corrupt} for it in items if it.corrupt
    ]
    summary["paths"] += [f"{name}/{t}" for t in tables] + [f"{name}/{it.rel}" for it in items]
    return {
        "dataset": mod.DATASET,
        "root": str((out / name).resolve()),
        "images": len(good),
        "classes": {c: classes.get(c, 0) for c in mod.CLASSES},
        "groups": len({it.group for it in good}),
        "multi_label": sum(1 for it in good if len(it.labels) > 1),
        "tables": tables,
        "files": [it.rel for it in good],
    }


def generate(
    out_dir: str | Path,
    seed: int = 0,
    per_class: int = 50,
    size: int = 128,
    modalities: Sequence[str] | None = None,
    workers: int = 1,
    corrupt: int = 0,
    force: bool = False,
    progress: ProgressFn | None = None,
    lookalike: bool = False,
    mix: Mapping[str, int] | None = None,
    family: str = "demo",
) -> dict[str, Any]:
    """Write the synthetic raw folders under ``out_dir`` and return what was written.

    ``modalities`` defaults to all five (a look-alike such as ``slo`` is drawn when named there or with
    ``lookalike``); ``mix`` gives named modalities their own images per class; ``corrupt`` adds that many
    damaged files (spread over the modalities, referenced by their tables) for the ingest reject path.
    ``out_dir`` must be empty or absent unless ``force``, which replaces only the modality folders being
    written. ``family`` picks the generators: ``demo`` (this package's modules) or ``shapes`` (``shapes/``,
    the same modality names in the ImageFolder layout, three classes each; no look-alike).
    ``progress(modality, done, total)`` is called from this process as files land.

    Returns ``{"out_dir", "family", "seed", "per_class", "size", "seconds",
    "modalities": {name: {"dataset", "root", "images", "classes": {class: n},
    "groups", "multi_label", "tables", "files"}}, "corrupt": [{"modality",
    "path", "kind"}], "paths"}``; ``files`` are relative to the modality root,
    ``paths`` (every file written) and corrupt ``path`` relative to ``out_dir``.
    """
    from midol_cli.artifacts import provenance, write_json_atomic

    t0 = time.perf_counter()
    _check_args(per_class, size, workers, corrupt, seed)
    _check_family(family, modalities, lookalike)
    chosen = _chosen(modalities, lookalike)
    counts = _per_class(chosen, per_class, mix)
    out = Path(out_dir)
    _prepare_out(out, chosen, force)
    plans = _plans(chosen, seed, counts, corrupt, family)
    _render_all(plans, out, size, seed, workers, progress, family)

    summary: dict[str, Any] = {
        "out_dir": str(out.resolve()),
        "family": family,
        "seed": seed,
        "per_class": per_class,
        "size": size,
        "modalities": {},
        "corrupt": [],
        "paths": [],
    }
    if mix:
        summary["mix"] = {m: counts[m] for m in chosen if m in mix}
    if any(m in LOOKALIKES for m in chosen):
        summary["lookalike"] = {m: LOOKALIKES[m] for m in chosen if m in LOOKALIKES}
    for name in chosen:
        summary["modalities"][name] = _write_modality(out, name, plans[name], summary)

    record = {k: v for k, v in summary.items() if k not in ("out_dir", "paths")}
    record["modalities"] = {
        n: {k: v for k, v in m.items() if k not in ("root", "files")}
        for n, m in summary["modalities"].items()
    }
    write_json_atomic(out / "synth.json", provenance(stage="synth", **record))
    summary["paths"].append("synth.json")
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary
