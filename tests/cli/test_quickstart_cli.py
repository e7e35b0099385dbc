"""`midol quickstart`: raw folders (one per modality) -> manifests -> shards -> pre-trained model ->
probes -> report, end to end on `midol synth` output, and a re-run that reuses every stage."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.conftest import one_line_error, run_midol

TINY = ["ingest.workers=1", "shard.max_side=64", "shard.workers=1", "shard.min_shards=2", "pretrain.train.steps=3",
        "pretrain.optim.global_batch_size=16", "pretrain.data.num_workers=0", "probe.seeds=1",
        "probe.fractions=[1.0]", "probe.n_boot=20", "probe.workers=0"]


def _env(tmp_path):
    return {**os.environ, "MIDOL_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_quickstart_end_to_end_then_a_rerun_reuses_everything(tmp_path):
    from midol_cli.data.synth import generate

    generate(tmp_path / "raw", seed=0, per_class=6, size=64, modalities=["oct", "pathology"])
    env = _env(tmp_path)
    out = tmp_path / "qs"
    res = run_midol("quickstart", tmp_path / "raw", "--out", out, "--recipe", "recipes/smoke.yaml", *TINY, env=env,
                    timeout=600, check=True)
    for rel in ("quickstart.yaml", "manifests/oct.parquet", "manifests/oct.ingest.yaml", "shards/index.json",
                "shards/shard.yaml", "runs/smoke/recipe.yaml", "runs/smoke/export/encoder.safetensors",
                "report.md", "report.report.yaml"):
        assert (out / rel).is_file(), rel
    probes = sorted(p.parent.relative_to(out / "results").as_posix() for p in (out / "results").rglob("summary.json"))
    assert probes == ["random-smoke/auto-nct-crc", "random-smoke/auto-oct2017", "smoke/auto-nct-crc",
                      "smoke/auto-oct2017"], probes
    assert all((out / "results" / p / "probe.yaml").is_file() for p in probes)
    report = (out / "report.md").read_text()
    assert "auto-oct2017" in report and "random-smoke" in report
    assert report in res.stdout  # the report is the command's output
    recipe = yaml.safe_load((out / "runs/smoke/recipe.yaml").read_text())
    assert recipe["data"]["modalities"] == ["oct", "pathology"] and recipe["train"]["steps"] == 3

    # The re-run: from the written settings, every stage reused.
    ckpts = sorted(p.name for p in (out / "runs/smoke").iterdir() if p.name.startswith("ckpt"))
    cache = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    shard_files = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    again = run_midol("quickstart", out / "quickstart.yaml", env=env, timeout=600, check=True)
    import re

    for m in ("oct", "pathology"):
        ok, reused = re.search(rf"{m}: (\d+) ok, 0 rejected, (\d+) reused", again.stderr).groups()
        assert ok == reused and int(ok) > 0, again.stderr
    assert "runs/smoke is complete (3 steps); reused" in again.stderr, again.stderr
    assert sorted(p.name for p in (out / "runs/smoke").iterdir() if p.name.startswith("ckpt")) == ckpts
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == shard_files
    assert {p: p.stat().st_mtime_ns for p in cache} == cache  # embeddings from the cache, not recomputed

    # A user takes over from any stage with the normal commands, e.g. export the run as a model folder.
    folder = tmp_path / "model"
    run_midol("export", out / "runs/smoke", "--format", "folder", "--out", folder, env=env, check=True)
    assert yaml.safe_load((folder / "export.yaml").read_text())["format"] == "folder"


def test_an_undetectable_modality_folder_is_one_line_naming_it(tmp_path):
    (tmp_path / "raw" / "oct").mkdir(parents=True)
    (tmp_path / "raw" / "scans_2024").mkdir()
    line = one_line_error(run_midol("quickstart", tmp_path / "raw", "--out", tmp_path / "qs", env=_env(tmp_path)))
    assert f"cannot tell the modality of folder '{tmp_path / 'raw' / 'scans_2024'}'" in line
    assert "modalities.scans_2024=MODALITY" in line
    assert not (tmp_path / "qs").exists()  # nothing ran


def test_every_stage_is_checked_before_the_first_starts(tmp_path):
    (tmp_path / "raw" / "retina").mkdir(parents=True)  # an alias of fundus
    line = one_line_error(run_midol("quickstart", tmp_path / "raw", "--out", tmp_path / "qs", "shard.max_side=2",
                                    "pretrain.optim.lr=-1", "probe.seeds=0", "ingest.out=x", env=_env(tmp_path)))
    for part in ("ingest.out: set by quickstart itself", "max_side", "optim.lr", "seeds"):
        assert part in line, line
    assert not (tmp_path / "qs").exists()
