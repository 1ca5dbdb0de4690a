"""Hostile inputs, round 3: `v2f train`. Every config value checked against its rule before
anything is written, records and workdirs that are not what they claim, a resumed run pointed at
other records, a hand-edited config.json, and signals at any moment: each is exit 2 naming the
key or file (or, for a signal, a clean stop with a checkpoint where one is due), never a
traceback, a hang or a run on garbage.

Refusals run the CLI in process (nothing is compiled before them); runs that must train use E
pretraining at the size of configs/tiny.py, the quickest to compile; runs that are signalled or
killed are subprocesses, in the full tier.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import hostile
import pytest
import runs

from v2f_jax import checkpointing, cli, config_checks, config_lib, train
from v2f_jax.configs import wen2019
from v2f_jax.input_pipeline import manifest as manifest_lib
from v2f_jax.training import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.py")
E_TINY = str(REPO / "configs" / "embedder.py") + ":tiny"
SHORT = ["--config.train.batch_size=8", "--config.train.log_every=1", "--config.checkpoint.every=1"]
RANDOM_E = "--config.train.embedder_init=random"


def train_cli(records, workdir, *overrides, config=TINY) -> int:
    return cli.main(
        ["train", "--config", str(config), "--records", str(records), "--workdir", str(workdir)]
        + list(overrides)
    )


def snapshot(path: pathlib.Path) -> dict[str, bytes]:
    """The workdir's files but its (empty, released) lock file and the compilation cache."""
    return {
        k: v
        for k, v in hostile.snapshot(path).items()
        if k != workdir_lib.LOCK and not k.startswith("xla_cache")
    }


# --- every config value ---------------------------------------------------------------------


