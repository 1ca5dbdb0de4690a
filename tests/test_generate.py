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


def test_speaker_groups_from_folders_lists_and_files(tmp_path):
    anna = tmp_path / "anna" / "video1"
    anna.mkdir(parents=True)
    for name in ("b.wav", "a.flac", "notes.txt"):
        (anna / name).write_bytes(b"")
    (tmp_path / "ben").mkdir()
    loose = tmp_path / "ben" / "c.wav"
    loose.write_bytes(b"")
    groups = generate.speaker_groups(
        [tmp_path / "anna", f"cleo=x.wav,{loose}", str(loose), "cleo=y.wav,x.wav"]
    )
    assert groups == {
        "anna": [str(anna / "a.flac"), str(anna / "b.wav")],  # audio files only, sorted
        "cleo": ["x.wav", str(loose), "y.wav"],  # merged, each clip once
        "ben": [str(loose)],  # a file: the speaker is its folder
    }
    assert generate.speaker_groups([tmp_path / "ben"]) == {"ben": [str(loose)]}


def test_fused_voices_are_the_unit_mean_of_unit_embeddings():
    emb = np.array([[3.0, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(generate.fuse_voices(emb), [2**-0.5, 2**-0.5], rtol=1e-6)
    one = np.array([[0.6, 0.8]])
    np.testing.assert_allclose(generate.fuse_voices(one), one[0], rtol=1e-6)
    with pytest.raises(ValueError):
        generate.fuse_voices(np.zeros([0, 2]))


def test_generate_per_speaker_draws_one_face_from_all_clips(examples_dir, tmp_path):
    import shutil

    import soundfile

    model, _ = _model()
    path = model_files.save_model(model, tmp_path / "tiny.safetensors")
    folder = tmp_path / "voices" / "alan"
    folder.mkdir(parents=True)
    for name in ("Alan_Tudyk.wav", "Damian_Lewis.wav"):
        shutil.copyfile(examples_dir / name, folder / name)
    silent = tmp_path / "silence.wav"
    soundfile.write(silent, np.zeros(16000, np.int16), 16000, subtype="PCM_16")
    witney = examples_dir / "Witney_Carson.wav"
    out = tmp_path / "faces"
    argv = ["generate", "--model", path, "--per-speaker", "--out", str(out), "--audio"]
    argv += [str(folder), f"witney={witney},{silent}", f"nobody={tmp_path / 'none.wav'}"]
    # The silent clip and the missing file are reported (exit 1); both voiced speakers drawn.
    assert cli.main(argv) == 1
    report = json.loads((out / "generate.json").read_text())
    assert report["per_speaker"] is True
    alan, witney_item, nobody = report["items"]
    assert alan["speaker"] == "alan" and alan["png"] == "alan.png"
    assert [c["path"] for c in alan["clips"]] == sorted(str(p) for p in folder.iterdir())
    assert witney_item["png"] == "witney.png" and len(witney_item["clips"]) == 1
    assert witney_item["skipped"][0]["path"] == str(silent)
    assert "png" not in nobody and nobody["reason"] == "no usable clip"
    # Each face is G of the fused embedding of that speaker's clips: one clip, its own face.
    clips = [generate_features(p) for p in sorted(folder.iterdir())] + [generate_features(witney)]
    emb = generate.embed_voices(model.config, model.embedder, clips)
    fused = np.stack([generate.fuse_voices(emb[:2]), emb[2]])
    want = images.to_uint8(generate.generate_faces(model.config, model.generator, fused))
    for name, face in zip(("alan.png", "witney.png"), want):
        np.testing.assert_array_equal(cv2.imread(str(out / name))[..., ::-1], face)
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[1] > 2 * 128
