"""`v2f train`: outputs, E pretraining then GAN, SIGKILL/SIGTERM and exact resume, non-finite
losses.

Runs are real subprocesses of the CLI over tiny records (4 fake CPU devices, a shared persistent
compilation cache so only the first run compiles); the non-finite tests call the library with a
batch stream that poisons one batch.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest
import runs  # tests/ is on sys.path under pytest

from v2f_jax import checkpointing, config_lib, train
from v2f_jax.input_pipeline import manifest
from v2f_jax.training import coarse_face, nonfinite

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 20
COMMON = [
    "--config.train.batch_size=8",
    f"--config.train.steps={STEPS}",
    "--config.train.log_every=5",
    "--config.checkpoint.every=5",
    "--config.train.sample_every=10",
]


@pytest.fixture(scope="session")
def records_dir(tiny_records_dir):
    return tiny_records_dir


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES="4",
        TF_CPP_MIN_LOG_LEVEL="2",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )


def train_cmd(records_dir, workdir, *overrides, config="configs/tiny.py"):
    return [
        sys.executable,
        "-m",
        "v2f_jax.cli",
        "train",
        "--config",
        str(REPO / config),
        "--records",
        str(records_dir),
        "--workdir",
        str(workdir),
        *overrides,
    ]


def run_cmd(cmd, env, log: pathlib.Path, timeout=300) -> tuple[int, str]:
    with open(log, "a") as f:
        rc = subprocess.run(cmd, env=env, cwd=REPO, stdout=f, stderr=f, timeout=timeout).returncode
    return rc, log.read_text()


def start_cmd(cmd, env, log: pathlib.Path) -> subprocess.Popen:
    f = open(log, "a")
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=f, stderr=f)


@pytest.fixture(scope="module")
def embedder_run(records_dir, env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("embedder") / "run"
    cmd = train_cmd(
        records_dir,
        workdir,
        *runs.TINY_E,
        "--config.train.batch_size=8",
        "--config.train.steps=10",
        "--config.train.log_every=5",
        "--config.checkpoint.every=5",
        config="configs/embedder.py",
    )
    rc, log = run_cmd(cmd, env, workdir.parent / "log.txt")
    assert rc == 0, log[-3000:]
    return workdir, log


def gan_cmd(records_dir, workdir, embedder_workdir, env):
    # The module's shared compilation cache (not each workdir's own): only the reference run
    # compiles the GAN; the interrupted runs load it.
    return train_cmd(
        records_dir,
        workdir,
        *COMMON,
        f"--config.train.embedder_init={embedder_workdir}",
        f"--config.train.compilation_cache={env['JAX_COMPILATION_CACHE_DIR']}",
        # G's coarse face from a map fitted at the start: a resumed run must keep it exactly.
        "--config.model.coarse_cell=8",
    )


@pytest.fixture(scope="module")
def reference_run(records_dir, env, embedder_run, tmp_path_factory):
    """The uninterrupted GAN run every interrupted one must equal."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    cmd = gan_cmd(records_dir, workdir, embedder_run[0], env)
    rc, log = run_cmd(cmd, env, workdir.parent / "log")
    assert rc == 0, log[-3000:]
    return workdir, log


def test_a_run_writes_config_metrics_tensorboard_samples_and_progress(reference_run):
    workdir, log = reference_run
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["num_ids"] == 7 and config["train"]["steps"] == STEPS
    lines = [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(5, STEPS + 1, 5))
    for key in ("train/d_loss", "train/c_loss", "train/g_adv", "train/g_id"):
        assert all(np.isfinite(m[key]) for m in lines), key
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    grid = cv2.imread(str(workdir / "samples" / f"step_{STEPS:06d}.png"))
    assert (workdir / "samples" / "step_000010.png").exists() and grid.shape[0] > 2 * 64
    progress = [s for s in log.splitlines() if f"/{STEPS} (" in s]
    assert len(progress) == STEPS // 5
    for word in ("steps/s", "samples/s", "ETA", "d_loss", "c_loss", "g_adv", "g_id"):
        assert word in progress[-1], (word, progress[-1])
    # keep=3 (the config's default)
    assert runs.saved_steps(workdir) == [STEPS - 10, STEPS - 5, STEPS]


def test_sample_grids_show_the_state_of_their_step(reference_run, records_dir):
    """Grids are drawn off the loop's thread while later steps reuse (donate) the state's
    buffers: each must still be the grid of its own step's checkpoint, and not of a later one."""
    from v2f_jax.training import samples

    workdir, _ = reference_run
    config = checkpointing.read_config(workdir)
    writer = samples.SampleWriter(
        config, samples.make_sample_set(manifest.Records.open(records_dir))
    )

    def grid_of(step):
        _, state = checkpointing.restore_for_inference(workdir, step)
        generator = state.generator if state.generator_ema is None else state.generator_ema
        return writer.render(state.embedder, generator).astype(int)

    def differs(step, grid):
        written = cv2.imread(str(workdir / "samples" / f"step_{step:06d}.png"))[..., ::-1]
        return np.mean(written != grid)

    assert differs(10, grid_of(10)) == differs(20, grid_of(20)) == 0
    assert differs(10, grid_of(15)) > 0.01  # one checkpoint later, the grid is another


