"""The `v2f` command's malloc settings: set once by re-executing, and the step stops faulting."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from v2f_jax import host_memory

pytestmark = pytest.mark.skipif(not host_memory.should_reexec({}), reason="Linux with glibc only")
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in host_memory.SETTINGS and k != host_memory.OPT_OUT
}


def _run(script_path, env):
    out = subprocess.run(
        [sys.executable, str(script_path)], env=env, capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def _script(tmp_path, body=""):
    path = tmp_path / "script.py"
    path.write_text(
        textwrap.dedent(
            """
            import json, os, sys
            from v2f_jax import host_memory
            print(json.dumps({"pid": os.getpid()}), flush=True)
            host_memory.reexec_with_memory_reuse(sys.argv)
            print(json.dumps({"pid": os.getpid(), **host_memory.settings_in_effect()}))
            """
        )
        + textwrap.dedent(body)
    )
    return path


def test_reexec_sets_the_settings_once_in_the_same_process(tmp_path):
    lines = _run(_script(tmp_path), CLEAN_ENV)
    # Printed once before the exec, then once after it (no second exec), same process id.
    assert [line["pid"] for line in lines] == [lines[0]["pid"]] * 3
    assert {k: v for k, v in lines[-1].items() if k != "pid"} == host_memory.SETTINGS


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({host_memory.OPT_OUT: "1"}, {}),
        ({"MALLOC_ARENA_MAX": "4"}, {"MALLOC_ARENA_MAX": "4"}),  # the user's choice stands
    ],
)
def test_opt_out_or_own_settings_leave_the_environment_alone(tmp_path, extra, expected):
    lines = _run(_script(tmp_path), {**CLEAN_ENV, **extra})
    assert len(lines) == 2 and lines[0]["pid"] == lines[1]["pid"]
    settings = {k: v for k, v in lines[1].items() if k != "pid" and v is not None}
    assert settings == expected


STEP_FAULTS = """
import resource
from v2f_jax import bench, config_lib
config = bench.apply_step_overrides(
    config_lib.load_config("configs/tiny.py"), batch_size=64, dtype="float32"
)
runner = bench.StepRunner(config, frames=300, num_ids=16)
runner.run(5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
runner.run(6)
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def test_the_training_step_stops_page_faulting_its_temporaries(tmp_path):
    """glibc's default maps the step's temporaries afresh every step (a page fault per 4 KiB:
    ~390k over these 6 steps); under the settings the steps reuse them (measured 0 to 65k: the
    heap still grows now and then)."""
    script = _script(tmp_path, STEP_FAULTS)
    default = _run(script, {**CLEAN_ENV, host_memory.OPT_OUT: "1"})[-1]["faults"]
    reused = _run(script, CLEAN_ENV)[-1]["faults"]
    assert default > 50_000  # six steps' temporaries, > 200 MB
    assert reused < default / 4
