"""The `v2f` command: every subcommand exists and `--help` works without heavy imports."""

import subprocess
import sys

import pytest

from v2f_jax import cli


def test_every_subcommand_is_registered():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert set(subparsers.choices) == set(cli.COMMANDS)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: v2f " + command in capsys.readouterr().out


def test_unknown_argument_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synth", "--out", "x", "--frobnicate"])
    assert exit_info.value.code == 2
    assert "--frobnicate" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "v2f_jax.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "prepare" in result.stdout and "demo" in result.stdout
