"""issue 25.26: every path in a written settings file resolves against one base. Written: a model's paths
are absolute (relative ones were relative to the cwd of the run that wrote them). Read back as a config:
relative paths resolve against the file's folder, whatever the cwd."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from midol_cli.workflows.settings import ProbeSettings, resolve, write_settings


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
