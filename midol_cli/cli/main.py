"""The Typer app. Each subcommand lives in its own module with a ``register(app)``.

Nothing heavy is imported here or at the top of the command modules: torch,
timm and pandas load inside the command bodies, so ``midol --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from midol_cli import __version__
from midol_cli.errors import MidolError

# Order is the order `midol --help` lists them: the pipeline, then helpers.
COMMAND_MODULES: tuple[str, ...] = (
    "synth",
    "quickstart",
    "ingest",
    "shard",
    "pretrain",
    "export",
    "models",
    "embed",
    "probe",
    "finetune",
    "report",
    "heatmap",
    "explain",
    "study",
    "trend",
    "contamination",
    "tasks",
    "recipes",
)

# The conventions a script or scheduler needs, at the end of `midol --help` (tests/cli/test_help.py).
EPILOG = (
    "[bold]Exit codes:[/] 0 ok; 1 the run failed (a shard set that fails verification, a full disk, a "
    "diverged run); 2 usage or data error (a bad option, setting or path: one line on stderr); "
    "130 interrupted (Ctrl-C).\n\n"
    "[bold]Environment:[/] MIDOL_CACHE_DIR (embedding and dataset cache; default ~/.cache/midol); "
    "HF_HUB_OFFLINE (midol sets it to 1 unless it is given, so timm and huggingface_hub never reach the "
    "network: weights are local files); "
    "MIDOL_DEBUG=1 (full tracebacks for I/O errors); torchrun's RANK, LOCAL_RANK, WORLD_SIZE, "
    "MASTER_ADDR, MASTER_PORT (distributed runs: docs/distributed.md); OMP_NUM_THREADS (CPU threads per "
    "process)."
)

app = typer.Typer(
    name="midol",
    help=(
        "M-IDoL medical foundation models: raw folders -> manifest -> shards -> pre-training -> "
        "embeddings, probes, fine-tuning -> report tables.\n\n"
        "Quick start:  midol synth demo/raw && midol quickstart demo/raw --out demo/qs --recipe "
        "recipes/smoke.yaml\n\n"
        "Every command takes [CONFIG.yaml] and key=value settings; --print-config shows what it will run "
        "with, "
        "and the resolved settings are written beside each output."
    ),
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    # Patient data is sensitive: tracebacks must never print local variables.
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"midol {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """midol command-line interface."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"midol_cli.cli.{_name}").register(app)


def one_line(msg: str) -> str:
    """A user-facing message on one line. An error raised again by a DataLoader worker carries the
    worker's traceback in its text; its cause is the last line (``midol_cli.errors.X: message``)."""
    if "Traceback" in msg:
        lines = [x.strip() for x in msg.strip().splitlines() if x.strip()]
        last = lines[-1] if lines else msg
        head, sep, rest = last.partition(": ")
        msg = rest if sep and head.startswith("midol_cli.errors.") else last
    return " ".join(msg.split())


def os_error_message(e: OSError) -> tuple[str, int]:
    """(one line, exit code) for an I/O error: a full disk is a failed run (1), a path the user gave
    that cannot be written (read-only, permission, a file where a folder belongs) is bad input (2)."""
    import errno

    what = e.strerror or type(e).__name__
    target = f" '{e.filename}'" if e.filename else ""
    if e.errno == errno.ENOSPC:
        return f"cannot write{target}: the disk is full (no space left on device)", 1
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write{target}: {what}; choose a writable --out (or cache dir, MIDOL_CACHE_DIR)", 2
    if e.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        return f"path{target}: {what}; --out must name a folder or file as the command's help says", 2
    return f"I/O error{target}: {what}", 1


def _one_line_warnings() -> None:
    """Python warnings (torch, sklearn, PIL) as one ``warning: ...`` line each, each text once, without
    the file/line and source echo of the default format."""
    import warnings

    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        text = " ".join(str(message).split())
        if text in seen:
            return
        seen.add(text)
        kind = "" if category is UserWarning else f" ({category.__name__})"
        print(f"warning: {text}{kind}", file=sys.stderr)

    warnings.showwarning = show


def _metavar(param) -> str | None:  # noqa: ANN001
    """The type column of ``--help``: a real metavar (PATH, INT, TEXT..., NAME=VALUE) instead of typer's
    ``<list[pathlib.Path]>``; nothing for flags (they read ``--x/--no-x``)."""
    if getattr(param, "is_flag", False):
        return None
    if param.metavar:
        return None if isinstance(param, typer.core.TyperArgument) else param.metavar
    desc = param.type_descriptor
    if desc.is_choice:
        return "|".join(str(c) for c in desc.choices or ())
    base = {"int": "INT", "float": "FLOAT", "str": "TEXT", "bool": "BOOL"}
    inner = desc.annotation
    if desc.is_list:
        from typing import get_args

        inner = (get_args(inner) or (str,))[0]
    name = "PATH" if desc.is_path or getattr(inner, "__name__", "") in ("Path", "PosixPath") else \
        base.get(getattr(inner, "__name__", ""), "TEXT")
    return f"{name}..." if desc.is_list else name


EXAMPLE_WIDTH = 74


def _wrap_example(cmd: str) -> str:
    """One example command as lines of at most ``EXAMPLE_WIDTH`` joined by shell continuations."""
    lines, cur = [], "  "
    for word in cmd.split():
        if cur.strip() and len(cur) + 1 + len(word) > EXAMPLE_WIDTH:
            lines.append(cur + " \\")
            cur = "      " + word
        else:
            cur = f"{cur} {word}" if cur.strip() else f"  {word}"
    lines.append(cur)
    return "\n".join(lines)


def _examples(text: str) -> str:
    """Each example paragraph (a line starting with ``midol`` or ``torchrun``) kept from re-flowing
    (click's ``\\b``) and broken with shell continuations, so no example wraps mid-command at 80 columns."""
    out = []
    for para in text.split("\n\n"):
        st = para.strip()
        if st.startswith(("midol ", "torchrun ")) and "\n" not in st:
            out.append("\b\n" + _wrap_example(st))
        else:
            out.append(para)
    return "\n\n".join(out)


def _polish(cmd) -> None:  # noqa: ANN001
    """Help that reads like the field's tools: ``--flag/--no-flag`` for booleans, real metavars, and
    examples that do not wrap."""
    from typer.core import TyperOption

    if cmd.help:
        cmd.help = _examples(cmd.help)
    for sub in getattr(cmd, "commands", {}).values():
        _polish(sub)
    for p in cmd.params:
        if (
            isinstance(p, TyperOption)
            and p.is_flag
            and getattr(p, "is_bool_flag", False)
            and not p.secondary_opts
            and p.name not in ("help", "version")
            and p.opts
            and p.opts[-1].startswith("--")
            and not p.opts[-1].startswith("--no-")
        ):
            p.secondary_opts = ["--no-" + p.opts[-1][2:]]


def run() -> None:
    """Console-script entry: user errors become one line on stderr and an exit code.

    ``MIDOL_DEBUG=1`` lets I/O errors through with their traceback (for developers)."""
    import os

    # midol never downloads (weights are local files): libraries that could reach a hub are told so.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not os.environ.get("MIDOL_DEBUG"):
        _one_line_warnings()
    try:
        from typer.core import TyperArgument, TyperOption

        TyperOption.display_type_rich = TyperArgument.display_type_rich = lambda self, ctx: _metavar(self)
        cmd = typer.main.get_command(app)
        _polish(cmd)
        cmd(prog_name="midol")
    except MidolError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:
        if os.environ.get("MIDOL_DEBUG"):
            raise
        msg, code = os_error_message(e)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
