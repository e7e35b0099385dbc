"""issue 25.4: a probe never drops test rows silently, and never scores a raw file changed after ingest
under its old label without being told to. Dropped rows are counted in summary.json (``n.dropped``,
with reasons and splits) and printed; a changed file is a one-line refusal unless --allow-changed."""

from __future__ import annotations

import json
import os

import pytest

from midol_cli.data.manifest import read_manifest
from midol_cli.errors import UsageError
from midol_cli.progress import Reporter
from midol_cli.workflows import probe
from midol_cli.workflows.settings import ProbeSettings
from tests.train.test_segment import tiny_swin_export


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    from midol_cli.data.ingest import ingest_folder
    from midol_cli.data.synth import generate

    raw = tmp_path / "raw"
    generate(raw, seed=0, per_class=8, size=32, modalities=["oct"])
    man = tmp_path / "oct.parquet"
    ingest_folder(raw / "oct", "oct", out=man, workers=1, seed=0)
    df, meta = read_manifest(man, only_ok=True)
    test = sorted(df.loc[df["split"] == "test", "path"].astype(str))
    export = tiny_swin_export(tmp_path / "tiny" / "encoder.safetensors")
    s = ProbeSettings(task="synth-oct", data=man, out=tmp_path / "res", weights=f"random:{export}",
                      workers=0, fractions=[1.0], seeds=1, n_boot=10, batch_size=8)
    return {"root": meta["root"], "test": test, "settings": s}


def test_a_missing_test_file_is_counted_and_printed(setup, capsys):
    n_before = probe.run(setup["settings"].model_copy(update={"cache": False}), Reporter())["n"]["test"]
    capsys.readouterr()
    victim = setup["test"][0]
    os.remove(os.path.join(setup["root"], victim))
    summary = probe.run(setup["settings"], Reporter())
    assert summary["n"]["test"] == n_before - 1
    dropped = json.loads((setup["settings"].out / summary["model"]["id"] / "synth-oct" / "summary.json")
                         .read_text())["n"]["dropped"]
    assert dropped["count"] == 1 and dropped["by_split"] == {"test": 1}
    assert dropped["reasons"] == {"file not found": 1} and dropped["examples"] == [victim]
    err = " ".join(capsys.readouterr().err.split())
    assert "1 damaged or unreadable sample(s) left out (1 file not found)" in err and "1 test" in err


def test_a_file_changed_after_ingest_is_refused_unless_allowed(setup, capsys):
    victim = os.path.join(setup["root"], setup["test"][1])
    st = os.stat(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same bytes, new time
    with pytest.raises(UsageError) as e:
        probe.run(setup["settings"], Reporter())
    msg = str(e.value)
    assert "\n" not in msg and "1 raw file(s) changed since ingest" in msg and setup["test"][1] in msg
    assert "--allow-changed" in msg and "--rehash" in msg
    summary = probe.run(setup["settings"].model_copy(update={"allow_changed": True}), Reporter())
    assert summary["n"]["dropped"]["count"] == 0
    assert "probed under their recorded labels (--allow-changed)" in capsys.readouterr().err


def test_allow_changed_is_a_flag():
    from midol_cli.cli._config import flag_names

    assert flag_names(ProbeSettings)["allow_changed"] == "--allow-changed"
