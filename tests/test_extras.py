"""A missing optional package is one line naming its extra (midol_cli.extras), simulated in the dev venv:
``sys.modules[name] = None`` makes ``import name`` fail as if it were not installed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from midol_cli import extras, plotting
from midol_cli.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_hint_has_and_require(monkeypatch):
    assert extras.install_hint("plots") == "pip install 'midol[plots]'"
    assert extras.has("json") and not extras.has("midol_no_such_module") and not extras.has("no_such_pkg.sub")
    assert extras.require("json", "plots", "x").dumps([1]) == "[1]"
    monkeypatch.setitem(sys.modules, "json", None)
    assert not extras.has("json")
    with pytest.raises(UsageError) as e:
        extras.require("json", "hdf5", "reading JSON", package="the-json-package")
    assert str(e.value) == "reading JSON needs the-json-package: pip install 'midol[hdf5]'"

    class Rejected(Exception):
        pass

    with pytest.raises(
        Rejected, match=r"^HDF5 image needs midol_no_such_module: pip install 'midol\[hdf5\]'$"
    ):
        extras.require("midol_no_such_module", "hdf5", "HDF5 image", error=Rejected)


# ------------------------------------------------------------------------------------------- DICOM


def _dicom(path: Path, arr: np.ndarray, syntax: str | None = None) -> Path:
    """A 12-bit Secondary Capture DICOM of ``arr`` ([H, W] grey or [H, W, 3] RGB, uint16), encoded as
    JPEG 2000 lossless with the dev venv's openjpeg plugin when ``syntax`` is given; ``syntax`` is then the
    transfer syntax the file claims (an HTJ2K decoder reads a JPEG 2000 part 1 codestream too)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        UID,
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "OT", "P1"
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
    ds.PhotometricInterpretation = "RGB" if arr.ndim == 3 else "MONOCHROME2"
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.astype("<u2").tobytes()
    if syntax is not None:
        ds.compress(JPEG2000Lossless, arr)  # at least 64 x 64: openjpeg's default 6 resolution levels
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_set(folder: Path) -> dict[str, Path]:
    """Uncompressed grey, JPEG 2000 grey (Pillow decodes it), 12-bit RGB JPEG 2000 (Pillow cannot) and
    HTJ2K (only pylibjpeg-openjpeg decodes it) DICOMs; also used by tests/test_base_install.py."""
    rng = np.random.default_rng(0)
    grey = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    rgb = rng.integers(0, 4096, (64, 64, 3)).astype(np.uint16)
    return {
        "plain": _dicom(folder / "plain.dcm", grey),
        "j2k_grey": _dicom(folder / "j2k_grey.dcm", grey, "1.2.840.10008.1.2.4.90"),
        "j2k_rgb12": _dicom(folder / "j2k_rgb12.dcm", rgb, "1.2.840.10008.1.2.4.90"),
        "htj2k": _dicom(folder / "htj2k.dcm", grey, "1.2.840.10008.1.2.4.201"),
    }


J2K_REASON = (
    "JPEG 2000 DICOM needs pylibjpeg-openjpeg: pip install 'midol[dicom]' (Pillow could not decode it)"
)
HTJ2K_CLASS = "HTJ2K DICOM needs pylibjpeg-openjpeg: pip install 'midol[dicom]'"


