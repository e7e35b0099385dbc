"""The one configuration habit of every command: ``[CONFIG.yaml] [ARGS] [key=value ...]``, flags as
shortcuts for keys, ``--print-config`` to see the result (``midol_cli.workflows.settings`` resolves).

A command's options are GENERATED from its settings model (``settings_command``): each field is one
typer option with the field's name, type, default and description as help, spelled as its ``cli(...)``
says, so a flag and its key cannot differ. The command's function gets the model whole."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

S = TypeVar("S", bound=BaseModel)
KW = inspect.Parameter.KEYWORD_ONLY
ARGS_HELP = "Optional config YAML (e.g. one written beside an earlier output), then key=value overrides."
_NONE = {"flag": "", "short": None, "repeat": False, "metavar": None, "arg": None}


def print_config_option() -> Any:
    return typer.Option(False, "--print-config", help="Print the resolved settings as YAML (a config this "
                        "command takes back) and exit without running.")


def field_cli(field: FieldInfo) -> dict[str, Any]:
    """A field's command-line spelling (``workflows.settings.cli``), defaults filled in."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return {**_NONE, **extra.get("cli", {})}


def flag_fields(schema: type[BaseModel]) -> dict[str, FieldInfo]:
    """The fields that are flags: neither positional (``arg``) nor key=value only (``flag=None``)."""
    return {k: f for k, f in schema.model_fields.items()
            if field_cli(f)["flag"] is not None and not field_cli(f)["arg"]}


def flag_decls(name: str, field: FieldInfo) -> list[str]:
    c = field_cli(field)
    decls = [c["flag"] or "--" + name.replace("_", "-")]
    return decls + ([c["short"]] if c["short"] else [])


