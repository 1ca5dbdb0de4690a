"""Loss curves of short runs on learnable synthetic batches (bfloat16 against float32)."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from v2f_jax import models, parallel, train_step
from v2f_jax import state as state_lib
from v2f_jax.training import compilation


def learnable_batches(
    n_batches: int, batch_size: int, frames: int, num_ids: int, n_mels: int = 64, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Batches with something to learn: a face's colour and a voice's spectral tilt say the
    identity. For loss-tracking runs (bf16 vs fp32), not for quality."""
    rng = np.random.default_rng(seed)
    tint = np.linspace(-0.8, 0.8, num_ids)
    tilt = rng.normal(size=(num_ids, n_mels))
    out = []
    for _ in range(n_batches):
        face_id = rng.integers(0, num_ids, batch_size).astype(np.int32)
        voice_id = rng.integers(0, num_ids, batch_size).astype(np.int32)
        face = tint[face_id][:, None, None, None] + 0.1 * rng.normal(size=(batch_size, 64, 64, 3))
        face[..., 1] *= -1
        voice = tilt[voice_id][:, None, :] + rng.normal(size=(batch_size, frames, n_mels))
        out.append(
            {
                "voice": voice.astype(np.float32),
                "voice_id": voice_id,
                "face": np.clip(face, -1, 1).astype(np.float32),
                "face_id": face_id,
            }
        )
    return out


def loss_history(
    config: ml_collections.ConfigDict,
    steps: int,
    num_ids: int = 8,
    n_batches: int = 16,
    data_seed: int = 0,
) -> dict[str, list[float]]:
    """Every step's metrics over `steps` steps from the config's seed (initial parameters and
    noise) on `learnable_batches(seed=data_seed)`."""
    frames = max(config.data.crop_lengths)
    nets = models.Networks(config.model, num_ids)
    dp = parallel.DataParallel(
        lambda axis_name: train_step.make_gan_step(config, nets, axis_name),
        "jit",
        devices=jax.devices()[:1],
    )
    state = dp.put_state(
        jax.device_get(compilation.run_once(lambda: state_lib.create_gan_state(config, nets)))
    )
    batches = [
        dp.put_batch(b)
        for b in learnable_batches(
            n_batches, config.train.batch_size, frames, num_ids, config.data.n_mels, data_seed
        )
    ]
    history: dict[str, list[float]] = {}
    for i in range(steps):
        state, metrics = dp(state, batches[i % n_batches])
        for k, v in dp.get_metrics(metrics).items():
            history.setdefault(k, []).append(v)
    return history
