from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from midol_cli.cli.main import run


def make_folder(raw: Path, classes=("benign", "malignant"), per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (raw / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(raw / c / f"{i}.png")


def midol(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """Run the real console entry point in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["midol", *args])
    with pytest.raises(SystemExit) as ei:
        run()
    cap = capsys.readouterr()
    return ei.value.code or 0, cap.out, cap.err


def test_ingest_writes_manifest_and_prints_path(tmp_path, capsys, monkeypatch):
    raw = tmp_path / "derm"
    make_folder(raw)
    out = tmp_path / "out" / "derm.parquet"
    code, stdout, stderr = midol(
        capsys,
        monkeypatch,
        "ingest",
        str(raw),
        "--modality",
        "dermoscopy",
        "--out",
        str(out),
        "--workers",
        "1",
        "--seed",
        "3",
    )
    assert code == 0
    assert stdout.strip() == str(out) and out.is_file()
    assert "malignant" in stderr and "6 ok" in stderr
    # Not a terminal: plain progress lines instead of a bar.
    assert "ingest: reading 6 files with 1 worker" in stderr

    from midol_cli.data.manifest import read_manifest

    df, meta = read_manifest(out)
    assert len(df) == 6 and set(df["label"]) == {"benign", "malignant"} and meta["seed"] == 3


def test_labels_flag_selects_csv_layout(tmp_path, capsys, monkeypatch):
    raw = tmp_path / "raw"
    make_folder(raw, classes=("imgs",))
    (raw / "labels.csv").write_text("file,dx\nimgs/0.png,a\nimgs/1.png,b\nimgs/2.png,a\n")
    out = tmp_path / "m.parquet"
    # --labels relative to the raw folder, and no --layout: the csv layout is implied.
    code, _, stderr = midol(
        capsys,
        monkeypatch,
        "ingest",
        str(raw),
        "-m",
        "fundus",
        "--labels",
        "labels.csv",
        "--path-col",
        "file",
        "--label-col",
        "dx",
        "-o",
        str(out),
        "-j",
        "1",
    )
    assert code == 0, stderr

    from midol_cli.data.manifest import read_manifest

    df, meta = read_manifest(out)
    assert meta["layout"] == "csv" and sorted(df["label"]) == ["a", "a", "b"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ingest", "{tmp}/missing", "--modality", "xray"], "does not exist"),
        (["ingest", "{raw}", "--modality", "x-ray"], "spelled 'xray'"),
        (["ingest", "{raw}", "--modality", "xray", "--layout", "dicomdir"], "unknown layout"),
        # An empty folder says so (it was "could not recognise the layout"; issue 25.16).
        (["ingest", "{empty}", "--modality", "xray", "--out", "{tmp}/e.parquet"], "no images in '"),
        (["ingest", "{raw}", "--modality", "xray", "--out", "{raw}/m.parquet"], "inside the raw folder"),
        (
            ["ingest", "{raw}", "--modality", "xray", "--layout", "imagefolder", "--path-col", "f"],
            "only apply to",
        ),
        (["ingest", "{raw}", "--modality", "xray", "--labels", "{tmp}/none.csv"], "does not exist"),
        (
            ["ingest", "{raw}", "--modality", "xray", "--workers", "0", "--out", "{tmp}/m.parquet"],
            "--workers",
        ),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, monkeypatch, args, needle):
    raw, flat = tmp_path / "raw", tmp_path / "flat"
    make_folder(raw)
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "x.png")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    before = sorted(p.name for p in raw.rglob("*"))
    argv = [a.format(tmp=tmp_path, raw=raw, flat=flat, empty=tmp_path / "empty") for a in args]
    code, stdout, stderr = midol(capsys, monkeypatch, *argv)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], stderr
    assert stdout == ""
    assert sorted(p.name for p in raw.rglob("*")) == before


def test_cli_module_imports_nothing_heavy():
    code = (
        "import sys, midol_cli.cli.ingest\n"
        "heavy = {'torch', 'pandas', 'numpy', 'PIL', 'pyarrow', 'pydicom', 'timm'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_second_ingest_into_the_same_out_is_refused_naming_the_first(tmp_path, capsys, monkeypatch):
    """Two runs into one --out both exited 0 and one manifest was lost (issue 25.3): the second stops with
    one line naming the first's pid; a lock left by a killed run is taken over."""
    from tests.test_locks import hold_in_child

    raw = tmp_path / "derm"
    make_folder(raw)
    out = tmp_path / "out" / "derm.parquet"
    child = hold_in_child(out)
    try:
        code, _, err = midol(capsys, monkeypatch, "ingest", str(raw), "--modality", "dermoscopy", "--out",
                             str(out))
    finally:
        child.kill()
        child.wait()
    assert code == 2 and err.strip().count("\n") == 0, err
    assert f"manifest '{out}' is being written by another midol run (pid {child.pid}" in err
    assert not out.exists()
    code, stdout, err = midol(capsys, monkeypatch, "ingest", str(raw), "--modality", "dermoscopy", "--out",
                              str(out))
    assert code == 0 and out.is_file(), err
    assert f"of pid {child.pid} on " in stdout + err and "no longer running" in stdout + err
    assert not (tmp_path / "out" / "derm.parquet.lock").exists()


def test_a_flat_folder_of_images_ingests_unlabelled_with_auto(tmp_path, capsys, monkeypatch):
    """The usual pre-training archive (images, no class folders) failed with "could not recognise the
    layout" unless the user guessed --layout imagefolder (issue 25.16): auto takes it, unlabelled, and says
    so."""
    flat = tmp_path / "archive"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(flat / f"x{i}.png")
    out = tmp_path / "m.parquet"
    code, stdout, stderr = midol(capsys, monkeypatch, "ingest", str(flat), "--modality", "xray", "--out",
                                 str(out))
    assert code == 0, stderr
    said = stdout + stderr
    assert f"no dataset layout and no class sub-folders in '{flat}': its images are ingested unlabelled" \
        in said
    import pandas as pd

    df = pd.read_parquet(out)
    assert len(df) == 3 and (df["status"] == "ok").all() and (df["label"] == "").all()


def test_ingest_rehash_flag_rereads_a_same_size_same_mtime_file(tmp_path, capsys, monkeypatch):
    """issue 25.5: `midol ingest --rehash` reads every file again (a plain re-run reuses the stale row)."""
    import os

    from midol_cli.data.manifest import read_manifest

    raw = tmp_path / "derm"
    make_folder(raw)
    out = tmp_path / "derm.parquet"
    args = ("ingest", str(raw), "--modality", "dermoscopy", "--out", str(out), "--workers", "1")
    assert midol(capsys, monkeypatch, *args)[0] == 0
    sha = read_manifest(out)[0].set_index("path")["sha256"]
    victim = raw / "benign" / "0.png"
    st = victim.stat()
    Image.fromarray(np.full((10, 10, 3), 7, dtype=np.uint8)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    victim.write_bytes(data[: st.st_size].ljust(st.st_size, b"\0"))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert midol(capsys, monkeypatch, *args)[0] == 0
    assert read_manifest(out)[0].set_index("path")["sha256"]["benign/0.png"] == sha["benign/0.png"]
    code, _, err = midol(capsys, monkeypatch, *args, "--rehash")
    assert code == 0, err
    assert read_manifest(out)[0].set_index("path")["sha256"]["benign/0.png"] != sha["benign/0.png"]
