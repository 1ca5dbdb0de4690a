"""The reader's compact batches made into the networks' inputs, on the device, inside the step.

The reader sends what is stored (float16 log-mels, uint8 faces) and a few per-sample integers;
the work per element (repeating short utterances, masking, flipping, normalising, casting) runs
here, in the jitted step, where it costs the accelerator microseconds and the host nothing.

Wire batch (host -> device), B rows per host:
  voice        float16 `[B, L_max, 64]`: rows `0 .. voice_frames_i - 1` are the crop's first
               frames, the rest zeros
  voice_len    int32 `[B]`: L, this batch's crop length (the same for every row)
  voice_frames int32 `[B]`: frames read from the utterance, `min(T_i, L)`; a shorter utterance
               is repeated cyclically up to L, as the reference tiles it
  voice_id     int32 `[B]`
  face         uint8 `[B, 64, 64, 3]`, as stored
  face_flip    bool `[B]`: mirror this face left-right
  face_id      int32 `[B]`

Model batch (what the step's losses read): `voice` float32 `[B, L_max, 64]` (the crop, zeros
after L), `voice_len`, `voice_id`, `face` float32 `[B, 64, 64, 3]` in [-1, 1], `face_id`.
A batch already in model form passes through unchanged (tests and benchmarks build those).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

Batch = dict

# Every uint8 value's float, as the reference computes it, `(x - 127.5) / 127.5` in float32: a
# lookup, because XLA turns a division by a constant into a product with its (inexact) inverse.
_PIXEL_VALUES = (np.arange(256, dtype=np.float32) - np.float32(127.5)) / np.float32(127.5)


def voices(voice: jnp.ndarray, voice_len: jnp.ndarray, voice_frames: jnp.ndarray) -> jnp.ndarray:
    """float16 wire voices -> float32 `[B, L_max, 64]`: frame j < L is read frame
    `j mod voice_frames`; frames from L on are zero."""
    j = jnp.arange(voice.shape[1], dtype=jnp.int32)[None, :]
    source = j % jnp.maximum(voice_frames, 1)[:, None]
    tiled = jnp.take_along_axis(voice, source[:, :, None], axis=1)
    inside = (j < voice_len[:, None])[:, :, None]
    return jnp.where(inside, tiled, 0).astype(jnp.float32)


def faces(face: jnp.ndarray, flip: jnp.ndarray | None) -> jnp.ndarray:
    """uint8 `[B, 64, 64, 3]` -> float32 in [-1, 1] as the reference, `(x - 127.5) / 127.5`,
    mirrored left-right where `flip`."""
    if flip is not None:
        face = jnp.where(flip[:, None, None, None], face[:, :, ::-1, :], face)
    return jnp.asarray(_PIXEL_VALUES)[face]


def to_model_inputs(batch: Batch) -> Batch:
    """A wire batch (or a model batch, unchanged) as the model batch; see the module docstring."""
    out = {k: v for k, v in batch.items() if k not in ("voice_frames", "face_flip")}
    if "voice_frames" in batch:
        out["voice"] = voices(batch["voice"], batch["voice_len"], batch["voice_frames"])
    if batch["face"].dtype == jnp.uint8:
        out["face"] = faces(batch["face"], batch.get("face_flip"))
    return out
