"""A training split held in memory, each batch gathered from it by index.

For corpora that fit in memory the records need not be read and parsed again every epoch:
`reader.make_train_index_iterator` gives, per batch, which records, where each crop starts and
which faces flip, in the same order as the streaming reader, and a gather turns them into the
streaming reader's wire batch (device_inputs.py), bit for bit.

Device memory (`data.on_device`, `ResidentData`): VoxCeleb1's training log-mels are ~12-16 GB as
float16, its faces ~2 GB; an H200 has 141 GB. The host's per-step work drops to the indices;
one gather runs on the devices. Replicated, not sharded: every device holds the whole split, so
each device gathers its rows from its own copy and no batch crosses devices (a sharded split
would need an all-to-all per step). It costs one copy of the split per device, which is what
bounds this mode. One host only: the hosts of a pod hold different files, which a replicated
array cannot express.

Host memory (`data.in_host_memory`, `gather_on_host`): each host holds its own shards in RAM and
gathers its batches with numpy on the prefetch thread, so pods work as with streaming; a sample
costs a memory copy of its crop instead of a record's read, checksum, batching and parse.
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


def gather_on_host(arrays: dict[str, np.ndarray], index: Batch, rows: int) -> Batch:
    """The wire batch of one index batch, from `reader.load_train_arrays`'s host arrays.

    Args:
      arrays: this host's split (`mel` float16 `[sum T_i, 64]`, `voice_offset`, `face`).
      index: one batch of `reader.make_train_index_iterator` (arrays of `[B]`).
      rows: L_max, the longest crop length.

    Returns:
      The streaming reader's batch: `voice` float16 `[B, rows, 64]` (rows past each crop's
      frames zero), `voice_len`, `voice_frames`, `voice_id`, `face` uint8 `[B, 64, 64, 3]`,
      `face_flip`, `face_id`.
    """
    mel = arrays["mel"]
    first = arrays["voice_offset"][index["voice_index"]] + index["voice_start"]
    frames = index["voice_frames"]
    voice = np.empty([len(first), rows, mel.shape[1]], mel.dtype)
    for row, (start, count) in enumerate(zip(first.tolist(), frames.tolist())):
        voice[row, :count] = mel[start : start + count]  # one contiguous copy per crop
        voice[row, count:] = 0
    return {
        "voice": voice,
        "voice_len": np.asarray(index["voice_len"], np.int32),
        "voice_frames": np.asarray(frames, np.int32),
        "voice_id": np.asarray(index["voice_id"], np.int32),
        "face": arrays["face"][index["face_index"]],
        "face_flip": np.asarray(index["face_flip"], bool),
        "face_id": np.asarray(index["face_id"], np.int32),
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
