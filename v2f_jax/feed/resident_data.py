"""A training split held in memory, each batch gathered from it by index.

For corpora that fit in memory the records need not be read and parsed again every epoch:
`reader.make_train_index_iterator` gives, per batch, which records, where each crop starts and
which faces flip, in the same order as the streaming reader, and a gather turns them into the
streaming reader's wire batch (device_inputs.py), bit for bit.

Device memory (`data.on_device`, `ResidentData`): VoxCeleb1's training log-mels are ~12-16 GB as
float16, its faces ~2 GB; an H200 has 141 GB. The host's per-step work drops to the indices;
one gather runs on the devices. Each host loads its own shards (as streaming reads them) and
puts a copy on each of its devices: the global array is `[devices, ...]`, device d's row its
host's split, padded to the largest host's sizes. A `shard_map`ped gather then runs on every
device alone, from its rows of the batch's indices, which index its own host's split: no batch
crosses devices or hosts (a split sharded over a host's devices would need an all-to-all per
step). It costs one copy of the host's split per device, which is what bounds this mode.

Host memory (`data.in_host_memory`, `gather_on_host`): each host holds its own shards in RAM and
gathers its batches with numpy on the prefetch thread, so pods work as with streaming; a sample
costs a memory copy of its crop instead of a record's read, checksum, batching and parse.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from v2f_jax import config_lib, parallel
from v2f_jax.parallel import AXIS

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
    """This host's split (`reader.load_train_arrays` with its process index) on each of its
    devices, and the on-device gather of wire batches from host-local indices.

    Args:
      arrays: this host's split, as `load_train_arrays(..., process_index, process_count)`
        (or `train_arrays.host_split`) gives it.
      dp: the run's `parallel.DataParallel` (jit mode), on any number of processes.
      rows: L_max, the longest crop length.

    Raises:
      ConfigError: pmap mode.
    """

    def __init__(self, arrays: dict[str, np.ndarray], dp: parallel.DataParallel, rows: int):
        if dp.mode != "jit":
            raise config_lib.ConfigError(
                "config.data.on_device needs config.train.parallel='jit' (pmap is not supported)"
            )
        split = {
            "mel": arrays["mel"],
            "voice_offset": np.asarray(arrays["voice_offset"], np.int32),
            "face": arrays["face"],
        }
        self.nbytes = sum(v.nbytes for v in split.values())
        self._data = _per_device_copies(_pad_to_every_host(split), dp)
        gather = lambda data, index: _gather({k: v[0] for k, v in data.items()}, index, rows)
        mapped = lambda index_spec: jax.shard_map(
            gather, mesh=dp.mesh, in_specs=(P(AXIS), index_spec), out_specs=index_spec
        )
        self._one = jax.jit(mapped(P(AXIS)))
        self._stacked = jax.jit(mapped(P(None, AXIS)))
        self._dp = dp

    def __call__(self, index_batches: list[dict[str, np.ndarray]]) -> Batch:
        """One wire batch on the devices (`[B, ...]`), or K stacked (`[K, B, ...]`) for K > 1;
        `index_batches` are this host's (`[B / process_count]` rows each)."""
        if len(index_batches) == 1:
            return self._one(self._data, self._dp.put_batch(index_batches[0]))
        return self._stacked(self._data, self._dp.put_batches(index_batches))


def _pad_to_every_host(split: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The host's arrays with zero rows appended up to the largest host's lengths, so that all
    hosts' copies form one global array. Indices never reach the padding."""
    lengths = np.array([len(v) for v in split.values()], np.int64)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        lengths = np.max(multihost_utils.process_allgather(lengths), axis=0)
    padded = {}
    for (name, value), length in zip(split.items(), lengths.tolist()):
        extra = [(0, length - len(value))] + [(0, 0)] * (value.ndim - 1)
        padded[name] = np.pad(value, extra) if length > len(value) else value
    return padded


def _per_device_copies(split: dict[str, np.ndarray], dp: parallel.DataParallel) -> Batch:
    """`[devices, *shape]` global arrays sharded over the mesh's data axis; each of this
    host's devices holds the host's split as its row."""
    sharding = NamedSharding(dp.mesh, P(AXIS))
    out = {}
    for name, value in split.items():
        shards = [jax.device_put(value[None], device) for device in dp.local_devices]
        out[name] = jax.make_array_from_single_device_arrays(
            (dp.num_devices, *value.shape), sharding, shards
        )
    return out
