"""Where a figure came from, and what the machine can do: the host, the backend, a matmul peak."""

from __future__ import annotations

import os
import platform

import jax
import jax.numpy as jnp
import numpy as np

from v2f_jax import models
from v2f_jax.bench import timing
from v2f_jax.training import host_memory


def machine() -> dict:
    """Where the numbers came from."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc": host_memory.settings_in_effect(),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# A matmul large enough to reach each platform's peak (a GPU needs far more work than a CPU).
PEAK_MATMUL_SIZE = {"cpu": 2048, "gpu": 8192, "tpu": 8192}


def matmul_peak(dtype: str = "float32", size: int | None = None, repeats: int = 5) -> dict:
    """GFLOP/s of one large `[size, size] @ [size, size]` in the compute dtype, best of `repeats`.

    bfloat16 is measured as the step computes it: bf16 inputs, float32 accumulation. `size`
    defaults to `PEAK_MATMUL_SIZE` of the default backend.
    """
    size = size or PEAK_MATMUL_SIZE.get(jax.default_backend(), 4096)
    dt = models.compute_dtype(dtype)
    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), dt)
    f = jax.jit(lambda a: jax.lax.dot(a, a, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a))
    best = min(timing.time_calls(lambda: f(a), repeats))
    return {"gflops_per_s": 2 * size**3 / best / 1e9, "size": size, "dtype": dtype}
