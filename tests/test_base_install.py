"""The base install alone is lean and works: ``pip install <copy of the repo>`` (no extras) into a fresh venv,
then ``midol --help``, ``midol ingest`` of PNGs and of DICOMs with that venv's ``midol``.

Installing torch afresh costs ~5.5 GB (a CUDA build), so the fresh venv borrows only the torch stack from
the dev venv: a folder of symlinks to torch, torchvision and their dependency closure (with .dist-info, so
pip counts them as installed), added by a .pth file. pip installs every other base dependency itself, so
an optional package that crept into the base dependencies would show up as importable here.
Run by ``make test-install`` (deselected by ``make test``): about a minute on 2 cores.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.install, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
# What the extras install (by import name); none may be importable from the base install.
OPTIONAL = ("pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm", "h5py", "matplotlib", "tensorboard", "wandb",
            "mlflow", "onnx", "onnxruntime", "onnxscript", "openslide", "openslide_bin", "eyepy", "peft")
# Base dependencies of midol itself: pip must install them, never borrow them.
NOT_BORROWED = {"pillow", "setuptools", "pip"}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_stack() -> list[md.Distribution]:
    """torch, torchvision and their runtime dependencies (with the extras they ask for, such as
    cuda-toolkit[cublas,...]) as installed here, less midol's own base dependencies."""
    from packaging.requirements import Requirement

    found: dict[str, md.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [("torch", frozenset()), ("torchvision", frozenset())]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (_key(name), extras) in done or _key(name) in NOT_BORROWED:
            continue
        done.add((_key(name), extras))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # pip resolves what is missing
        found[_key(name)] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((req.name, frozenset(req.extras)))
    return list(found.values())


def _borrow(stack_dir: Path) -> list[str]:
    """Symlinks in ``stack_dir`` to every top-level entry (package, module, .dist-info) of the torch stack."""
    site = Path(sysconfig.get_paths()["purelib"])
    stack_dir.mkdir()
    names: set[str] = set()
    for dist in torch_stack():
        for f in dist.files or []:
            top = f.parts[0]
            if top not in ("..", "__pycache__") and not top.endswith(".pth"):
                names.add(top)
    for top in sorted(names):
        if (site / top).exists():
            (stack_dir / top).symlink_to(site / top)
    return sorted(names)


def _copy_repo(dest: Path) -> Path:
    """What a source distribution holds (pyproject, README, the package), without build leftovers."""
    dest.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, dest / f)
    shutil.copytree(
        ROOT / "midol_cli", dest / "midol_cli", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return dest


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory):
    """(the venv, the environment to run it in); removed afterwards (~600 MB)."""
    tmp = tmp_path_factory.mktemp("base_install")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    _borrow(tmp / "torch-stack")
    (site / "midol-test-torch-stack.pth").write_text(str(tmp / "torch-stack") + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_USER")}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", PYTHONNOUSERSITE="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1", COLUMNS="200")
    # Non-editable, from a copy: proves the package data (recipes, splits, model YAMLs) is complete.
    try:
        _run([str(py), "-m", "pip", "install", "-q", str(_copy_repo(tmp / "src"))], env, tmp, timeout=1200)
        yield venv, env
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_base_install_is_lean(base_venv):
    venv, env = base_venv
    code = ("import importlib.util as u, json, midol_cli, torch, PIL\n"
            f"print(json.dumps({{'found': [m for m in {OPTIONAL!r} if u.find_spec(m)], "
            "'midol': midol_cli.__file__, 'torch': torch.__file__, 'pil': PIL.__file__}))")
    got = json.loads(_run([str(venv / "bin" / "python"), "-c", code], env, venv, 120).stdout)
    assert got["found"] == []
    assert got["midol"].startswith(str(venv))  # the installed copy, not the repo
    assert "torch-stack" in got["torch"] and got["pil"].startswith(str(venv))  # pillow installed by pip


def test_base_install_runs_help_and_ingest(base_venv, tmp_path):
    import pandas as pd
    from PIL import Image

    from tests.test_extras import HTJ2K_CLASS, J2K_REASON, write_dicom_set

    pytest.importorskip("openjpeg")  # the dev venv's plugin writes the JPEG 2000 files
    venv, env = base_venv
    midol = str(venv / "bin" / "midol")
    assert "ingest" in _run([midol, "--help"], env, tmp_path, 120).stdout

    for cls in ("a", "b"):
        (tmp_path / "png" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (40 * i, 100 if cls == "a" else 200, 7)).save(
                tmp_path / "png" / cls / f"{i}.png"
            )
    _run(
        [
            midol,
            "ingest",
            str(tmp_path / "png"),
            "--modality",
            "fundus",
            "--out",
            str(tmp_path / "png.parquet"),
            "--workers",
            "1",
        ],
        env,
        tmp_path,
        300,
    )
    df = pd.read_parquet(tmp_path / "png.parquet")
    assert len(df) == 6 and (df["status"] == "ok").all()

    write_dicom_set(tmp_path / "dcm" / "scans")
    out = _run([midol, "ingest", str(tmp_path / "dcm"), "--layout", "imagefolder", "--modality", "xray",
                "--out", str(tmp_path / "dcm.parquet"), "--workers", "1"], env, tmp_path, 300)
    df = pd.read_parquet(tmp_path / "dcm.parquet")
    reason = {p.split("/")[-1]: r for p, r in zip(df["path"], df["reason"], strict=True)}
    assert reason["plain.dcm"] == "" and reason["j2k_grey.dcm"] == ""  # uncompressed; JPEG 2000 via Pillow
    assert reason["j2k_rgb12.dcm"] == J2K_REASON  # 12-bit colour JPEG 2000: Pillow cannot, the extra can
    assert reason["htj2k.dcm"].startswith(HTJ2K_CLASS)  # refused before decoding: no plugin at all
    # The rejects table on stderr names the extra too.
    table = [line for line in out.stderr.splitlines() if "pip install 'midol[dicom]'" in line]
    assert len(table) == 2, out.stderr


def test_base_install_runs_quickstart_by_recipe_name(base_venv, tmp_path):
    """The recipes ship with the package (issue 25.20): from a folder with no recipes/ in it, the installed
    midol lists them, resolves the README's recipes/smoke.yaml, and runs quickstart with --recipe smoke."""
    from tests.cli.test_quickstart_cli import TINY

    venv, env = base_venv
    env = {**env, "MIDOL_CACHE_DIR": str(tmp_path / "cache")}
    midol = str(venv / "bin" / "midol")
    listed = _run([midol, "recipes"], env, tmp_path, 120).stdout
    assert "smoke" in listed and "ablation/no_moe" in listed and "The demo's M-IDoL recipe" in listed
    shown = _run([midol, "pretrain", "recipes/smoke.yaml", "--print-config"], env, tmp_path, 120).stdout
    assert "name: smoke" in shown and "arch: resnet10t" in shown
    _run([midol, "synth", str(tmp_path / "raw"), "--per-class", "6", "--size", "64", "-m", "oct", "-m",
          "pathology"], env, tmp_path, 300)
    _run([midol, "quickstart", str(tmp_path / "raw"), "--out", str(tmp_path / "qs"), "--recipe", "smoke",
          *TINY], env, tmp_path, 900)
    for rel in ("runs/smoke/recipe.yaml", "runs/smoke/export/encoder.safetensors", "report.md"):
        assert (tmp_path / "qs" / rel).is_file(), rel
    assert not (tmp_path / "recipes").exists()
