"""Recipe overrides: dotted keys change one entry, a mapping given whole replaces the recipe's."""

from pathlib import Path

from midol_cli.recipes import PretrainRecipe, load_recipe

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"


def test_dotted_key_changes_one_entry_of_a_mapping():
    r = load_recipe(PretrainRecipe, SMOKE, ["model.arch_kwargs.stem_width=16"])
    assert r.model.arch_kwargs == {"channels": [16, 32, 64, 128], "stem_width": 16}


def test_whole_mapping_replaces_the_recipes_mapping():
    r = load_recipe(PretrainRecipe, SMOKE, ["model.arch=swin_base_patch4_window7_224",
                                            "model.arch_kwargs={embed_dim: 32, window_size: 4}"])
    assert r.model.arch_kwargs == {"embed_dim": 32, "window_size": 4}
    assert r.optim.lr == load_recipe(PretrainRecipe, SMOKE).optim.lr  # the rest of the recipe is untouched
