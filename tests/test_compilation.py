"""The compile counter behind "the step compiles once": an executable compiled, or loaded from
the persistent compilation cache, counts once."""

import jax
import jax.numpy as jnp

from v2f_jax.training import compilation


def test_a_compile_and_a_persistent_cache_load_each_count_once(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    try:
        compilation.use_persistent_cache(str(tmp_path / "cache"), str(tmp_path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        f = lambda x: jnp.sin(x) * 3.0 + jnp.cos(x[::-1])
        x = jnp.arange(1024.0)
        with compilation.CompileCounter() as compiled:
            jax.jit(f)(x).block_until_ready()
        jax.clear_caches()  # a new process, as far as the in-memory caches go
        with compilation.CompileCounter() as loaded:
            jax.jit(f)(x).block_until_ready()
        assert compiled.count == 1 and loaded.count == 1
        assert any((tmp_path / "cache").iterdir())
    finally:
        compilation.use_persistent_cache("" if before is None else before, str(tmp_path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
