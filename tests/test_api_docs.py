"""Every Python block of docs/api.md runs, in order, in one namespace, in an empty folder."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_api_doc_has_examples_of_every_function():
    text = "".join(blocks())
    for fn in ("ingest", "shard", "pretrain", "embed", "probe", "report", "quickstart", "load_encoder"):
        assert f"api.{fn}(" in text, fn


@pytest.mark.slow
def test_every_block_of_docs_api_md_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copytree(DOC.parents[1] / "recipes", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_api"}
    for i, code in enumerate(blocks()):
        try:
            exec(compile(code, f"docs/api.md block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the block that failed
            raise AssertionError(f"docs/api.md block {i + 1} failed: {type(e).__name__}: {e}\n{code}") from e
