"""Every command's --help reads like the field's tools: --flag/--no-flag, real metavars, no typer
type labels such as <bool> or <list[pathlib.Path]>, and lines that fit 80 columns."""

import sys

import pytest

from midol_cli.cli.main import COMMAND_MODULES


def _help(capsys, monkeypatch, *args):
    from midol_cli.cli.main import run

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys, "argv", ["midol", *args, "--help"])
    with pytest.raises(SystemExit) as e:
        run()
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMAND_MODULES)
def test_help_has_real_metavars_and_fits_80_columns(command, capsys, monkeypatch):
    out = _help(capsys, monkeypatch, command)
    assert "<bool>" not in out and "<list[" not in out and "<path>" not in out and "<str>" not in out, out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_boolean_options_read_flag_no_flag(capsys, monkeypatch):
    out = _help(capsys, monkeypatch, "finetune")
    assert "--linear" in out and "--no-linear" in out
    out = _help(capsys, monkeypatch, "embed")
    assert "--no-cache" in out and "--no-no-" not in out  # already a negative name: left alone
