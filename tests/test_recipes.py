"""Recipe overrides: dotted keys change one entry, a mapping given whole replaces the recipe's."""

from pathlib import Path

import pytest

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


def test_a_non_utf8_recipe_is_one_clear_error(tmp_path):
    from midol_cli.errors import UsageError
    from midol_cli.recipes import PretrainRecipe, load_recipe

    p = tmp_path / "r.yaml"
    p.write_bytes("optim:\n  lr: 1e-3  # d\xe9j\xe0 vu\n".encode("latin-1"))
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        load_recipe(PretrainRecipe, p)


def test_a_deep_inherit_chain_is_refused_not_a_recursion_error(tmp_path):
    from midol_cli.errors import UsageError
    from midol_cli.recipes import PretrainRecipe, load_recipe

    for i in range(40):
        (tmp_path / f"r{i}.yaml").write_text(f"inherit: r{i + 1}.yaml\n" if i < 39 else "train: {steps: 3}\n")
    with pytest.raises(UsageError, match="inherit: chain deeper than 16"):
        load_recipe(PretrainRecipe, tmp_path / "r0.yaml")
    assert load_recipe(PretrainRecipe, tmp_path / "r30.yaml").train.steps == 3  # 10 levels are fine


def test_non_finite_values_are_refused_everywhere():
    from midol_cli.errors import UsageError
    from midol_cli.recipes import FinetuneRecipe, PretrainRecipe, load_recipe

    for schema, key in ((PretrainRecipe, "optim.lr"), (FinetuneRecipe, "optim.lr"), (PretrainRecipe, "loss.w_inter")):
        for v in (".inf", "-.inf", ".nan"):
            with pytest.raises(UsageError, match="finite number"):
                load_recipe(schema, None, [f"{key}={v}"])


def test_a_missing_finetune_recipe_suggests_a_finetune_recipe(tmp_path):
    from midol_cli.errors import UsageError
    from midol_cli.recipes import FinetuneRecipe, load_recipe

    with pytest.raises(UsageError, match="such as recipes/finetune_smoke.yaml"):
        load_recipe(FinetuneRecipe, tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted((SMOKE.parent).rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    from midol_cli.recipes import FinetuneRecipe, SegmentationRecipe

    schema = (FinetuneRecipe if path.name.startswith("finetune") else SegmentationRecipe if path.name.startswith("segment")
              else PretrainRecipe)
    load_recipe(schema, path)


def test_classification_and_segmentation_recipes_each_forbid_the_others_keys():
    from midol_cli.errors import UsageError
    from midol_cli.recipes import FinetuneRecipe, SegmentationRecipe, finetune_schema

    with pytest.raises(UsageError, match="decoder_dim"):
        load_recipe(FinetuneRecipe, None, ["decoder_dim=64"])
    with pytest.raises(UsageError, match="label_smoothing"):
        load_recipe(SegmentationRecipe, None, ["label_smoothing=0.2"])
    assert load_recipe(SegmentationRecipe, None, ["decoder_dim=64"]).decoder_dim == 64
    assert finetune_schema("segmentation") is SegmentationRecipe and finetune_schema("multiclass") is FinetuneRecipe
