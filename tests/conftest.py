"""Shared fixtures. The in-process suite runs on the CPU with four fake devices, on any machine
(a GPU host included), so multi-device code is tested everywhere the same way."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Subprocesses the tests start (v2f commands, multi-host workers) inherit these.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
# XLA:CPU aborts the process when one of the fake devices reaches a collective 60 s after the
# others (20 s warning + 40 s). On a loaded 2-core machine one device's thread can be starved that
# long; a slow collective is not an error here. Read when the backend starts, so set first.
_FLAGS = "--xla_cpu_collective_call_terminate_timeout_seconds=1800"
if _FLAGS.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAGS}".strip()

import jax  # noqa: E402 - after the XLA flags above
import pytest  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 4)

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO.parent / "shared" / "data" / "voxceleb-examples"
GOLDEN = REPO / "tests" / "data" / "golden"


@pytest.fixture(scope="session")
def examples_dir() -> pathlib.Path:
    """The ten real VoxCeleb1 utterances; tests that need them skip where they are absent."""
    if not EXAMPLES.is_dir():
        pytest.skip(f"real examples not found at {EXAMPLES}")
    return EXAMPLES


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    """One real utterance and the reference front end's features of it (shipped in tests/data)."""
    return GOLDEN


@pytest.fixture(scope="session")
def repo_dir() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_records_dir(tmp_path_factory) -> str:
    """Records of 10 identities (A-E test, F-L train), built once per session (tests/runs.py)."""
    import runs

    return runs.make_records(tmp_path_factory.mktemp("corpus"))
