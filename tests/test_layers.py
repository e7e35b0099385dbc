"""The package's arrows run one way: sub-packages form a DAG in a fixed order, with no cycle.

A package may import only packages that come before it in ``ORDER`` (bottom first); the top-level
modules (errors, artifacts, checkpoint, distributed, plotting, recipes, modalities) are the bottom
layer, importable from anywhere; ``__main__`` is the entry point and may import cli. Imports inside
functions count too: a deferred import is still an arrow. The test fails on the first arrow that points
up, naming the importing module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import midol_cli

ROOT = Path(midol_cli.__file__).parent
# Bottom first. data knows no model (models read its normalisation constants); tasks sits above eval
# (a TaskSpec builds an eval Task); train above eval and tasks
# (fine-tuning scores with eval's metrics); report reads what eval writes; workflows is every command's
# one home (``<stage>.run(settings, reporter)``, the settings models beside them), chaining train, eval
# and report; api is the Python API over them (one thin function per command); cli is the shell.
ORDER = ("data", "losses", "models", "eval", "tasks", "train", "report", "workflows", "api", "cli")


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.split(".")[0] == "midol_cli"}


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ORDER) else None


def test_every_sub_package_is_ranked():
    subs = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert subs == set(ORDER), f"rank the new package(s) in ORDER: {sorted(subs ^ set(ORDER))}"


def test_no_import_points_up():
    rank = {name: i for i, name in enumerate(ORDER)}
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.name == "__main__.py" and len(rel.parts) == 1:
            continue
        src = rel.parts[0] if len(rel.parts) > 1 else None
        for mod in _imports(path):
            dst = _package(mod)
            if dst is None:
                continue
            if src is None:  # a bottom-layer module importing a sub-package
                upward.append(f"{rel} -> {mod}")
            elif rank[dst] > rank[src]:
                upward.append(f"{rel} -> {mod}")
    assert not upward, "imports that point up: " + "; ".join(upward[:10])