def _leaves(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_every_setting_of_wen2019_has_a_rule():
    settings = set(_leaves(wen2019.get_config().to_dict()))
    assert settings == set(config_checks.RULES), (
        f"settings without a rule: {sorted(settings - set(config_checks.RULES))}; rules of no "
        f"setting: {sorted(set(config_checks.RULES) - settings)}"
    )
    for key, default in _leaves(wen2019.get_config().to_dict()).items():
        assert config_checks.RULES[key](default) is None, (key, default)


@pytest.mark.parametrize("wrong", [[None], "a string", 3.5, -1, True, {"nested": 1}])
def test_every_setting_refuses_values_of_the_wrong_type_naming_its_key(wrong):
    """Not one setting takes whatever it is given: each wrong value is named by its key."""
    base = config_lib.load_config(TINY).to_dict()
    for key, default in _leaves(base).items():
        if type(wrong) is type(default) or (isinstance(default, float) and wrong == -1):
            if not (isinstance(default, float) and wrong == -1 and key == "optim.lr"):
                continue  # a value of the right type: its range is tested below
        if isinstance(wrong, str) and isinstance(default, str):
            continue
        if wrong == 3.5 and isinstance(default, float):
            continue
        tree = json.loads(json.dumps(base))
        *parents, leaf = key.split(".")
        node = tree
        for name in parents:
            node = node[name]
        node[leaf] = wrong
        found = config_checks.value_problems(tree)
        assert found and found[0].startswith(f"config.{key}"), (key, wrong, found)


@pytest.mark.parametrize(
    "override,named",
    [
        ("--config.train.batch_size=0", "config.train.batch_size=0: must be an integer >= 1"),
        ("--config.train.batch_size=-8", "config.train.batch_size=-8"),
        (
            "--config.train.batch_size=4096",
            "config.train.batch_size=4096 is larger than the training split",
        ),  # fmt: skip
        ("--config.train.steps=0", "config.train.steps=0: must be an integer >= 1"),
        ("--config.train.steps=-5", "config.train.steps=-5"),
        ("--config.data.crop_lengths=()", "config.data.crop_lengths=(): must be a tuple"),
        ("--config.data.crop_lengths=(0,96)", "config.data.crop_lengths=(0, 96)"),
        ("--config.data.crop_lengths=(1000000000,)", "<= 10000"),
        ("--config.optim.lr=nan", "config key 'optim.lr' wants float, got 'nan'"),
        ("--config.optim.lr=1e999", "config.optim.lr=inf: must be a finite number > 0"),
        ("--config.optim.lr=0", "config.optim.lr=0.0"),
        ("--config.optim.b2=1.0", "config.optim.b2=1.0: must be a number in [0, 1)"),
        ("--config.train.log_every=0", "config.train.log_every=0: must be an integer >= 1"),
        ("--config.train.steps_per_call=0", "config.train.steps_per_call=0"),
        ("--config.train.profile_steps=(10,5)", "config.train.profile_steps=(10, 5): must be"),
        ("--config.train.profile_steps=(3,)", "config.train.profile_steps=(3,)"),
        ("--config.train.profile_steps=(0,2)", "config.train.profile_steps=(0, 2)"),
        ("--config.model.matmul_precision=fastest", "config.model.matmul_precision='fastest'"),
        ("--config.model.upsample=cubic", "config.model.upsample='cubic'"),
        ("--config.data.shuffle_buffer=0", "config.data.shuffle_buffer=0"),
        ("--config.data.prefetch_to_device=-1", "config.data.prefetch_to_device=-1"),
        ("--config.data.service_address=nowhere", "config.data.service_address='nowhere'"),
        ("--config.data.face_flip=maybe", "config key 'data.face_flip' wants true/false"),
        ("--config.seed=-1", "config.seed=-1"),
        ("--config.train.sample_every=-1", "config.train.sample_every=-1"),
        ("--config.train.ema_decay=1.0", "config.train.ema_decay=1.0"),
        ("--config.checkpoint.every=0", "config.checkpoint.every=0"),
        ("--config.checkpoint.keep=0", "config.checkpoint.keep=0"),
        ("--config.eval.face_embedder_steps=0", "config.eval.face_embedder_steps=0"),
        ("--config.train.on_nonfinite=ignore", "config.train.on_nonfinite='ignore'"),
    ],
)
def test_a_bad_value_exits_2_naming_the_key_before_anything_is_written(
    tiny_records_dir, tmp_path, capsys, override, named
):
    run = tmp_path / "run"
    assert train_cli(tiny_records_dir, run, override, RANDOM_E) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert not run.exists()


@pytest.mark.parametrize(
    "line,named",
    [
        ("cfg.train.batchsize = 64", "config.train.batchsize: not a v2f setting"),
        ("cfg.train.batch_size = '128'", "config.train.batch_size='128': must be an integer"),
        ("cfg.optim.lr = float('nan')", "config.optim.lr=nan: must be a finite number > 0"),
        ("cfg.train = 5", "config.train"),
    ],
)
def test_a_config_file_of_wrong_types_or_unknown_keys_is_named(
    tiny_records_dir, tmp_path, capsys, line, named
):
    mine = tmp_path / "mine.py"  # settings as a plain dict: no type checks of ml_collections'
    mine.write_text(
        "import ml_collections\nfrom v2f_jax.configs import tiny\n\n\ndef get_config():\n"
        "    cfg = ml_collections.ConfigDict(tiny.get_config().to_dict(), type_safe=False)\n"
        f"    {line}\n    return cfg\n"
    )
    run = tmp_path / "run"
    assert train_cli(tiny_records_dir, run, RANDOM_E, config=mine) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert not run.exists()


# --- records --------------------------------------------------------------------------------


def _spoil_manifest(records: pathlib.Path, spoil) -> pathlib.Path:
    manifest = json.loads((records / "manifest.json").read_text())
    spoil(manifest)
    (records / "manifest.json").write_text(json.dumps(manifest))
    return records / "manifest.json"


def _first_shard(m):
    return m["splits"]["train"]["voices_shards"][0]


MANIFEST_SPOILS = {
    "a count as text": (
        lambda m: m["splits"]["train"].update(num_identities="7"),
        "splits.train.num_identities: must be an integer >= 0, got '7'",
    ),
    "a shard outside the folder": (
        lambda m: _first_shard(m).update(file="../../etc/passwd"),
        "splits.train.voices_shards[0].file: must be a file name inside the records directory",
    ),
    "records that do not add up": (
        lambda m: _first_shard(m).update(records=_first_shard(m)["records"] + 5),
        "splits.train.num_voices: ",
    ),
    "an image size as text": (lambda m: m.update(image_size="64"), "image_size: must be"),
    "a label out of range": (
        lambda m: next(iter(m["splits"]["train"]["identities"].values())).update(label=99),
        "label: must be an integer in [0, 7)",
    ),
    "splits as a list": (lambda m: m["splits"].update(test=[]), "splits.test: must be an object"),
    "another schema": (lambda m: m.update(schema_version=2), "record schema 2"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_SPOILS))
def test_a_hand_edited_manifest_is_named(tiny_records_dir, tmp_path, capsys, case):
    spoil, message = MANIFEST_SPOILS[case]
    records = tmp_path / "records"
    shutil.copytree(tiny_records_dir, records)
    path = _spoil_manifest(records, spoil)
    run = tmp_path / "run"
    assert train_cli(records, run, RANDOM_E) == 2
    err = capsys.readouterr().err
    assert f"{path}: " in err and message in err and "Traceback" not in err, err
    assert not run.exists()


def test_a_truncated_manifest_is_named(tiny_records_dir, tmp_path, capsys):
    records = tmp_path / "records"
    shutil.copytree(tiny_records_dir, records)
    raw = (records / "manifest.json").read_bytes()
    (records / "manifest.json").write_bytes(raw[: len(raw) // 2])
    assert train_cli(records, tmp_path / "run", RANDOM_E) == 2
    err = capsys.readouterr().err
    assert f"{records / 'manifest.json'}: not valid JSON" in err and "Traceback" not in err


def test_a_shard_flipped_mid_file_stops_training_naming_it(tiny_records_dir, tmp_path, capsys):
    """Same size, other bytes: the TFRecord checksums catch it on the first read; the run
    stops with exit 2 naming the shard, never a step on garbage."""
    records = tmp_path / "records"
    shutil.copytree(tiny_records_dir, records)
    for shard in records.glob("voices-train-*.tfrecord"):
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    run = tmp_path / "run"
    rc = train_cli(records, run, *SHORT, "--config.train.steps=2", config=E_TINY)
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err and f"{records}/voices-train-" in err, err[-3000:]
    assert "corrupt or truncated TFRecord shard" in err
    assert not runs.saved_steps(run) if (run / "checkpoints").exists() else True


# --- workdirs -------------------------------------------------------------------------------


def test_a_read_only_workdir_is_named(tiny_records_dir, tmp_path, capsys, monkeypatch):
    """What a read-only filesystem answers (EROFS); root ignores permission bits, so the
    answer is stood in for here (a real read-only mount: the slow test below)."""
    run = tmp_path / "run"
    run.mkdir()
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(run)):
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert train_cli(tiny_records_dir, run, *SHORT, RANDOM_E) == 2
    err = capsys.readouterr().err
    assert f"{run}: cannot write here (Read-only file system)" in err and "Traceback" not in err
    assert os.listdir(run) == []


def _can_mount() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("unshare") or not _can_mount(), reason="no mount namespace")
def test_a_really_read_only_workdir_is_named(tiny_records_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    script = (
        f"mount --bind {run} {run} && mount -o remount,ro,bind {run} {run} && exec "
        f"{sys.executable} -m v2f_jax.cli train --config {TINY} --records {tiny_records_dir} "
        f"--workdir {run} {' '.join(SHORT)} {RANDOM_E}"
    )
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{run}: cannot write here (Read-only file system)" in result.stderr
    assert "Traceback" not in result.stderr and os.listdir(run) == []


@pytest.fixture(scope="module")
def saved_config(tiny_records_dir) -> str:
    """The config.json a run of E_TINY + SHORT on the tiny records writes."""
    config = config_lib.load_config(E_TINY, SHORT)
    resolved = train.resolve_config(config, manifest_lib.Records.open(tiny_records_dir))
    return json.dumps(config_lib.to_dict(resolved), indent=2, sort_keys=True)


def _fake_run(saved_config: str, run: pathlib.Path) -> dict:
    """A workdir that looks like one with a checkpoint at step 2 (the resume checks come first,
    so the checkpoint's contents are never read) and the config.json the run wrote."""
    (run / "checkpoints" / "2").mkdir(parents=True)
    (run / "config.json").write_text(saved_config)
    return json.loads(saved_config)


def _edited(saved: dict, dotted: str, value) -> str:
    tree = json.loads(json.dumps(saved))
    *parents, leaf = dotted.split(".")
    node = tree
    for name in parents:
        node = node[name]
    node[leaf] = value
    return json.dumps(tree)


@pytest.mark.parametrize(
    "edit,named",
    [
        (lambda saved: "{'train': ", "config.json: unreadable"),
        (lambda saved: "[1, 2, 3]", "config.json: not a v2f config"),
        (lambda saved: json.dumps(saved | {"train": 5}), "config.train=5: must be a section"),
        (lambda saved: _edited(saved, "train.batch_size", "8"), "config.train.batch_size='8'"),
        (lambda saved: _edited(saved, "train.steps_per_call", 0), "config.train.steps_per_call=0"),
        (lambda saved: _edited(saved, "optim.lr", float("nan")), "config.optim.lr=nan"),
        (
            lambda saved: _edited(saved, "model.voice_channels", "big"),
            "config.model.voice_channels",
        ),
    ],
)
def test_a_config_json_edited_by_hand_is_named_before_a_resume(
    tiny_records_dir, saved_config, tmp_path, capsys, edit, named
):
    run = tmp_path / "run"
    saved = _fake_run(saved_config, run)
    (run / "config.json").write_text(edit(saved))
    before = snapshot(run)
    assert train_cli(tiny_records_dir, run, *SHORT, config=E_TINY) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.json'}: " in err and named in err and "Traceback" not in err, err
    assert snapshot(run) == before


def _other_records(tiny_records_dir, root: pathlib.Path) -> pathlib.Path:
    """Another corpus of the same shape as the tiny records: other manifest bytes."""
    other = root / "other"
    shutil.copytree(tiny_records_dir, other)
    _spoil_manifest(other, lambda m: m.update(tool_version="another corpus"))
    return other


def test_a_resume_on_other_records_is_refused_before_anything_is_written(
    tiny_records_dir, saved_config, tmp_path, capsys
):
    run = tmp_path / "run"
    _fake_run(saved_config, run)
    opened = manifest_lib.Records.open(tiny_records_dir)
    (run / workdir_lib.RECORDS).write_text(json.dumps(workdir_lib.records_identity(opened)))
    other = _other_records(tiny_records_dir, tmp_path)
    before = snapshot(run)
    assert train_cli(other, run, *SHORT, config=E_TINY) == 2
    err = capsys.readouterr().err
    assert f"{run} was trained on the records in {opened.root}" in err, err
    assert f"not on those in {other}" in err and str(run / workdir_lib.RECORDS) in err
    assert "Traceback" not in err and snapshot(run) == before


@pytest.mark.slow
def test_a_resumed_run_on_other_records_is_refused(tiny_records_dir, tmp_path, capsys):
    """The workdir records which records it trained on (records.json); a resumed run pointed
    at others is refused, the same records at another path resume."""
    run = tmp_path / "run"
    assert train_cli(tiny_records_dir, run, *SHORT, "--config.train.steps=1", config=E_TINY) == 0
    capsys.readouterr()
    recorded = json.loads((run / workdir_lib.RECORDS).read_text())
    opened = manifest_lib.Records.open(tiny_records_dir)
    assert recorded["manifest_sha256"] == opened.manifest_sha256
    assert recorded["dir"] == opened.root

    other = _other_records(tiny_records_dir, tmp_path)
    before = snapshot(run)
    assert train_cli(other, run, *SHORT, "--config.train.steps=2", config=E_TINY) == 2
    err = capsys.readouterr().err
    assert f"{run} was trained on the records in {opened.root}" in err, err
    assert f"not on those in {other}" in err and "Traceback" not in err
    assert snapshot(run) == before

    moved = tmp_path / "moved"  # the same records, moved
    shutil.copytree(tiny_records_dir, moved)
    assert train_cli(moved, run, *SHORT, "--config.train.steps=1", config=E_TINY) == 0


# --- signals --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return dict(os.environ, JAX_NUM_CPU_DEVICES="1", TF_CPP_MIN_LOG_LEVEL="2")


def _train_cmd(records, run, *overrides):
    return [sys.executable, "-m", "v2f_jax.cli", "train", "--config", E_TINY, "--records",
            str(records), "--workdir", str(run), *SHORT, *overrides]  # fmt: skip


def _start(cmd, env, log):
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _wait_for_text(log: pathlib.Path, proc, text: str, timeout=300):
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"exited {proc.returncode} first:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s"
        time.sleep(0.02)


def _finish(proc, log, timeout=300) -> str:
    proc.wait(timeout=timeout)
    text = log.read_text()
    assert "Traceback" not in text and "Segmentation" not in text, text[-3000:]
    assert "Event loop is closed" not in text, text[-3000:]
    return text


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment,sig,times",
    [
        ("startup", signal.SIGINT, 1),  # reading records, building the state
        ("first compile", signal.SIGINT, 1),
        ("first compile", signal.SIGTERM, 2),  # twice in a row
        ("mid-training", signal.SIGINT, 1),
        ("mid-training", signal.SIGTERM, 2),
    ],
)
def test_a_signal_at_any_moment_stops_cleanly_and_the_run_resumes(
    tiny_records_dir, tmp_path, env, moment, sig, times
):
    run = tmp_path / "run"
    log = tmp_path / "log"
    proc = _start(_train_cmd(tiny_records_dir, run, "--config.train.steps=400"), env, log)
    try:
        if moment == "startup":
            runs.wait_for(run / "config.json", proc)
        elif moment == "first compile":
            _wait_for_text(log, proc, "steps of 400")  # logged as the loop starts
        else:
            runs.wait_for(run / "checkpoints" / "3", proc)
        for _ in range(times):
            proc.send_signal(sig)
            time.sleep(0.05)
        text = _finish(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text[-3000:]
    name = signal.Signals(sig).name
    assert f"v2f train: stopped ({name}) at step" in text, text[-3000:]
    if moment == "mid-training":
        assert f"stopped by {name} at step" in text and "checkpoint saved" in text
    steps = runs.saved_steps(run)
    rerun = subprocess.run(_train_cmd(tiny_records_dir, run, "--config.train.steps=8"), env=env,
                           cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    if steps and steps[-1] < 8:
        assert f"resuming from {run / 'checkpoints'} at step {steps[-1]}" in rerun.stderr
    assert runs.saved_steps(run)[-1] == max(8, steps[-1] if steps else 0)


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_resumes_from_the_last_complete_one(
    tiny_records_dir, tmp_path, env
):
    run = tmp_path / "run"
    log = tmp_path / "log"
    proc = _start(_train_cmd(tiny_records_dir, run, "--config.train.steps=400"), env, log)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            ckpts = run / "checkpoints"
            if ckpts.is_dir() and any("tmp" in p.name for p in ckpts.iterdir() if p.name[0] != "."):
                if runs.saved_steps(run):  # one complete already, one being written
                    proc.kill()
                    break
            time.sleep(0.002)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    complete = runs.saved_steps(run)
    assert complete
    more = f"--config.train.steps={complete[-1] + 2}"
    rerun = subprocess.run(_train_cmd(tiny_records_dir, run, more), env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Traceback" not in rerun.stderr
    assert runs.saved_steps(run)[-1] == complete[-1] + 2


@pytest.mark.slow
def test_no_stray_traceback_at_exit_after_a_checkpoint_fallback(tiny_records_dir, tmp_path, env):
    """The newest checkpoint damaged: the run falls back to the one before, with a warning,
    and nothing else ("Event loop is closed", a thread's traceback) reaches the terminal."""
    run = tmp_path / "run"
    first = subprocess.run(_train_cmd(tiny_records_dir, run, "--config.train.steps=3"), env=env,
                           cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    newest = run / "checkpoints" / str(runs.saved_steps(run)[-1])
    biggest = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    again = subprocess.run(_train_cmd(tiny_records_dir, run, "--config.train.steps=5"), env=env,
                           cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    for stray in ("Traceback", "Event loop is closed", "Exception ignored", "Task was destroyed"):
        assert stray not in again.stderr, again.stderr[-3000:]
    assert runs.saved_steps(run)[-1] == 5
    _, state = checkpointing.restore_for_inference(run)
    assert int(state.step) == 5
