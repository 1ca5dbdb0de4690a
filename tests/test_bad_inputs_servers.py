"""Hostile inputs, round 3: the tf.data service servers and a trainer pointed at them. A port in
use (by another dispatcher too), a worker whose dispatcher never comes or never answers, and a
trainer that cannot reach its service: each is exit 2 naming the address, in bounded time, with
no traceback. Loopback only.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from v2f_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dispatcher():
    """A tf.data service dispatcher serving in this process (gRPC binds with SO_REUSEPORT)."""
    import tensorflow as tf

    service = tf.data.experimental.service
    port = _free_port()
    server = service.DispatchServer(
        service.DispatcherConfig(port=port, worker_addresses=[f"127.0.0.1:{_free_port()}"])
    )
    yield port
    server._stop()


@pytest.mark.parametrize("role", ["dispatcher", "worker"])
def test_a_second_server_on_a_port_in_use_is_refused(dispatcher, capsys, role):
    """Without the check, a second dispatcher would share the port with the first (gRPC's
    SO_REUSEPORT) and trainers would reach either at random."""
    argv = ["data-service", role, "--port", str(dispatcher)]
    if role == "dispatcher":
        argv += ["--workers", f"127.0.0.1:{_free_port()}"]
    else:
        argv += ["--dispatcher", f"127.0.0.1:{dispatcher}", "--wait-dispatcher", "5"]
    start = time.monotonic()
    assert cli.main(argv) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"v2f data-service {role}: error: cannot serve on port {dispatcher}: in use" in err
    assert "Traceback" not in err


def test_a_worker_whose_dispatcher_never_comes_gives_up_in_bounded_time(capsys):
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    argv = ["data-service", "worker", "--dispatcher", address, "--port", str(_free_port()),
            "--host", "127.0.0.1", "--wait-dispatcher", "2"]  # fmt: skip
    start = time.monotonic()
    assert cli.main(argv) == 2
    assert 2 <= time.monotonic() - start < 15
    err = capsys.readouterr().err
    assert f"no tf.data service dispatcher answered at {address} in 2 s" in err
    assert "nothing listens there (connection refused)" in err and "Traceback" not in err


def test_a_worker_whose_dispatcher_never_answers_gives_up_in_bounded_time(capsys):
    with socket.socket() as silent:  # accepts connections, says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        argv = ["data-service", "worker", "--dispatcher", address, "--port",
                str(_free_port()), "--host", "127.0.0.1", "--wait-dispatcher", "2"]  # fmt: skip
        start = time.monotonic()
        assert cli.main(argv) == 2
        assert time.monotonic() - start < 15
    err = capsys.readouterr().err
    assert f"no tf.data service dispatcher answered at {address}" in err
    assert "accepts connections but does not answer" in err and "Traceback" not in err


def test_a_nonsense_wait_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["data-service", "worker", "--dispatcher", "h:1", "--wait-dispatcher", "-3"])
    assert exit_.value.code == 2
    assert "argument --wait-dispatcher" in capsys.readouterr().err


def test_a_service_that_fails_mid_run_is_exit_2_not_a_traceback(tiny_records_dir, tmp_path,
                                                                capsys, monkeypatch):  # fmt: skip
    """Whatever the service raises (unreachable, a worker lost) reaches the user as one line."""
    from v2f_jax import train
    from v2f_jax.input_pipeline import data_service

    def unreachable(*args, **kwargs):
        raise data_service.DispatcherUnreachableError(
            "no tf.data service dispatcher answers at grpc://127.0.0.1:1 (refused, for 30 s)"
        )

    monkeypatch.setattr(train, "train", unreachable)
    argv = ["train", "--config", str(REPO / "configs" / "tiny.py"), "--records",
            tiny_records_dir, "--workdir", str(tmp_path / "run"),
            "--config.data.service_address=grpc://127.0.0.1:1",
            "--config.train.embedder_init=random"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "v2f train: no tf.data service dispatcher answers at grpc://127.0.0.1:1" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_trainer_pointed_at_a_closed_port_stops_with_exit_2(tiny_records_dir, tmp_path):
    address = f"grpc://127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "v2f_jax.cli", "train", "--config",
           str(REPO / "configs" / "embedder.py") + ":tiny", "--records", tiny_records_dir,
           "--workdir", str(tmp_path / "run"), "--config.train.batch_size=8",
           "--config.train.steps=2", f"--config.data.service_address={address}"]  # fmt: skip
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert time.monotonic() - start < 300
    assert f"no tf.data service dispatcher answers at {address}" in result.stderr
    assert "Traceback" not in result.stderr
