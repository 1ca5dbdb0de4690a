"""samples.BackgroundGrids: the training loop hands over a sample grid and goes on."""

import threading
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from v2f_jax.training import samples


class HeldWriter:
    """A SampleWriter stand-in that draws only once `release` is set."""

    def __init__(self, fail: bool = False):
        self.release = threading.Event()
        self.seen = []
        self.fail = fail

    def write(self, path, embedder, generator):
        assert self.release.wait(60)
        if self.fail:
            raise OSError(f"{path}: disk full")
        self.seen.append((path, embedder, generator))
        return np.full([4, 4, 3], len(self.seen), np.uint8)


def _state(ema=None):
    return types.SimpleNamespace(
        embedder={"w": jnp.arange(4.0)}, generator={"g": jnp.ones(3)}, generator_ema=ema
    )


def test_submit_returns_while_the_grid_is_drawn_from_the_state_of_then(tmp_path):
    writer = HeldWriter()
    grids = samples.BackgroundGrids(writer, tmp_path)
    assert grids.submit(10, _state()) == []  # returned with the drawing held
    state = _state()
    assert grids.submit(20, state) == []  # queued behind step 10's: not yet fetched
    assert grids.finished() == []
    # The next step donates (and overwrites) the state's buffers before step 20's grid is drawn.
    step = jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x + 100, t), donate_argnums=0)
    state.embedder = step(state.embedder)
    writer.release.set()
    done = grids.close()
    assert [s for s, _ in done] == [10, 20] and done[1][1].shape == (4, 4, 3)
    path, embedder, _ = writer.seen[1]
    assert path == str(tmp_path / "step_000020.png")
    np.testing.assert_array_equal(embedder["w"], np.arange(4.0))
    assert isinstance(embedder["w"], np.ndarray)  # fetched to the host for drawing


def test_the_average_generator_is_drawn_when_the_run_keeps_one(tmp_path):
    writer = HeldWriter()
    writer.release.set()
    grids = samples.BackgroundGrids(writer, tmp_path)
    grids.submit(5, _state(ema={"g": jnp.full(3, 7.0)}))
    grids.close()
    np.testing.assert_array_equal(writer.seen[0][2]["g"], np.full(3, 7.0))


def test_more_grids_than_max_pending_wait_for_the_oldest(tmp_path):
    writer = HeldWriter()
    grids = samples.BackgroundGrids(writer, tmp_path, max_pending=2)
    assert grids.submit(1, _state()) == [] and grids.submit(2, _state()) == []
    threading.Timer(0.2, writer.release.set).start()
    assert [s for s, _ in grids.submit(3, _state())] == [1]
    assert [s for s, _ in grids.close()] == [2, 3]


def test_a_failed_grid_raises_on_the_loops_thread(tmp_path):
    writer = HeldWriter(fail=True)
    writer.release.set()
    grids = samples.BackgroundGrids(writer, tmp_path)
    grids.submit(7, _state())
    with pytest.raises(OSError, match="step_000007.png: disk full"):
        grids.close()
