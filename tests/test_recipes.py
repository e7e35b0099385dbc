"""Recipe overrides: dotted keys change one entry, a mapping given whole replaces the recipe's."""

from pathlib import Path

import pytest

from midol_cli.recipes import FinetuneRecipe, PretrainRecipe, SegmentationRecipe, load_recipe

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

    for schema, key in (
        (PretrainRecipe, "optim.lr"),
        (FinetuneRecipe, "optim.lr"),
        (PretrainRecipe, "loss.w_inter"),
    ):
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

    schema = (
        FinetuneRecipe
        if path.name.startswith("finetune")
        else SegmentationRecipe
        if path.name.startswith("segment")
        else PretrainRecipe
    )
    load_recipe(schema, path)


def test_classification_and_segmentation_recipes_each_forbid_the_others_keys():
    from midol_cli.errors import UsageError
    from midol_cli.recipes import FinetuneRecipe, SegmentationRecipe, finetune_schema

    with pytest.raises(UsageError, match="decoder_dim"):
        load_recipe(FinetuneRecipe, None, ["decoder_dim=64"])
    with pytest.raises(UsageError, match="label_smoothing"):
        load_recipe(SegmentationRecipe, None, ["label_smoothing=0.2"])
    assert load_recipe(SegmentationRecipe, None, ["decoder_dim=64"]).decoder_dim == 64
    assert (
        finetune_schema("segmentation") is SegmentationRecipe
        and finetune_schema("multiclass") is FinetuneRecipe
    )


@pytest.mark.parametrize("key", ["train.steps", "optim.lr", "optim.betas", "data.global_views", "train.seed"])
def test_a_bool_where_a_number_belongs_is_refused(key):
    """pydantic's lax mode read ``train.steps=true`` as 1 step (issue 25.10); the check sits on the
    base model, so every recipe and settings model refuses it with the usual dotted key."""
    from midol_cli.errors import UsageError

    value = "[true, 0.9]" if key == "optim.betas" else "true"
    with pytest.raises(UsageError, match=rf"^recipe with overrides has 1 problem: {key}: .*not true/false"):
        load_recipe(PretrainRecipe, None, [f"{key}={value}"])
    with pytest.raises(UsageError, match="optim.batch_size: .*not true/false"):
        load_recipe(FinetuneRecipe, None, ["optim.batch_size=false"])
    with pytest.raises(UsageError, match="data.mix: .*not true/false"):
        load_recipe(PretrainRecipe, None, ["data.modalities=[xray]", "data.mix={xray: true}"])
    # Booleans stay booleans, numbers stay numbers, free-form mappings keep their bools.
    r = load_recipe(PretrainRecipe, None, ["train.compile=true", "train.steps=3", "optim.lr=1",
                                           "model.arch_kwargs={flag: true}"])
    assert (r.train.compile, r.train.steps, r.optim.lr, r.model.arch_kwargs) == (True, 3, 1.0, {"flag": True})


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", "a\\b", "~x", ""])
def test_a_run_name_must_be_a_plain_name(name):
    """``name: ../../x`` wrote the run outside runs/ (issue 25.11)."""
    from midol_cli.errors import UsageError

    for schema in (PretrainRecipe, FinetuneRecipe, SegmentationRecipe):
        with pytest.raises(UsageError, match="name: .*must be a plain name") as e:
            load_recipe(schema, None, [f"name={name!r}"])
        assert "\n" not in str(e.value)
    assert load_recipe(PretrainRecipe, None, ["name=my-run_2.1"]).name == "my-run_2.1"


