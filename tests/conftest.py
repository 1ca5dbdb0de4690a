"""Shared fixtures. Four fake CPU devices so multi-device code is tested on any machine."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO.parent / "shared" / "data" / "voxceleb-examples"


@pytest.fixture(scope="session")
def examples_dir() -> pathlib.Path:
    """The ten real VoxCeleb1 utterances; tests that need them skip where they are absent."""
    if not EXAMPLES.is_dir():
        pytest.skip(f"real examples not found at {EXAMPLES}")
    return EXAMPLES


@pytest.fixture(scope="session")
def repo_dir() -> pathlib.Path:
    return REPO
