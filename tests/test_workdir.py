"""`v2f train` and its workdir: one run at a time, a resumed run held to the settings its
checkpoints were trained with, a full disk reported once, and every bad config or records
directory refused with exit 2, naming the key or the file, before the workdir changes.

Refusals run the CLI in process (nothing is compiled before them); training runs are E
pretraining at the size of configs/tiny.py (`configs/embedder.py:tiny`), the quickest to compile.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from v2f_jax import checkpointing, cli
from v2f_jax.training import workdir

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.py")
E_TINY = str(REPO / "configs" / "embedder.py") + ":tiny"
SHORT = ["--config.train.batch_size=8", "--config.train.log_every=1", "--config.checkpoint.every=2"]


def train(records, workdir_path, *overrides, config=TINY):
    return cli.main(
        ["train", "--config", config, "--records", str(records), "--workdir", str(workdir_path)]
        + list(overrides)
    )


def snapshot(path: pathlib.Path) -> dict[str, bytes]:
    """Every file under `path` (checkpoints, config, logs) with its bytes."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and "xla_cache" not in p.parts
    }


# --- refusals before anything runs ------------------------------------------------------------


@pytest.mark.parametrize(
    "override,named",
    [
        ("--config.train.batch_size=0", "config.train.batch_size=0: must be an integer >= 1"),
        ("--config.train.batch_size=-8", "config.train.batch_size=-8"),
        ("--config.train.batch_size=6", "does not split over 4 devices"),
        ("--config.train.parallel=bogus", "config.train.parallel='bogus'"),
        ("--config.model.dtype=float16", "config.model.dtype='float16'"),
        ("--config.model.impl=im2col", "config.model.impl"),
        ("--config.train.steps=0", "config.train.steps=0"),
        ("--config.train.identity_weight=-1.0", "config.train.identity_weight=-1.0"),
        ("--config.train.face_target_weight=-1.0", "config.train.face_target_weight=-1.0"),
        ("--config.train.face_target_pool=12", "config.train.face_target_pool=12"),
        ("--config.model.coarse_cell=3", "config.model.coarse_cell=3: must be 0 (off) or"),
        (
            "--config.model.coarse_cell=8 --config.train.face_target_weight=1 "
            "--config.train.face_target_pool=4",
            "config.train.face_target_pool=4 is not one",
        ),
        ("--config.model.gen_channels=(8,8)", "config.model.gen_channels"),
        ("--config.data.frontend=librosa", "manifest.json"),
        ("--config.data.image_size=128", "config.model.gen_channels draws 64x64"),
    ],
)
def test_a_bad_config_exits_2_naming_the_key(tiny_records_dir, tmp_path, capsys, override, named):
    run = tmp_path / "run"
    assert (
        train(tiny_records_dir, run, *override.split(), "--config.train.embedder_init=random") == 2
    )
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert not run.exists()


