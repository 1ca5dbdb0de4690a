"""Hostile inputs, round 3: what every command writes. One helper (`v2f_jax.files`) writes every
file whole or not at all and names the file when the disk refuses; a temporary left by a killed
process is cleared by the next write; a command stopped by Ctrl-C or SIGTERM leaves nothing half
written, says so in one line, and its rerun resumes.
"""

import ast
import os
import pathlib
import signal
import subprocess
import sys
import time

import hostile
import pytest

from v2f_jax import files
from v2f_jax.input_pipeline import manifest as manifest_lib
from v2f_jax.synthetic import writer

REPO = pathlib.Path(__file__).resolve().parents[1]
PRODUCT = [
    *sorted((REPO / "v2f_jax").rglob("*.py")),
    *sorted((REPO / "input_pipeline").glob("*.py")),
]

# Writers that are not "a file written whole": an append-only journal, a folder built under a
# temporary name and renamed whole, the synthetic corpus's own WAV writer, and the helper itself.
ALLOWED = {
    ("v2f_jax/files.py", "*"),
    ("v2f_jax/training/metric_writers.py", "open"),  # metrics.jsonl, appended line by line
    ("v2f_jax/training/workdir.py", "open"),  # config_changes.jsonl (appended), train.lock
    ("input_pipeline/train_arrays.py", "*"),  # built in `<dir>.building`, renamed when complete
    ("v2f_jax/synthetic/corpus_a.py", "*"),
    ("v2f_jax/synthetic/corpus_b.py", "*"),
    ("v2f_jax/synthetic/common.py", "*"),
    ("v2f_jax/synthetic/writer.py", "wave"),
}
WRITERS = {"write_text", "write_bytes", "save_file", "imwrite", "tofile"}


def _direct_writes(path: pathlib.Path) -> list[str]:
    """Calls in `path` that write a file in place: `open(..., "w"/"a"/...)`, `X.write_text`,
    `np.save(PATH, ...)`, `torch.save(x, PATH)`, `cv2.imwrite`, `save_file`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
        modes = [*node.args[1:2], *(k.value for k in node.keywords if k.arg == "mode")]
        mode = next((a.value for a in modes if isinstance(a, ast.Constant)), None)
        if name == "open" and owner in ("", "os", "io") and isinstance(mode, str):
            if any(c in mode for c in "wax+"):
                found.append(f"{node.lineno}: open(..., {mode!r})")
        elif name in WRITERS and owner != "files":
            found.append(f"{node.lineno}: {ast.unparse(func)}")
        elif name == "save" and owner in ("np", "numpy", "torch") and node.args:
            target = ast.unparse(node.args[0] if owner != "torch" else node.args[1])
            if target not in ("buffer", "tmp", "f"):
                found.append(f"{node.lineno}: {ast.unparse(func)}({target}, ...)")
    return found


def test_every_file_a_command_writes_goes_through_the_atomic_helper():
    offenders = {}
    for path in PRODUCT:
        rel = str(path.relative_to(REPO))
        found = [
            f
            for f in _direct_writes(path)
            if (rel, "*") not in ALLOWED
            and not ((rel, "open") in ALLOWED and "open(" in f)
            and not ((rel, "wave") in ALLOWED and "wave" in f)
        ]
        if found:
            offenders[rel] = found
    assert not offenders, f"write these through v2f_jax.files (whole or not at all): {offenders}"


def test_a_refused_write_names_the_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("the old one\n")
    with hostile.file_size_limit(1_000), pytest.raises(files.WriteError) as err:
        files.write_bytes(target, b"x" * 5_000)
    assert str(err.value) == f"cannot write {target}: File too large"
    assert err.value.errno == 27 and err.value.filename == str(target)
    assert target.read_text() == "the old one\n" and not hostile.leftovers(tmp_path)


def test_temporaries_of_dead_writers_are_cleared_and_live_ones_kept(tmp_path):
    target = tmp_path / "model.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".model.safetensors.tmp{dead.pid}"
    live = tmp_path / f".model.safetensors.tmp{os.getppid()}"  # a process that is running
    other = tmp_path / f".other.tmp{dead.pid}"  # another file's: not ours to clear
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    files.write_bytes(target, b"whole")
    assert not stale.exists() and live.exists() and other.exists()
    assert target.read_bytes() == b"whole"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("to", ["process", "group"])  # group: as Ctrl-C in a terminal
def test_prepare_stopped_by_a_signal_leaves_nothing_half_written_and_resumes(tmp_path, sig, to):
    corpus = tmp_path / "corpus"
    writer.make_corpus(corpus, identities=10, utterances=6, faces=4, seed=0)
    out = tmp_path / "records"
    argv = ["prepare", "--voices", corpus / "voices", "--faces", corpus / "faces", "--meta",
            corpus / "vox1_meta.csv", "--out", out, "--workers", "2", "--no-progress",
            "--shards-per-split", "4"]  # fmt: skip
    log = tmp_path / "log"
    proc = subprocess.Popen([sys.executable, "-m", "v2f_jax.cli", *map(str, argv)], cwd=REPO,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(out.glob("*.tfrecord.done")):  # a shard or more written: mid-job
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    if to == "group":
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    name = signal.Signals(sig).name
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"prepare still running 120 s after {name}:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    if proc.returncode != 0:  # it may have finished first
        assert proc.returncode == 128 + sig, text[-3000:]
        assert f"v2f prepare: interrupted ({name}); nothing half written is left" in text
        assert "Traceback" not in text and "Process " not in text  # no worker's last words
    assert not hostile.leftovers(out)
    for shard in out.glob("*.tfrecord"):
        assert pathlib.Path(f"{shard}.done").exists()  # every shard there is whole
    again = hostile.v2f(*argv)
    assert again.returncode == 0, again.stderr[-3000:]
    assert manifest_lib.Records.open(out).split("train")["num_voices"] > 0
