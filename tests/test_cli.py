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


# A finished command's process, signalled while its exit handlers run or its modules are torn
# down: the command's status must stand (it used to end killed by the signal, or hang).
_SIGNALLED_AFTER_THE_WORK = """
import atexit, os, signal, sys, time
from v2f_jax import cli

def signal_this_process():
    os.kill(os.getpid(), signal.{sig})
    time.sleep(0.3)

class SignalsWhenTornDown:
    def __del__(self):
        signal_this_process()

def main(argv=None):
    global keep
    if "{phase}" == "exit handlers":
        atexit.register(signal_this_process)
    else:
        keep = SignalsWhenTornDown()
    print("work done", flush=True)
    return 3

cli.main = main
cli.run_and_exit()
"""


@pytest.mark.parametrize("phase", ["exit handlers", "module teardown"])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_after_the_work_is_done_leaves_the_exit_status_alone(sig, phase):
    script = _SIGNALLED_AFTER_THE_WORK.format(sig=sig, phase=phase)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.stdout == "work done\n"
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
