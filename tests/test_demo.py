"""`v2f demo` end to end: the README's main command, as a user runs it (its own process, one
CPU device, not the suite's four fake ones)."""

import json
import pathlib
import subprocess
import sys
import wave

import pytest


@pytest.mark.slow
def test_demo_learns_faces_from_voices(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "v2f_jax.cli", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    lines = run.stdout.strip().splitlines()
    assert lines[-2] == f"report: {out / 'eval' / 'eval.md'}"
    assert lines[-1] == f"picture: {out / 'eval' / 'eval.png'}"
    for line in lines[-2:]:
        assert pathlib.Path(line.split(": ", 1)[1]).stat().st_size > 0

    demo = json.loads((out / "demo.json").read_text())
    trained, untrained = demo["eval"], demo["untrained_eval"]
    # Trained for a few CPU minutes, faces match held-out speakers clearly above chance (81.4%
    # +- 2.9 over 42 identities here; 71-80% on six other corpora, RESULTS.md): by at least 3
    # standard errors...
    report = json.loads((out / "eval" / "eval.json").read_text())
    assert trained["matching_1v2"] > 0.62, trained
    assert trained["matching_1v2"] - 3 * report["stderr"]["matching_1v2"] > 0.5, report
    assert trained["matching_1v2_gender"] > 0.57, trained
    # ...and recognisably draw training speakers (chance 1/86)...
    assert trained["id_top1"] > 4 / 86, trained
    # G as the run initialised it, its coarse map fitted and its network untrained, already
    # reads the voice (77.8% here: the map is linear in E's embedding)...
    assert untrained["matching_1v2"] > 0.62, untrained
    # ...and training G makes the faces more like photos (Fréchet distance in the scorer's
    # embedding: 0.39 against 0.44 here, lower on each of seven corpora, RESULTS.md 4.7).
    before = json.loads((out / "eval_untrained" / "eval.json").read_text())["picture"]
    assert report["picture"]["frechet"]["generated"] < before["frechet"]["generated"], before

    assert report["matching_1v2"] == trained["matching_1v2"]
    # G's bilinear x2 layers draw no more pixel-scale checkerboard than photos have (the
    # reference's transposed convs: a ratio of 26-156).
    assert report["picture"]["checkerboard"]["ratio"] < 1.5, report["picture"]
    # Its voices are as long as VoxCeleb1's: at least 4 s of speech each (README).
    assert demo["settings"]["durations"] == "voxceleb"
    for wav in (out / "corpus" / "voices").rglob("*.wav"):
        with wave.open(str(wav)) as w:
            assert w.getnframes() >= 4 * w.getframerate(), wav
    sheet = out / "faces" / "contact_sheet.png"
    assert sheet.stat().st_size > 0
    faces = {p.stem for p in (out / "faces").glob("*.png")} - {"contact_sheet"}
    assert len(faces) == report["counts"]["test_identities"]
    assert all(name[0] in "ABCDE" for name in faces)  # named after the held-out speakers
