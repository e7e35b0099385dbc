"""``midol pretrain``'s one home: the command's keys (``PretrainSettings``) around the recipe's run
(``train.pretrain.run_pretrain`` does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midol_cli.progress import Reporter
from midol_cli.workflows.settings import PretrainSettings


def run(recipe: Any, s: PretrainSettings, reporter: Reporter) -> dict[str, Any]:
    """Pre-train ``recipe`` (a validated ``PretrainRecipe``) into ``s.out`` (default runs/<recipe name>);
    ``s.init`` is the recipe's ``model.weights``. The run's summary (every rank)."""
    from midol_cli.paths import writable_out
    from midol_cli.train.pretrain import run_pretrain

    if s.init:
        recipe.model.weights = s.init
    run_dir = run_dir_of(recipe, s)
    writable_out(run_dir, "--out" if s.out is not None else "the run dir")
    return run_pretrain(recipe, run_dir, resume=s.resume, max_steps=s.max_steps, reporter=reporter,
                        overwrite=s.overwrite, allow_recipe_change=s.allow_recipe_change)


def run_dir_of(recipe: Any, s: PretrainSettings) -> Path:
    return s.out if s.out is not None else Path("runs") / recipe.name
