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


def _example_lines(text):
    return [x.strip() for x in text.splitlines() if x.strip().startswith(("midol ", "torchrun "))
            or x.rstrip().endswith("\\") or x.startswith("       ")]


@pytest.mark.parametrize("command", COMMAND_MODULES)
def test_examples_do_not_wrap_mid_command_at_80_columns(command, capsys, monkeypatch):
    narrow = _help(capsys, monkeypatch, command)
    monkeypatch.setenv("COLUMNS", "200")
    from midol_cli.cli.main import run

    monkeypatch.setattr(sys, "argv", ["midol", command, "--help"])
    with pytest.raises(SystemExit):
        run()
    wide = capsys.readouterr().out
    starts = [x for x in _example_lines(wide) if x.startswith(("midol ", "torchrun "))]
    assert starts, f"{command} --help shows no example"
    assert [x for x in _example_lines(narrow) if x.startswith(("midol ", "torchrun "))] == starts


@pytest.mark.parametrize("command", COMMAND_MODULES)
def test_every_option_has_help(command):
    import typer.main

    from midol_cli.cli.main import app

    cmd = typer.main.get_command(app).commands[command]
    missing = [p.name for p in cmd.params if not getattr(p, "help", None)]
    assert not missing, f"{command}: options without help: {missing}"


def test_root_help_ends_with_exit_codes_and_environment(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys, "argv", ["midol", "--help"])
    from midol_cli.cli.main import run

    with pytest.raises(SystemExit):
        run()
    out = capsys.readouterr().out
    tail = " ".join(out[out.index("Exit codes:"):].split())
    for needle in ("0 ok", "1 the run failed", "2 usage or data error", "130 interrupted", "MIDOL_CACHE_DIR",
                   "HF_HUB_OFFLINE", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        assert needle in tail, needle
    assert out.index("Exit codes:") > out.index("quickstart")  # after the command list: the help's end


def test_midol_tells_hubs_it_is_offline(monkeypatch, capsys):
    """midol never downloads: the console entry sets HF_HUB_OFFLINE=1 unless the user set it."""
    import os

    from midol_cli.cli.main import run

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sys, "argv", ["midol", "--version"])
    with pytest.raises(SystemExit):
        run()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(SystemExit):
        run()
    assert os.environ["HF_HUB_OFFLINE"] == "0"


@pytest.mark.parametrize("command", COMMAND_MODULES)
def test_help_is_plain_text_and_names_the_config_argument(command, capsys, monkeypatch):
    """issue 25.27: no literal RST (``--format html``) in any help; pretrain's usage showed {recipe}
    where every other command names its config file."""
    out = _help(capsys, monkeypatch, command)
    assert "``" not in out and ":func:" not in out, out
    usage = next(x for x in out.splitlines() if "Usage:" in x)
    assert "{" not in usage, usage
    if command == "pretrain":
        assert "[RECIPE.yaml] [KEY=VALUE]..." in usage, usage
