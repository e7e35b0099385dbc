"""One configuration habit on every command: [CONFIG.yaml] + key=value (validated, all problems at
once, dotted keys) + --print-config, flags as shortcuts, resolved settings written beside outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from midol_cli.cli import main


def midol(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["midol", *map(str, args)])
    with pytest.raises(SystemExit) as ex:
        main.run()
    out = capsys.readouterr()
    code = ex.value.code
    return (0 if code is None else int(code)), out.out, out.err


def printed(monkeypatch, capsys, *args: str) -> dict:
    code, out, err = midol(monkeypatch, capsys, *args, "--print-config")
    assert code == 0, err
    assert out.startswith("# midol "), out
    return yaml.safe_load(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.pipeline import build_pipeline

    return build_pipeline(tmp_path_factory.mktemp("cfg"), per_class=4, modalities=("oct", "pathology"))


def test_every_command_with_settings_takes_key_value_and_prints_its_config(
    data, tmp_path, monkeypatch, capsys
):
    raw, man, shards = data["raw"], data["manifests"], data["shards"]
    cfg = printed(
        monkeypatch, capsys, "ingest", raw / "oct", "--modality", "oct", "seed=3", "meta_cols=[sex,age]"
    )
    assert cfg["raw_dir"] == str(raw / "oct") and cfg["modality"] == "oct" and cfg["seed"] == 3
    assert cfg["meta_cols"] == ["sex", "age"] and cfg["layout"] == "auto"
    cfg = printed(monkeypatch, capsys, "shard", man / "oct.parquet", "--out", tmp_path / "s", "max_side=96",
                  "--modality", "oct")
    assert (
        cfg["max_side"] == 96
        and cfg["modalities"] == ["oct"]
        and cfg["manifests"] == [str(man / "oct.parquet")]
    )
    cfg = printed(monkeypatch, capsys, "embed", "weights=random:resnet10t", f"data={shards}",
                  f"out={tmp_path}/e.parquet", "--no-cache", "--name", "r")
    assert cfg["cache"] is False and cfg["model_id"] == "r" and cfg["batch_size"] == 64
    cfg = printed(
        monkeypatch,
        capsys,
        "probe",
        "--task",
        "synth-oct",
        "weights=random:resnet10t",
        f"data={man}/oct.parquet",
        "fractions=[0.5,1.0]",
        "--subgroups",
        "none",
        "--task-option",
        "a=b",
    )
    assert cfg["fractions"] == [0.5, 1.0] and cfg["subgroups"] == [] and cfg["task_options"] == {"a": "b"}
    cfg = printed(monkeypatch, capsys, "finetune", "recipes/finetune_smoke.yaml", "--task", "synth-oct",
                  "--weights", "random:resnet10t", "--data", man / "oct.parquet", "epochs=2", "optim.lr=0.01",
                  "linear=true")
    assert (
        cfg["task"] == "synth-oct"
        and cfg["epochs"] == 2
        and cfg["optim"]["lr"] == 0.01
        and cfg["linear"] is True
    )
    cfg = printed(monkeypatch, capsys, "export", tmp_path / "run", "format=folder", "--which", "student")
    assert cfg["format"] == "folder" and cfg["which"] == "student" and cfg["run_dir"] == str(tmp_path / "run")
    cfg = printed(monkeypatch, capsys, "report", tmp_path, "protocol=finetune", "-f", "csv")
    assert cfg["protocol"] == "finetune" and cfg["format"] == "csv"
    cfg = printed(
        monkeypatch,
        capsys,
        "study",
        "recipes/smoke.yaml",
        "--data",
        shards,
        "study.tasks=[synth-oct]",
        "study.seeds=2",
        "train.steps=7",
    )
    assert cfg["study"]["tasks"] == ["synth-oct"] and cfg["study"]["seeds"] == 2
    assert cfg["train"]["steps"] == 7 and cfg["data"]["shards"] == str(shards)
    cfg = printed(monkeypatch, capsys, "pretrain", "recipes/smoke.yaml", "train.steps=9")
    assert cfg["train"]["steps"] == 9 and cfg["name"] == "smoke"
    cfg = printed(
        monkeypatch, capsys, "quickstart", raw, "--no-baseline", "pretrain.train.steps=5", "shard.max_side=64"
    )
    assert (
        cfg["baseline"] is False
        and cfg["pretrain"] == {"train": {"steps": 5}}
        and cfg["shard"]["max_side"] == 64
    )


def test_every_problem_at_once_with_dotted_keys_and_the_flag_that_gives_it(tmp_path, monkeypatch, capsys):
    code, out, err = midol(monkeypatch, capsys, "probe", "seeds=0", "fractions=[2]", "bogus.key=1")
    assert code == 2 and out == ""
    line = err.strip()
    assert line.count("\n") == 0 and line.startswith("error: ") and "6 problems" in line, line
    for part in ("task: required (give --task or task=...)", "weights: required", "seeds (--seeds)",
                 "fractions (--fractions)", "bogus: unknown key"):
        assert part in line, line
    code, _, err = midol(monkeypatch, capsys, "ingest", str(tmp_path), "-m", "oct", "seeed=1", "max_side=3")
    line = " ".join(err.split())  # issue 25.25: the closest known key, and none where nothing is close
    assert code == 2 and "seeed: unknown key (did you mean 'seed'?)" in line, line
    assert "max_side: unknown key (got 3)" in line, line
    code, _, err = midol(
        monkeypatch,
        capsys,
        "finetune",
        "--task",
        "synth-oct",
        "--weights",
        "random:resnet10t",
        "--data",
        tmp_path,
        "epochs=0",
        "min_subgroup=0",
    )
    assert code == 2 and "epochs" in err and "min_subgroup (--min-subgroup)" in err, err


def test_a_key_given_as_flag_and_as_key_value_is_refused(tmp_path, monkeypatch, capsys):
    code, _, err = midol(
        monkeypatch, capsys, "ingest", tmp_path, "--seed", "1", "seed=2", "--modality", "oct"
    )
    assert code == 2 and "'seed' is given twice: as --seed and as seed=..." in err, err
    code, _, err = midol(monkeypatch, capsys, "report", tmp_path, "extra_folder")
    assert code == 2 and "unexpected argument 'extra_folder'" in err, err


SCHEMAS = {"ingest": "IngestSettings", "shard": "ShardSettings", "embed": "EmbedSettings",
           "probe": "ProbeSettings", "finetune": "FinetuneSettings", "export": "ExportSettings",
           "report": "ReportSettings", "study": "StudySettings", "quickstart": "QuickstartSettings",
           "pretrain": "PretrainSettings", "contamination": "ContaminationSettings"}
# The parameters that are not settings: the free arguments, --print-config, and a few per command.
NOT_SETTINGS = {"pretrain": {"recipe", "overrides"}, "shard": {"verify"}, "study": {"data"}}


def test_flag_defaults_are_the_settings_defaults():
    """Every command's options are its settings fields: same names, defaults and help, and every flag
    field is an option (generated from the model, so they cannot drift apart)."""
    import typer

    from midol_cli.cli._config import flag_default, flag_fields
    from midol_cli.workflows import settings as st

    cmd = typer.main.get_command(main.app)
    checked = 0
    for name, schema_name in SCHEMAS.items():
        schema = getattr(st, schema_name)
        skip = {"args", "print_config", *NOT_SETTINGS.get(name, ())}
        params = {p.name: p for p in cmd.commands[name].params if p.name not in skip}
        assert set(params) == set(flag_fields(schema)), name
        for key, p in params.items():
            f = schema.model_fields[key]
            assert p.help == f.description, f"{name} --{key}: help differs from the settings description"
            want = None if f.is_required() else f.get_default(call_default_factory=True)
            assert p.default == flag_default(f), f"{name} --{key}"
            if isinstance(want, list) and p.default is not None and not isinstance(p.default, list):
                assert p.default == ",".join(map(str, want)), f"{name} --{key}"  # a comma-separated flag
            elif isinstance(want, list | dict):
                assert p.default in (None, want), f"{name} --{key}"  # a repeatable flag: none given
            else:
                assert p.default == want, f"{name} --{key}: flag default {p.default!r}, settings {want!r}"
            checked += 1
    assert checked >= 60


def test_probe_no_cache_recomputes_the_embeddings(data, tmp_path, monkeypatch, capsys):
    """--no-cache on probe (one declaration, on the settings; one use, in the probe) reaches the embedding:
    nothing is read from or written to the cache; without it the embeddings are cached."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MIDOL_CACHE_DIR", str(cache))
    base = (
        "probe",
        "--task",
        "synth-oct",
        "--weights",
        "random:resnet10t",
        "--data",
        data["manifests"] / "oct.parquet",
        "--out",
        tmp_path / "res",
        "seeds=1",
        "fractions=[1.0]",
        "n_boot=20",
        "workers=0",
    )
    assert printed(monkeypatch, capsys, *base, "--no-cache")["cache"] is False
    code, _, err = midol(monkeypatch, capsys, *base, "--no-cache")
    assert code == 0, err
    assert not list(cache.glob("embeddings/*.parquet"))
    code, _, err = midol(monkeypatch, capsys, *base)
    assert code == 0, err
    assert len(list(cache.glob("embeddings/*.parquet"))) == 1


