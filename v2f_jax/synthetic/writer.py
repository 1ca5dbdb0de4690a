"""Writes a built-in corpus, "a" (`corpus_a`) or "b" (`corpus_b`), in the real VoxCeleb1 /
VGGFace layouts, so everything runs offline:

    OUT/voices/id10001/<11-char video id>/00001.wav   16 kHz mono 16-bit PCM, 2.5-4.5 s (or
                                                       VoxCeleb1's lengths: `durations`)
    OUT/faces/Fiona_Hale/00001.png                     aligned RGB crops (VGG_ALL_FRONTAL style)
    OUT/vox1_meta.csv                                  the real table's tab-separated columns
    OUT/identities.json                                each identity's latent attributes

The same arguments give byte-identical files; a file depends only on the seed, the number of
identities, its identity and its index, so more utterances or faces add files and change none.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import wave

import cv2
import numpy as np

from v2f_jax import files
from v2f_jax.input_pipeline import faces as facelib
from v2f_jax.input_pipeline.constants import META_COLUMNS, SAMPLE_RATE, TEST_INITIALS
from v2f_jax.synthetic import common, corpus_a, corpus_b

# Corpus kinds, each a module with `make_identities`, `synthesize_voice` and `render_face`.
_CORPUS_MODULES = {"a": corpus_a, "b": corpus_b}
CORPORA = tuple(_CORPUS_MODULES)
_VIDEO_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM mono WAV; the bytes depend only on the samples."""
    with wave.open(os.fspath(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(np.asarray(samples, "<i2").tobytes())


def write_png(path: str | os.PathLike, image_rgb: np.ndarray) -> None:
    """A uint8 `[H, W, 3]` RGB image as PNG; the bytes depend only on the pixels."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    files.write_bytes(path, data.tobytes(), sync=False)


def _video_ids(rng: np.random.Generator, count: int) -> list[str]:
    ids = []
    while len(ids) < count:
        chars = rng.integers(len(_VIDEO_ID_CHARS), size=11)
        chars[0] = rng.integers(62)  # no leading "-" or "_": awkward on command lines
        video = "".join(_VIDEO_ID_CHARS[c] for c in chars)
        if video not in ids:
            ids.append(video)
    return ids


def _write_person(
    person, out: pathlib.Path, utterances: int, faces: int, face_size: int, durations: str, corpus
) -> int:
    """One person's wavs and face PNGs under `out`; returns the audio's samples."""
    maker = _CORPUS_MODULES[corpus]
    video_rng = common.identity_rng(person, 1, 0)
    videos = _video_ids(video_rng, int(video_rng.integers(1, 4)))
    counters = dict.fromkeys(videos, 0)
    total_samples = 0
    for u in range(utterances):
        # Each utterance picks its video with its own generator: adding utterances renames none.
        video = videos[common.identity_rng(person, 1, u + 1).integers(len(videos))]
        counters[video] += 1
        samples, _ = maker.synthesize_voice(person, common.identity_rng(person, 2, u), durations)
        path = out / "voices" / person.voxceleb_id / video / f"{counters[video]:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, samples)
        total_samples += samples.size
    face_dir = out / "faces" / person.name
    face_dir.mkdir(parents=True, exist_ok=True)
    for f in range(faces):
        image, _ = maker.render_face(person, common.identity_rng(person, 3, f), face_size)
        write_png(face_dir / f"{f + 1:05d}.png", image)
    return total_samples


def make_corpus(
    out_dir: str | os.PathLike,
    identities: int = 24,
    utterances: int = 4,
    faces: int = 4,
    seed: int = 0,
    face_size: int = common.FACE_SIZE,
    overwrite: bool = False,
    durations: str = "short",
    corpus: str = "a",
    workers: int = 1,
) -> dict:
    """Writes the corpus (layout in the module docstring) and returns a summary.

    Args:
      out_dir: created if needed; must not already hold a corpus unless `overwrite`.
      identities: at least 4; about a third get A-E names (the reference's test split).
      utterances, faces: per identity; utterances spread over 1-3 videos.
      seed: everything follows from it.
      face_size: side of the face PNGs, at least `faces.MIN_SIDE` (loading resizes them).
      overwrite: replace an existing voices/, faces/, vox1_meta.csv and identities.json.
      durations: utterance lengths, one of `common.DURATIONS`: "short" (2.5-4.5 s) or "voxceleb"
        (like VoxCeleb1's after VAD: at least 4 s, mean about 8.2 s, up to 30 s).
      corpus: one of `CORPORA`: "a" (`corpus_a`: the built-in people, voices and faces) or "b"
        (`corpus_b`: made otherwise, other generators and other voice-face links), to tune on
        one and confirm on the other. Same layout; "b"'s identities.json records "corpus": "b" per
        identity ("a"'s is unchanged, so old seeds keep their bytes).
      workers: processes drawing people at once; every person's files follow from the seed and
        the person alone, so any number writes the same bytes.

    Returns:
      A JSON-able dict: the corpus kind, counts, splits, genders, durations, seconds of audio,
      and the paths written.
    """
    if utterances < 1 or faces < 1:
        raise ValueError("need at least one utterance and one face per identity")
    if durations not in common.DURATIONS:
        raise ValueError(f"durations must be one of {common.DURATIONS}, got {durations!r}")
    if face_size < facelib.MIN_SIDE:
        raise ValueError(f"face_size must be at least {facelib.MIN_SIDE}")
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    people = _CORPUS_MODULES[corpus].make_identities(identities, seed)
    out = pathlib.Path(out_dir)
    outputs = [out / "voices", out / "faces", out / "vox1_meta.csv", out / "identities.json"]
    existing = [p for p in outputs if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; overwrite=True (--overwrite) replaces it")
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    write = functools.partial(
        _write_person,
        out=out,
        utterances=utterances,
        faces=faces,
        face_size=face_size,
        durations=durations,
        corpus=corpus,
    )
    if workers == 1:
        total_samples = sum(map(write, people))
    else:
        # Spawned, not forked: the caller may hold JAX's or TensorFlow's threads. Ctrl-C in a
        # terminal reaches every process of the group: the parent stops the job, and its
        # workers ignore it rather than each print a traceback.
        spawn = multiprocessing.get_context("spawn")
        no_interrupts = (signal.SIGINT, signal.SIG_IGN)
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=spawn, initializer=signal.signal, initargs=no_interrupts
        ) as pool:
            total_samples = sum(pool.map(write, people))
    rows = ["\t".join(META_COLUMNS)] + [
        "\t".join((p.voxceleb_id, p.name, p.gender, p.nationality, p.split)) for p in people
    ]
    files.write_text(out / "vox1_meta.csv", "\n".join(rows) + "\n")
    files.write_text(
        out / "identities.json",
        json.dumps([dataclasses.asdict(p) for p in people], indent=1) + "\n",
    )
    test = [p for p in people if p.name.startswith(tuple(TEST_INITIALS))]
    return {
        "corpus": corpus,
        "out_dir": str(out),
        "identities": len(people),
        "train_identities": len(people) - len(test),
        "test_identities": len(test),
        "male": sum(p.gender == "m" for p in people),
        "female": sum(p.gender == "f" for p in people),
        "utterances": len(people) * utterances,
        "faces": len(people) * faces,
        "face_size": face_size,
        "durations": durations,
        "audio_seconds": round(total_samples / SAMPLE_RATE, 2),
        "seed": seed,
        "voices_dir": str(out / "voices"),
        "faces_dir": str(out / "faces"),
        "meta": str(out / "vox1_meta.csv"),
    }
