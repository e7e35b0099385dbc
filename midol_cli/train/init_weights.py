"""The encoder a pre-training recipe trains, and its initial weights: ``model.weights`` (a file,
``NAME=FILE`` of the model registry, or ``timm:ARCH=FILE`` as ``--weights`` takes it) loaded through the
strict loader, and what run.json records of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from midol_cli.errors import UsageError
from midol_cli.models.encoder import EncoderSpec
from midol_cli.recipes import PretrainRecipe


def encoder_spec(recipe: PretrainRecipe) -> EncoderSpec:
    """The encoder a recipe trains. With ``model.weights: NAME=FILE`` (a registry model) the entry's
    architecture arguments are the base the recipe's own extend, and its normalisation is used, so
    released weights see the inputs they were trained on."""
    spec = EncoderSpec(
        arch=recipe.model.arch,
        img_size=recipe.model.img_size,
        arch_kwargs=dict(recipe.model.arch_kwargs),
        drop_path_rate=recipe.model.drop_path_rate,
    )
    named = named_init(recipe)
    if named is not None:
        entry = named[0]
        if entry.arch is not None and entry.arch != recipe.model.arch:
            raise UsageError(f"model.weights names {entry.name} ({entry.arch}) but model.arch is "
                             f"{recipe.model.arch}; set model.arch={entry.arch}")
        spec.arch_kwargs = {**entry.arch_kwargs, **spec.arch_kwargs}
        spec.mean, spec.std = entry.mean, entry.std
    timm_file = timm_init(recipe)
    if timm_file is not None:
        import timm

        cfg = timm.models.get_pretrained_cfg(recipe.model.arch) if timm.is_model(recipe.model.arch) else None
        if cfg is not None:  # the normalisation the released weights were trained with
            spec.mean, spec.std = tuple(cfg.mean), tuple(cfg.std)
    return spec


def timm_init(recipe: PretrainRecipe) -> str | None:
    """The file of ``model.weights: timm:ARCH=FILE`` (``eval.models.parse_weights``'s grammar, as
    ``--weights`` reads it); ARCH must be the recipe's ``model.arch``. None for any other form."""
    w = recipe.model.weights
    if not w or not w.startswith("timm:"):
        return None
    from midol_cli.eval.models import parse_weights

    ref = parse_weights(w)
    if ref.target != recipe.model.arch:
        raise UsageError(f"model.weights names timm:{ref.target} but model.arch is {recipe.model.arch}; set "
                         f"model.arch={ref.target}")
    return ref.file or ""


def named_init(recipe: PretrainRecipe):
    """``(registry entry, file)`` when ``model.weights`` is ``NAME=FILE``; None otherwise."""
    if not recipe.model.weights or recipe.model.weights.startswith("timm:"):
        return None
    from midol_cli.models.registry import parse_named

    return parse_named(recipe.model.weights)


def load_init(encoder: torch.nn.Module, recipe: PretrainRecipe) -> dict[str, Any] | None:
    """Load ``model.weights`` into ``encoder`` through the strict loader; what run.json records of it
    (the file, its sha256, the format and the load report). None without initial weights."""
    from midol_cli.artifacts import sha256_file
    from midol_cli.models.weights import load_file_into

    w = recipe.model.weights
    if not w:
        return None
    named = named_init(recipe)
    lenient = recipe.model.weights_lenient
    if named is not None:
        from midol_cli.models.registry import load_named

        entry, file = named
        report = load_named(encoder, entry, file, lenient=lenient)
    else:
        entry, file = None, timm_init(recipe) or w
        if w.startswith("timm:") and not Path(file).is_file():
            raise UsageError(f"weights file '{file}' does not exist (midol never downloads weights)")
        report = load_file_into(encoder, file, lenient=lenient)
    return {"weights": w, "model": entry.name if entry else None, "file": str(Path(file).resolve()),
            "sha256": sha256_file(file), "load_report": report.to_dict(), "summary": report.summary()}