def test_settings_are_written_beside_outputs_and_taken_back(data, tmp_path, monkeypatch, capsys):
    raw = data["raw"]
    man = tmp_path / "m" / "oct.parquet"
    code, _, err = midol(
        monkeypatch, capsys, "ingest", raw / "oct", "-m", "oct", "--out", man, "workers=1", "seed=5"
    )
    assert code == 0, err
    written = man.with_name("oct.ingest.yaml")
    cfg = yaml.safe_load(written.read_text())
    assert cfg["seed"] == 5 and cfg["workers"] == 1 and cfg["out"] == str(man)
    assert written.read_text().startswith("# midol ") and "midol ingest THIS_FILE.yaml" in written.read_text()
    # Handing the file back gives the same settings; an override changes one key.
    again = printed(monkeypatch, capsys, "ingest", written, "seed=6")
    assert again == {**cfg, "seed": 6}

    out = tmp_path / "shards"
    code, _, err = midol(
        monkeypatch, capsys, "shard", man, "--out", out, "max_side=64", "min_shards=2", "workers=1"
    )
    assert code == 0, err
    assert yaml.safe_load((out / "shard.yaml").read_text())["max_side"] == 64
    code, _, err = midol(monkeypatch, capsys, "shard", "--verify", out)
    assert code == 0, err  # the settings file beside the shards is not a shard

    emb = tmp_path / "e" / "r.parquet"
    code, _, err = midol(
        monkeypatch,
        capsys,
        "embed",
        "--weights",
        "random:resnet10t",
        "--data",
        out,
        "--out",
        emb,
        "workers=0",
        "batch_size=16",
    )
    assert code == 0, err
    assert yaml.safe_load(emb.with_name("r.embed.yaml").read_text())["batch_size"] == 16

    res = tmp_path / "results"
    code, _, err = midol(monkeypatch, capsys, "probe", "--task", "synth-oct", "--weights", "random:resnet10t",
                         "--data", man, "--out", res, "seeds=1", "fractions=[1.0]", "n_boot=20", "workers=0")
    assert code == 0, err
    probe_cfg = next(res.rglob("probe.yaml"))
    assert yaml.safe_load(probe_cfg.read_text())["n_boot"] == 20
    assert (probe_cfg.parent / "summary.json").is_file()

    table = tmp_path / "table.md"
    code, _, err = midol(monkeypatch, capsys, "report", res, "--out", table)
    assert code == 0, err
    assert yaml.safe_load(table.with_name("table.report.yaml").read_text())["results_dir"] == str(res)


def test_the_python_api_takes_the_same_settings(data, tmp_path):
    from midol_cli import api
    from midol_cli.api.settings import IngestSettings
    from midol_cli.errors import UsageError
    from midol_cli.progress import Silent

    s = IngestSettings(raw_dir=data["raw"] / "pathology", modality="pathology", out=tmp_path / "p.parquet",
                       workers=1)
    summary = api.ingest(s, reporter=Silent())
    assert summary["ok"] > 0 and Path(summary["settings"]).is_file()
    # keyword over a settings object
    assert api.ingest(s, reporter=Silent(), seed=1)["reused"] == summary["ok"]
    with pytest.raises(UsageError, match="2 problems: modality: required.*seed: Input should be a valid "
                                         "integer"):
        api.ingest(raw_dir=tmp_path, seed="x")
