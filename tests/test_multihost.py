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
import re
import shlex
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import runs  # tests/ is on sys.path under pytest

from v2f_jax import checkpointing

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6
CONFIG = "configs/embedder.py"
OVERRIDES = [
    *runs.TINY_E,
    "--config.train.batch_size=8",
    f"--config.train.steps={STEPS}",
    "--config.train.log_every=3",
    "--config.checkpoint.every=3",
]


@pytest.fixture(scope="session")
def records_dir(tiny_records_dir):
    return tiny_records_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(
        os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), TF_CPP_MIN_LOG_LEVEL="2"
    )


def readme_host_command() -> list[str]:
    """The command every host runs, as the README's "Running on GPUs and TPU pods" gives it
    (host 0's; the comment on its last line names the other hosts' --process-id)."""
    text = (REPO / "README.md").read_text()
    start = text.index("**Several hosts:**")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
    return shlex.split(block.replace("\\\n", " "), comments=True)


def _host_cmd(records: str, workdir: pathlib.Path, port: int, pid: int, overrides) -> list:
    """The README's command for host `pid` of two, on this test's config, records and workdir,
    with its coordinator on 127.0.0.1 (its `--config.*` overrides are the README run's own: this
    run's replace them)."""
    readme = readme_host_command()
    assert readme[:2] == ["v2f", "train"], readme
    values = {
        "--config": str(REPO / CONFIG),
        "--records": records,
        "--workdir": str(workdir),
        "--coordinator": f"127.0.0.1:{port}",
        "--num-processes": "2",
        "--process-id": str(pid),
    }
    flags = [a for a in readme[2:] if a.startswith("--") and not a.startswith("--config.")]
    assert set(flags) == set(values), flags  # the README names exactly what each host needs
    cmd = [sys.executable, "-m", "v2f_jax.cli", "train"]
    for flag in flags:
        cmd += [flag, values[flag]]
    return cmd + list(overrides)


def _start_hosts(records: str, workdir: pathlib.Path, logs: list, overrides) -> list:
    """Two `v2f train` processes of one run, each with one CPU device; output appended to logs."""
    port = _free_port()
    procs = []
    for pid, log in enumerate(logs):
        with open(log, "a") as f:
            cmd = _host_cmd(records, workdir, port, pid, overrides)
            procs.append(subprocess.Popen(cmd, env=_env(1), cwd=REPO, stdout=f, stderr=f))
    return procs


def _reference(records: str, workdir: pathlib.Path, overrides) -> subprocess.Popen:
    """One process, two devices, fed the global batches the two hosts see together."""
    worker = [sys.executable, str(REPO / "tests" / "multihost_worker.py"), CONFIG]
    cmd = [*worker, records, str(workdir), "2", *overrides]
    return subprocess.Popen(
        cmd, env=_env(2), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_all(procs, logs, timeout=400) -> list[str]:
    codes = [p.wait(timeout=timeout) for p in procs]
    texts = [pathlib.Path(log).read_text() for log in logs]
    assert codes == [0] * len(procs), "\n".join(t[-3000:] for t in texts)
    return texts


def _last_metrics(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])


def _assert_same_final_state(a_dir: pathlib.Path, b_dir: pathlib.Path, steps: int) -> None:
    _, a = checkpointing.restore_for_inference(a_dir)
    _, b = checkpointing.restore_for_inference(b_dir)
    assert int(a.step) == int(b.step) == steps
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_the_readme_names_every_flag_a_host_needs():
    """What the two-process tests below run is the README's multi-host command."""
    cmd = _host_cmd("records", pathlib.Path("run"), 8476, 1, [])
    assert cmd[4:] == [
        "--config", str(REPO / CONFIG), "--records", "records", "--workdir", "run",
        "--coordinator", "127.0.0.1:8476", "--num-processes", "2", "--process-id", "1",
    ]  # fmt: skip


FEEDS = {
    "streaming": [],
    # Each host's shards on its device, gathered there from the host's own indices.
    "on_device": ["--config.data.on_device=True"],
}


