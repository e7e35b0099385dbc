"""Resolving a command's settings (``workflows/settings.py``'s models): the model's defaults, then an
optional config YAML, then the command's positional arguments and flags, then ``key=value`` overrides,
every problem reported at once with its dotted key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from midol_cli.errors import UsageError
from midol_cli.recipes import _merge, format_validation_error, parse_overrides, read_yaml
from midol_cli.workflows.settings_paths import rebase_paths

S = TypeVar("S", bound=BaseModel)


def split_args(args: list[str] | tuple[str, ...] | None) -> tuple[str | None, list[str], list[str]]:
    """A command's free arguments -> (config YAML or None, positional values, ``key=value`` overrides).

    A token whose left of ``=`` is a dotted name is an override; the first ``.yaml``/``.yml`` token is
    the config; the rest are the command's positional arguments, in order."""
    import re

    config, pos, over = None, [], []
    for tok in args or ():
        if re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*=", tok):
            over.append(tok)
        elif config is None and tok.lower().endswith((".yaml", ".yml")):
            config = tok
        else:
            pos.append(tok)
    return config, pos, over


def settings_data(
    schema: type[BaseModel],
    config: str | Path | dict[str, Any] | None,
    positional: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    flag_names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The merged, not yet validated settings: config < positional arguments and flags < overrides.
    A key given both as a flag (or argument) and as ``key=value`` is a one-line error."""
    if isinstance(config, dict):
        data = config
    else:
        data = read_yaml(config, example="one written beside an earlier output", what="config") \
            if config is not None else {}
        if config is not None:  # a file's relative paths name places beside the file, wherever the cwd is
            data = rebase_paths(schema, data, Path(config).resolve().parent)
    given = _merge(_nest(positional or {}), _nest(flags or {}))
    over = parse_overrides(list(overrides))
    names = flag_names or {}
    clash = sorted(set(_flat(given)) & set(_flat(over)))
    if clash:
        k = clash[0]
        raise UsageError(f"'{k}' is given twice: as {names.get(k, 'an argument')} and as {k}=...; give it "
                         "once")
    return _merge(_merge(data, given), over)


def split_keys(data: dict[str, Any], overrides: list[str],
               keys: set[str]) -> tuple[dict, list[str], dict, list[str]]:
    """A file holding two models' keys side by side (fine-tuning: the command's and the recipe's):
    (mapping, overrides) whose top-level key is in ``keys``, then the rest."""
    mine = {k: v for k, v in data.items() if k in keys}
    rest = {k: v for k, v in data.items() if k not in keys}
    top = [t.split("=", 1)[0].split(".", 1)[0] for t in overrides]
    return mine, [t for t, k in zip(overrides, top, strict=True) if k in keys], rest, \
        [t for t, k in zip(overrides, top, strict=True) if k not in keys]


def validate_settings(schema: type[S], data: dict[str, Any], source: str,
                      flag_names: dict[str, str] | None = None) -> S:
    """``schema`` from ``data`` with every problem in one line; a missing key says how to give it."""
    from pydantic import ValidationError

    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise UsageError(format_validation_error(e, source, flag_names or {}, schema)) from None


def resolve(schema: type[S], config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
            *, positional: dict[str, Any] | None = None, flags: dict[str, Any] | None = None,
            flag_names: dict[str, str] | None = None, command: str = "settings") -> S:
    """The one resolver: defaults < config < positional arguments and flags < ``key=value``."""
    data = settings_data(schema, config, positional, flags, overrides, flag_names=flag_names)
    src = f"{command} config '{config}'" if config is not None else f"the {command} command"
    return validate_settings(schema, data, src, flag_names)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        nested = isinstance(v, dict) and v and not type(v).__name__ == "_Whole"
        keys += _flat(v, key + ".") if nested else [key]
    return keys
