"""The one configuration habit of every command: ``[CONFIG.yaml] [ARGS] [key=value ...]``, flags as
shortcuts for keys, ``--print-config`` to see the result (``midol_cli.api.settings`` resolves)."""

from __future__ import annotations

from typing import Any, TypeVar

import typer
from pydantic import BaseModel

S = TypeVar("S", bound=BaseModel)

ARGS_HELP = "Optional config YAML (e.g. one written beside an earlier output), then key=value overrides."


def print_config_option() -> Any:
    return typer.Option(False, "--print-config", help="Print the resolved settings as YAML (a config this "
                        "command takes back) and exit without running.")


def given_flags(ctx: typer.Context, mapping: dict[str, str | tuple[str, Any]]) -> dict[str, Any]:
    """The flags given on the command line (not their defaults), as ``{key: value}``. ``mapping`` maps a
    parameter name to its settings key, or to ``(key, convert)``."""
    out: dict[str, Any] = {}
    for param, target in mapping.items():
        src = ctx.get_parameter_source(param)
        # By name: typer may carry its own click, whose enum is not click.core's.
        if src is None or src.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        key, conv = target if isinstance(target, tuple) else (target, None)
        value = ctx.params[param]
        out[key] = conv(value) if conv is not None else _plain(value)
    return out


def _plain(value: Any) -> Any:
    from pathlib import Path

    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def flag_names(ctx: typer.Context, mapping: dict[str, str | tuple[str, Any]]) -> dict[str, str]:
    """``{key: "--flag"}`` for messages (a missing key says which flag gives it)."""
    opts = {p.name: max(p.opts, key=len) for p in ctx.command.params if getattr(p, "opts", None)}
    out = {}
    for param, target in mapping.items():
        key = target[0] if isinstance(target, tuple) else target
        if param in opts and opts[param].startswith("-"):
            out[key] = opts[param]
    return out


def positional(values: list[str], fields: tuple[str, ...], command: str, many: bool = False) -> dict[str, Any]:
    """The command's positional arguments as keys: in order, or all into one list field (``many``)."""
    from midol_cli.errors import UsageError

    if many:
        return {fields[0]: list(values)} if values else {}
    if len(values) > len(fields):
        extra = values[len(fields)]
        raise UsageError(f"unexpected argument '{extra}' for `midol {command}`: options are --flags, settings "
                         "are key=value, the config is a .yaml file")
    return dict(zip(fields, values, strict=False))


def command_settings(ctx: typer.Context, schema: type[S], args: list[str] | None, mapping: dict[str, Any],
                     command: str, fields: tuple[str, ...] = (), many: bool = False,
                     print_config: bool = False) -> S:
    """Resolve a command's settings from its free arguments and flags; ``--print-config`` prints and exits."""
    from midol_cli.api.settings import resolve, split_args

    config, pos, over = split_args(args)
    # A missing positional argument is named as --help shows it (RAW_DIR, MANIFEST, ...).
    names = {**{f: f.upper() for f in fields}, **flag_names(ctx, mapping)}
    s = resolve(schema, config, over, positional=positional(pos, fields, command, many),
                flags=given_flags(ctx, mapping), flag_names=names, command=f"`midol {command}`")
    if print_config:
        emit_config(s, command)
    return s


def emit_config(settings: BaseModel | dict, command: str) -> None:
    """Print the resolved settings on stdout and end the command (exit 0)."""
    from midol_cli.api.settings import settings_yaml

    typer.echo(settings_yaml(settings, command), nl=False)
    raise typer.Exit(0)
