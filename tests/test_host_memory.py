"""`V2F_REUSE_HOST_MEMORY=1`: the `v2f` command re-executes once with malloc settings under which
the training step stops page-faulting its temporaries."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from v2f_jax.training import host_memory

pytestmark = pytest.mark.skipif(
    not host_memory.should_reexec({host_memory.OPT_IN: "1"}), reason="Linux with glibc only"
)
CLEAN_ENV = {
    k: v for k, v in os.environ.items() if k not in host_memory.SETTINGS and k != host_memory.OPT_IN
}
OPTED_IN = {**CLEAN_ENV, host_memory.OPT_IN: "1"}


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
            from v2f_jax.training import host_memory
            print(json.dumps({"pid": os.getpid()}), flush=True)
            host_memory.reexec_with_memory_reuse(sys.argv)
            print(json.dumps({"pid": os.getpid(), **host_memory.settings_in_effect()}))
            """
        )
        + textwrap.dedent(body)
    )
    return path


def test_reexec_sets_the_settings_once_in_the_same_process(tmp_path):
    lines = _run(_script(tmp_path), OPTED_IN)
    # Printed once before the exec, then once after it (no second exec), same process id.
    assert [line["pid"] for line in lines] == [lines[0]["pid"]] * 3
    assert {k: v for k, v in lines[-1].items() if k != "pid"} == host_memory.SETTINGS


@pytest.mark.parametrize(
    "env, expected",
    [
        (CLEAN_ENV, {}),  # not asked for
        ({**OPTED_IN, "MALLOC_ARENA_MAX": "4"}, {"MALLOC_ARENA_MAX": "4"}),  # the user's choice
    ],
)
def test_without_opt_in_or_with_own_settings_the_environment_stays(tmp_path, env, expected):
    lines = _run(_script(tmp_path), env)
    assert len(lines) == 2 and lines[0]["pid"] == lines[1]["pid"]
    settings = {k: v for k, v in lines[1].items() if k != "pid" and v is not None}
    assert settings == expected


STEP_FAULTS = """
import resource
from v2f_jax import config_lib
from v2f_jax.bench import step
config = step.apply_step_overrides(
    config_lib.load_config("configs/tiny.py"), batch_size=64, dtype="float32"
)
runner = step.StepRunner(config, frames=300, num_ids=16)
runner.run(5)
faults = []
for _ in range(11):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    runner.run(1)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faults": faults}))
"""


def _median(values):
    return sorted(values)[len(values) // 2]


@pytest.mark.slow
def test_the_training_step_stops_page_faulting_its_temporaries(tmp_path):
    """glibc's default maps the step's temporaries afresh every step: ~75k page faults (one per
    4 KiB) in each of these steps. Under the settings the typical step reuses them and faults
    nothing; the heap still grows now and then (one step in a few here, more often when threads
    interleave differently on a loaded machine), so the median step is what is compared."""
    script = _script(tmp_path, STEP_FAULTS)
    default = _run(script, CLEAN_ENV)[-1]["faults"]
    reused = _run(script, OPTED_IN)[-1]["faults"]
    assert min(default) > 10_000, default  # every step maps its > 40 MB of temporaries afresh
    assert _median(reused) < _median(default) / 4, (reused, default)
