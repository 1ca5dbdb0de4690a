"""The training run's face grid: faces G draws from fixed held-out voices, beside the real faces.

At start the run picks up to `count` identities of the held-out (test) split that have both a
voice and a face, and one utterance and one face of each (the first in shard order: the same
every run and every resume). Every `train.sample_every` steps `WORKDIR/samples/step_NNNNNN.png`
gets two rows: the real faces on top, the generated ones below, one column per identity, captioned
with its name. Voices are embedded whole, as `v2f generate` embeds them. A run that averages G's
weights draws with the average, as its exported model does.

`BackgroundGrids` draws them off the training loop's thread: the loop only dispatches an
on-device copy of E and G (the next step donates the state's buffers) and goes on.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from v2f_jax.inference import generate, images
from v2f_jax.input_pipeline import manifest as manifest_lib

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SampleSet:
    """The fixed voices and faces of the grid.

    Attributes:
      voices: float32 `[T_i, n_mels]` log-mels, one per identity.
      faces: uint8 `[N, 64, 64, 3]` RGB, the same identities in the same order.
      names: identity names.
    """

    voices: list[np.ndarray]
    faces: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def make_sample_set(records: manifest_lib.Records, count: int = 8) -> SampleSet | None:
    """Up to `count` identities of the test split (or, if it has none, the train split) with a
    voice and a face; None if there is no such identity."""
    from v2f_jax.input_pipeline import reader  # imports TensorFlow: only when a grid is made

    for split in ("test", "train"):
        info = records.split(split) if records.has_split(split) else None
        if not info or not info.get("num_identities"):
            continue
        names_by_label = {label: name for name, label in info["label_map"].items()}
        faces, face_labels, _ = reader.load_faces(records, split)
        first_face = {}
        for i, label in enumerate(face_labels.tolist()):
            first_face.setdefault(label, i)
        voice = {}
        for mel, label, _ in reader.make_eval_voices(records, split):
            if label in first_face and label not in voice:
                voice[label] = mel
                if len(voice) == count:
                    break  # a large split is not read to its end
        labels = sorted(voice)
        if labels:
            return SampleSet(
                voices=[voice[lab] for lab in labels],
                faces=faces[[first_face[lab] for lab in labels]],
                names=[names_by_label.get(lab, str(lab)) for lab in labels],
            )
    return None


class SampleWriter:
    """Draws and writes the grid for a run of `config`."""

    def __init__(self, config: ml_collections.ConfigDict, sample_set: SampleSet):
        self.sample_set = sample_set
        self._config = config

    def render(self, embedder, generator) -> np.ndarray:
        """The grid: real faces (top row), G's faces (bottom row).

        Args:
          embedder: E's `{"params", "batch_stats"}` (host arrays).
          generator: G's params.

        Returns:
          uint8 RGB `[H, W, 3]` (`images.contact_sheet` of 2 rows).
        """
        emb = generate.embed_voices(self._config, embedder, self.sample_set.voices)
        fake = generate.generate_faces(self._config, generator, emb)
        n = len(self.sample_set)
        faces = np.concatenate([self.sample_set.faces, images.to_uint8(fake)])
        captions = list(self.sample_set.names) + ["generated"] * n
        return images.contact_sheet(faces, captions, cols=n)

    def write(self, path: str | os.PathLike, embedder, generator) -> np.ndarray:
        """Renders the grid, writes it to `path` (a PNG) and returns it."""
        grid = self.render(embedder, generator)
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        images.write_png(path, grid)
        return grid


def _local_copy(tree: Any) -> Any:
    """A copy of `tree`'s arrays on this process's first device holding each, dispatched now.

    Replicated arrays (also those spanning other hosts) are read through their local shard, so
    the copy involves no other process. The copy is queued on the device before any later step,
    so it reads the values of now even if that step donates the buffers.
    """

    def copy(x):
        if isinstance(x, jax.Array):
            x = jnp.copy(x.addressable_data(0))
            x.copy_to_host_async()
        return x

    return jax.tree_util.tree_map(copy, tree)


class BackgroundGrids:
    """Sample grids drawn on one worker thread, so the training loop never waits for one.

    The loop calls `submit` at a sample step, `finished` whenever it likes (for the grids to put
    in TensorBoard from its own thread) and `close` at the end. At most `max_pending` grids are
    in flight; a further `submit` waits for the oldest (each holds a copy of E and G).
    """

    def __init__(self, writer: SampleWriter, directory: str | os.PathLike, max_pending: int = 2):
        self._writer = writer
        self._directory = os.fspath(directory)
        self._max_pending = max_pending
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sample-grid")
        self._pending: collections.deque = collections.deque()

    def path(self, step: int) -> str:
        return os.path.join(self._directory, f"step_{step:06d}.png")

    def submit(self, step: int, state) -> list[tuple[int, np.ndarray]]:
        """Starts the grid of `state` (a device `GanState`) after `step`.

        Returns the grids that had to be waited for to keep within `max_pending` (usually none).
        """
        generator = getattr(state, "generator_ema", None)
        params = _local_copy((state.embedder, state.generator if generator is None else generator))
        self._pending.append((step, self._pool.submit(self._draw, step, params)))
        done = []
        while len(self._pending) > self._max_pending:
            done.append(self._pop())
        return done

    def _draw(self, step: int, params) -> np.ndarray:
        embedder, generator = jax.device_get(params)
        return self._writer.write(self.path(step), embedder, generator)

    def _pop(self) -> tuple[int, np.ndarray]:
        step, future = self._pending.popleft()
        return step, future.result()  # a failed grid raises here, on the loop's thread

    def finished(self) -> list[tuple[int, np.ndarray]]:
        """`(step, grid)` of the grids done since the last call, oldest first; never waits."""
        done = []
        while self._pending and self._pending[0][1].done():
            done.append(self._pop())
        return done

    def close(self) -> list[tuple[int, np.ndarray]]:
        """Waits for every grid in flight; returns them as `finished` does."""
        done = []
        try:
            while self._pending:
                done.append(self._pop())
        finally:
            self.shutdown()
        return done

    def shutdown(self) -> None:
        """Stops the worker after the grid it is drawing (a run ending on an error); idempotent."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