def test_a_gan_against_a_random_frozen_embedder_is_refused_with_the_recipe(
    tiny_records_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    assert train(tiny_records_dir, run) == 2
    err = capsys.readouterr().err
    assert "every voice would then draw the same face" in err
    assert "v2f train --config configs/embedder.py" in err
    assert "--config.train.embedder_init=random" in err
    assert not run.exists()
    assert train(tiny_records_dir, run, "--config.train.embedder_init=runs/nowhere") == 2
    assert "runs/nowhere: no such workdir or model file" in capsys.readouterr().err


def test_records_of_another_schema_or_no_records_are_named(tiny_records_dir, tmp_path, capsys):
    old = tmp_path / "old_records"
    shutil.copytree(tiny_records_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps(manifest | {"schema_version": 99}))
    assert train(old, tmp_path / "run", "--config.train.embedder_init=random") == 2
    err = capsys.readouterr().err
    assert f"{old / 'manifest.json'}: record schema 99" in err and "Traceback" not in err
    assert train(tmp_path, tmp_path / "run", "--config.train.embedder_init=random") == 2
    assert f"{tmp_path / 'manifest.json'}: no manifest" in capsys.readouterr().err


def test_a_config_file_that_does_not_load_is_named(tiny_records_dir, tmp_path, capsys):
    broken = tmp_path / "mine.py"
    broken.write_text("def get_config(:\n")
    assert train(tiny_records_dir, tmp_path / "run", config=str(broken)) == 2
    assert f"{broken}: cannot be loaded (SyntaxError" in capsys.readouterr().err
    assert train(tiny_records_dir, tmp_path / "run", config=E_TINY.replace(":tiny", ":huge")) == 2
    assert "unknown base config 'huge'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_embedder_config_takes_the_size_of_its_base():
    from v2f_jax import config_lib

    tiny = config_lib.load_config(TINY)
    e = config_lib.load_config(E_TINY)
    assert e.model.to_dict() == tiny.model.to_dict() and e.data.to_dict() == tiny.data.to_dict()
    assert (e.train.task, e.optim.lr, e.optim.b1) == ("embedder", 1e-3, 0.9)


def test_a_workdir_that_is_a_file_is_refused_and_kept(tiny_records_dir, tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine\n")
    assert train(tiny_records_dir, path, "--config.train.embedder_init=random") == 2
    assert f"{path}: exists and is not a directory" in capsys.readouterr().err
    assert path.read_text() == "mine\n"


# --- one run per workdir ------------------------------------------------------------------------

_HOLD = """
import sys, time
from v2f_jax.training import workdir
lock = workdir.Lock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holder_frees_it(
    tiny_records_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        before = snapshot(run)
        assert train(tiny_records_dir, run, "--config.train.embedder_init=random") == 2
        err = capsys.readouterr().err
        assert f"is in use by another `v2f train` (pid {holder.pid} on host " in err
        assert socket.gethostname() in err
        assert snapshot(run) == before  # no config.json, nothing of the second run
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with workdir.Lock(run):  # the kernel dropped the dead holder's lock
        pass


# --- resuming -----------------------------------------------------------------------------------


def test_a_resumed_run_refuses_changes_that_do_not_fit_its_checkpoints(
    tiny_records_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    assert train(tiny_records_dir, run, *SHORT, "--config.train.steps=2", config=E_TINY) == 0
    trained = snapshot(run)
    capsys.readouterr()

    overrides = ["--config.model.embed_dim=32", "--config.optim.lr=0.01"]
    assert train(tiny_records_dir, run, *SHORT, "--config.train.steps=4", *overrides,
                 config=E_TINY) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "model.embed_dim: 16 -> 32" in err and "optim.lr: 0.001 -> 0.01" in err
    assert str(run / "config.json") in err
    assert snapshot(run) == trained  # config.json, checkpoint and logs untouched

    # How long it trains and how often it logs may change: allowed, and recorded.
    assert train(tiny_records_dir, run, *SHORT, "--config.train.steps=3", config=E_TINY) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["steps"] == 3 and config["model"]["embed_dim"] == 16
    (change,) = [json.loads(x) for x in (run / workdir.CHANGES).read_text().splitlines()]
    assert change["step"] == 2 and change["changes"] == {"train.steps": [2, 3]}
    _, state = checkpointing.restore_for_inference(run)
    assert int(state.step) == 3


# --- a disk that refuses writes -----------------------------------------------------------------


# Runs the rest of argv under a file-size limit: a write past it fails with EFBIG, as a write to
# a full disk fails with ENOSPC (the signal that would kill the writer instead is ignored).
_LIMITED = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


@pytest.mark.slow
def test_a_disk_that_refuses_writes_is_one_message_and_the_last_checkpoint_is_kept(
    tiny_records_dir, tmp_path
):
    run = tmp_path / "run"
    cmd = ["-m", "v2f_jax.cli", "train", "--config", E_TINY,
           "--records", tiny_records_dir, "--workdir", str(run), *SHORT]  # fmt: skip
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1")

    def run_cmd(*extra, limit=None):
        prefix = [sys.executable] if limit is None else [sys.executable, "-c", _LIMITED, limit]
        return subprocess.run([*prefix, *cmd, *extra], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    first = run_cmd("--config.train.steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    # The checkpoint's data file is ~200 KB: the file-size limit stands in for a full disk.
    full = run_cmd("--config.train.steps=4", limit="32000")
    assert full.returncode == 4, full.stderr[-3000:]
    assert "Traceback" not in full.stderr and "ERROR" not in full.stderr, full.stderr
    (message,) = [x for x in full.stderr.splitlines() if x.startswith("v2f train:")]
    assert f"could not write to {run}: File too large" in message
    assert "the last complete checkpoint (step 2) is kept" in message
    _, state = checkpointing.restore_for_inference(run)
    assert int(state.step) == 2

    again = run_cmd("--config.train.steps=4")
    assert again.returncode == 0, again.stderr[-3000:]
    _, state = checkpointing.restore_for_inference(run)
    assert int(state.step) == 4
