"""`v2f demo` end to end: the README's main command, as a user runs it."""

import json
import pathlib

import pytest

from v2f_jax import cli


@pytest.mark.slow
def test_demo_learns_faces_from_voices(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == f"report: {out / 'eval' / 'eval.md'}"
    assert lines[-1] == f"picture: {out / 'eval' / 'eval.png'}"
    for line in lines[-2:]:
        assert pathlib.Path(line.split(": ", 1)[1]).stat().st_size > 0

    demo = json.loads((out / "demo.json").read_text())
    trained, untrained = demo["eval"], demo["untrained_eval"]
    # Trained on the synthetic corpus, faces match held-out speakers clearly above chance...
    assert trained["matching_1v2"] > 0.58, trained
    # ...and the same networks with the generator untrained do not.
    assert abs(untrained["matching_1v2"] - 0.5) < 0.05, untrained
    assert trained["id_top1"] > untrained["id_top1"]

    report = json.loads((out / "eval" / "eval.json").read_text())
    assert report["matching_1v2"] == trained["matching_1v2"]
    sheet = out / "faces" / "contact_sheet.png"
    assert sheet.stat().st_size > 0
    assert len(list((out / "faces").glob("*.png"))) == report["counts"]["test_identities"] + 1
