"""issue 25.26: every path in a written settings file resolves against one base. Written: a model's paths
are absolute (relative ones were relative to the cwd of the run that wrote them). Read back as a config:
relative paths resolve against the file's folder, whatever the cwd."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from midol_cli.workflows.settings import ProbeSettings, resolve, write_settings

ROOT = Path(__file__).resolve().parents[2]


def test_written_settings_read_back_from_another_cwd(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "manifests").mkdir(parents=True)
    (work / "manifests" / "oct.parquet").write_bytes(b"")
    (work / "enc.safetensors").write_bytes(b"")
    monkeypatch.chdir(work)
    s = ProbeSettings(task="synth-oct", data=Path("manifests/oct.parquet"), out=Path("results"),
                      weights="timm:resnet18=enc.safetensors")
    written = write_settings(s, work / "results" / "m" / "t", "probe", folder=True)
    raw = yaml.safe_load(written.read_text())
    assert raw["data"] == str(work / "manifests" / "oct.parquet") and raw["out"] == str(work / "results")
    assert raw["weights"] == f"timm:resnet18={work / 'enc.safetensors'}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    back = resolve(ProbeSettings, written)
    assert Path(back.data) == work / "manifests" / "oct.parquet" and back.out == work / "results"
    assert back.weights == s.weights.replace("enc.safetensors", str(work / "enc.safetensors"))


def test_a_recipe_name_stays_a_name(tmp_path, monkeypatch):
    from midol_cli.workflows.settings import QuickstartSettings, settings_dict

    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()
    d = settings_dict(QuickstartSettings(raw_root=Path("raw"), recipe=Path("smoke")))
    assert d["recipe"] == "smoke" and d["raw_root"] == str(tmp_path / "raw")


def test_a_relative_path_in_a_config_is_beside_the_file(tmp_path, monkeypatch):
    cfg = tmp_path / "cfgs" / "probe.yaml"
    cfg.parent.mkdir()
    (cfg.parent / "run").mkdir()
    cfg.write_text("task: synth-oct\ndata: ../data/oct.parquet\nweights: run\nout: res\n")
    monkeypatch.chdir(tmp_path)
    s = resolve(ProbeSettings, cfg, ["seeds=2"])
    assert Path(s.data) == cfg.parent / "../data/oct.parquet" and s.out == cfg.parent / "res"
    assert s.weights == str(cfg.parent / "run") and s.seeds == 2
    # flags and key=value on the command line stay relative to the cwd, as a shell user means them
    s = resolve(ProbeSettings, cfg, ["out=here"])
    assert s.out == Path("here") and not os.path.isabs(s.out)


@pytest.fixture(scope="module")
def oct_data(tmp_path_factory):
    from tests.pipeline import build_pipeline

    return build_pipeline(tmp_path_factory.mktemp("paths") / "data", per_class=2, modalities=("oct",))


def test_finetune_yaml_paths_are_absolute(tmp_path, monkeypatch, oct_data):
    """finetune.yaml was written from a plain dict: its relative paths named the writer's cwd."""
    from midol_cli.progress import Silent
    from midol_cli.workflows import finetune

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(oct_data["manifests"], work / "manifests")
    monkeypatch.chdir(work)
    monkeypatch.setattr("midol_cli.train.finetune.run_finetune",
                        lambda *a, **k: {"out_dir": str(work / "results" / "ft")})
    given = {"task": "synth-oct", "data": "manifests/oct.parquet", "weights": "random:resnet18",
             "out": "results", "run_dir": "runs/ft"}
    s, recipe = finetune.resolve(given, [], "test")
    finetune.run(s, recipe, Silent())
    written = work / "results" / "ft" / "finetune.yaml"
    raw = yaml.safe_load(written.read_text())
    assert raw["data"] == str(work / "manifests" / "oct.parquet") and raw["out"] == str(work / "results")
    assert raw["run_dir"] == str(work / "runs" / "ft")
    monkeypatch.chdir(tmp_path)
    back, _ = finetune.resolve(yaml.safe_load(written.read_text()), [], str(written))
    assert Path(back.data) == work / "manifests" / "oct.parquet" and back.run_dir == work / "runs" / "ft"


def test_study_yaml_paths_are_absolute(tmp_path, monkeypatch, oct_data):
    """study/study.yaml was written from a plain dict: its study section's paths (out, --finetune,
    --task-data, task files) and the recipe's data.shards named the writer's cwd."""
    from midol_cli.progress import Silent
    from midol_cli.recipes import read_yaml
    from midol_cli.workflows.settings import StudySettings
    from midol_cli.workflows.study_setup import run

    work = tmp_path / "work"
    work.mkdir()
    for name in ("shards", "manifests"):
        shutil.copytree(oct_data[name], work / name)
    shutil.copy(ROOT / "recipes" / "finetune_smoke.yaml", work / "ft.yaml")
    shutil.copy(ROOT / "recipes" / "finetune.yaml", work)  # ft.yaml inherits it; the study validates it now
    monkeypatch.chdir(work)
    monkeypatch.setattr("midol_cli.workflows.study.run_study", lambda cfg, rep: {})
    monkeypatch.setattr("midol_cli.report.study.write_outputs", lambda out, rec: [out / "a", out / "b"])
    s = StudySettings(tasks=["synth-oct"], task_data={"synth-oct": "manifests/oct.parquet"},
                      out=Path("study"), finetune=Path("ft.yaml"), variants=["random"])
    run(ROOT / "recipes" / "smoke.yaml", s, Silent(), ["data.modalities=[oct]"], "shards")
    raw = read_yaml(work / "study" / "study.yaml")
    assert raw["data"]["shards"] == str(work / "shards")
    st = raw["study"]
    assert st["out"] == str(work / "study") and st["finetune"] == str(work / "ft.yaml")
    assert st["task_data"] == {"synth-oct": str(work / "manifests" / "oct.parquet")}
    assert st["tasks"] == ["synth-oct"]
    monkeypatch.chdir(tmp_path)
    back = StudySettings(**st)
    assert back.finetune.is_file() and Path(back.task_data["synth-oct"]).is_file()
