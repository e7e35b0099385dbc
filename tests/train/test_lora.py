"""Parameter-efficient fine-tuning (issue 29.3): ``midol finetune --method full | linear | lora``.

One LoRA run on a tiny Swin (1 epoch, then resumed to 2) serves the run-level checks: the encoder's base
weights are bit-identical after training, only the adapters and the head move, the trainable parameter
count is reported, the adapter folder loads on its own, and the merged export equals the adapter model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from midol_cli.errors import UsageError
from tests.train.test_finetune import synth_manifest, tiny_export

pytest.importorskip("peft", reason="the peft extra is not installed")

TINY_VIT = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)
FAST = ["epochs=1", "max_train_samples=24", "optim.batch_size=8", "optim.lr=0.5", "n_boot=20", "lora.rank=2",
        "augment={crop_scale: [1.0, 1.0], jitter_p: 0, blur_p: 0, hflip: false, vflip: false, rot90: false}"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> dict:
    """A LoRA run of 1 epoch resumed to 2: the export it started from, its run dir and summary."""
    from midol_cli.recipes import FinetuneRecipe, load_recipe
    from midol_cli.tasks import get_task
    from midol_cli.train.finetune import run_finetune

    tmp = tmp_path_factory.mktemp("lora")
    export = tiny_export(tmp / "pre")
    data = synth_manifest(tmp / "data", per_class=6)
    smoke = Path(__file__).resolve().parents[2] / "recipes" / "finetune_smoke.yaml"

    def run(*over: str, resume: str | None = None) -> dict:
        return run_finetune(get_task("synth-pathology"), f"random:{export}", data,
                            load_recipe(FinetuneRecipe, smoke, [*FAST, *over]), out_root=tmp / "results",
                            name="tiny", run_dir=tmp / "run", resume=resume, method="lora")

    run()
    summary = run("epochs=2", resume="auto")
    return {"export": export, "run_dir": tmp / "run", "summary": summary, "tmp": tmp}


def _base_encoder(export: Path):
    """The encoder the run started from (``random:`` weights: the export's architecture, seed 0)."""
    from midol_cli.eval.models import load_eval_model

    return load_eval_model(f"random:{export}").encoder


def _split(state: dict) -> tuple[dict, dict, dict]:
    """A LoRA classifier's state: (base encoder weights by timm name, adapter tensors, head tensors)."""
    base, adapters, head = {}, {}, {}
    for k, v in state.items():
        if "lora_" in k:
            adapters[k] = v
        elif k.startswith("encoder.base_model.model."):
            base[k[len("encoder.base_model.model."):].replace(".base_layer.", ".")] = v
        elif k.startswith("head."):
            head[k] = v
    return base, adapters, head


def test_lora_keeps_base_weights_bit_identical_and_trains_adapters_and_head(lora_run):
    run_dir = lora_run["run_dir"]
    start = _base_encoder(lora_run["export"]).state_dict()
    for path in (run_dir / "best.pt", *sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))):
        state = torch.load(path, map_location="cpu", weights_only=True)["model"]
        base, adapters, head = _split(state)
        assert set(base) == set(start)
        assert all(torch.equal(base[k], start[k]) for k in start), f"a base weight moved in {path.name}"
        # lora_B starts at zero (the run starts from the encoder's own outputs) and the head near zero
        assert any(k.endswith("lora_B.default.weight") and v.abs().sum() > 0 for k, v in adapters.items())
        assert head["head.fc.weight"].abs().max() > 1e-3
    n_adapt = sum(v.numel() for v in adapters.values())
    n_head = sum(v.numel() for v in head.values())
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["method"] == "lora" and rec["lora"]["rank"] == 2
    assert rec["parameters"]["trainable"] == n_adapt + n_head
    assert rec["parameters"]["total"] == n_adapt + n_head + sum(v.numel() for v in start.values())
    block = lora_run["summary"]["protocols"]["lora_ft"]
    assert block["trainable_params"] == n_adapt + n_head and block["train_mode"] == "lora"
    assert lora_run["summary"]["protocol"] == "lora_ft" and block["epochs_run"] == 2  # resumed
    assert run_dir.name == "run" and (run_dir / "metrics.jsonl").is_file()