def test_embedder_pretraining_then_gan_starts_from_its_e(embedder_run, reference_run, records_dir):
    e_workdir, e_log = embedder_run
    assert "e_loss" in e_log
    e_config, e_state = checkpointing.restore_for_inference(e_workdir)
    assert e_config.train.task == "embedder" and int(e_state.step) == 10
    gan_config, gan = checkpointing.restore_for_inference(reference_run[0])
    assert int(gan.step) == STEPS
    # E is frozen in the GAN (the reference's setting): the GAN ends with the pretrained E.
    runs.assert_bitwise_equal(gan.embedder, e_state.embedder)
    # G's coarse map was fitted with that E on the records, and training left it as fitted.
    kernel, bias = coarse_face.fit(gan_config, e_state.embedder, manifest.Records.open(records_dir))
    np.testing.assert_array_equal(gan.generator["coarse"]["kernel"], kernel)
    np.testing.assert_array_equal(gan.generator["coarse"]["bias"], bias)
    assert "coarse face: a linear map from 7 identities' voices" in reference_run[1]


@pytest.mark.slow
def test_sigkill_mid_run_then_the_same_command_resumes_to_bitwise_equal_params(
    records_dir, env, embedder_run, reference_run, tmp_path
):
    workdir = tmp_path / "run"
    cmd = gan_cmd(records_dir, workdir, embedder_run[0], env)
    proc = start_cmd(cmd, env, tmp_path / "log")
    runs.wait_for(workdir / "checkpoints" / "10", proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    steps = runs.saved_steps(workdir)
    assert steps and steps[-1] < STEPS, steps

    rc, log = run_cmd(cmd, env, tmp_path / "log")
    assert rc == 0, log[-3000:]
    assert "resuming" in log
    runs.assert_bitwise_equal(runs.final_state(workdir), runs.final_state(reference_run[0]))
    # The log has each step once: lines a killed run wrote after its checkpoint were redone.
    logged = [json.loads(s)["step"] for s in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(5, STEPS + 1, 5))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_zero_and_resumes_bitwise(
    records_dir, env, embedder_run, reference_run, tmp_path
):
    workdir = tmp_path / "run"
    cmd = gan_cmd(records_dir, workdir, embedder_run[0], env)
    proc = start_cmd(cmd, env, tmp_path / "log")
    runs.wait_for(workdir / "checkpoints" / "5", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    log = (tmp_path / "log").read_text()
    assert "stopped by SIGTERM at step" in log
    stopped_at = int(log.split("stopped by SIGTERM at step ")[1].split()[0])
    assert 5 <= stopped_at < STEPS
    assert runs.saved_steps(workdir)[-1] == stopped_at  # saved where it stopped, off the schedule

    rc, log = run_cmd(cmd, env, tmp_path / "log")
    assert rc == 0, log[-3000:]
    runs.assert_bitwise_equal(runs.final_state(workdir), runs.final_state(reference_run[0]))


# --- non-finite losses (in process, a poisoned batch stream) ------------------------------------


def _config(path, *overrides):
    return config_lib.load_config(REPO / path, list(overrides))


def _poisoned(config, records_dir, poison: dict[int, str], drop: tuple[int, ...] = ()):
    """The reader's stream with batch `i` made NaN in `poison[i]`; batches in `drop` left out."""
    make = train.default_batches(config, manifest.Records.open(records_dir))

    def batches(start_batch):
        assert start_batch == 0
        for i, batch in enumerate(make(0)):
            if i in drop:
                continue
            if i in poison:
                # A NaN face can only be a float one (the model form; uint8 is the wire form).
                dtype = np.float32 if batch[poison[i]].dtype == np.uint8 else None
                batch = dict(batch, **{poison[i]: np.full_like(batch[poison[i]], np.nan, dtype)})
            yield batch

    return batches


@pytest.mark.slow
def test_nonfinite_loss_stops_the_run_naming_the_step_and_the_loss(records_dir, tmp_path):
    config = _config(
        "configs/tiny.py", *COMMON, "--config.train.steps=12", "--config.train.sample_every=0"
    )
    with pytest.raises(nonfinite.NonFiniteLossError) as err:
        train.train(
            config, tmp_path, records_dir, make_batches=_poisoned(config, records_dir, {6: "face"})
        )
    assert err.value.step == 7  # batch 6 is step 7
    assert {"d_real", "d_loss", "c_loss"} <= set(err.value.names)
    assert "step 7" in str(err.value) and "d_loss=nan" in str(err.value)
    # Nothing after the bad step was saved; what was saved is finite.
    assert runs.saved_steps(tmp_path) == [5]
    state = runs.final_state(tmp_path)
    assert all(
        np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state) if x.dtype.kind == "f"
    )


def test_skip_leaves_no_trace_of_the_bad_update_and_has_a_limit(records_dir, tmp_path):
    overrides = [
        *runs.TINY_E,
        "--config.train.batch_size=8",
        "--config.train.log_every=4",
        "--config.checkpoint.every=100",
        "--config.train.on_nonfinite=skip",
        "--config.train.max_nonfinite_skips=1",
    ]
    # E's step draws no random numbers, so skipping batch 3 must equal never seeing it.
    skipped = _config("configs/embedder.py", *overrides, "--config.train.steps=8")
    result = train.train(
        skipped,
        tmp_path / "skip",
        records_dir,
        make_batches=_poisoned(skipped, records_dir, {3: "voice"}),
    )
    assert result["nonfinite_skips"] == 1 and np.isfinite(result["train/e_loss"])
    clean = _config("configs/embedder.py", *overrides, "--config.train.steps=7")
    train.train(
        clean,
        tmp_path / "clean",
        records_dir,
        make_batches=_poisoned(clean, records_dir, {}, drop=(3,)),
    )
    a, b = runs.final_state(tmp_path / "skip"), runs.final_state(tmp_path / "clean")
    assert int(a.step) == 7
    runs.assert_bitwise_equal(a, b)

    with pytest.raises(nonfinite.NonFiniteLossError, match="max_nonfinite_skips") as err:
        train.train(
            skipped,
            tmp_path / "limit",
            records_dir,
            make_batches=_poisoned(skipped, records_dir, {1: "voice", 5: "voice"}),
        )
    assert err.value.step == 6 and err.value.names[:2] == ["e_face_loss", "e_loss"]


@pytest.mark.slow
def test_several_steps_per_call_and_every_feed_give_the_same_parameters(records_dir, tmp_path):
    """K=4 steps per dispatch (lax.scan), with a remainder run one step at a time, log and
    checkpoint intervals that K does not divide: bitwise the parameters of K=1 on CPU. So does
    the split held in device memory (`data.on_device`), fed on the loop's thread, and the split
    held in host memory (`data.in_host_memory`, memory-mapped from `data.arrays_dir`). A pmap
    run saves the checkpoints a jit run saves, with the same parameters to float32 rounding."""
    common = [
        "--config.train.batch_size=8",
        "--config.train.steps=10",
        "--config.train.log_every=3",
        "--config.checkpoint.every=5",
        "--config.train.sample_every=0",
        "--config.train.embedder_init=",
    ]
    runs_ = {
        # The K=4 run also writes a profile of steps 5-8 (tracing changes no number).
        "k1": ["--config.train.steps_per_call=1"],
        "k4": [
            "--config.train.steps_per_call=4",
            "--config.train.profile_steps=(5, 8)",
            "--config.train.compilation_cache=workdir",  # not the session's shared cache
        ],
        "resident": [
            "--config.train.steps_per_call=4",
            "--config.data.on_device=True",
            "--config.data.prefetch_to_device=0",
        ],
        "host_memory": [
            "--config.train.steps_per_call=4",
            "--config.data.in_host_memory=True",
            f"--config.data.arrays_dir={tmp_path / 'arrays'}",
        ],
        "pmap": ["--config.train.parallel=pmap"],
    }
    for name, overrides in runs_.items():
        config = _config("configs/tiny.py", *common, *overrides)
        result = train.train(config, tmp_path / name, records_dir)
        assert result["step"] == 10 and np.isfinite(result["train/g_loss"])
    runs.assert_bitwise_equal(
        runs.final_state(tmp_path / "k1"), runs.final_state(tmp_path / "resident")
    )
    runs.assert_bitwise_equal(
        runs.final_state(tmp_path / "k1"), runs.final_state(tmp_path / "host_memory")
    )
    assert runs.saved_steps(tmp_path / "pmap") == runs.saved_steps(tmp_path / "k1") == [5, 10]
    for a, b in zip(
        jax.tree_util.tree_leaves(runs.final_state(tmp_path / "pmap")),
        jax.tree_util.tree_leaves(runs.final_state(tmp_path / "k1")),
    ):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert runs.saved_steps(tmp_path / "k4") == [8, 10]  # after the calls that crossed 5, 10
    runs.assert_bitwise_equal(runs.final_state(tmp_path / "k1"), runs.final_state(tmp_path / "k4"))
    logged = [json.loads(line)["step"] for line in open(tmp_path / "k4" / "metrics.jsonl")]
    assert logged == sorted(logged) and logged[-1] == 10
    assert list((tmp_path / "k4" / "profile").rglob("*.xplane.pb"))  # TensorBoard's profile
    # The step's executable is in the workdir's compilation cache for a restart to load.
    assert any((tmp_path / "k4" / "xla_cache").iterdir())
