"""The registry of known models: every entry builds, ``--weights NAME=FILE`` uses the entry's own
preprocessing, pooling and format, a missing file says where to get it, and the Hugging Face
transformers layouts (Phikon, Phikon-v2, RAD-DINO) convert to timm with equal outputs."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from midol_cli.errors import UsageError
from midol_cli.eval.models import load_eval_model
from midol_cli.models import registry as reg
from midol_cli.models.encoder import EncoderSpec, build_encoder
from tests.conftest import one_line_error, run_midol

NAMES = list(reg.registry())


def test_the_registry_covers_the_models_the_issue_names():
    need = {
        "imagenet-swinb",
        "dinov2-vits14",
        "dinov2-vitb14",
        "dinov2-vitl14",
        "retfound-mae",
        "retfound-dinov2",
        "rad-dino",
        "uni",
        "uni2-h",
        "phikon",
        "phikon-v2",
        "conch",
        "biomedclip",
        "midol",
    }
    assert need <= set(NAMES)


# Output width of each entry's feature: the paper-scale sizes, built on the meta device (no memory, no init).
WIDTH = {"imagenet-swinb": 1024, "dinov2-vits14": 768, "dinov2-vitb14": 1536, "dinov2-vitl14": 2048,
         "retfound-mae": 1024, "retfound-dinov2": 1024, "rad-dino": 768, "phikon": 768, "phikon-v2": 1024,
         "uni": 1024, "uni2-h": 1536, "conch": 768, "biomedclip": 768}


@pytest.mark.parametrize("name", [n for n in NAMES if n != "midol"])
def test_every_entry_builds_with_its_width_and_input(name):
    e = reg.get_entry(name)
    with torch.device("meta"):
        m = build_encoder(e.spec())
        out = m(torch.zeros(1, 3, e.img_size, e.img_size, device="meta"))
    assert out.shape == (1, WIDTH[name]) and m.num_features == WIDTH[name]
    assert e.source.startswith(("http", "`")) and len(e.mean) == len(e.std) == 3


def test_uni2_h_resolves_its_layer_classes_and_nothing_else():
    m = reg.get_entry("uni2-h")
    with torch.device("meta"):
        enc = build_encoder(m.spec())
    mlp = enc.blocks[0].mlp  # timm's SwiGLUPacked is GluMlp(act=SiLU) with packed [x1; x2] weights
    assert (
        type(mlp).__name__ == "GluMlp" and isinstance(mlp.act, torch.nn.SiLU) and enc.num_prefix_tokens == 9
    )
    bad = EncoderSpec(arch="vit_small_patch16_224", arch_kwargs={"act_layer": "os.system"})
    with pytest.raises(UsageError):  # left a string, which timm refuses: never imported
        build_encoder(bad)
    with pytest.raises(UsageError, match="not a class in torch.nn"):
        build_encoder(
            EncoderSpec(arch="vit_small_patch16_224", arch_kwargs={"act_layer": "torch.nn.functional"})
        )


def _vit(pooling, **kw):
    torch.manual_seed(0)
    return build_encoder(EncoderSpec(arch="vit_small_patch16_224", img_size=32, pooling=pooling,
                                     arch_kwargs={"depth": 1, **kw})).eval()


def test_pooling_gives_the_class_token_the_patch_mean_or_both():
    x = torch.randn(2, 3, 32, 32)
    cls, mean, both = _vit("cls"), _vit("mean"), _vit("both")
    with torch.no_grad():
        tokens = cls.forward_features(x)  # final norm applied
        assert torch.allclose(cls(x), tokens[:, 0], atol=1e-6)
        assert torch.allclose(mean(x), tokens[:, 1:].mean(1), atol=1e-6)
        assert torch.allclose(both(x), torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1), atol=1e-6)
    assert both.num_features == 768 and set(mean.state_dict()) == set(cls.state_dict())  # no fresh fc_norm
    import copy

    twin = copy.deepcopy(both)  # the EMA teacher's copy keeps the head, bound to itself
    with torch.no_grad():
        twin.norm.weight.mul_(2)
        assert not torch.allclose(twin(x), both(x))
    with pytest.raises(UsageError, match="needs a class token"):
        build_encoder(EncoderSpec(img_size=64, arch_kwargs={"embed_dim": 32, "depths": (1, 1, 2, 1),
                                                            "num_heads": (1, 2, 4, 8), "window_size": 4},
                                  pooling="cls"))


@pytest.fixture
def tiny_entries(monkeypatch):
    """Small stand-ins for registry entries (same formats, ViT-S depth 2) so loads run in a second."""
    base = reg.registry()
    tiny = dict(base)
    tiny["tiny-dinov2"] = reg.ModelEntry(
        name="tiny-dinov2", description="test", domain="radiology", format="hf-dinov2",
        source="https://example.org/tiny-dinov2", arch="vit_small_patch14_dinov2", img_size=56,
        arch_kwargs={"depth": 2}, mean=(0.5307,) * 3, std=(0.2583,) * 3, pooling="cls")
    tiny["tiny-vit"] = reg.ModelEntry(
        name="tiny-vit", description="test", domain="pathology", format="hf-vit",
        source="https://example.org/tiny-vit", arch="vit_small_patch16_224", img_size=64,
        arch_kwargs={"depth": 2}, pooling="cls")
    monkeypatch.setattr(reg, "registry", lambda: tiny)
    return tiny


def _hf_names(timm_sd, dinov2: bool):
    """A timm ViT state dict under the transformers 4 names the released files use (written out here,
    independently of midol's converter)."""
    out = {
        "embeddings.cls_token": timm_sd["cls_token"],
        "embeddings.position_embeddings": timm_sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": timm_sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": timm_sd["patch_embed.proj.bias"],
        "layernorm.weight": timm_sd["norm.weight"],
        "layernorm.bias": timm_sd["norm.bias"],
    }
    if dinov2:
        out["embeddings.mask_token"] = torch.zeros(1, timm_sd["cls_token"].shape[-1])
    i = 0
    while f"blocks.{i}.norm1.weight" in timm_sd:
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = timm_sd[b + f"attn.qkv.{kind}"].chunk(3, 0)
            out |= {h + f"attention.attention.query.{kind}": q, h + f"attention.attention.key.{kind}": k,
                    h + f"attention.attention.value.{kind}": v,
                    h + f"attention.output.dense.{kind}": timm_sd[b + f"attn.proj.{kind}"]}
            if dinov2:
                out |= {
                    h + f"norm1.{kind}": timm_sd[b + f"norm1.{kind}"],
                    h + f"norm2.{kind}": timm_sd[b + f"norm2.{kind}"],
                    h + f"mlp.fc1.{kind}": timm_sd[b + f"mlp.fc1.{kind}"],
                    h + f"mlp.fc2.{kind}": timm_sd[b + f"mlp.fc2.{kind}"],
                }
            else:
                out |= {h + f"layernorm_before.{kind}": timm_sd[b + f"norm1.{kind}"],
                        h + f"layernorm_after.{kind}": timm_sd[b + f"norm2.{kind}"],
                        h + f"intermediate.dense.{kind}": timm_sd[b + f"mlp.fc1.{kind}"],
                        h + f"output.dense.{kind}": timm_sd[b + f"mlp.fc2.{kind}"]}
        if dinov2:
            out[h + "layer_scale1.lambda1"] = timm_sd[b + "ls1.gamma"]
            out[h + "layer_scale2.lambda1"] = timm_sd[b + "ls2.gamma"]
        i += 1
    if not dinov2:
        out |= {"pooler.dense.weight": torch.zeros(384, 384), "pooler.dense.bias": torch.zeros(384)}
    return {k: v.contiguous() for k, v in out.items()}


@pytest.mark.parametrize("entry,dinov2", [("tiny-dinov2", True), ("tiny-vit", False)])
def test_registry_weights_use_the_entry_and_hf_layouts_equal_timm(tiny_entries, tmp_path, entry, dinov2):
    e = tiny_entries[entry]
    torch.manual_seed(0)
    src = timm.create_model(e.arch, pretrained=False, num_classes=0, img_size=e.img_size, depth=2).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # layer scale away from its 1e-5 init, so a lost gamma shows
    f = tmp_path / "model.safetensors"
    save_file(_hf_names(src.state_dict(), dinov2), str(f))
    m = load_eval_model(f"{entry}={f}")
    x = torch.randn(2, 3, e.img_size, e.img_size)
    with torch.no_grad():
        assert torch.allclose(m.encoder(x), src.forward_features(x)[:, 0], atol=1e-5)
    info = m.info()
    assert m.kind == "registry" and info["img_size"] == e.img_size and info["pooling"] == "cls"
    assert info["mean"] == list(e.mean) and info["load_report"]["format"] == e.format
    assert info["load_report"]["complete"] and info["load_report"]["strict"]


def test_the_hf_converter_matches_transformers_itself(tmp_path):
    """Where transformers is installed (the dev extra), its own Dinov2Model / ViTModel with random
    weights, saved by save_pretrained, load into timm with the same class-token output."""
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cases = [
        (
            tf.Dinov2Model(
                tf.Dinov2Config(
                    hidden_size=384,
                    num_hidden_layers=2,
                    num_attention_heads=6,
                    image_size=56,
                    patch_size=14,
                    layerscale_value=0.5,
                )
            ),
            EncoderSpec(
                arch="vit_small_patch14_dinov2", img_size=56, arch_kwargs={"depth": 2}, pooling="cls"
            ),
        ),
        (
            tf.ViTModel(
                tf.ViTConfig(
                    hidden_size=384,
                    num_hidden_layers=2,
                    num_attention_heads=6,
                    intermediate_size=1536,
                    image_size=64,
                    patch_size=16,
                    layer_norm_eps=1e-6,
                )
            ),
            EncoderSpec(arch="vit_small_patch16_224", img_size=64, arch_kwargs={"depth": 2}, pooling="cls"),
        ),
    ]
    for i, (hf, spec) in enumerate(cases):
        hf.eval()
        with torch.no_grad():
            for p in hf.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        hf.save_pretrained(tmp_path / str(i))
        enc = build_encoder(spec, weights=str(tmp_path / str(i) / "model.safetensors")).eval()
        x = torch.randn(2, 3, spec.img_size, spec.img_size)
        with torch.no_grad():
            want = hf(pixel_values=x).last_hidden_state[:, 0]
            assert torch.allclose(enc(x), want, atol=1e-5), (i, (enc(x) - want).abs().max())
        assert enc.load_report.complete


def test_a_checkpoint_in_another_format_is_refused_unless_lenient(tiny_entries, tmp_path):
    src = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=56, depth=2)
    sd = dict(src.state_dict())
    torch.save(
        {"model": {**sd, "decoder_embed.weight": torch.zeros(8, 384), "mask_token": torch.zeros(1, 1, 8)}},
        tmp_path / "mae.pth",
    )
    with pytest.raises(
        UsageError, match=r"is a mae checkpoint, but tiny-dinov2 ships as hf-dinov2 \(https://"
    ):
        load_eval_model(f"tiny-dinov2={tmp_path / 'mae.pth'}")
    assert load_eval_model(f"tiny-dinov2={tmp_path / 'mae.pth'}", lenient=True).load_report["format"] == "mae"
    torch.save(sd, tmp_path / "plain.pth")  # a plain state dict of the same tensors is as good
    assert load_eval_model(f"tiny-dinov2={tmp_path / 'plain.pth'}").load_report["complete"]


def test_random_init_of_an_entry_uses_its_architecture(tiny_entries):
    m = load_eval_model("random:tiny-vit")
    assert m.spec.arch == "vit_small_patch16_224" and m.spec.img_size == 64 and m.kind == "random"


def test_cli_lists_shows_and_says_where_to_get_a_missing_file(tmp_path):
    res = run_midol("models", check=True)
    for name in NAMES:
        assert name in res.stdout
    res = run_midol("models", "--format", "json", check=True)
    assert {e["name"] for e in json.loads(res.stdout)} == set(NAMES)
    res = run_midol("models", "show", "rad-dino", check=True)
    assert "huggingface.co/microsoft/rad-dino" in res.stdout and "0.5307" in res.stdout
    line = one_line_error(run_midol("embed", "--weights", f"rad-dino={tmp_path / 'nope.safetensors'}",
                                    "--data", tmp_path, "--out", tmp_path / "e"))
    assert "never downloads" in line and "huggingface.co/microsoft/rad-dino" in line
    line = one_line_error(run_midol("models", "show", "rad-dno"))
    assert "did you mean rad-dino" in line
