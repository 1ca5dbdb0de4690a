"""Two JAX processes on 127.0.0.1 (CPU, gloo collectives), each reading its own record files,
train to the same numbers as one process that sees the same global batches.

The run is E's pretraining: the multi-host machinery (distributed init, each host's files, global
batches from process-local rows, the broadcast initial state, checkpoints written by process 0)
is the same for both tasks, and E compiles in a fraction of the GAN's time on a 2-core CI box.
That the GAN step gives the same numbers on any number of devices is tests/test_train_step.py's.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import test_train  # tests/ is on sys.path under pytest

from v2f_jax import checkpointing

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6
CONFIG = "configs/embedder.py"
OVERRIDES = [
    *test_train.TINY_E,
    "--config.train.batch_size=8",
    f"--config.train.steps={STEPS}",
    "--config.train.log_every=3",
    "--config.checkpoint.every=3",
]


@pytest.fixture(scope="session")
def records_dir(tmp_path_factory):
    return test_train.session_records(tmp_path_factory)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(
        os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), TF_CPP_MIN_LOG_LEVEL="2"
    )


@pytest.mark.multiprocess
def test_two_processes_train_like_one_process_with_the_same_global_batch(records_dir, tmp_path):
    records = str(records_dir)
    port = _free_port()
    multi, single = tmp_path / "two_processes", tmp_path / "one_process"
    procs, logs = [], []
    for pid in range(2):
        log = open(tmp_path / f"host{pid}.log", "w")  # noqa: SIM115
        logs.append(log)
        cmd = [sys.executable, "-m", "v2f_jax.cli", "train", "--config", str(REPO / CONFIG)]
        cmd += ["--records", records, "--workdir", str(multi), *OVERRIDES]
        cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
        cmd += ["--process-id", str(pid)]
        procs.append(subprocess.Popen(cmd, env=_env(1), cwd=REPO, stdout=log, stderr=log))
    worker = [sys.executable, str(REPO / "tests" / "multihost_worker.py"), CONFIG]
    reference = subprocess.run(
        [*worker, records, str(single), "2", *OVERRIDES],
        env=_env(2), cwd=REPO, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    codes = [p.wait(timeout=400) for p in procs]
    for log in logs:
        log.close()
    host_logs = [(tmp_path / f"host{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(s[-3000:] for s in host_logs)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "2 processes" in host_logs[0]

    def last_metrics(workdir):
        return json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])

    got, want = last_metrics(multi), last_metrics(single)
    assert got["step"] == want["step"] == STEPS
    # Bitwise: the same global batch, and means over two devices (a sum of two terms has one
    # order) whether the devices are in one process or two.
    for key in ("train/e_loss", "train/e_acc"):
        assert got[key] == want[key], (key, got[key], want[key])
    _, a = checkpointing.restore_for_inference(multi)
    _, b = checkpointing.restore_for_inference(single)
    assert int(a.step) == int(b.step) == STEPS
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
