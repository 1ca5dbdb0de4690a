"""Shared fixtures and the two tiers. The in-process suite runs on the CPU with four fake devices,
on any machine (a GPU host included), so multi-device code is tested everywhere the same way.

`python -m pytest` is the quick tier: tests marked `slow` (end-to-end runs, and the costlier
variants of quick tests: bfloat16, the paper's architecture, a second feed) or `multiprocess`
(several local JAX processes) are deselected. `python -m pytest --full` runs everything (what CI
runs). Every test process and the processes they start share one persistent
XLA compilation cache, so a program compiled by one test loads in the next.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

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
# One persistent compilation cache for the whole session, the `v2f` processes the tests start
# included (`train.compilation_cache="auto"` takes it from the environment): a step another test
# compiled loads in a fraction of its compile time. Removed at exit.
_CACHE = tempfile.mkdtemp(prefix="v2f-tests-xla-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE

import jax  # noqa: E402 - after the XLA flags above
import pytest  # noqa: E402

LONG_MARKERS = ("slow", "multiprocess")

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


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        help=f"run every test, the {' and '.join(LONG_MARKERS)} ones too (what CI runs)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full") or config.getoption("-m"):
        return  # --full, or the user chose by marker: run what was asked
    quick, long = [], []
    for item in items:
        (long if any(item.get_closest_marker(m) for m in LONG_MARKERS) else quick).append(item)
    if long:
        config.hook.pytest_deselected(items=long)
        items[:] = quick


def pytest_report_header(config):
    if config.getoption("--full") or config.getoption("-m"):
        return "tier: full"
    return f"tier: quick ({', '.join(LONG_MARKERS)} tests deselected; --full runs them)"
