"""The export of a pre-training run's starting point: the ``random`` baseline of a study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from midol_cli import __version__
from midol_cli import checkpoint as ckpt
from midol_cli.artifacts import provenance, write_json_atomic
from midol_cli.recipes import PretrainRecipe, dump_recipe, recipe_dict, recipe_hash
from midol_cli.train.pretrain import build_model, encoder_spec


def export_initial(recipe: PretrainRecipe, run_dir: str | Path) -> dict[str, Any]:
    """The recipe's model before its first step, as a run dir with an export: the ``random`` baseline.

    The seed is ``train.seed`` and the model is built exactly as ``run_pretrain`` builds it, so the
    encoder is the very initialisation a pre-training run of that seed starts from (and, since the
    encoder is built before the projector, the one every variant of a study with that seed starts
    from). Comparing a run with its own starting point is the fairest floor there is.
    """
    from midol_cli.models.export import export_run

    run_dir = Path(run_dir)
    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_recipe(recipe, run_dir / "recipe.yaml")
    ckpt.save_checkpoint(
        run_dir,
        0,
        {
            "student": model.student.state_dict(),
            "teacher": model.teacher.state_dict(),
            "recipe": recipe_dict(recipe),
            "recipe_hash": recipe_hash(recipe),
            "encoder_spec": encoder_spec(recipe).to_dict(),
            "modalities": list(recipe.data.modalities),
            "n_experts": model.n_experts,
            "midol_version": __version__,
            "initial": True,
            "init": model.init,
        },
        keep_last=1,
    )
    write_json_atomic(
        run_dir / "run.json",
        provenance(stage="init", recipe_hash=recipe_hash(recipe), seed=recipe.train.seed, steps=0,
                   modalities=list(recipe.data.modalities), encoder=encoder_spec(recipe).to_dict()),
    )
    return {k: str(v) for k, v in export_run(run_dir).items()}
