"""Helpers shared by the tests that run training: a tiny records corpus, and checks on
workdirs (checkpoint steps, final states, bitwise equality, waiting for a file)."""

import pathlib
import subprocess
import time

import cv2
import jax
import numpy as np

from v2f_jax import checkpointing
from v2f_jax.input_pipeline import prepare

NAMES = ["Ann_A", "Bea_B", "Cy_C", "Fay_F", "Gus_G", "Hal_H", "Ida_I", "Jo_J", "Kim_K", "Lu_L"]

# configs/embedder.py is full size; these make its E the E of configs/tiny.py.
TINY_E = [
    "--config.model.voice_channels=(32,32,48,48)",
    "--config.model.embed_dim=16",
    "--config.data.crop_lengths=(96,)",
    "--config.data.shuffle_buffer=512",
]


def make_records(root: pathlib.Path) -> str:
    """10 identities (A-E test, F-L train: 7 train ids), log-mels as .npy, 2 shards per split."""
    rng = np.random.default_rng(0)
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    for i, name in enumerate(NAMES):
        vid = f"id{10001 + i}"
        meta.append(f"{vid}\t{name}\t{'mf'[i % 2]}\tUK\tdev")
        for u in range(4):
            d = root / "fbank" / vid / f"v{u % 2}"
            d.mkdir(parents=True, exist_ok=True)
            mel = rng.standard_normal([int(rng.integers(40, 200)), 64]) + 0.1 * i
            np.save(d / f"{u:05d}.npy", mel.astype(np.float32))
        (root / "faces" / name).mkdir(parents=True)
        for k in range(4):
            img = 20 * i + rng.integers(0, 30, [72, 72, 3])
            cv2.imwrite(str(root / "faces" / name / f"{k}.png"), img.astype(np.uint8))
    (root / "meta.csv").write_text("\n".join(meta) + "\n")
    out = root / "records"
    prepare.prepare(
        root / "fbank",
        root / "faces",
        root / "meta.csv",
        out,
        workers=1,
        shards_per_split=2,
        progress=False,
    )
    return str(out)


def wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout=240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode} before {path} appeared"
        assert time.time() < deadline, f"no {path} after {timeout}s"
        time.sleep(0.02)


def saved_steps(workdir) -> list[int]:
    """Complete checkpoint steps (orbax writes `<step>.orbax-checkpoint-tmp-*` until complete)."""
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def final_state(workdir):
    _, state = checkpointing.restore_for_inference(workdir)
    return state


def assert_bitwise_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and np.array_equal(x, y)