@pytest.mark.multiprocess
@pytest.mark.parametrize("feed", FEEDS)
def test_two_processes_train_like_one_process_with_the_same_global_batch(
    records_dir, tmp_path, feed
):
    """The reference always streams: every feed must give the hosts the streaming batches."""
    multi, single = tmp_path / "two_processes", tmp_path / "one_process"
    logs = [tmp_path / f"host{i}.log" for i in range(2)]
    procs = _start_hosts(str(records_dir), multi, logs, [*OVERRIDES, *FEEDS[feed]])
    reference = _reference(str(records_dir), single, OVERRIDES)
    out = reference.communicate(timeout=400)[0]
    assert reference.returncode == 0, out[-3000:]
    host_logs = _wait_all(procs, logs)
    assert "2 processes" in host_logs[0]
    if feed == "on_device":
        assert "training split in device memory" in host_logs[1]

    got, want = _last_metrics(multi), _last_metrics(single)
    assert got["step"] == want["step"] == STEPS
    # Bitwise: the same global batch, and means over two devices (a sum of two terms has one
    # order) whether the devices are in one process or two.
    for key in ("train/e_loss", "train/e_acc"):
        assert got[key] == want[key], (key, got[key], want[key])
    _assert_same_final_state(multi, single, STEPS)


LONG_STEPS = 600
LONG_OVERRIDES = [
    *runs.TINY_E,
    "--config.train.batch_size=8",
    f"--config.train.steps={LONG_STEPS}",
    "--config.train.log_every=20",
    "--config.checkpoint.every=20",
]


@pytest.mark.multiprocess
def test_sigterm_to_one_host_stops_both_at_one_step_and_the_rerun_resumes_exactly(
    records_dir, tmp_path
):
    """A scheduler preempting one host: JAX's preemption service agrees a step, every host saves
    there and exits 0; the same two commands again resume from it and finish with the numbers of
    a run never stopped."""
    multi, single = tmp_path / "two_processes", tmp_path / "one_process"
    logs = [tmp_path / f"host{i}.log" for i in range(2)]
    reference = _reference(str(records_dir), single, LONG_OVERRIDES)
    procs = _start_hosts(str(records_dir), multi, logs, LONG_OVERRIDES)
    runs.wait_for(multi / "checkpoints" / "20", procs[0])
    procs[1].send_signal(signal.SIGTERM)
    first = _wait_all(procs, logs)
    # JAX's preemption service takes SIGTERM over from Python on every host: each names the notice.
    stops = [int(t.split("stopped by the preemption notice at step ")[1].split()[0]) for t in first]
    assert stops[0] == stops[1] and 20 <= stops[0] < LONG_STEPS, stops
    assert stops[0] in runs.saved_steps(multi)

    for log in logs:
        with open(log, "a") as f:
            f.write("\n--- rerun ---\n")
    second = _wait_all(_start_hosts(str(records_dir), multi, logs, LONG_OVERRIDES), logs)
    for text in second:
        rerun = text.split("--- rerun ---")[1]
        assert "resuming from" in rerun and f"at step {stops[0]}" in rerun, rerun[-3000:]
    out = reference.communicate(timeout=400)[0]
    assert reference.returncode == 0, out[-3000:]
    assert _last_metrics(multi)["train/e_loss"] == _last_metrics(single)["train/e_loss"]
    _assert_same_final_state(multi, single, LONG_STEPS)


def test_coordinator_auto_outside_a_cluster_is_exit_2_naming_the_flags(tmp_path):
    """`--coordinator auto` asks JAX to find the cluster; on a lone machine it says so."""
    env = {k: v for k, v in _env(1).items() if not k.startswith(("SLURM_", "OMPI_", "TPU_"))}
    cmd = [sys.executable, "-m", "v2f_jax.cli", "train", "--config", str(REPO / CONFIG)]
    cmd += ["--records", str(tmp_path), "--workdir", str(tmp_path / "run"), "--coordinator", "auto"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--coordinator auto" in proc.stderr and "--num-processes" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
