"""The model, the training step and `v2f bench`'s step mode run where TensorFlow is not installed
(the accelerator images ship JAX, flax, optax and orbax, and no TensorFlow)."""

import json
import os
import subprocess
import sys
import textwrap

# Run in a fresh interpreter in which `import tensorflow` (and TF's satellites) fails as it does
# where the package is absent.
_BLOCK_TF = textwrap.dedent(
    """
    import sys
    for name in ("tensorflow", "tensorflow_datasets", "tensorboard"):
        sys.modules[name] = None
    """
)


def _run(code: str, repo_dir) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-c", _BLOCK_TF + textwrap.dedent(code)],
        cwd=repo_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bench_step_mode_runs_without_tensorflow(repo_dir):
    proc = _run(
        """
        from v2f_jax import cli
        code = cli.main(["bench", "--config", "configs/tiny.py", "--batch", "8", "--frames", "96",
                         "--steps", "2", "--warmup", "1", "--no-peak"])
        assert "tensorflow" not in {m.split(".")[0] for m in sys.modules if sys.modules[m]}
        sys.exit(code)
        """,
        repo_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["losses_finite"] and result["samples_per_s"] > 0


def test_model_state_and_step_import_without_tensorflow(repo_dir):
    proc = _run(
        """
        import importlib
        for name in ("models", "ops.conv", "state", "train_step", "parallel", "losses",
                     "checkpointing", "train", "bench.step", "input_pipeline.manifest"):
            importlib.import_module("v2f_jax." + name)
        loaded = {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
        assert "tensorflow" not in loaded, "tensorflow was imported"
        """,
        repo_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
