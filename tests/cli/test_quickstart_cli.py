"""`midol quickstart`: raw folders (one per modality) -> manifests -> shards -> pre-trained model ->
probes -> report, end to end on `midol synth` output, and a re-run that reuses every stage."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.conftest import one_line_error, run_midol

TINY = [
    "ingest.workers=1",
    "shard.max_side=64",
    "shard.workers=1",
    "shard.min_shards=2",
    "pretrain.train.steps=3",
    "pretrain.optim.global_batch_size=16",
    "pretrain.data.num_workers=0",
    "probe.seeds=1",
    "probe.fractions=[1.0]",
    "probe.n_boot=20",
    "probe.workers=0",
]


def _env(tmp_path):
    return {**os.environ, "MIDOL_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def midol(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The console entry in-process (a subprocess per stage would cost seconds of start-up each)."""
    import sys

    from midol_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["midol", *map(str, args)])
    with pytest.raises(SystemExit) as ex:
        main.run()
    out = capsys.readouterr()
    code = 0 if ex.value.code is None else int(ex.value.code)
    assert code == 0, out.err[-3000:]
    return code, out.out, out.err


@pytest.mark.slow
def test_quickstart_end_to_end_then_a_rerun_reuses_everything(tmp_path, monkeypatch, capsys):
    """Also the pipeline's end-to-end check of what each stage leaves (it replaced a separate
    pretrain -> embed -> probe -> report test that ran the same stages)."""
    import json
    import re

    import pandas as pd

    from midol_cli.data.synth import generate

    generate(tmp_path / "raw", seed=0, per_class=6, size=64, modalities=["oct", "pathology"])
    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "qs"
    _, stdout, _ = midol(monkeypatch, capsys, "quickstart", tmp_path / "raw", "--out", out, "--recipe",
                         "recipes/smoke.yaml", *TINY, "probe.fractions=[0.5,1.0]")
    for rel in ("quickstart.yaml", "manifests/oct.parquet", "manifests/oct.ingest.yaml", "shards/index.json",
                "shards/shard.yaml", "runs/smoke/recipe.yaml", "runs/smoke/export/encoder.safetensors",
                "report.md", "report.report.yaml"):
        assert (out / rel).is_file(), rel
    results = out / "results"
    probes = sorted(p.parent.relative_to(results).as_posix() for p in results.rglob("summary.json"))
    assert probes == ["random-smoke/auto-nct-crc", "random-smoke/auto-oct2017", "smoke/auto-nct-crc",
                      "smoke/auto-oct2017"], probes
    assert all((results / p / "probe.yaml").is_file() for p in probes)
    report = (out / "report.md").read_text()
    assert "auto-oct2017" in report and "random-smoke" in report
    assert report in stdout  # the report is the command's output
    run = out / "runs" / "smoke"
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["data"]["modalities"] == ["oct", "pathology"] and recipe["train"]["steps"] == 3
    # What each stage leaves: provenance of the run, every probe protocol with its CI, predictions, plots.
    rec = json.loads((run / "run.json").read_text())
    assert len(rec["shard_index_sha"]) == 16 and rec["wall_seconds"] > 0
    s = json.loads((results / "smoke" / "auto-oct2017" / "summary.json").read_text())
    assert s["model"]["id"] == "smoke"
    for proto in ("linear", "knn_k10", "knn_k20", "fraction_0.5"):
        assert proto in s["protocols"], proto
    lin = s["protocols"]["linear"]["metrics"]["balanced_accuracy"]
    assert lin["ci_low"] <= lin["value"] <= lin["ci_high"]
    assert set(s["chance"]) >= {"accuracy", "auroc"} and "degenerate" in s["protocols"]["linear"]
    assert s["protocols"]["linear"]["feature_norm"]["l2_normalize"] is True
    for f in ("predictions.parquet", "confusion_matrix.png"):
        assert (results / "smoke" / "auto-oct2017" / f).is_file(), f

    # The re-run: from the written settings, every stage reused.
    ckpts = sorted(p.name for p in run.iterdir() if p.name.startswith("ckpt"))
    cache = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    shard_files = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    _, _, err = midol(monkeypatch, capsys, "quickstart", out / "quickstart.yaml")
    for m in ("oct", "pathology"):
        ok, reused = re.search(rf"{m}: (\d+) ok, 0 rejected, (\d+) reused", err).groups()
        assert ok == reused and int(ok) > 0, err
    assert "runs/smoke is complete (3 steps); reused" in err, err
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("ckpt")) == ckpts
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == shard_files
    assert {p: p.stat().st_mtime_ns for p in cache} == cache  # embeddings from the cache, not recomputed

    # A user takes over from any stage with the normal commands: embed with maps, export a model folder.
    emb = tmp_path / "emb.parquet"
    _, _, err = midol(monkeypatch, capsys, "embed", "--weights", run, "--data", out / "shards", "--out", emb,
                      "--plot", tmp_path / "plots", "--workers", "0")
    df = pd.read_parquet(emb)
    assert len(df) == 48 and set(df["modality"]) == {"oct", "pathology"}
    assert len(df["embedding"].iloc[0]) == 128 and len(df["router_probs"].iloc[0]) == 2
    assert "modality silhouette" in err
    assert (tmp_path / "plots" / "tsne_modality.png").stat().st_size > 1000
    assert set(json.loads(emb.with_suffix(".metrics.json").read_text())["per_modality"]) == {
        "oct",
        "pathology",
    }
    folder = tmp_path / "model"
    midol(monkeypatch, capsys, "export", run, "--format", "folder", "--out", folder)
    assert yaml.safe_load((folder / "export.yaml").read_text())["format"] == "folder"
    # A subgroup column the data lacks is refused before embedding, naming what the data has.
    bad = run_midol("probe", "--task", "auto", "--weights", run, "--data", out / "manifests" / "oct.parquet",
                    "--out", results, "--subgroups", "scanner", env=_env(tmp_path))
    assert "no metadata column 'scanner' (available: dataset)" in one_line_error(bad)


def test_an_undetectable_modality_folder_is_one_line_naming_it(tmp_path):
    (tmp_path / "raw" / "oct").mkdir(parents=True)
    (tmp_path / "raw" / "scans_2024").mkdir()
    line = one_line_error(
        run_midol("quickstart", tmp_path / "raw", "--out", tmp_path / "qs", env=_env(tmp_path))
    )
    assert f"cannot tell the modality of folder '{tmp_path / 'raw' / 'scans_2024'}'" in line
    assert "modalities.scans_2024=MODALITY" in line
    assert not (tmp_path / "qs").exists()  # nothing ran


def test_every_stage_is_checked_before_the_first_starts(tmp_path):
    (tmp_path / "raw" / "retina").mkdir(parents=True)  # an alias of fundus
    line = one_line_error(
        run_midol(
            "quickstart",
            tmp_path / "raw",
            "--out",
            tmp_path / "qs",
            "shard.max_side=2",
            "pretrain.optim.lr=-1",
            "probe.seeds=0",
            "ingest.out=x",
            env=_env(tmp_path),
        )
    )
    for part in ("ingest.out: set by quickstart itself", "max_side", "optim.lr", "seeds"):
        assert part in line, line
    assert not (tmp_path / "qs").exists()