def test_dicom_without_the_dicom_extra_names_it(tmp_path):
    pytest.importorskip("openjpeg")  # the dev venv's plugin writes the JPEG 2000 files
    files = write_dicom_set(tmp_path / "raw" / "scans")  # an imagefolder with one class
    # A fresh interpreter without the extra's plugins (pydicom decides on its plugins at import time).
    code = textwrap.dedent(f"""
        import json, sys
        for m in ("pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm"):
            sys.modules[m] = None
        from midol_cli.data.ingest import ingest_folder
        from midol_cli.data.manifest import read_manifest
        s = ingest_folder({str(tmp_path / "raw")!r}, "xray", layout="imagefolder",
                          out={str(tmp_path / "m.parquet")!r}, workers=1,
                          isolate=False)  # decode here, where the plugins are hidden
        df, _ = read_manifest({str(tmp_path / "m.parquet")!r})
        rows = {{p.split("/")[-1]: r for p, r in zip(df["path"], df["reason"])}}
        print(json.dumps({{"by": s["rejects_by_reason"], "rows": rows}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    rows = got["rows"]
    assert rows["plain.dcm"] == "" and rows["j2k_grey.dcm"] == ""  # Pillow decodes 12-bit grey JPEG 2000
    assert rows["j2k_rgb12.dcm"] == J2K_REASON
    assert rows["htj2k.dcm"].startswith(HTJ2K_CLASS + " (High-Throughput JPEG 2000")
    # The summary's reject classes (the ingest's rejects table) keep the hint.
    assert got["by"] == {J2K_REASON.split(" (")[0]: 1, HTJ2K_CLASS: 1}
    assert {f.name for f in files.values()} == set(rows)


def test_dicom_files_decode_with_the_extra(tmp_path):
    pytest.importorskip("openjpeg")
    from midol_cli.data.readers import read_image

    for name, p in write_dicom_set(tmp_path).items():
        res = read_image(str(p))
        assert (res.width, res.height, res.format) == (64, 64, "DICOM"), name
        assert res.channels == (3 if name == "j2k_rgb12" else 1)


# -------------------------------------------------------------------------------------------- h5py


def test_hdf5_without_h5py_names_the_hdf5_extra(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    from midol_cli.data import readers
    from midol_cli.data.layouts import LayoutOptions, get_layout

    with h5py.File(tmp_path / "x.h5", "w") as fh:
        fh.create_dataset("x", data=np.zeros((2, 8, 8, 3), np.uint8))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "camelyonpatch_level_2_split_test_y.h5").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(readers.ImageRejected) as e:
        readers.read_image(f"{tmp_path / 'x.h5'}#0")
    assert e.value.reason == "HDF5 image needs h5py: pip install 'midol[hdf5]'"
    with pytest.raises(
        UsageError, match=r"^the pcam layout \(HDF5 patch files\) needs h5py: pip install 'midol\[hdf5\]'$"
    ):
        list(get_layout("pcam").scan(tmp_path / "p", LayoutOptions()))


# -------------------------------------------------------------------------------------- matplotlib


@pytest.fixture
def no_matplotlib(monkeypatch):
    for m in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(plotting, "_warned_skip", False)


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def test_side_plots_are_skipped_with_one_warning(tmp_path, no_matplotlib, capsys):
    from midol_cli.eval.segmentation import plot_panel
    from midol_cli.report.study import plot_study

    assert plotting.plot_confusion_matrix(np.eye(2, dtype=int), ["a", "b"], tmp_path / "cm.png") is None
    assert plotting.plot_reliability([], tmp_path / "rel.png") is None
    assert plot_panel([], tmp_path / "panel.png") is None
    assert plot_study({}, tmp_path / "study.png") is None
    assert list(tmp_path.iterdir()) == []
    warned = _warnings(capsys.readouterr().err)
    assert warned == [
        "warning: matplotlib is not installed, so PNG figures are skipped: pip install 'midol[plots]'"
    ]


def test_probe_run_goes_on_without_matplotlib(tmp_path, no_matplotlib, capsys):
    from midol_cli.eval.results import Task, run_probe_suite

    rng = np.random.default_rng(0)
    rows = [
        {
            "sample_id": f"s{g}",
            "modality": "dermoscopy",
            "label": "ab"[g % 2],
            "labels": ["ab"[g % 2]],
            "group": f"P{g}",
            "split": ["train", "train", "val", "test"][g % 4],
            "embedding": (rng.normal(size=8) + 3 * (g % 2)).astype(np.float32).tolist(),
            "router_probs": None,
        }
        for g in range(80)
    ]
    out = tmp_path / "res"
    task = Task("mini", "dermoscopy", "binary", ("a", "b"), "auroc")
    run_probe_suite(pd.DataFrame(rows), task, out, model_info={"id": "m", "weights": "w", "weights_hash": "h",
                                                                "arch": "a"},
                    data_hash="d", fractions=(1.0,), seeds=(0,), n_boot=20)
    assert (out / "summary.json").is_file() and (out / "predictions.parquet").is_file()
    assert not list(out.glob("*.png"))
    assert len(_warnings(capsys.readouterr().err)) == 1


def test_explicit_plots_are_an_error_naming_the_extra(tmp_path, no_matplotlib):
    from midol_cli.report.plots import embedding_maps, plot_bars

    with pytest.raises(UsageError, match=r"^--plot needs matplotlib: pip install 'midol\[plots\]'$"):
        plotting.require_plots("--plot")
    df = pd.DataFrame({"embedding": [[0.0, 1.0]] * 6, "modality": ["xray"] * 6, "label": ["a"] * 6})
    with pytest.raises(
        UsageError, match=r"^--plot \(t-SNE maps\) needs matplotlib: pip install 'midol\[plots\]'$"
    ):
        embedding_maps(df, tmp_path / "maps")
    with pytest.raises(UsageError, match=r"needs matplotlib: pip install 'midol\[plots\]'$"):
        plot_bars(["t"], ["m"], {("t", "m"): 1.0}, {}, tmp_path / "bars.png", "y")
    assert not (tmp_path / "maps").exists() and not (tmp_path / "bars.png").exists()


# -------------------------------------------------------------------------------------------- onnx


def test_onnx_export_without_its_extra_names_it(tmp_path, monkeypatch):
    from midol_cli.models.export import export_onnx

    monkeypatch.setitem(sys.modules, "onnxscript", None)
    # Refused before the run dir is even looked at.
    with pytest.raises(UsageError, match=r"^ONNX export needs onnxscript: pip install 'midol\[onnx\]'$"):
        export_onnx(tmp_path / "no-run")
