"""`v2f features`: one .npy per good file, bad files reported and non-fatal."""

import json

import numpy as np
import pytest
import soundfile

from v2f_jax import cli
from v2f_jax.input_pipeline import audio


@pytest.mark.parametrize("frontend", audio.FRONTENDS)
def test_features_writes_good_files_and_reports_bad_ones(tmp_path, examples_dir, capsys, frontend):
    good = [examples_dir / "Alan_Tudyk.wav", examples_dir / "Witney_Carson.wav"]
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(2 * 16000, np.int16), 16000)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really a wave file")
    out = tmp_path / "feats"

    argv = ["features", "--audio", str(good[0]), str(silent), str(garbage), str(good[1])]
    code = cli.main([*argv, "--out", str(out), "--frontend", frontend])

    assert code != 0
    err = capsys.readouterr().err
    assert f"{silent}: no speech after VAD" in err
    assert f"{garbage}: unreadable or not audio" in err
    assert sorted(p.name for p in out.glob("*.npy")) == ["Alan_Tudyk.npy", "Witney_Carson.npy"]
    for path in good:
        feats = np.load(out / f"{path.stem}.npy")
        assert feats.dtype == np.float32 and feats.ndim == 2 and feats.shape[1] == 64
        np.testing.assert_array_equal(feats, audio.voice_features(path, frontend=frontend))

    summary = json.loads((out / "features.json").read_text())
    assert summary["frontend"] == audio.frontend_params(frontend)
    assert summary["n_written"] == 2 and summary["n_rejected"] == 2
    by_path = {f["path"]: f for f in summary["files"]}
    assert by_path[str(silent)]["reason"] == "no speech after VAD"
    assert by_path[str(garbage)]["reason"].startswith("unreadable or not audio")
    alan = by_path[str(good[0])]
    assert alan["out"] == "Alan_Tudyk.npy" and alan["frames"] == 365  # the reference's T
    assert alan["seconds"] == 3.86 and alan["speech_seconds"] == 3.64


def test_features_all_good_exits_zero(tmp_path, examples_dir):
    code = cli.main(
        ["features", "--audio", str(examples_dir / "Bingbing_Li.wav"), "--out", str(tmp_path)]
    )
    assert code == 0
    assert np.load(tmp_path / "Bingbing_Li.npy").shape == (363, 64)


def test_features_same_stem_twice_is_rejected_not_overwritten(tmp_path, examples_dir, capsys):
    wav = str(examples_dir / "Bingbing_Li.wav")
    code = cli.main(["features", "--audio", wav, wav, "--out", str(tmp_path)])
    assert code == 1
    assert "another input already wrote Bingbing_Li.npy" in capsys.readouterr().err
    assert json.loads((tmp_path / "features.json").read_text())["n_written"] == 1
