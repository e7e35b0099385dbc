import pytest
import timm
import torch

from midol_cli.checkpoint import load_checkpoint, save_checkpoint
from midol_cli.errors import UsageError
from midol_cli.models.encoder import EncoderSpec, build_encoder
from midol_cli.models.export import (
    export_run,
    load_exported_encoder,
    load_exported_projector,
    read_export_meta,
)
from midol_cli.models.midol import MIDoL
from tests.conftest import TINY_SWIN


@pytest.fixture()
def run_dir(tmp_path):
    torch.manual_seed(0)
    spec = EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN)
    m = MIDoL(build_encoder(spec), 2, hidden_dim=16, bottleneck_dim=8, n_prototypes=6, n_layers=2)
    with torch.no_grad():  # make teacher differ from a fresh init
        for p in m.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(
        tmp_path,
        5,
        {
            "student": m.student.state_dict(),
            "teacher": m.teacher.state_dict(),
            "encoder_spec": spec.to_dict(),
            "modalities": ["xray", "oct"],
            "n_experts": 2,
            "recipe": {
                "projector": {"hidden_dim": 16, "bottleneck_dim": 8, "n_prototypes": 6, "n_layers": 2}
            },
            "recipe_hash": "abc",
        },
        keep_last=2,
    )
    return tmp_path, m


def test_timm_round_trip_identical_outputs(run_dir):
    path, m = run_dir
    files = export_run(path)
    enc_file = files["encoder"]
    model = timm.create_model(
        "swin_base_patch4_window7_224",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(enc_file)),
        num_classes=0,
        img_size=64,
        **TINY_SWIN,
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m.teacher.encoder.eval()(x)
        assert torch.allclose(model(x), ref, atol=1e-6)
        ours, spec, meta = load_exported_encoder(enc_file)
        assert torch.allclose(ours(x), ref, atol=1e-6)
    assert meta["modalities"] == ["xray", "oct"]
    assert meta["expert_map"] == {"xray": 0, "oct": 1}
    assert meta["midol_version"] and meta["recipe_hash"] == "abc"
    from safetensors.torch import load_file

    assert not any(k.startswith(("module.", "encoder.", "head")) for k in load_file(str(enc_file)))
    proj = load_exported_projector(enc_file, ours.num_features)
    with torch.no_grad():
        h = ours(x)
        assert torch.allclose(proj(h).router_logits, m.teacher.projector(h).router_logits, atol=1e-6)


def test_export_of_empty_run_dir_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint"):
        export_run(tmp_path)


def test_non_midol_safetensors_is_rejected(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, tmp_path / "x.safetensors")
    with pytest.raises(UsageError, match="not a midol export"):
        read_export_meta(tmp_path / "x.safetensors")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    import pickle

    p = tmp_path / "checkpoints" / "ckpt-00000001.pt"
    p.parent.mkdir()
    with open(p, "wb") as fh:
        pickle.dump({"format": "midol-checkpoint-1", "x": _Evil()}, fh)
    with pytest.raises(UsageError, match="pickled code"):
        load_checkpoint(p)
    with pytest.raises(UsageError, match="pickled code"):
        export_run(tmp_path)


def test_folder_export_loads_in_timm_from_its_config_and_has_a_model_card(run_dir, tmp_path_factory):
    from midol_cli.models.export import export_folder

    path, m = run_dir
    study = tmp_path_factory.mktemp("study") / "study.md"
    study.write_text("| variant | mean |\n|---|---|\n| midol | 61.0 [58.0, 64.0] |\n")
    out = export_folder(path, path / "folder", study=study)
    assert sorted(p.name for p in out["folder"].iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "projector.safetensors",
    ]
    # timm alone (no midol): the architecture, its arguments and the preprocessing come from config.json
    model = timm.create_model(f"local-dir:{out['folder']}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), m.teacher.encoder.eval()(x), atol=1e-6)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert (
        tuple(cfg["input_size"]) == (3, 64, 64)
        and cfg["interpolation"] == "bicubic"
        and cfg["crop_pct"] == 1.0
    )
    assert tuple(cfg["mean"]) == (0.485, 0.456, 0.406)
    # and by name with pretrained_cfg_overlay, as for the plain safetensors export
    import json

    c = json.loads(out["config"].read_text())
    again = timm.create_model(c["architecture"], pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(out["weights"])), **c["model_args"]).eval()
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-6)
    card = out["card"].read_text()
    for part in (
        "## Intended use",
        "not a medical device",
        "recipe hash | `abc`",
        "xray, oct",
        "61.0 [58.0, 64.0]",
        "local-dir:",
        "random initialisation",
    ):
        assert part in card, part
    again_out = export_folder(path, path / "folder")  # re-export replaces the folder whole
    assert "No study was found" in again_out["card"].read_text()
    assert not list(path.glob(".folder.*"))


def test_the_card_summarises_the_pretraining_shards(tmp_path):
    import json

    from midol_cli.models.card import data_summary, find_study

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "index.json").write_text(json.dumps({"totals": {
        "samples": 30, "shards": 2, "per_split": {"train": 24, "test": 6},
        "counts": {"fundus": {"train": 12, "test": 3}, "oct": {"train": 12, "test": 3}}},
        "inputs": [{"manifest_hash": "db37aa3a204c2916", "path": "/m/fundus.parquet", "root": "/raw/fundus",
                    "samples": 15}]}))
    run = tmp_path / "study" / "runs" / "midol-s0"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"shards": str(shards), "shard_index_sha": "0123"}))
    text = "\n".join(data_summary(run))
    assert (
        "30 images in 2 shards" in text
        and "| fundus | 3 | 12 | 15 |" in text
        and "`fundus.parquet` (15 images, manifest hash `db37aa3a204c2916`)" in text
    )
    assert find_study(run, None) is None
    (tmp_path / "study" / "study.md").write_text("table")
    assert find_study(run, None) == (tmp_path / "study" / "study.md").resolve()


def test_onnx_export_matches_pytorch_in_onnxruntime(run_dir):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from midol_cli.models.export import export_onnx

    path, m = run_dir
    info = export_onnx(path)
    assert info["file"].is_file() and info["max_abs_diff"] <= 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(info["file"]), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, 64, 64)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert got.shape == (4, m.teacher.encoder.num_features)
        assert torch.allclose(torch.from_numpy(got), m.teacher.encoder.eval()(x), atol=1e-4)


def test_onnx_without_its_extra_names_the_extra(run_dir, monkeypatch):
    import importlib.util

    from midol_cli.models.export import export_onnx

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a)
    )
    with pytest.raises(UsageError, match=r"needs onnxruntime: pip install 'midol\[onnx\]'"):
        export_onnx(run_dir[0])


def test_the_card_of_a_fine_tuned_export_says_fine_tuned_and_names_the_epoch(tmp_path):
    from midol_cli.models.card import model_card

    meta = {"arch": "resnet18", "arch_kwargs": {}, "img_size": 224, "mean": (0.5,) * 3, "std": (0.5,) * 3,
            "modalities": ["fundus"], "which": "finetuned (lora)", "step": "7", "recipe_hash": "abc"}
    card = model_card(tmp_path, meta, 11_000_000, 512, None)
    assert "An encoder fine-tuned (lora) by midol" in card and "pre-trained" not in card.split("##")[0]
    assert "| weights | the best epoch's encoder (epoch 7) |" in card
    pre = model_card(tmp_path, {**meta, "which": "teacher", "step": "300"}, 11_000_000, 512, None)
    assert "M-IDoL encoder pre-trained by midol" in pre and "| weights | the teacher at step 300 |" in pre