@pytest.mark.parametrize("text", ["model: &a [*a]\n", "a: &x {b: *x}\n", "train: &t {x: [1, *t]}\n"])
def test_a_recursive_yaml_anchor_is_one_line_naming_the_file(tmp_path, text):
    """A self-referencing anchor loaded as a recursive list, then crashed validation or JSON with a
    traceback (issue 25.7); every YAML reader goes through recipes.load_yaml."""
    from midol_cli.errors import UsageError
    from midol_cli.recipes import load_yaml, read_yaml

    p = tmp_path / "r.yaml"
    p.write_text(text)
    for load in (lambda: load_recipe(PretrainRecipe, p), lambda: read_yaml(p, what="config"),
                 lambda: load_yaml(p, what="task file")):
        with pytest.raises(UsageError, match=rf"'{p}' holds a recursive YAML anchor"):
            load()
    with pytest.raises(UsageError, match="recursive YAML anchor"):
        load_recipe(PretrainRecipe, None, [f"model.arch_kwargs={text.split(': ', 1)[1].strip()}"])
    # A plain alias (the same value twice) is not recursion.
    p.write_text("a: &x [1, 2]\nb: [*x, *x]\n")
    assert load_yaml(p) == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


def test_no_yaml_is_read_outside_the_one_loader():
    """Every YAML file midol reads goes through recipes.load_yaml (issue 25.7)."""
    pkg = Path(__file__).resolve().parents[1] / "midol_cli"
    found = [str(p.relative_to(pkg)) for p in pkg.rglob("*.py") if "yaml.safe_load(" in p.read_text()
             or "yaml.load(" in p.read_text()]
    assert found == ["recipe_files.py"]


def test_the_packaged_recipes_are_the_repositorys_recipes():
    """The installed copy (midol_cli/recipes_data, package data) and the checkout's recipes/ (the README's
    paths) are the same files (issue 25.20)."""
    from midol_cli.recipes import PACKAGED_DIR

    ours = {p.relative_to(SMOKE.parent): p.read_bytes() for p in SMOKE.parent.rglob("*.yaml")}
    packaged = {p.relative_to(PACKAGED_DIR): p.read_bytes() for p in PACKAGED_DIR.rglob("*.yaml")}
    assert sorted(ours) == sorted(packaged) and len(ours) >= 10
    assert [str(k) for k in ours if ours[k] != packaged[k]] == []


def test_a_recipe_is_found_by_its_name(tmp_path, monkeypatch):
    """``--recipe smoke`` (and the README's ``recipes/smoke.yaml`` from any folder) resolve to the shipped
    recipe; a file on disk wins over the name (issue 25.20)."""
    from midol_cli.errors import UsageError
    from midol_cli.recipes import PACKAGED_DIR, packaged_recipes, resolve_recipe

    monkeypatch.chdir(tmp_path)
    for arg in ("smoke", "smoke.yaml", "recipes/smoke.yaml"):
        assert resolve_recipe(arg) == PACKAGED_DIR / "smoke.yaml"
        assert load_recipe(PretrainRecipe, arg) == load_recipe(PretrainRecipe, SMOKE)
    assert load_recipe(PretrainRecipe, "ablation/no_moe").projector.shared_expert is True
    assert load_recipe(FinetuneRecipe, "finetune_smoke") == load_recipe(FinetuneRecipe, PACKAGED_DIR /
                                                                        "finetune_smoke.yaml")
    assert {"smoke", "base", "finetune", "segment", "ablation/no_moe"} <= set(packaged_recipes())
    (tmp_path / "smoke").write_text("name: mine\n")
    assert load_recipe(PretrainRecipe, "smoke").name == "mine"
    with pytest.raises(UsageError, match="'nope' does not exist; .*shipped recipe's name .*smoke"):
        load_recipe(PretrainRecipe, "nope")
    for bad in ("../smoke", "/smoke"):
        assert resolve_recipe(bad) == Path(bad)


def test_midol_recipes_lists_names_and_descriptions():
    from typer.testing import CliRunner

    from midol_cli.cli.main import app

    res = CliRunner().invoke(app, ["recipes"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "smoke" in res.output and "ablation/no_moe" in res.output
    assert "The demo's M-IDoL recipe: a tiny ResNet at 64 px" in res.output
