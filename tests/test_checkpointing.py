"""v2f_jax.checkpointing: exact round trips, keep-N, damaged steps, a SIGKILL during a save."""

import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from v2f_jax import checkpointing, config_lib
from v2f_jax import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
# A failed read of a damaged step inside orbax leaves a callback for its closed asyncio loop,
# reported whenever it is collected (harmless).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _config(task="gan"):
    config = config_lib.load_config(REPO / "configs" / "tiny.py", ["--config.model.num_ids=5"])
    config.train.task = task
    return config


def _random_state(config, seed):
    """A state of the config's shapes with random values (no network initialisation to run)."""
    rng = np.random.default_rng(seed)

    def fill(x):
        if np.issubdtype(x.dtype, np.floating):
            return rng.standard_normal(x.shape).astype(x.dtype)
        return rng.integers(0, 1000, x.shape).astype(x.dtype)

    return jax.tree_util.tree_map(fill, checkpointing.state_template(config))


def _equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y) for x, y in zip(la, lb)
    )


def test_round_trip_is_bitwise_and_keeps_the_newest_n(tmp_path):
    config = _config()
    ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", keep=2)
    states = {s: _random_state(config, s) for s in (1, 2, 3)}
    for s, st in states.items():
        ckpt.save(s, st, {"next_batch": s * 10})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    step, restored, meta = ckpt.restore_latest(checkpointing.state_template(config))
    ckpt.close()
    assert step == 3 and meta["next_batch"] == 30
    assert isinstance(restored, state_lib.GanState)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(states[3])
    assert _equal(restored, states[3])


def _largest_file(directory):
    files = [p for p in pathlib.Path(directory).rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _truncate(step_dir):
    path = _largest_file(step_dir / "state")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(step_dir):
    path = _largest_file(step_dir / "state")
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _delete_meta(step_dir):
    for p in (step_dir / "meta").iterdir():
        p.unlink()


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes, _delete_meta])
def test_damaged_latest_step_falls_back_to_the_previous_with_a_warning(tmp_path, caplog, damage):
    config = _config()
    template = checkpointing.state_template(config)
    ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", keep=3)
    first, second = _random_state(config, 1), _random_state(config, 2)
    ckpt.save(100, first, {"next_batch": 100})
    ckpt.save(200, second, {"next_batch": 200})
    ckpt.close()
    damage(tmp_path / "checkpoints" / "200")

    ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", keep=3)
    with caplog.at_level(logging.WARNING, logger="v2f.checkpointing"):
        step, restored, meta = ckpt.restore_latest(template)
    assert step == 100 and meta["next_batch"] == 100 and _equal(restored, first)
    assert any("step 200" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
    # Set aside (kept for a person to look at), so the resumed run can write step 200 again.
    assert ckpt.all_steps() == [100]
    assert len(list((tmp_path / "checkpoints.damaged").iterdir())) == 1
    ckpt.save(200, second, {"next_batch": 200})
    assert ckpt.all_steps() == [100, 200]
    ckpt.close()


def test_every_step_damaged_is_an_error_not_a_fresh_start(tmp_path):
    config = _config()
    ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints")
    ckpt.save(5, _random_state(config, 0))
    ckpt.close()
    _truncate(tmp_path / "checkpoints" / "5")
    ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints")
    with pytest.raises(checkpointing.CheckpointError, match="none of the checkpoints"):
        ckpt.restore_latest(checkpointing.state_template(config))
    ckpt.close()


@pytest.mark.parametrize("read_only", [False, True])
def test_a_checkpoint_of_another_structure_is_refused_and_left_in_place(tmp_path, read_only):
    """What another version of v2f wrote (here: a GAN state read as an embedder's) is intact:
    a clear error, and the step stays where it is for the version that can read it."""
    ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints")
    ckpt.save(5, _random_state(_config(), 0), {"next_batch": 5})
    ckpt.close()
    ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", read_only=read_only)
    other = checkpointing.state_template(_config("embedder"))
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="another structure"):
        ckpt.restore_latest(other)
    assert ckpt.all_steps() == [5] and not (tmp_path / "checkpoints.damaged").exists()
    step, restored, _ = ckpt.restore_latest(checkpointing.state_template(_config()))
    assert step == 5 and _equal(restored, _random_state(_config(), 0))
    ckpt.close()


_KILLED_SAVER = textwrap.dedent(
    """
    import os, signal, sys, time
    import numpy as np
    from v2f_jax import checkpointing
    ckpt = checkpointing.Checkpointer(sys.argv[1], keep=3)
    small = {"w": np.arange(10, dtype=np.float32)}
    ckpt.save(1, small, {"next_batch": 1})
    ckpt.wait()
    big = {"w": np.ones(48 << 20, np.float32)}  # 192 MiB: still being written when killed
    ckpt.save(2, big, {"next_batch": 2})
    # Killed once orbax has started writing step 2 (after the background digest).
    while not any(n.startswith("2.") for n in os.listdir(sys.argv[1])):
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_sigkill_during_an_async_save_leaves_the_previous_step_complete(tmp_path):
    directory = tmp_path / "checkpoints"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_SAVER, str(directory)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith("2")]
    assert leftovers and all("tmp" in name for name in leftovers), leftovers  # killed mid-write

    template = {"w": jax.ShapeDtypeStruct((10,), np.float32)}
    ckpt = checkpointing.Checkpointer(directory)
    assert ckpt.all_steps() == [1]
    step, restored, meta = ckpt.restore_latest(template)
    assert step == 1 and meta["next_batch"] == 1
    np.testing.assert_array_equal(restored["w"], np.arange(10, dtype=np.float32))
    ckpt.save(2, restored, {"next_batch": 2})  # the resumed run writes step 2 again
    ckpt.close()
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith("_")) == ["1", "2"]


def test_restore_for_inference_reads_the_workdir_without_touching_it(tmp_path):
    for task in ("gan", "embedder"):
        workdir = tmp_path / task
        config = _config(task)
        checkpointing.write_config(workdir.mkdir() or workdir, config)
        saved = _random_state(config, 7)
        ckpt = checkpointing.Checkpointer(workdir / "checkpoints")
        ckpt.save(3, saved, {"next_batch": 3})
        ckpt.close()
        in_flight = workdir / "checkpoints" / "4.orbax-checkpoint-tmp-1"  # a live run's save
        in_flight.mkdir()

        loaded_config, state = checkpointing.restore_for_inference(workdir)
        assert loaded_config.model.num_ids == 5 and loaded_config.train.task == task
        expected = state_lib.EmbedderState if task == "embedder" else state_lib.GanState
        assert isinstance(state, expected) and _equal(state, saved)
        assert in_flight.is_dir()

    with pytest.raises(checkpointing.CheckpointError, match="config.json"):
        checkpointing.restore_for_inference(tmp_path / "nowhere")
