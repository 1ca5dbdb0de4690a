"""Latency of E + G forward, voice features to faces (`v2f bench --mode generate`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from v2f_jax import models
from v2f_jax import state as state_lib
from v2f_jax.bench import probes, step, timing
from v2f_jax.training import compilation


def bench_generate(
    config: ml_collections.ConfigDict,
    *,
    frames: int = 800,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 10,
    num_ids: int = step.DEFAULT_NUM_IDS,
) -> dict:
    """Latency of E + G forward (voice features -> faces) at each batch size."""
    nets = models.Networks(config.model, num_ids)
    state = compilation.run_once(lambda: state_lib.create_gan_state(config, nets))

    def generate(embedder, generator, voice):
        raw = nets.embedder.apply(embedder, voice)
        return nets.generator.apply({"params": generator}, models.unit(raw))

    out = {
        "mode": "generate",
        "frames": frames,
        "dtype": config.model.dtype,
        "impl_resolved": nets.convs.impl,
    }
    f = jax.jit(generate)
    for b in batch_sizes:
        voice = jnp.asarray(
            step.synthetic_batch(b, frames, 1, config.data.n_mels)["voice"], jnp.float32
        )
        start = time.perf_counter()
        jax.block_until_ready(f(state.embedder, state.generator, voice))
        compile_s = time.perf_counter() - start
        lat = timing.spread(
            timing.time_calls(
                lambda voice=voice: f(state.embedder, state.generator, voice), repeats
            )
        )
        out[f"batch{b}"] = {
            "latency_s": lat,
            "faces_per_s": b / lat["median"],
            "first_call_s": compile_s,
        }
    out["machine"] = probes.machine()
    return out