def test_adapter_folder_loads_on_its_own_and_the_merged_export_matches(lora_run):
    from midol_cli.models.export import export_run, load_exported_encoder
    from midol_cli.models.lora import load_adapter

    run_dir = lora_run["run_dir"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)["model"]
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    # the trained model's encoder, as best.pt holds it
    from midol_cli.models.lora import add_lora

    trained = add_lora(_base_encoder(lora_run["export"]), "swin", json.loads(
        (run_dir / "run.json").read_text())["lora"])
    trained.load_state_dict({k[len("encoder."):]: v for k, v in best.items() if k.startswith("encoder.")})
    with torch.no_grad():
        want = trained.eval()(x)
        # the adapter folder on a fresh copy of the base encoder
        got = load_adapter(_base_encoder(lora_run["export"]), run_dir / "adapter")(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        # `midol export`: a plain timm encoder with the adapters merged into its weights
        enc, _, meta = load_exported_encoder(export_run(run_dir)["encoder"])
        assert not any("lora" in k or "base_layer" in k for k in enc.state_dict())
        torch.testing.assert_close(enc(x), want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(_base_encoder(lora_run["export"]).eval()(x), want, atol=1e-4)
        # the run dir is then --weights for embed and probe, like a pre-training run's
        from midol_cli.eval.models import load_eval_model

        m = load_eval_model(str(run_dir))
        assert m.projector is None
        torch.testing.assert_close(m.encoder(x), want, rtol=1e-4, atol=1e-5)
    assert meta["modalities"] == ["pathology"] and meta["which"] == "finetuned (lora)"
    assert meta["recipe_hash"] == json.loads((run_dir / "run.json").read_text())["recipe_hash"]


def _classifier(arch: str, method: str, *over: str, **kwargs):
    from midol_cli.eval.models import EvalModel
    from midol_cli.models.encoder import EncoderSpec, build_encoder
    from midol_cli.recipes import FinetuneRecipe, load_recipe
    from midol_cli.train.finetune import build_classifier

    torch.manual_seed(0)
    spec = EncoderSpec(arch=arch, img_size=kwargs.pop("img_size", 64), arch_kwargs=kwargs, pooling="default")
    model = EvalModel("t", "random", "random", "x", spec, build_encoder(spec).eval())
    return build_classifier(model, 3, load_recipe(FinetuneRecipe, None, list(over)), method=method)[0]


@pytest.mark.parametrize("arch, kwargs", [
    ("swin_base_patch4_window7_224", dict(embed_dim=32, depths=(1, 1), num_heads=(1, 2), window_size=4)),
    ("vit_base_patch16_224", TINY_VIT),
    ("vit_small_patch14_dinov2", dict(TINY_VIT, patch_size=14, img_size=56)),
])
def test_lora_defaults_adapt_the_attention_of_each_transformer_family(arch, kwargs):
    clf = _classifier(arch, "lora", **kwargs)
    trainable = [n for n, p in clf.named_parameters() if p.requires_grad]
    adapted = {n.split(".lora_")[0] for n in trainable if ".lora_" in n}
    assert adapted and all(n.endswith(("attn.qkv", "attn.proj")) for n in adapted), adapted
    assert not any("patch_embed" in n for n in adapted)
    assert {n for n in trainable if ".lora_" not in n} == {"head.fc.weight", "head.fc.bias"}
    x = torch.randn(2, 3, 64 if "dinov2" not in arch else 56, 64 if "dinov2" not in arch else 56)
    assert clf(x).shape == (2, 3)


def test_linear_method_freezes_the_encoder_and_full_trains_it():
    lin = _classifier("vit_base_patch16_224", "linear", **TINY_VIT)
    assert [n for n, p in lin.named_parameters() if p.requires_grad] == ["head.fc.weight", "head.fc.bias"]
    full = _classifier("vit_base_patch16_224", "full", **TINY_VIT)
    assert all(p.requires_grad for p in full.parameters())


def test_lora_on_a_cnn_is_one_line_unless_its_layers_are_named():
    one_line = r"^LoRA targets attention and linear layers; no layer of 'resnet10t'"
    with pytest.raises(UsageError, match=one_line):
        _classifier("resnet10t", "lora", channels=[8, 16, 32, 64], stem_width=8)
    clf = _classifier("resnet10t", "lora", "lora.target_modules=[conv2]", channels=[8, 16, 32, 64],
                      stem_width=8)
    assert any(".conv2.lora_A" in n for n, p in clf.named_parameters() if p.requires_grad)


def test_missing_peft_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(UsageError) as e:
        _classifier("vit_base_patch16_224", "lora", **TINY_VIT)
    assert str(e.value) == "LoRA fine-tuning (--method lora) needs peft: pip install 'midol[peft]'"


def test_lora_recipe_keys_and_the_method_settings():
    from midol_cli.recipes import FinetuneRecipe, load_recipe, recipe_dict
    from midol_cli.workflows.settings import FinetuneSettings

    r = load_recipe(FinetuneRecipe, None, ["lora.rank=4", "lora.alpha=8", "lora.dropout=0",
                                           "lora.target_modules=[qkv]"])
    assert (r.lora.rank, r.lora.alpha, r.lora.dropout, r.lora.target_modules) == (4, 8.0, 0.0, ["qkv"])
    assert recipe_dict(r)["lora"]["rank"] == 4 and "lora" not in recipe_dict(FinetuneRecipe())
    with pytest.raises(UsageError, match=r"lora\.rnk: unknown key \(did you mean 'rank'\?\)"):
        load_recipe(FinetuneRecipe, None, ["lora.rnk=4"])
    keys = dict(task="synth-pathology", weights="w", data="d")
    assert FinetuneSettings(**keys).method == "full"
    assert FinetuneSettings(**keys, linear=True).method == "linear"  # the old flag is an alias
    with pytest.raises(ValueError, match="contradicts --method lora"):
        FinetuneSettings(**keys, linear=True, method="lora")
