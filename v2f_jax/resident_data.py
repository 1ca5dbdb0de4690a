"""A training split held in device memory (`config.data.on_device`): batches gathered there.

For corpora that fit in accelerator memory (VoxCeleb1's training log-mels are ~12-16 GB as
float16, its faces ~2 GB; an H200 has 141 GB) the host's per-step work drops to the batch's
indices: `reader.make_train_index_iterator` gives, per batch, which records, where each crop
starts and which faces flip, in the same order as the streaming reader; `ResidentData` turns them
into the streaming reader's wire batch (device_inputs.py) with one gather on the devices.

Replicated, not sharded: every device holds the whole split, so each device gathers its rows
from its own copy and no batch crosses devices (a sharded split would need an all-to-all per
step). It costs one copy of the split per device, which is what bounds this mode. One host only:
the hosts of a pod hold different files, which a replicated array cannot express; pods stream.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from v2f_jax import config_lib, parallel

Batch = dict[str, Any]


def _gather(data: Batch, index: Batch, rows: int) -> Batch:
    """Wire batch rows from the resident split; index arrays are `[..., B]` (any leading axes)."""
    j = jnp.arange(rows, dtype=jnp.int32)
    first = data["voice_offset"][index["voice_index"]] + index["voice_start"]
    frame = first[..., None] + j
    read = j < index["voice_frames"][..., None]
    # Rows past an utterance's last read frame are zeros, as the streaming reader sends them.
    voice = data["mel"][jnp.where(read, frame, 0)]
    voice = jnp.where(read[..., None], voice, jnp.zeros((), voice.dtype))
    return {
        "voice": voice,
        "voice_len": index["voice_len"],
        "voice_frames": index["voice_frames"],
        "voice_id": index["voice_id"],
        "face": data["face"][index["face_index"]],
        "face_flip": index["face_flip"],
        "face_id": index["face_id"],
    }


class ResidentData:
    """The split of `reader.load_train_arrays` on every device of `dp`.

    Args:
      arrays: `load_train_arrays`'s host arrays.
      dp: the run's `parallel.DataParallel` (jit mode, one process).
      rows: L_max, the longest crop length.

    Raises:
      ConfigError: pmap mode, or several processes.
    """

    def __init__(self, arrays: dict[str, np.ndarray], dp: parallel.DataParallel, rows: int):
        if dp.mode != "jit":
            raise config_lib.ConfigError(
                "config.data.on_device needs config.train.parallel='jit' (pmap is not supported)"
            )
        if jax.process_count() > 1:
            raise config_lib.ConfigError(
                "config.data.on_device holds one host's records; with several processes, stream "
                "them (config.data.on_device=False)"
            )
        self.nbytes = sum(arrays[k].nbytes for k in ("mel", "voice_offset", "face"))
        self._data = jax.device_put(
            {
                "mel": arrays["mel"],
                "voice_offset": arrays["voice_offset"].astype(np.int32),
                "face": arrays["face"],
            },
            dp.replicated,
        )
        gather = lambda data, index: _gather(data, index, rows)
        self._one = jax.jit(gather, out_shardings=dp.batch_sharding)
        self._stacked = jax.jit(gather, out_shardings=dp.stacked_sharding)
        self._dp = dp

    def __call__(self, index_batches: list[dict[str, np.ndarray]]) -> Batch:
        """One wire batch on the devices (`[B, ...]`), or K stacked (`[K, B, ...]`) for K > 1."""
        if len(index_batches) == 1:
            return self._one(self._data, self._dp.put_batch(index_batches[0]))
        return self._stacked(self._data, self._dp.put_batches(index_batches))
