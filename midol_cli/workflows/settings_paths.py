"""Settings files: where an output's resolved settings go and how they are written (``write_settings``),
and their paths (issue 25.26): a written file's paths are absolute, and a config's relative paths resolve
against the file's folder (``rebase_paths``, used by ``workflows.settings`` when it reads a config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

# Keys that may name a file or folder or something else (a --weights form, a task or recipe name):
# rebased only where the file exists, the rest of their grammar kept.
_PATHISH = ("weights", "task", "resume", "init", "recipe", "finetune", "data")


def _path_kind(field: Any) -> str:
    """'path', 'paths' (a list of paths) or '' for a field's annotation."""
    import types
    import typing

    ann = field.annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        ann = next((a for a in typing.get_args(ann) if a is not type(None)), None)
    if ann is Path:
        return "path"
    if typing.get_origin(ann) is list and typing.get_args(ann)[:1] == (Path,):
        return "paths"
    return ""


def _rebased(v: Any, base: Path, pathish: bool = False) -> Any:
    """``v`` (a path text) against ``base`` when relative; a path-ish text (``--weights`` forms) only in
    its file part, and only where that exists beside ``base``."""
    if not isinstance(v, str) or not v:
        return v
    if not pathish:
        return v if Path(v).is_absolute() else str(base / v)
    head, file = "", v
    for prefix in ("random:", "timm:"):
        if v.startswith(prefix):
            head, file = prefix, v[len(prefix):]
    if "=" in file and not (base / file).exists():
        name, file = file.split("=", 1)
        head += name + "="
    if Path(file).is_absolute() or not (base / file).exists():
        return v
    return head + str(base / file)


def path_text(v: Any) -> Any:
    """A path given as a ``Path`` (the Python API) -> its text, for a key that also takes shard URLs."""
    import os

    return os.fspath(v) if isinstance(v, os.PathLike) else v


def path_texts(v: Any) -> Any:
    """``path_text`` of each item of a list (a list of sources that also takes shard URLs)."""
    return [path_text(x) for x in v] if isinstance(v, list | tuple) else v


def _url_like(text: str) -> bool:
    """Shard URLs as ``data.shards`` takes them (a brace list, ``::``, ``file:``, ``pipe:``, a scheme)."""
    import re

    return "::" in text or "{" in text or bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", text))


def rebase_paths(schema: type[BaseModel], data: dict[str, Any], base: Path) -> dict[str, Any]:
    """``data`` with the relative paths of ``schema``'s path keys (and the path-ish ``weights``, ``task``,
    ``resume``, ``init``) made absolute against ``base``: a written settings file's folder when it is read
    back, the cwd when it is written."""
    out = dict(data)
    for key, field in schema.model_fields.items():
        if key not in out or out[key] is None:
            continue
        kind = "" if key in _PATHISH and key != "data" else _path_kind(field)
        if key == "data" and isinstance(out[key], str) and not _url_like(out[key]):
            kind = "path"  # a manifest, shard dir or raw folder; shard URLs are kept as written
        if key == "sources" and isinstance(out[key], list):  # manifests, shard dirs or shard URLs
            out[key] = [v if not isinstance(v, str) or _url_like(v) else _rebased(v, base) for v in out[key]]
            continue
        if key == "tasks" and isinstance(out[key], list):  # names stay names, task files are rebased
            out[key] = [_rebased(v, base, pathish=True) for v in out[key]]
            continue
        if key == "task_data" and isinstance(out[key], dict):  # TASK -> manifest or shard dir
            out[key] = {k: _rebased(v, base) for k, v in out[key].items()}
            continue
        if kind == "path":
            out[key] = _rebased(out[key], base)
        elif kind == "paths" and isinstance(out[key], list):
            out[key] = [_rebased(v, base) for v in out[key]]
        elif key in _PATHISH:
            out[key] = _rebased(out[key], base, pathish=True)
    return out


def settings_dict(settings: BaseModel | dict[str, Any]) -> dict[str, Any]:
    """The settings as data; a model's paths absolute (``rebase_paths`` with the cwd as the base), so a
    written file's paths name the same places from any folder."""
    if isinstance(settings, dict):
        return settings
    return rebase_paths(type(settings), settings.model_dump(mode="json"), Path.cwd())


def recipe_paths(recipe: dict[str, Any], base: Path) -> dict[str, Any]:
    """A pre-training recipe dict with ``data.shards`` absolute against ``base`` where it names a local
    folder or file (shard URLs are kept as written), for a written settings file that holds the recipe."""
    data = recipe.get("data")
    shards = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(shards, str) or _url_like(shards):
        return recipe
    return {**recipe, "data": {**data, "shards": _rebased(shards, base)}}


def settings_yaml(settings: BaseModel | dict[str, Any], command: str) -> str:
    """The resolved settings as a config the command takes back (``midol COMMAND THIS.yaml``)."""
    import yaml

    from midol_cli import __version__

    head = (f"# midol {__version__}: resolved settings of `midol {command}`; "
            f"re-run with: midol {command} THIS_FILE.yaml\n")
    return head + yaml.safe_dump(settings_dict(settings), sort_keys=False)


def settings_path(output: str | Path, command: str, folder: bool) -> Path:
    """Where an output's settings go: ``FOLDER/<command>.yaml`` or ``STEM.<command>.yaml`` beside a file."""
    p = Path(output)
    return p / f"{command}.yaml" if folder else p.with_name(f"{p.stem}.{command}.yaml")


def write_settings(settings: BaseModel | dict[str, Any], output: str | Path, command: str,
                   folder: bool) -> Path:
    """Write the resolved settings beside ``output`` (atomically); return the file."""
    from midol_cli.artifacts import write_text_atomic

    path = settings_path(output, command, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, settings_yaml(settings, command))
    return path