def _bare(ann: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return ann


def flag_type(field: FieldInfo) -> Any:
    """The flag's type: the field's, but a mapping is a repeatable KEY=VALUE flag, a list a repeatable flag
    (``repeat``) or one comma-separated value, and a ``Literal`` text that pydantic checks."""
    ann = _bare(field.annotation)
    origin = typing.get_origin(ann)
    if origin is dict:
        return list[str]
    if origin is list:
        inner = typing.get_args(ann)[0]
        return list[Path if inner is Path else str] if field_cli(field)["repeat"] else str
    if origin is Literal:
        return str
    return ann


def flag_default(field: FieldInfo) -> Any:
    """The settings default in the flag's form (a list as ``a,b``); None where there is none."""
    if field.is_required():
        return None
    value = field.get_default(call_default_factory=True)
    if isinstance(value, dict):
        return None
    if isinstance(value, list) and not field_cli(field)["repeat"]:
        return ",".join(str(v) for v in value)
    return value or None if isinstance(value, list) else value


def options(schema: type[BaseModel]) -> list[inspect.Parameter]:
    """One typer option per flag field of ``schema``, as the parameters of a command's signature."""
    out = []
    for name, f in flag_fields(schema).items():
        c = field_cli(f)
        opt = typer.Option(flag_default(f), *flag_decls(name, f), help=f.description, metavar=c["metavar"],
                           show_default=flag_default(f) not in (None, False, ""))
        out.append(inspect.Parameter(name, KW, default=opt, annotation=flag_type(f)))
    return out


def positional_fields(schema: type[BaseModel]) -> tuple[tuple[str, ...], bool]:
    """(the positional fields in order, whether the one positional takes many values)."""
    fields = tuple(k for k, f in schema.model_fields.items() if field_cli(f)["arg"])
    many = any(field_cli(schema.model_fields[k])["arg"].endswith("...") for k in fields)
    return fields, many


def args_parameter(schema: type[BaseModel] | None) -> inspect.Parameter:
    """``[CONFIG.yaml] [POSITIONAL] [KEY=VALUE]...``: the free arguments, help from the positional field."""
    fields, _ = positional_fields(schema) if schema is not None else ((), False)
    if not fields:
        arg = typer.Argument(None, metavar="[CONFIG.yaml] [KEY=VALUE]...", help=ARGS_HELP)
    else:
        f = schema.model_fields[fields[0]]
        arg = typer.Argument(None, metavar=f"[CONFIG.yaml] {field_cli(f)['arg']} [KEY=VALUE]...",
                             help=f"{f.description.rstrip('.')}, optionally after a config YAML; key=value "
                                  "settings after it.", show_default=False)
    return inspect.Parameter("args", KW, default=arg, annotation=list[str])


def settings_command(app: typer.Typer, name: str, schema: type[BaseModel], body: Callable[..., None], *,
                     help: str | None = None, args: inspect.Parameter | None = None,
                     extra: tuple[inspect.Parameter, ...] = (), **kw: Any) -> None:
    """Register command ``name`` whose options are ``schema``'s fields (``options``), then ``extra``
    (options that are not settings, e.g. ``--verify``) and ``--print-config``. ``body`` is called
    with ``ctx``, ``args``, ``print_config`` and every option by name."""
    params = [inspect.Parameter("ctx", KW, annotation=typer.Context), args or args_parameter(schema),
              *options(schema), *extra,
              inspect.Parameter("print_config", KW, default=print_config_option(), annotation=bool)]

    def command(**values: Any) -> None:
        body(**values)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = body.__doc__
    app.command(name, help=help, **kw)(command)


def option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """An option that is not a setting (``default`` a ``typer.Option``), for ``settings_command(extra=)``."""
    return inspect.Parameter(name, KW, default=default, annotation=annotation)


def given_flags(ctx: typer.Context, schema: type[BaseModel]) -> dict[str, Any]:
    """The flags given on the command line (not their defaults), as ``{key: value}``."""
    out: dict[str, Any] = {}
    for key in flag_fields(schema):
        src = ctx.get_parameter_source(key)
        # By name: typer may carry its own click, whose enum is not click.core's.
        if src is None or src.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        out[key] = _plain(ctx.params[key])
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def flag_names(schema: type[BaseModel]) -> dict[str, str]:
    """``{key: "--flag"}`` for messages (a missing key says which flag gives it); positional fields by
    the name --help shows (RAW_DIR, MANIFEST...)."""
    out = {k: flag_decls(k, f)[0].split("/")[0] for k, f in flag_fields(schema).items()}
    fields, _ = positional_fields(schema)
    return {**{k: field_cli(schema.model_fields[k])["arg"].rstrip(".") for k in fields}, **out}


def positional(values: list[str], fields: tuple[str, ...], command: str,
               many: bool = False) -> dict[str, Any]:
    """The command's positional arguments as keys: in order, or all into one list field (``many``)."""
    from midol_cli.errors import UsageError

    if many:
        return {fields[0]: list(values)} if values else {}
    if len(values) > len(fields):
        extra = values[len(fields)]
        raise UsageError(f"unexpected argument '{extra}' for `midol {command}`: options are --flags, "
                         "settings "
                         "are key=value, the config is a .yaml file")
    return dict(zip(fields, values, strict=False))


def command_settings(ctx: typer.Context, schema: type[S], args: list[str] | None, command: str,
                     print_config: bool = False) -> S:
    """Resolve a command's settings from its free arguments and flags, validated once;
    ``--print-config`` prints them and exits."""
    from midol_cli.workflows.settings import resolve, split_args

    config, pos, over = split_args(args)
    fields, many = positional_fields(schema)
    s = resolve(schema, config, over, positional=positional(pos, fields, command, many),
                flags=given_flags(ctx, schema), flag_names=flag_names(schema), command=f"`midol {command}`")
    if print_config:
        emit_config(s, command)
    return s


def emit_config(settings: BaseModel | dict, command: str) -> None:
    """Print the resolved settings on stdout and end the command (exit 0)."""
    from midol_cli.workflows.settings import settings_yaml

    typer.echo(settings_yaml(settings, command), nl=False)
    raise typer.Exit(0)
