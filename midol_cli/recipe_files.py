"""Reading recipe and config YAML: the one YAML file loader, ``inherit:`` chains, ``key.sub=value``
overrides, and the recipes shipped inside the package (``recipes_data/``, found by a bare name).

Every YAML file midol reads goes through ``load_yaml``, so a malformed, non-UTF-8 or self-referencing
file (``model: &a [*a]``) is one line naming the file, never a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from midol_cli.errors import UsageError

MAX_INHERIT_DEPTH = 16


class _Whole(dict):
    """A mapping given whole on the command line (``model.arch_kwargs={...}``): it replaces, not merges."""


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, _Whole):
            out[k] = dict(v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _cyclic(data: Any) -> bool:
    """True when a container holds itself (a recursive YAML anchor: ``model: &a [*a]``). Iterative, and
    each shared node (a plain alias) is walked once, so neither deep nor alias-heavy files cost much."""
    done: set[int] = set()
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, leaving = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if leaving:
            on_path.discard(id(node))
            done.add(id(node))
            continue
        if id(node) in on_path:
            return True
        if id(node) in done:
            continue
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((v, False) for v in (node.values() if isinstance(node, dict) else node))
    return False


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data (``yaml.safe_load``); every problem is one ``UsageError`` naming ``source``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"{source} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise UsageError(f"{source} is nested too deeply to read") from None
    if _cyclic(data):
        raise UsageError(f"{source} holds a recursive YAML anchor (a value that contains itself, like "
                         "'a: &x [*x]'); write the value out")
    return data


def load_yaml(path: str | Path, what: str = "recipe") -> Any:
    """The one YAML file reader (recipes, configs, task files, run records, the model registry): a missing,
    unreadable, non-UTF-8, malformed or self-referencing file is one ``UsageError`` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} '{path}' is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except FileNotFoundError:
        raise UsageError(f"{what} '{path}' does not exist") from None
    except OSError as e:
        raise UsageError(f"{what} '{path}' cannot be read ({e.strerror or type(e).__name__})") from None
    return parse_yaml(text, f"{what} '{path}'")


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = (), example: str = "recipes/smoke.yaml",
              what: str = "recipe") -> dict[str, Any]:
    """Read a recipe (or a command's config, ``what="config"``) file, following ``inherit:``, into a dict.
    A recipe may be named by a shipped recipe's name (``smoke``; ``resolve_recipe``)."""
    path = resolve_recipe(path) if what == "recipe" and not _seen else Path(path)
    if not path.is_file():
        names = ", ".join(packaged_recipes()) if what == "recipe" else ""
        shipped = f" or a shipped recipe's name ({names}; `midol recipes` lists them)" if names else ""
        raise UsageError(f"{what} '{path}' does not exist; pass a YAML file such as {example}{shipped}")
    if path.resolve() in _seen:
        raise UsageError(f"{what} '{path}' inherits from itself")
    if len(_seen) >= MAX_INHERIT_DEPTH:
        raise UsageError(f"{what} '{_seen[0]}' has an inherit: chain deeper than {MAX_INHERIT_DEPTH} files")
    data = load_yaml(path, what) or {}
    if not isinstance(data, dict):
        raise UsageError(f"{what} '{path}' must be a mapping of keys to values")
    parent = data.pop("inherit", None)
    if parent is not None:
        base = read_yaml((path.parent / str(parent)), (*_seen, path.resolve()), example, what)
        data = _merge(base, data)
    return data


def parse_overrides(tokens: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "data.modalities=[xray,oct]"]`` -> nested dict. Values are YAML scalars/lists.

    A mapping value (``model.arch_kwargs={embed_dim: 32}``) replaces the recipe's mapping whole; a dotted
    key (``model.arch_kwargs.embed_dim=32``) changes one entry of it.
    """
    out: dict[str, Any] = {}
    for tok in tokens:
        if "=" not in tok:
            raise UsageError(f"override '{tok}' must look like key.sub=value (e.g. optim.lr=1e-3)")
        key, raw = tok.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise UsageError(f"override '{tok}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except (yaml.YAMLError, RecursionError):
            value = raw
        if _cyclic(value):
            raise UsageError(f"override '{tok}' holds a recursive YAML anchor; write the value out")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UsageError(f"override '{tok}' conflicts with an earlier override of '{p}'")
        node[parts[-1]] = _Whole(value) if isinstance(value, dict) else value
    return out


# ---------------------------------------------------------------- recipes shipped with the package

# The installed copy of the repository's recipes/ (pyproject's package-data); tests/test_recipes.py keeps
# the two trees identical, so a README path (recipes/smoke.yaml) means the same file in a checkout and
# after `pip install`.
PACKAGED_DIR = Path(__file__).parent / "recipes_data"


def packaged_recipes() -> dict[str, Path]:
    """Recipes shipped with midol by name (``smoke``, ``ablation/no_moe``): the file's path below
    ``recipes_data/`` without ``.yaml``."""
    return {p.relative_to(PACKAGED_DIR).with_suffix("").as_posix(): p
            for p in sorted(PACKAGED_DIR.rglob("*.yaml"))}


def recipe_description(path: Path) -> str:
    """The first sentence of a recipe's leading comment (what ``midol recipes`` lists)."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip() if line.startswith("#") else ""
        if not text:
            if words or not line.startswith("#"):
                break
            continue
        words.append(text)
    return re.split(r"(?<=\.)\s", " ".join(words), maxsplit=1)[0]


def resolve_recipe(path: str | Path) -> Path:
    """A recipe argument as a file: an existing path as given; else a shipped recipe, by a bare name
    (``smoke``, ``smoke.yaml``, ``ablation/no_moe``) or by its repository path (``recipes/smoke.yaml``,
    so the README's commands work after ``pip install`` too). Anything else is returned unchanged, for
    the caller's "does not exist" message."""
    path = Path(path)
    if path.exists() or path.is_absolute() or ".." in path.parts:
        return path
    parts = path.parts[1:] if path.parts[:1] == ("recipes",) else path.parts
    if not parts:
        return path
    name = Path(*parts)
    name = name.with_suffix("") if name.suffix in (".yaml", ".yml") else name
    return packaged_recipes().get(name.as_posix(), path)
