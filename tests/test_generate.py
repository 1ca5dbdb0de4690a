"""`v2f generate`: batched whole-utterance embedding, faces from real wavs, the front-end guard."""

import functools
import json

import cv2
import numpy as np
import pytest

from v2f_jax import cli, config_lib
from v2f_jax.inference import generate, images, model_files, torch_state_dicts
from v2f_jax.inference.model import init_model


@functools.cache
def _model():
    """A freshly initialised tiny-config model (untrained; shapes are what is tested)."""
    config = config_lib.load_config("configs/tiny.py")
    config.model.num_ids = 5
    model = init_model(config)
    return model, model.networks()


def test_batched_embedding_equals_one_utterance_at_a_time():
    model, nets = _model()
    rng = np.random.default_rng(0)
    voices = [rng.normal(size=(t, 64)).astype(np.float32) for t in (37, 999, 1000, 1250, 1900)]
    batched = generate.embed_voices(model.config, model.embedder, voices, batch_size=4)
    alone = []
    for v in voices:
        mel = generate.prepare_voice(v)
        assert mel.shape[0] % 32 == 0 and mel.shape[0] >= 992
        raw = np.asarray(nets.embedder.apply(model.embedder, mel[None]))[0]
        alone.append(raw / np.linalg.norm(raw))
    np.testing.assert_allclose(batched, np.stack(alone), atol=2e-5)
    # Short utterances are repeated to 1000 frames, as the reference's voice2face does.
    np.testing.assert_array_equal(generate.prepare_voice(voices[0])[37:74], voices[0])


def test_generate_command_on_real_wavs(examples_dir, tmp_path):
    model, _ = _model()
    path = model_files.save_model(model, tmp_path / "tiny.safetensors")
    wavs = [str(examples_dir / "Alan_Tudyk.wav"), str(examples_dir / "Moon_Bloodgood.wav")]
    silent = tmp_path / "silence.wav"
    import soundfile

    soundfile.write(silent, np.zeros(16000, np.int16), 16000, subtype="PCM_16")
    out = tmp_path / "faces"
    rc = cli.main(["generate", "--model", path, "--audio", *wavs, str(silent), "--out", str(out)])
    assert rc == 1  # the silent file is reported; the real ones are still drawn
    for name in ("Alan_Tudyk.png", "Moon_Bloodgood.png"):
        face = cv2.imread(str(out / name))
        assert face.shape == (64, 64, 3)
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[0] > 128 and sheet.shape[1] > 2 * 128
    report = json.loads((out / "generate.json").read_text())
    assert report["frontend"]["name"] == "wen2019"
    assert [("png" in i, "reason" in i) for i in report["items"]] == [
        (True, False),
        (True, False),
        (False, True),
    ]
    assert "speech" in report["items"][2]["reason"]


def test_a_different_frontend_is_refused(examples_dir, tmp_path, capsys):
    model, _ = _model()
    path = model_files.save_model(model, tmp_path / "tiny.safetensors")
    rc = cli.main(
        [
            "generate",
            "--model",
            path,
            "--audio",
            str(examples_dir / "Alan_Tudyk.wav"),
            "--out",
            str(tmp_path / "faces"),
            "--frontend",
            "librosa",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "trained on 'wen2019' features" in err and "--frontend librosa" in err
    assert not (tmp_path / "faces").exists()
    assert generate.check_frontend(model, "wen2019") == "wen2019"


def test_generate_from_the_reference_pth_pair(examples_dir, tmp_path):
    pytest.importorskip("torch")
    model, _ = _model()
    e_pth, g_pth = torch_state_dicts.export_torch(model, tmp_path)
    out = tmp_path / "faces"
    rc = cli.main(
        [
            "generate",
            "--torch-embedder",
            e_pth,
            "--torch-generator",
            g_pth,
            "--audio",
            str(examples_dir / "Witney_Carson.wav"),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    voice = generate_features(examples_dir / "Witney_Carson.wav")
    emb = generate.embed_voices(model.config, model.embedder, [voice])
    ours = images.to_uint8(generate.generate_faces(model.config, model.generator, emb))[0]
    np.testing.assert_array_equal(cv2.imread(str(out / "Witney_Carson.png"))[..., ::-1], ours)


def generate_features(path):
    from v2f_jax.input_pipeline import audio

    return audio.voice_features(path, "wen2019")
